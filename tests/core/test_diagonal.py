"""Diagonal estimators: unbiased, exact where they must be, XDiag better on decaying spectra."""

from __future__ import annotations

import pytest
import torch

from hessian_eigenthings import InvalidArgumentError, IterationInfo, LambdaOperator, diagonal
from tests.core.known_spectra import dense_known

F64 = torch.float64


def _decaying(n: int = 150) -> torch.Tensor:
    return 50.0 * 0.85 ** torch.arange(n, dtype=F64)


@pytest.mark.parametrize("method", ["hutchinson", "xdiag"])
def test_unbiased_over_many_seeds(method: str) -> None:
    known = dense_known(torch.randn(40, generator=torch.Generator().manual_seed(0), dtype=F64))
    assert known.dense is not None
    truth = torch.diagonal(known.dense)
    runs = torch.stack([diagonal(known.operator, 10, method=method, seed=s) for s in range(400)])  # type: ignore[arg-type]
    stderr_of_mean = runs.std(0) / 400**0.5
    z = (runs.mean(0) - truth).abs() / stderr_of_mean
    assert float(z.max()) < 4.5  # 40 entries: the largest of 40 |N(0,1)| rarely exceeds 4


def test_xdiag_beats_hutchinson_on_a_decaying_spectrum() -> None:
    known = dense_known(_decaying(), seed=1)
    assert known.dense is not None
    truth = torch.diagonal(known.dense)

    def error(method: str) -> float:
        errs = [
            float((diagonal(known.operator, 40, method=method, seed=s) - truth).norm())  # type: ignore[arg-type]
            for s in range(20)
        ]
        return sum(errs) / len(errs)

    assert error("xdiag") < error("hutchinson") / 5


def test_exact_cases() -> None:
    d = torch.tensor([3.0, -1.0, 0.5, 2.0, 7.0], dtype=F64)
    # Rademacher probes recover a diagonal operator exactly, whatever the seed.
    op = LambdaOperator(5, lambda v: d * v, matmat=lambda V: d[:, None] * V, dtype=F64)
    assert torch.allclose(diagonal(op, 3, seed=0), d, rtol=1e-15, atol=0)
    # XDiag is exact once the sketch of all-but-one probe spans a low-rank operator's range.
    u = torch.randn(30, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    low = u @ torch.diag(torch.tensor([2.0, -3.0], dtype=F64)) @ u.T
    assert torch.allclose(
        diagonal(low, 10, method="xdiag", seed=0), torch.diagonal(low), atol=1e-11
    )
    assert torch.equal(
        diagonal(torch.zeros(6, 6, dtype=F64), 4, method="xdiag", seed=0), torch.zeros(6, dtype=F64)
    )


def test_gaussian_probes_reproducibility_and_dtype() -> None:
    known = dense_known(_decaying(60), seed=2, dtype=torch.float32)
    a = diagonal(known.operator, 32, seed=3, distribution="gaussian")
    b = diagonal(known.operator, 32, seed=3, distribution="gaussian")
    assert a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, diagonal(known.operator, 32, seed=4, distribution="gaussian"))
    half = dense_known(_decaying(60), seed=2, dtype=torch.bfloat16)
    est = diagonal(half.operator, 64, method="xdiag", seed=0)
    assert est.dtype == torch.bfloat16
    assert half.dense is not None
    truth = torch.diagonal(half.dense)
    assert float((est.double() - truth).norm() / truth.norm()) < 0.05


def test_callback_reports_blocks_and_can_stop() -> None:
    known = dense_known(_decaying(50), seed=3)
    seen: list[IterationInfo] = []
    full = diagonal(known.operator, 40, seed=0, callback=seen.append)
    assert [i.num_matvecs for i in seen] == [16, 32, 40]
    assert float(seen[-1].estimates[0]) == pytest.approx(float(full.sum()))
    early = diagonal(known.operator, 40, seed=0, callback=lambda i: True)
    first = diagonal(known.operator, 16, seed=0)
    assert torch.equal(early, first)  # stopped after the first block of 16 probes


def test_bad_input() -> None:
    op = LambdaOperator(8, lambda v: v, dtype=F64)
    with pytest.raises(InvalidArgumentError, match="num_matvecs must be at least 2"):
        diagonal(op, 1, method="xdiag")
    with pytest.raises(InvalidArgumentError, match="num_matvecs must be at least 1"):
        diagonal(op, 0)
    with pytest.raises(InvalidArgumentError, match="Rademacher"):
        diagonal(op, 4, method="xdiag", distribution="gaussian")
    with pytest.raises(InvalidArgumentError, match="method must be"):
        diagonal(op, 4, method="exact")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="distribution must be"):
        diagonal(op, 4, distribution="uniform")  # type: ignore[arg-type]
