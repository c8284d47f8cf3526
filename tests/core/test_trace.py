"""Trace estimators: unbiased, honest standard errors, variance reduction, adaptivity."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from hessian_eigenthings import (
    InvalidArgumentError,
    IterationInfo,
    LambdaOperator,
    hutch_plus_plus,
    hutchinson,
    trace,
    xtrace,
)
from tests.core.known_spectra import dense_known

F64 = torch.float64


def _flat(n: int = 100) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, generator=g, dtype=F64) + 0.5  # indefinite, no dominant directions


def _decaying(n: int = 200) -> torch.Tensor:
    return 100.0 * 0.8 ** torch.arange(n, dtype=F64)  # a few directions carry the trace


@pytest.mark.parametrize(
    ("method", "distribution"),
    [
        ("hutchinson", "rademacher"),
        ("hutchinson", "gaussian"),
        ("hutch++", "rademacher"),
        ("xtrace", "rademacher"),
        ("xtrace", "gaussian"),
    ],
)
def test_unbiased_over_many_seeds(method: str, distribution: str) -> None:
    lam = _flat(60)
    known = dense_known(lam, seed=1)
    truth = float(lam.sum())
    runs = [
        trace(known.operator, 12, method=method, seed=s, distribution=distribution)  # type: ignore[arg-type]
        for s in range(300)
    ]
    est = torch.tensor([r.estimate for r in runs], dtype=F64)
    stderr_of_mean = float(est.std()) / math.sqrt(est.numel())
    assert abs(float(est.mean()) - truth) < 4 * stderr_of_mean, (float(est.mean()), truth)
    assert all(r.num_matvecs <= 12 for r in runs)
    assert all(r.operator_size == 60 and r.method == method for r in runs)


def test_hutchinson_stderr_is_honest_and_samples_average_to_estimate() -> None:
    lam = _flat(80)
    known = dense_known(lam, seed=2)
    runs = [hutchinson(known.operator, num_samples=40, seed=s) for s in range(200)]
    spread = float(torch.tensor([r.estimate for r in runs]).std())
    typical = float(torch.tensor([r.stderr for r in runs]).mean())
    assert 0.8 < typical / spread < 1.25
    r = runs[0]
    assert r.samples is not None
    assert r.samples.numel() == 40
    assert float(r.samples.mean()) == pytest.approx(r.estimate, rel=1e-12)


def test_variance_reduction_on_a_decaying_spectrum() -> None:
    lam = _decaying()
    known = dense_known(lam, seed=3)
    truth = float(lam.sum())

    def rmse(method: Any) -> float:
        errs = [
            trace(known.operator, 30, method=method, seed=s).estimate - truth for s in range(60)
        ]
        return math.sqrt(sum(e * e for e in errs) / len(errs))

    hutch, hpp, xt = rmse("hutchinson"), rmse("hutch++"), rmse("xtrace")
    assert hpp < hutch / 2, (hutch, hpp)
    assert xt < hpp, (hpp, xt)


def test_sketch_methods_are_exact_when_the_sketch_covers_the_space() -> None:
    lam = torch.tensor([5.0, -2.0, 3.0, 1.0, 0.5, 7.0], dtype=F64)
    known = dense_known(lam, seed=4)
    truth = float(lam.sum())
    assert hutch_plus_plus(known.operator, num_matvecs=21, seed=0).estimate == pytest.approx(
        truth, rel=1e-12
    )
    # rank-2 operator: XTrace's leave-one-out sketches all capture its range
    u = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    low = u @ torch.diag(torch.tensor([4.0, -1.5], dtype=F64)) @ u.T
    res = xtrace(low, num_matvecs=10, seed=0)
    assert res.estimate == pytest.approx(float(torch.trace(low)), rel=1e-10)
    assert res.stderr < 1e-8 * abs(res.estimate)
    assert trace(torch.zeros(7, 7, dtype=F64), 8, method="xtrace", seed=0).estimate == 0.0


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_adaptive_mode_reaches_tolerance_within_budget(method: str) -> None:
    lam = _flat(200) + 1.0
    known = dense_known(lam, seed=5)
    res = trace(known.operator, 2000, method=method, tol=0.01, seed=0)  # type: ignore[arg-type]
    assert res.stderr <= 0.01 * abs(res.estimate)
    assert res.num_matvecs < 2000
    assert abs(res.estimate - float(lam.sum())) < 5 * res.stderr
    absolute = trace(known.operator, 2000, method=method, atol=2.0, seed=0)  # type: ignore[arg-type]
    assert absolute.stderr <= 2.0
    # An unreachable tolerance stops at the budget.
    capped = trace(known.operator, 40, method=method, tol=1e-9, seed=0)  # type: ignore[arg-type]
    assert capped.num_matvecs <= 40
    assert capped.stderr > 1e-9 * abs(capped.estimate)


def test_same_seed_bit_identical() -> None:
    known = dense_known(_decaying(80), seed=6)
    for method in ("hutchinson", "hutch++", "xtrace"):
        a = trace(known.operator, 24, method=method, seed=7)  # type: ignore[arg-type]
        b = trace(known.operator, 24, method=method, seed=7)  # type: ignore[arg-type]
        assert a.estimate == b.estimate
        assert a.stderr == b.stderr
        assert a.samples is not None
        assert b.samples is not None
        assert torch.equal(a.samples, b.samples)
        c = trace(known.operator, 24, method=method, seed=None)  # type: ignore[arg-type]
        d = trace(known.operator, 24, method=method, seed=None)  # type: ignore[arg-type]
        assert c.estimate != d.estimate


def test_callback_and_half_precision() -> None:
    known = dense_known(_flat(64) + 2.0, seed=8, dtype=torch.bfloat16)
    seen: list[IterationInfo] = []
    res = hutchinson(known.operator, num_samples=48, seed=0, callback=seen.append)
    assert [i.num_matvecs for i in seen] == [16, 32, 48]
    assert seen[-1].stderr == pytest.approx(res.stderr)
    assert math.isfinite(res.estimate)
    stopped = hutchinson(known.operator, num_samples=48, seed=0, callback=lambda i: True)
    assert stopped.num_matvecs == 16


def test_bad_input() -> None:
    op = LambdaOperator(10, lambda v: v, dtype=F64)
    with pytest.raises(InvalidArgumentError, match="num_matvecs must be at least 3"):
        hutch_plus_plus(op, num_matvecs=2)
    with pytest.raises(InvalidArgumentError, match="num_matvecs must be at least 2"):
        xtrace(op, num_matvecs=1)
    with pytest.raises(InvalidArgumentError, match="num_samples must be at least 1"):
        hutchinson(op, num_samples=0)
    with pytest.raises(InvalidArgumentError, match="method must be"):
        trace(op, 10, method="exact")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="distribution must be"):
        trace(op, 10, distribution="uniform")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="tol must be"):
        trace(op, 10, tol=0.0)
    with pytest.raises(InvalidArgumentError, match="atol must be"):
        trace(op, 10, atol=-1.0)
    single = hutchinson(op, num_samples=1, seed=0)
    assert single.estimate == pytest.approx(10.0)
    assert math.isinf(single.stderr)
