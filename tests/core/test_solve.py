"""solve: damped conjugate gradients reach the requested true residual, on known SPD operators
and on a model's GGN; a KFAC-inverse preconditioner that is exact solves in one step; early
stops (max_iter, callback, indefinite matrices) are reported, not hidden."""

from __future__ import annotations

import pytest
import torch

from hessian_eigenthings import (
    GGNOperator,
    InvalidArgumentError,
    IterationInfo,
    KFACOperator,
    LambdaOperator,
    SingleDeviceBackend,
    solve,
)
from hessian_eigenthings.loss_fns import cross_entropy_loss_of_output, mse_loss_of_output
from tests.core.known_spectra import dense_known
from tests.core.oracles import rel_err
from tests.core.test_kfac import linear_case
from tests.core.zoo import mlp

F64 = torch.float64


def _rand(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("tol", [1e-6, 1e-11])
@pytest.mark.parametrize("damping", [1e-3, 1e-1])
def test_damped_ggn_solve_reaches_the_requested_residual(damping: float, tol: float) -> None:
    case = mlp()
    op = GGNOperator(case.model, case.batches, case.forward, cross_entropy_loss_of_output())
    A = op.to_dense() + damping * torch.eye(op.size, dtype=F64)
    b = _rand(op.size, 0)
    result = solve(op, b, damping=damping, tol=tol)
    assert result.converged
    true_residual = float((b - A @ result.solution).norm())
    assert true_residual <= tol * float(b.norm())
    # the operator's and the dense matrix's products differ by rounding: ~eps·‖A‖·‖x‖
    rounding = 100 * torch.finfo(F64).eps * float(torch.linalg.matrix_norm(A, 2))
    rounding *= float(result.solution.norm())
    assert result.residual_norm == pytest.approx(true_residual, abs=rounding)
    cond = float(torch.linalg.cond(A))
    assert rel_err(result.solution, torch.linalg.solve(A, b)) < 10 * cond * tol
    assert result.num_matvecs >= result.iterations
    assert result.note is None


def test_known_spectrum_and_iteration_count() -> None:
    """CG on an operator with 5 distinct eigenvalues converges in 5 steps (exact arithmetic);
    with a starting guess at the answer it converges without iterating."""
    lam = torch.tensor([1.0, 2.0, 5.0, 10.0, 50.0], dtype=F64).repeat_interleave(8)
    known = dense_known(lam, seed=1)
    assert known.dense is not None
    b = _rand(40, 1)
    result = solve(known.operator, b, tol=1e-12)
    assert result.converged
    assert result.iterations <= 7
    x = torch.linalg.solve(known.dense, b)
    assert rel_err(result.solution, x) < 1e-10
    again = solve(known.operator, b, tol=1e-10, x0=x)
    assert again.converged
    assert again.iterations == 0


def test_exact_kfac_preconditioner_solves_in_one_step() -> None:
    """For one linear layer under MSE, KFAC is the GGN, so P = (KFAC + δI)⁻¹ is the exact
    inverse and preconditioned CG converges in a single iteration."""
    case = linear_case()
    loss = mse_loss_of_output()
    ggn = GGNOperator(case.model, case.batches, case.forward, loss)
    kfac = KFACOperator(case.model, case.batches, case.forward, loss)
    b = _rand(ggn.size, 2)
    plain = solve(ggn, b, damping=1e-4, tol=1e-10)
    preconditioned = solve(ggn, b, damping=1e-4, tol=1e-10, preconditioner=kfac.inverse(1e-4))
    assert plain.converged
    assert preconditioned.converged
    assert preconditioned.iterations == 1
    assert plain.iterations > 1
    assert rel_err(preconditioned.solution, plain.solution) < 1e-8


def test_callback_and_max_iter() -> None:
    known = dense_known(torch.logspace(0, 4, 30, dtype=F64), seed=2)
    b = _rand(30, 3)
    seen: list[IterationInfo] = []

    def stop_at_three(info: IterationInfo) -> bool:
        seen.append(info)
        return info.iteration == 3

    result = solve(known.operator, b, callback=stop_at_three)
    assert [i.iteration for i in seen] == [1, 2, 3]
    assert all(i.algorithm == "solve(cg)" for i in seen)
    assert seen[0].residuals is not None
    assert float(seen[0].estimates[0]) == pytest.approx(
        float(seen[0].residuals[0]) / float(b.norm())
    )
    assert not result.converged
    assert result.note == "stopped by the callback"
    limited = solve(known.operator, b, max_iter=2, tol=1e-12)
    assert limited.iterations == 2
    assert not limited.converged
    assert "max_iter" in (limited.note or "")
    assert limited.residual_norm == pytest.approx(
        float((b - known.operator.matvec(limited.solution)).norm()), rel=1e-10
    )


def test_indefinite_matrix_stops_with_a_note() -> None:
    known = dense_known(torch.tensor([3.0, 2.0, -1.0, 1.0], dtype=F64), seed=3)
    result = solve(known.operator, torch.ones(4, dtype=F64), tol=1e-12)
    assert not result.converged  # this right-hand side meets the negative direction
    assert "not positive definite" in (result.note or "")
    negative = LambdaOperator(3, lambda v: -v, dtype=F64)
    bad = solve(negative, torch.ones(3, dtype=F64))
    assert not bad.converged
    assert "increase damping" in (bad.note or "")
    rescued = solve(negative, torch.ones(3, dtype=F64), damping=2.0)
    assert rescued.converged
    assert torch.allclose(rescued.solution, torch.ones(3, dtype=F64))


def test_vector_arithmetic_goes_through_the_backend() -> None:
    class Counting(SingleDeviceBackend):
        def __init__(self) -> None:
            self.calls: dict[str, int] = {}

        def _count(self, name: str) -> None:
            self.calls[name] = self.calls.get(name, 0) + 1

        def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            self._count("dot")
            return super().dot(a, b)

        def norm(self, v: torch.Tensor) -> torch.Tensor:
            self._count("norm")
            return super().norm(v)

        def axpy(
            self, alpha: float | torch.Tensor, x: torch.Tensor, y: torch.Tensor
        ) -> torch.Tensor:
            self._count("axpy")
            return super().axpy(alpha, x, y)

    known = dense_known(torch.linspace(1, 10, 12, dtype=F64), seed=4)
    backend = Counting()
    result = solve(known.operator, _rand(12, 5), backend=backend, damping=0.5)
    assert result.converged
    assert backend.calls["dot"] >= 2 * result.iterations
    assert backend.calls["norm"] >= result.iterations
    assert backend.calls["axpy"] >= 3 * result.iterations


def test_zero_right_hand_side_and_bad_arguments() -> None:
    known = dense_known(torch.linspace(1, 2, 5, dtype=F64), seed=5)
    zero = solve(known.operator, torch.zeros(5, dtype=F64))
    assert zero.converged
    assert torch.equal(zero.solution, torch.zeros(5, dtype=F64))
    b = torch.ones(5, dtype=F64)
    with pytest.raises(InvalidArgumentError, match="shape"):
        solve(known.operator, torch.ones(4, dtype=F64))
    with pytest.raises(InvalidArgumentError, match="damping"):
        solve(known.operator, b, damping=-1.0)
    with pytest.raises(InvalidArgumentError, match="method"):
        solve(known.operator, b, method="gmres")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="max_iter"):
        solve(known.operator, b, max_iter=0)
    with pytest.raises(InvalidArgumentError, match="preconditioner"):
        solve(known.operator, b, preconditioner=torch.eye(3, dtype=F64))
    with pytest.raises(InvalidArgumentError, match="x0"):
        solve(known.operator, b, x0=torch.ones(3, dtype=F64))
    with pytest.raises(InvalidArgumentError, match="NaN"):
        solve(known.operator, torch.full((5,), float("nan"), dtype=F64))
