"""What every algorithm shares: input normalisation, argument checks, precision rules, the
progress callback and a product counter.

Precision rule. Operator-sized vectors are kept in the *work dtype*: the operator's dtype, or
float32 when the operator is bf16/fp16 (half-precision vectors lose orthogonality after a few
steps). Products are taken in the operator's dtype and cast back. Every small dense problem
(tridiagonal or projected matrices, Gram matrices, sample statistics) is solved in float64 on
the CPU, whatever the operator's dtype or device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch

from hessian_eigenthings.errors import InvalidArgumentError, NonFiniteError
from hessian_eigenthings.linalg import LinAlgBackend, SingleDeviceBackend
from hessian_eigenthings.operators.adapters import as_operator
from hessian_eigenthings.operators.base import CurvatureOperator

__all__ = ["Callback", "IterationInfo", "Which"]

Which: TypeAlias = Literal["LM", "LA", "SA"]
"""Which end of the spectrum an eigensolver returns, and in what order.

``"LM"``: largest magnitude |λ| first (of ±λ, the positive one first); ``"LA"``: largest
algebraic λ first; ``"SA"``: smallest algebraic λ first. ``"LM"`` also catches large negative
curvature, ``"SA"`` asks for it directly.

Example:
    >>> import torch
    >>> from hessian_eigenthings import LambdaOperator, lanczos
    >>> d = torch.tensor([-5.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    >>> op = LambdaOperator(4, lambda v: d * v, dtype=torch.float64)  # diag(-5, 1, 2, 4)
    >>> for which in ("LM", "LA", "SA"):
    ...     vals = lanczos(op, k=2, which=which, seed=0).eigenvalues
    ...     print(which, [round(x, 6) for x in vals.tolist()])
    LM [-5.0, 4.0]
    LA [4.0, 2.0]
    SA [-5.0, 1.0]
"""
_WHICH = ("LM", "LA", "SA")
_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class IterationInfo:
    """What an iterative algorithm reports to its ``callback`` after each iteration.

    ``estimates`` are the current answers (Ritz values, the eigenvalue, the running trace
    estimate, ...) as a float64 CPU tensor; ``residuals`` their residual norms where the
    algorithm has them. ``basis_size`` is the number of operator-sized vectors the algorithm
    holds (Lanczos) and ``stderr`` the running standard error (stochastic estimators).
    ``num_matvecs`` counts the operator products spent so far. Building one costs nothing
    beyond copying the small ``estimates``/``residuals`` tensors.

    Example:
        Power iteration on diag(5, 2, 1) reports its Rayleigh quotient after every product:

        >>> import torch
        >>> from hessian_eigenthings import power_iteration_one
        >>> A = torch.diag(torch.tensor([5.0, 2.0, 1.0], dtype=torch.float64))
        >>> infos = []
        >>> value, vector = power_iteration_one(A, seed=0, callback=infos.append)
        >>> first, last = infos[0], infos[-1]
        >>> first.algorithm, first.iteration, first.num_matvecs
        ('power_iteration', 1, 1)
        >>> last.num_converged, round(float(last.estimates[0]), 4)
        (1, 5.0)
        >>> bool(last.residuals[0] <= 1e-6 * 5.0)  # the stopping rule ‖Ax − θx‖ ≤ tol·|θ|
        True
    """

    algorithm: str
    iteration: int
    num_matvecs: int
    estimates: torch.Tensor
    residuals: torch.Tensor | None = None
    num_converged: int = 0
    basis_size: int | None = None
    stderr: float | None = None


Callback: TypeAlias = Callable[[IterationInfo], "bool | None"]
"""A progress hook ``callback(info) -> bool | None`` that every algorithm accepts.

It is called with an :class:`IterationInfo` after each iteration (Lanczos: after each
convergence check; stochastic estimators: after each block of probes). Returning ``True`` stops
the algorithm, which returns what it has so far (marked unconverged, with a ``note``); any
other return value lets it go on. The hook costs no products.

Example:
    >>> import torch
    >>> from hessian_eigenthings import LambdaOperator, lanczos
    >>> d = torch.arange(1.0, 11.0, dtype=torch.float64)
    >>> op = LambdaOperator(10, lambda v: d * v, dtype=torch.float64)  # diag(1, ..., 10)
    >>> seen = []
    >>> def stop_after_three(info):
    ...     seen.append(info.num_matvecs)
    ...     return info.iteration >= 3
    >>> result = lanczos(op, k=1, seed=0, callback=stop_after_three)
    >>> seen, result.converged, result.num_matvecs
    ([1, 2, 3], False, 3)
    >>> result.note
    'stopped by the callback after 3 iterations'
"""


def resolve_operator(
    operator: Any, backend: LinAlgBackend | None
) -> tuple[CurvatureOperator, LinAlgBackend]:
    """The operator as a :class:`CurvatureOperator` and the backend to use with it.

    The backend is ``backend`` if given, else the operator's own ``backend`` attribute (model
    operators carry one, distributed ones a collective backend), else a single-device one.
    """
    op = as_operator(operator)
    if not op.dtype.is_floating_point:
        raise InvalidArgumentError(
            f"operator must work in a real floating dtype, got {op.dtype}; complex and integer "
            "operators are not supported"
        )
    if backend is None:
        own = getattr(op, "backend", None)
        backend = own if isinstance(own, LinAlgBackend) else SingleDeviceBackend()
    elif not isinstance(backend, LinAlgBackend):
        raise InvalidArgumentError(
            f"backend must implement LinAlgBackend (e.g. SingleDeviceBackend()), got "
            f"{type(backend).__name__}"
        )
    return op, backend


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision operators, the operator's dtype otherwise."""
    return torch.float32 if dtype in _HALF else dtype


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype``."""
    return float(torch.finfo(dtype).eps)


def check_int(value: Any, name: str, *, minimum: int, hint: str = "") -> int:
    """``value`` as an int ≥ ``minimum``, or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be at least {minimum}, got {value}{hint}")
    return value


def check_k(k: Any, n: int, name: str = "k") -> int:
    """The number of wanted pairs: an int in [1, n]."""
    check_int(k, name, minimum=1)
    if k > n:
        raise InvalidArgumentError(
            f"{name}={k} exceeds the operator size n={n}; an n×n operator has at most n "
            f"eigenpairs, so pass {name} <= {n}"
        )
    return int(k)


def check_tol(value: Any, name: str = "tol", *, allow_zero: bool = False) -> float:
    """A finite positive (or, with ``allow_zero``, non-negative) float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name} must be a float, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out) or out < 0 or (out == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise InvalidArgumentError(f"{name} must be a finite {bound} float, got {out}")
    return out


def check_which(which: Any) -> Which:
    if which not in _WHICH:
        raise InvalidArgumentError(
            f"which must be 'LM' (largest magnitude), 'LA' (largest algebraic) or 'SA' "
            f"(smallest algebraic), got {which!r}"
        )
    out: Which = which
    return out


def check_callback(callback: Any) -> Callback | None:
    if callback is not None and not callable(callback):
        raise InvalidArgumentError(
            f"callback must be callable (taking an IterationInfo) or None, got "
            f"{type(callback).__name__}"
        )
    out: Callback | None = callback
    return out


def check_distribution(distribution: Any) -> Literal["rademacher", "gaussian"]:
    if distribution not in ("rademacher", "gaussian"):
        raise InvalidArgumentError(
            f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}"
        )
    out: Literal["rademacher", "gaussian"] = distribution
    return out


def notify(callback: Callback | None, info: IterationInfo) -> bool:
    """Call ``callback`` (if any); true when it asked to stop."""
    return callback is not None and callback(info) is True


def which_order(theta: torch.Tensor, which: Which, tie_tol: float = 0.0) -> torch.Tensor:
    """Indices sorting ``theta`` best-first for ``which``.

    LM: decreasing |θ|, and magnitudes within ``tie_tol`` of each other (e.g. ±λ, computed to
    rounding) count as a tie, broken by the larger algebraic value first; LA: decreasing θ;
    SA: increasing θ. The sort is stable, so equal values keep their order.
    """
    if which == "SA":
        return torch.sort(theta, stable=True).indices
    by_value = torch.sort(theta, descending=True, stable=True).indices
    if which == "LA":
        return by_value
    mags, perm = torch.sort(theta[by_value].abs(), descending=True, stable=True)
    by_mag = by_value[perm]
    if tie_tol <= 0.0 or not bool((mags[:-1] - mags[1:] <= tie_tol).any()):
        return by_mag  # no near-ties: exact ties are already ordered by value
    values = theta.tolist()
    order = by_mag.tolist()
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or abs(values[order[start]]) - abs(values[order[i]]) > tie_tol:
            order[start:i] = sorted(order[start:i], key=lambda j: -values[j])
            start = i
    return torch.tensor(order, dtype=torch.long)


def scalar(x: torch.Tensor) -> float:
    """A 0-d (or one-element) tensor as a Python float."""
    return float(x.detach().reshape(()).item())


class Products:
    """Applies an operator to row-stacked work-dtype vectors and counts the products.

    ``rows(X)`` takes a (b, n) block and returns ``(A Xᵀ)ᵀ`` as a (b, n) tensor of its own in
    the work dtype: one ``matvec`` for b = 1, one ``matmat`` otherwise. A non-finite product raises
    :class:`NonFiniteError` naming the algorithm and the product's index.
    """

    def __init__(self, op: CurvatureOperator, algorithm: str) -> None:
        self.op = op
        self.algorithm = algorithm
        self.work = work_dtype(op.dtype)
        self.count = 0

    def rows(self, X: torch.Tensor, *, private: bool = True, check: bool = True) -> torch.Tensor:
        """``(A Xᵀ)ᵀ``; with ``private=False`` the result may share memory with the
        operator's own output (for callers that neither modify nor keep it). ``check=False``
        skips the finiteness test for callers that take a norm of the result anyway and call
        :meth:`non_finite` when it is not finite (saving one pass over the product)."""
        b = X.shape[0]
        xin = X.to(self.op.dtype)
        if b == 1:
            y = self.op.matvec(xin[0].contiguous()).reshape(1, -1)
        else:
            y = self.op.matmat(xin.T.contiguous()).T
        self.count += b
        out = y.to(self.work).contiguous()
        if private and out.data_ptr() in (y.data_ptr(), xin.data_ptr()):
            out = out.clone()  # never modify the operator's own buffers (or the input)
        # One reduction: the sum is finite unless an entry is NaN/inf (or the sum overflows,
        # which the exact test below then rules out).
        if check and not math.isfinite(float(out.sum())) and not bool(torch.isfinite(out).all()):
            raise self.non_finite()
        return out

    def non_finite(self) -> NonFiniteError:
        """The error for a product (the latest one) that contains NaN or inf."""
        return NonFiniteError(
            f"{self.algorithm}: operator product number {self.count} contains NaN or inf. "
            "The operator (or the model, data or loss behind it) produced a non-finite "
            "value for a finite input vector; check the loss and the data"
        )


def project_out(backend: LinAlgBackend, V: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``x − Vᵀ(V x)``: remove the components along the orthonormal rows of ``V`` (if any)."""
    return x if V is None else x - backend.inner(V, x).to(x.dtype) @ V


def random_rows(
    backend: LinAlgBackend,
    b: int,
    n: int,
    *,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    distribution: Literal["rademacher", "gaussian"] = "gaussian",
) -> torch.Tensor:
    """A (b, n) block of random rows drawn through the backend (CPU-drawn, reproducible)."""
    out: torch.Tensor = backend.random(
        (b, n), generator=generator, dtype=dtype, device=device, distribution=distribution
    )
    return out


def orthonormal_rows(
    backend: LinAlgBackend,
    W: torch.Tensor,
    *,
    against: torch.Tensor | None = None,
    drop_tol: float,
    room: int | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Orthonormalise the rows of ``W`` (and against the orthonormal rows of ``against``).

    Classical Gram–Schmidt with reorthogonalisation ("twice is enough"), row by row, with
    every reduction through the backend. Returns ``(Q, R, kept)``: ``Q`` is (r, n) with
    orthonormal rows (and orthogonal to ``against``), ``R`` is the (r, b) float64 CPU matrix of
    coefficients with ``W_i ≈ Σ_t R[t, i] Q_t`` for the part of ``W`` outside ``against``, and
    ``kept`` lists the rows of ``W`` that produced a new direction. A row whose remaining norm
    is at most ``drop_tol`` (absolute) is numerically dependent and produces none. At most
    ``room`` rows are produced; ``out`` (at least that many rows) receives them, saving a
    copy, and ``Q`` is then a view of it.
    """
    b, n = W.shape
    limit = b if room is None else min(b, room)
    Q = W.new_empty(limit, n) if out is None else out[:limit]
    if b == 1 and limit == 1 and (against is None or against.shape[0] == 0):
        nrm = scalar(backend.norm(W[0]))  # one vector, nothing to project against
        if nrm > drop_tol:
            torch.div(W, nrm, out=Q)
            return Q, torch.tensor([[nrm]], dtype=torch.float64), [0]
        return Q[:0], torch.zeros(0, 1, dtype=torch.float64), []
    R = torch.zeros(b, b, dtype=torch.float64)
    kept: list[int] = []
    r = 0
    for i in range(b):
        w = W[i]
        for _ in range(2):
            if against is not None and against.shape[0] > 0:
                w = w - backend.inner(against, w) @ against
            if r > 0:
                c = backend.inner(Q[:r], w)
                R[:r, i] += c.detach().to("cpu", torch.float64)
                w = w - c.to(w.dtype) @ Q[:r]
        nrm = scalar(backend.norm(w))
        if nrm > drop_tol and r < limit:
            R[r, i] = nrm
            Q[r] = w / nrm
            kept.append(i)
            r += 1
    return Q[:r], R[:r], kept
