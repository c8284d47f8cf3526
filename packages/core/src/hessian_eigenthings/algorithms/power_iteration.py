"""Power iteration for the dominant eigenpair, and its deflated form for several.

Math. ``x ← A x / ‖A x‖`` converges to the eigenvector of the largest-|λ| eigenvalue at the
rate ``|λ₂/λ₁|`` per product (Rayleigh quotient error at its square). The eigenvalue reported
is the Rayleigh quotient ``θ = ⟨x, A x⟩`` of the final unit vector, and the iteration stops
when the residual ``‖A x − θ x‖ ≤ tol · |θ|``, which bounds the eigenvalue error by
``tol·|θ|`` and the eigenvector angle by ``tol·|θ| / gap``. Memory ``O(n)`` (plus the found
vectors when deflating); each iteration costs one product. Lanczos reaches the same accuracy
with far fewer products; power iteration is the low-memory fallback.

Deflation runs power iteration on ``P A P`` with ``P = I − V Vᵀ`` the projector onto the
complement of the eigenvectors found so far, so found directions have eigenvalue 0 there.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from hessian_eigenthings.algorithms._common import (
    Callback,
    IterationInfo,
    Products,
    check_callback,
    check_int,
    check_k,
    check_tol,
    notify,
    project_out,
    random_rows,
    resolve_operator,
    scalar,
    which_order,
)
from hessian_eigenthings.algorithms.result import EigenResult
from hessian_eigenthings.errors import ConvergenceWarning, InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend, make_generator

__all__ = ["deflated_power_iteration", "power_iteration_one"]


@dataclass
class _Outcome:
    value: float
    vector: torch.Tensor  # (n,) work dtype, unit norm
    residual: float
    iterations: int
    converged: bool
    stopped: bool


def power_iteration_one(
    operator: Any,
    v0: torch.Tensor | None = None,
    max_iter: int = 100,
    tol: float = 1e-6,
    backend: LinAlgBackend | None = None,
    *,
    seed: int | torch.Generator | None = None,
    callback: Callback | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dominant (largest-magnitude) eigenpair by power iteration.

    Iterates ``x ← A x / ‖A x‖`` and reports the Rayleigh quotient ``θ = ⟨x, A x⟩``; stops when
    ``‖A x − θ x‖ ≤ tol·|θ|``. The error shrinks by ``|λ₂/λ₁|`` per product, so the cost is
    about ``log(tol) / log|λ₂/λ₁|`` products (at most ``max_iter``); memory ``O(n)``.

    Args:
        operator: a :class:`CurvatureOperator`, a square tensor or a SciPy ``LinearOperator``.
        v0: start vector (n,) in the operator's dtype and device; random from ``seed`` if
            ``None``.
        max_iter: most products.
        tol: stop when ``‖A x − θ x‖ ≤ tol · |θ|``.
        backend: as in :func:`lanczos` (positional here, as in the reference:
            ``power_iteration_one(operator, v0, max_iter, tol, backend)``).
        seed: as in :func:`lanczos`.
        callback: as in :func:`lanczos`.

    Returns:
        ``(eigenvalue, eigenvector)``: a 0-d float64 CPU tensor (the Rayleigh quotient of the
        returned vector) and a unit (n,) vector in the operator's dtype and device. Emits a
        :class:`ConvergenceWarning` when ``max_iter`` runs out first.

    Example:
        >>> import torch
        >>> from hessian_eigenthings import power_iteration_one
        >>> A = torch.diag(torch.tensor([5.0, 2.0, 1.0], dtype=torch.float64))
        >>> value, vector = power_iteration_one(A, seed=0)
        >>> round(float(value), 4), round(abs(float(vector[0])), 4)  # λ₁ = 5, x = ±e₁
        (5.0, 1.0)
    """
    op, backend = resolve_operator(operator, backend)
    max_iter, tol, callback = _check(max_iter, tol, callback)
    products = Products(op, "power_iteration")
    if v0 is None:
        gen = make_generator(seed)
        start = random_rows(
            backend, 1, op.size, generator=gen, dtype=products.work, device=op.device
        )
        x0 = start[0]
    else:
        op.check_vector(v0, "v0")
        x0 = v0.detach().to(products.work)
    out = _power(products, backend, x0, None, max_iter, tol, callback, "power_iteration")
    if not out.converged and not out.stopped:
        _warn("power_iteration_one", out, max_iter)
    return torch.tensor(out.value, dtype=torch.float64), out.vector.to(op.dtype)


