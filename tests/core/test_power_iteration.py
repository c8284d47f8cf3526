"""power_iteration_one, deflated_power_iteration and stochastic_power_iteration against known
spectra."""

from __future__ import annotations

import pytest
import torch

from hessian_eigenthings import (
    ConvergenceWarning,
    InvalidArgumentError,
    IterationInfo,
    LambdaOperator,
    NonFiniteError,
    deflated_power_iteration,
    power_iteration_one,
    stochastic_power_iteration,
)
from tests.core.known_spectra import dense_known, gap, sin_angle_to_eigenspace

F64 = torch.float64


def dense_operator(M: torch.Tensor) -> LambdaOperator:
    return LambdaOperator(M.shape[0], lambda v: M @ v, dtype=F64)


def _spectrum(top: list[float], n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    bulk = torch.rand(n - len(top), generator=g, dtype=F64)
    return torch.cat([torch.tensor(top, dtype=F64), bulk])


@pytest.mark.parametrize("top", [[10.0, 6.0], [-10.0, 6.0]])
def test_power_iteration_one_finds_the_dominant_pair(top: list[float]) -> None:
    known = dense_known(_spectrum(top, 150), seed=1)
    value, vector = power_iteration_one(known.operator, max_iter=500, tol=1e-10, seed=0)
    assert value.dtype == F64
    assert value.ndim == 0
    # Rayleigh quotient of the returned vector, residual at most tol·|θ| ⇒ |θ − λ| ≤ that.
    r = known.residual(float(value), vector)
    assert r <= 1e-10 * abs(float(value)) * (1 + 1e-6)
    assert abs(float(value) - top[0]) <= r
    assert (
        sin_angle_to_eigenspace(known, float(value), vector, 1e-9)
        <= r / gap(known, float(value), 1e-9) + 1e-12
    )


def test_power_iteration_one_accepts_v0_and_warns_on_budget() -> None:
    known = dense_known(_spectrum([10.0, 9.9], 80), seed=2)
    v0 = torch.ones(80, dtype=F64)
    with pytest.warns(ConvergenceWarning, match="max_iter=5"):
        _value, vector = power_iteration_one(known.operator, v0, max_iter=5)
    assert vector.shape == (80,)
    assert float(vector.norm()) == pytest.approx(1.0, abs=1e-14)
    with pytest.raises(InvalidArgumentError, match="v0 must have shape"):
        power_iteration_one(known.operator, torch.ones(3, dtype=F64))
    with pytest.raises(InvalidArgumentError, match="v0 must be non-zero"):
        power_iteration_one(known.operator, torch.zeros(80, dtype=F64))


def test_deflated_power_iteration_matches_eigh() -> None:
    known = dense_known(_spectrum([20.0, -15.0, 10.0, 5.0], 120), seed=3)
    res = deflated_power_iteration(known.operator, num_eigs=3, max_iter=1000, tol=1e-10, seed=0)
    assert res.converged
    expected = torch.tensor([20.0, -15.0, 10.0], dtype=F64)
    assert torch.allclose(res.eigenvalues, expected, rtol=1e-9, atol=0)
    gram = res.eigenvectors @ res.eigenvectors.T
    assert torch.allclose(gram, torch.eye(3, dtype=F64), atol=1e-9)
    for i in range(3):
        theta, x = float(res.eigenvalues[i]), res.eigenvectors[i]
        r = known.residual(theta, x)
        assert abs(r - float(res.residuals[i])) < 1e-10 * 20
        assert sin_angle_to_eigenspace(known, theta, x, 1e-9) <= r / gap(known, theta, 1e-9) + 1e-9
    again = deflated_power_iteration(known.operator, num_eigs=3, max_iter=1000, tol=1e-10, seed=0)
    assert torch.equal(res.eigenvectors, again.eigenvectors)
    assert res.num_matvecs == res.iterations


def test_momentum_accelerates_and_never_biases_the_eigenvalue() -> None:
    known = dense_known(_spectrum([10.0, 9.0, 8.0], 200), seed=4)
    plain = stochastic_power_iteration(known.operator, max_iter=2000, momentum=0.0, seed=0)
    fast = stochastic_power_iteration(known.operator, max_iter=2000, seed=0)
    assert plain.converged
    assert fast.converged
    assert fast.num_matvecs < 0.6 * plain.num_matvecs
    for res in (plain, fast):
        x = res.eigenvectors[0]
        rq = float(x @ known.operator.matvec(x))  # Rayleigh quotient of the returned vector
        assert float(res.eigenvalues[0]) == pytest.approx(rq, rel=1e-14)
        assert float(res.eigenvalues[0]) == pytest.approx(10.0, rel=1e-9)
        assert float(res.residuals[0]) == pytest.approx(known.residual(rq, x), rel=1e-6)
    # An over-large momentum damps λ₁ too: the iterate wanders, but the report stays honest.
    with pytest.warns(ConvergenceWarning):
        wild = stochastic_power_iteration(known.operator, max_iter=50, momentum=30.0, seed=0)
    x = wild.eigenvectors[0]
    assert float(wild.eigenvalues[0]) == pytest.approx(float(x @ known.operator.matvec(x)))


def test_minibatch_sequence_and_factory_target_the_mean_operator() -> None:
    known = dense_known(_spectrum([10.0, 5.0], 100), seed=5)
    A = known.dense
    assert A is not None
    g = torch.Generator().manual_seed(1)
    noise = []
    for _ in range(4):
        E = torch.randn(100, 100, generator=g, dtype=F64) * 0.005  # ‖E‖ ≈ 0.14
        noise.append(E + E.T)
    mean_noise = sum(noise) / 4
    batches = [A + E - mean_noise for E in noise]  # their mean is exactly A
    ops = [dense_operator(M) for M in batches]
    res = stochastic_power_iteration(ops, max_iter=300, seed=0)
    x = res.eigenvectors[0]
    assert float(res.eigenvalues[0]) == pytest.approx(float(x @ A @ x), rel=1e-12)
    assert float(res.eigenvalues[0]) == pytest.approx(10.0, rel=1e-3)

    calls: list[int] = []

    def factory(t: int) -> LambdaOperator:
        calls.append(t)
        return ops[t % 4]

    res2 = stochastic_power_iteration(factory, max_iter=40, seed=0, num_eval_batches=4)
    assert calls[-4:] == [40, 41, 42, 43]  # evaluation draws continue after the run
    assert float(res2.eigenvalues[0]) == pytest.approx(10.0, rel=1e-2)
    x2 = res2.eigenvectors[0]
    assert float(res2.eigenvalues[0]) == pytest.approx(float(x2 @ A @ x2), rel=1e-12)


def test_stochastic_power_iteration_several_eigs_and_eval_operator() -> None:
    known = dense_known(_spectrum([10.0, -7.0, 4.0], 100), seed=6)
    res = stochastic_power_iteration(known.operator, num_eigs=2, max_iter=1000, tol=1e-9, seed=0)
    assert torch.allclose(res.eigenvalues, torch.tensor([10.0, -7.0], dtype=F64), rtol=1e-8)
    assert abs(float(res.eigenvectors[0] @ res.eigenvectors[1])) < 1e-8
    half = stochastic_power_iteration(
        known.operator, max_iter=300, seed=0, eval_operator=0.5 * known.dense
    )
    assert float(half.eigenvalues[0]) == pytest.approx(5.0, rel=1e-8)


def test_callbacks_and_bad_input() -> None:
    known = dense_known(_spectrum([10.0, 5.0], 50), seed=7)
    seen: list[IterationInfo] = []
    power_iteration_one(known.operator, seed=0, callback=seen.append)
    assert seen
    assert seen[0].algorithm == "power_iteration"
    assert [i.num_matvecs for i in seen] == list(range(1, len(seen) + 1))
    res = deflated_power_iteration(known.operator, 2, seed=0, callback=lambda i: True)
    assert not res.converged
    assert res.note is not None
    assert "callback" in res.note
    steps: list[IterationInfo] = []
    with pytest.warns(ConvergenceWarning):
        stochastic_power_iteration(known.operator, max_iter=5, seed=0, callback=steps.append)
    # 10 Lanczos products estimate the momentum before the first step
    assert [i.num_matvecs for i in steps] == [11, 12, 13, 14, 15]
    spi = stochastic_power_iteration(known.operator, seed=0, callback=lambda i: i.iteration == 3)
    assert spi.iterations == 3
    assert not spi.converged
    with pytest.raises(InvalidArgumentError, match="num_eigs=51 exceeds"):
        deflated_power_iteration(known.operator, 51)
    with pytest.raises(InvalidArgumentError, match="max_iter must be at least 1"):
        power_iteration_one(known.operator, max_iter=0)
    with pytest.raises(InvalidArgumentError, match="tol must be"):
        deflated_power_iteration(known.operator, 1, tol=-1.0)
    with pytest.raises(InvalidArgumentError, match="num_eigs must be"):
        stochastic_power_iteration(known.operator, num_eigs=0)
    with pytest.raises(InvalidArgumentError, match="momentum must be"):
        stochastic_power_iteration(known.operator, momentum=-1.0)
    with pytest.raises(InvalidArgumentError, match="operators must be"):
        stochastic_power_iteration("not an operator")
    with pytest.raises(InvalidArgumentError, match="empty sequence"):
        stochastic_power_iteration([])
    other = LambdaOperator(49, lambda v: v, dtype=F64)
    with pytest.raises(InvalidArgumentError, match="share size"):
        stochastic_power_iteration([known.operator, other])
    nan = LambdaOperator(50, lambda v: v * float("nan"), dtype=F64)
    with pytest.raises(NonFiniteError):
        power_iteration_one(nan, seed=0)


def test_half_precision_power_iteration() -> None:
    known = dense_known(_spectrum([10.0, 5.0], 100), seed=8, dtype=torch.bfloat16)
    value, vector = power_iteration_one(known.operator, max_iter=200, tol=1e-2, seed=0)
    assert vector.dtype == torch.bfloat16
    assert float(value) == pytest.approx(10.0, rel=3e-2)
