"""Linear solves with a curvature operator: (A + δ·I) x = b by conjugate gradients.

Math. For symmetric positive-definite A + δI, conjugate gradients (Hestenes & Stiefel 1952)
minimises the error in the (A + δI)-norm over the Krylov space span{r₀, (A+δI) r₀, …}, one
product per iteration and O(n) memory (four vectors). The error after t steps is at most
2 ((√κ − 1)/(√κ + 1))^t times the initial one, κ the condition number, so damping (which bounds
κ by (λ_max + δ)/δ for a PSD curvature matrix) is what makes GGN/Fisher solves fast. A
``preconditioner`` P ≈ (A + δI)⁻¹ (e.g. ``KFACOperator.inverse(δ)``) gives preconditioned CG,
whose rate depends on the spectrum of P (A + δI) instead.

Stopping: ‖b − (A + δI) x‖ ≤ tol·‖b‖. CG updates the residual recursively, which drifts from
the true one in floating point; when the recursive residual meets the tolerance the true one is
recomputed (one product) and, if it does not, CG restarts from the current x with it. A
search direction p with pᵀ(A + δI)p ≤ 0 means the matrix is not positive definite (a Hessian
with negative curvature, or δ too small for rounding): the solve stops there with a note.
Every operator-sized vector operation goes through the :class:`LinAlgBackend`, so the same code
runs on sharded vectors.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from hessian_eigenthings.algorithms._common import (
    Callback,
    IterationInfo,
    Products,
    check_callback,
    check_int,
    check_tol,
    notify,
    resolve_operator,
    scalar,
)
from hessian_eigenthings.algorithms.result import SolveResult
from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend
from hessian_eigenthings.operators.adapters import as_operator

__all__ = ["solve"]


def solve(
    operator: Any,
    b: torch.Tensor,
    *,
    damping: float = 0.0,
    method: Literal["cg"] = "cg",
    tol: float = 1e-8,
    max_iter: int | None = None,
    x0: torch.Tensor | None = None,
    preconditioner: Any = None,
    backend: LinAlgBackend | None = None,
    callback: Callback | None = None,
) -> SolveResult:
    """Solve ``(A + damping·I) x = b`` for a symmetric positive-definite ``A + damping·I``.

    Conjugate gradients (module docstring): the error falls at least like
    ``((√κ − 1)/(√κ + 1))^t`` with κ the condition number of ``A + δI``, at most n steps in
    exact arithmetic. Cost: one product per iteration plus one per true-residual check;
    memory ``O(n)`` (four vectors).

    Args:
        operator: a :class:`CurvatureOperator`, a square tensor or a SciPy ``LinearOperator``.
        b: the (n,) right-hand side, in the operator's dtype and device.
        damping: δ ≥ 0 added to the diagonal (Tikhonov / Levenberg-Marquardt damping).
        method: ``"cg"`` (conjugate gradients; the only method for now).
        tol: stop when ‖b − (A + δI) x‖ ≤ tol·‖b‖ (true residual, see the module docstring).
        max_iter: most CG iterations (default 10·n: exact arithmetic needs at most n, rounding
            more); each costs one product.
        x0: starting guess (default zero).
        preconditioner: an operator applying P ≈ (A + δI)⁻¹ (symmetric positive definite), e.g.
            ``kfac.inverse(damping)``; its products are not counted in ``num_matvecs``.
        backend: vector arithmetic (default: the operator's own, else single-device).
        callback: called after every iteration with an :class:`IterationInfo` whose
            ``estimates`` holds the relative residual and ``residuals`` the absolute one (the
            recursively updated residual); returning ``True`` stops the solve.

    Returns:
        A :class:`SolveResult`: the solution (operator dtype), its true residual norm,
        iterations, whether it converged, the number of products, and a note when stopped early.

    Example:
        With A = diag(1, 2, 4), b = (1, 1, 1) and damping 1, the solution is
        ``1 / (diag(A) + 1)``:

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, solve
        >>> d = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
        >>> op = LambdaOperator(3, lambda v: d * v, dtype=torch.float64)
        >>> result = solve(op, torch.ones(3, dtype=torch.float64), damping=1.0)
        >>> [round(x, 6) for x in result.solution.tolist()], result.converged
        ([0.5, 0.333333, 0.2], True)
    """
    op, backend = resolve_operator(operator, backend)
    op.check_vector(b, "b")
    if method != "cg":
        raise InvalidArgumentError(f"method must be 'cg' (conjugate gradients), got {method!r}")
    delta = check_tol(damping, "damping", allow_zero=True)
    tol = check_tol(tol)
    n = op.size
    max_iter = 10 * n if max_iter is None else check_int(max_iter, "max_iter", minimum=1)
    callback = check_callback(callback)
    precond = None
    if preconditioner is not None:
        precond = as_operator(preconditioner)
        if precond.size != n:
            raise InvalidArgumentError(
                f"preconditioner has size {precond.size} but the operator has size {n}; it must "
                "approximate the inverse of the same matrix"
            )
    if x0 is not None:
        op.check_vector(x0, "x0")

    products = Products(op, "solve(cg)")
    work = products.work

    def apply(x: torch.Tensor) -> torch.Tensor:
        y = products.rows(x.reshape(1, -1), private=False)[0]
        return backend.axpy(delta, x, y) if delta else y

    def precondition(r: torch.Tensor) -> torch.Tensor:
        if precond is None:
            return r
        return precond.matvec(r.to(precond.dtype)).to(work)

    rhs = b.detach().to(work)
    b_norm = scalar(backend.norm(rhs))
    if not math.isfinite(b_norm):
        raise InvalidArgumentError("b contains NaN or inf")
    if b_norm == 0:
        return SolveResult(torch.zeros_like(b), 0.0, 0, True, 0, "b = 0, so x = 0")
    target = tol * b_norm
    x = torch.zeros_like(rhs) if x0 is None else x0.detach().to(work).clone()
    r = rhs.clone() if x0 is None else backend.axpy(-1.0, apply(x), rhs)
    residual = scalar(backend.norm(r))
    true_residual: float | None = None if x0 is None or residual > target else residual
    converged = true_residual is not None
    note: str | None = None
    iterations = 0

    def restart(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        z = precondition(r)
        return z, z.clone(), scalar(backend.dot(r, z))

    _, p, rz = restart(r)
    while not converged and iterations < max_iter:
        if rz <= 0:
            note = "the preconditioner is not positive definite (rᵀ P r ≤ 0); stopped"
            break
        Ap = apply(p)
        curvature = scalar(backend.dot(p, Ap))
        if not curvature > 0:
            note = (
                f"(A + damping·I) is not positive definite along a search direction "
                f"(pᵀ(A + δI)p = {curvature:.3e}); increase damping"
            )
            break
        alpha = rz / curvature
        x = backend.axpy(alpha, p, x)
        r = backend.axpy(-alpha, Ap, r)
        iterations += 1
        residual = scalar(backend.norm(r))
        info = IterationInfo(
            algorithm="solve(cg)",
            iteration=iterations,
            num_matvecs=products.count,
            estimates=torch.tensor([residual / b_norm], dtype=torch.float64),
            residuals=torch.tensor([residual], dtype=torch.float64),
        )
        if notify(callback, info):
            note = "stopped by the callback"
            break
        if residual <= target:
            r = backend.axpy(-1.0, apply(x), rhs)  # the recursive residual may have drifted
            true_residual = scalar(backend.norm(r))
            if true_residual <= target:
                converged = True
                break
            _, p, rz = restart(r)
            continue
        z = precondition(r)
        rz_next = scalar(backend.dot(r, z))
        p = backend.axpy(rz_next / rz, p, z)
        rz = rz_next
    if true_residual is None or not converged:
        true_residual = scalar(backend.norm(backend.axpy(-1.0, apply(x), rhs)))
        converged = true_residual <= target
    if not converged and note is None:
        note = f"max_iter={max_iter} iterations did not reach tol={tol}"
    return SolveResult(
        solution=x.to(op.dtype),
        residual_norm=true_residual,
        iterations=iterations,
        converged=converged,
        num_matvecs=products.count,
        note=note,
    )