def deflated_power_iteration(
    operator: Any,
    num_eigs: int = 1,
    max_iter: int = 100,
    tol: float = 1e-6,
    seed: int | torch.Generator | None = None,
    backend: LinAlgBackend | None = None,
    *,
    callback: Callback | None = None,
) -> EigenResult:
    """The ``num_eigs`` largest-magnitude eigenpairs, one power iteration each, deflating.

    Eigenpair j is found by power iteration on ``P A P`` with ``P = I − Vᵀ V`` projecting out
    the rows V of the eigenvectors found before it (module docstring), so its rate is
    ``|λ_{j+1}/λ_j|``. ``max_iter`` and ``tol`` apply to each eigenpair. Results are ordered by
    decreasing magnitude (LM). Cost ``≤ num_eigs · max_iter`` products; memory
    ``O(n · num_eigs)``. Prefer :func:`lanczos` unless memory forbids its basis. Reproducible
    for an int ``seed``. Returns an :class:`EigenResult`.

    Example:
        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, deflated_power_iteration
        >>> d = torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64)
        >>> op = LambdaOperator(4, lambda v: d * v, dtype=torch.float64)  # diag(8, 4, 2, 1)
        >>> result = deflated_power_iteration(op, num_eigs=2, max_iter=200, tol=1e-10, seed=0)
        >>> [round(x, 6) for x in result.eigenvalues.tolist()], result.converged
        ([8.0, 4.0], True)
    """
    op, backend = resolve_operator(operator, backend)
    num_eigs = check_k(num_eigs, backend.total_size(op.size), "num_eigs")
    max_iter, tol, callback = _check(max_iter, tol, callback)
    products = Products(op, "deflated_power_iteration")
    gen = make_generator(seed)
    found: list[_Outcome] = []
    for _ in range(num_eigs):
        V = torch.stack([o.vector for o in found]) if found else None
        x0 = random_rows(backend, 1, op.size, generator=gen, dtype=products.work, device=op.device)
        out = _power(
            products, backend, x0[0], V, max_iter, tol, callback, "deflated_power_iteration"
        )
        found.append(out)
        if out.stopped:
            break
    values = torch.tensor([o.value for o in found], dtype=torch.float64)
    order = which_order(values, "LM")
    converged = len(found) == num_eigs and all(o.converged for o in found)
    stopped = found[-1].stopped
    note = None
    if stopped:
        note = f"stopped by the callback after {len(found)} of {num_eigs} eigenpairs"
    elif not converged:
        note = f"{sum(o.converged for o in found)} of {num_eigs} pairs reached tol"
        warnings.warn(
            f"deflated_power_iteration: {note} within max_iter={max_iter}",
            ConvergenceWarning,
            stacklevel=2,
        )
    return EigenResult(
        eigenvalues=values[order],
        eigenvectors=torch.stack([found[i].vector for i in order.tolist()]).to(op.dtype),
        residuals=torch.tensor([found[i].residual for i in order.tolist()], dtype=torch.float64),
        iterations=sum(o.iterations for o in found),
        converged=converged,
        num_matvecs=products.count,
        note=note,
    )


def _check(max_iter: Any, tol: Any, callback: Any) -> tuple[int, float, Callback | None]:
    return (
        check_int(max_iter, "max_iter", minimum=1),
        check_tol(tol),
        check_callback(callback),
    )


def _power(
    products: Products,
    backend: LinAlgBackend,
    x0: torch.Tensor,
    V: torch.Tensor | None,
    max_iter: int,
    tol: float,
    callback: Callback | None,
    name: str,
) -> _Outcome:
    """Power iteration on ``P A P`` (P projects out the rows of ``V``) from ``x0``."""
    x = project_out(backend, V, x0)
    nrm = scalar(backend.norm(x))
    if nrm == 0.0:
        raise InvalidArgumentError("v0 must be non-zero (and not inside the deflated space)")
    x = x / nrm
    value, residual = 0.0, math.inf
    for it in range(1, max_iter + 1):
        y = project_out(backend, V, products.rows(x.reshape(1, -1))[0])
        value = scalar(backend.dot(x, y))
        residual = scalar(backend.norm(y - value * x))
        done = residual <= tol * abs(value)
        info = IterationInfo(
            algorithm=name,
            iteration=it,
            num_matvecs=products.count,
            estimates=torch.tensor([value], dtype=torch.float64),
            residuals=torch.tensor([residual], dtype=torch.float64),
            num_converged=int(done),
        )
        if notify(callback, info):
            return _Outcome(value, x, residual, it, done, True)
        ynorm = scalar(backend.norm(y))
        if done or ynorm == 0.0:
            return _Outcome(value, x, residual, it, True, False)
        x = y / ynorm
    return _Outcome(value, x, residual, max_iter, False, False)


def _warn(name: str, out: _Outcome, max_iter: int) -> None:
    warnings.warn(
        f"{name}: residual {out.residual:.2e} above tol·|θ| after max_iter={max_iter}; raise "
        "max_iter or tol (power iteration converges at rate |λ₂/λ₁|)",
        ConvergenceWarning,
        stacklevel=3,
    )
