"""Accelerated (momentum) power iteration, deterministic or on mini-batch operators.

Math (Xu, De Sa et al., "Accelerated stochastic power iteration", AISTATS 2018). The
iteration ``x_{t+1} = (A_t x_t − β x_{t−1}) / s_t`` with ``x_{t−1}`` rescaled by the same
``s_t`` applies the Chebyshev-like polynomial ``p_{t+1}(λ) = λ p_t(λ) − β p_{t−1}(λ)`` to the
start vector. With ``β = λ₂²/4`` every eigenvalue with ``|λ| ≤ 2√β`` is damped while ``λ₁``
grows, so the convergence rate improves from ``|λ₂/λ₁|`` to about ``1 − √(1 − |λ₂/λ₁|)``
(the square root of the gap). ``A_t`` may be a different mini-batch operator at every step
(an unbiased estimate of the mean operator); momentum also amplifies the mini-batch noise,
so larger batches pair with larger β. One product per step, memory ``O(n)``.

The momentum never reaches the reported eigenvalue: that is the Rayleigh quotient
``⟨x, Ā x⟩`` of the final unit vector on the evaluation operator (see ``eval_operator``), and
the residual ``‖Ā x − θ x‖`` is reported with it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
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
    project_out,
    random_rows,
    resolve_operator,
    scalar,
    which_order,
    work_dtype,
)
from hessian_eigenthings.algorithms._krylov import BlockLanczos
from hessian_eigenthings.algorithms.result import EigenResult
from hessian_eigenthings.errors import ConvergenceWarning, InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend, make_generator
from hessian_eigenthings.operators.base import CurvatureOperator

__all__ = ["stochastic_power_iteration"]

#: Lanczos steps spent estimating λ₂ for ``momentum="auto"``.
AUTO_MOMENTUM_STEPS = 10


class _Source:
    """Uniform access to one operator, a sequence of them, or a factory ``t -> operator``."""

    def __init__(self, operators: Any, backend: LinAlgBackend | None) -> None:
        self._fixed: list[CurvatureOperator] | None = None
        self._factory: Callable[[int], Any] | None = None
        try:
            op, self.backend = resolve_operator(operators, backend)
            self._fixed = [op]
            self.kind = "operator"
        except InvalidArgumentError:
            if isinstance(operators, Sequence) and not isinstance(operators, (str, bytes)):
                if len(operators) == 0:
                    raise InvalidArgumentError("operators must not be an empty sequence") from None
                ops = [resolve_operator(o, backend)[0] for o in operators]
                self._fixed, self.kind = ops, "sequence"
                _, self.backend = resolve_operator(ops[0], backend)
            elif callable(operators):
                self._factory, self.kind = operators, "factory"
                first, self.backend = resolve_operator(operators(0), backend)
                self._first = first
            else:
                raise InvalidArgumentError(
                    "operators must be an operator (CurvatureOperator, square tensor or SciPy "
                    "LinearOperator), a sequence of them, or a callable t -> operator; got "
                    f"{type(operators).__name__}"
                ) from None
        ref = self._fixed[0] if self._fixed is not None else self._first
        self.size, self.dtype, self.device = ref.size, ref.dtype, ref.device
        for op in self._fixed or []:
            self._check_same(op)

    def _check_same(self, op: CurvatureOperator) -> CurvatureOperator:
        if (op.size, op.dtype, op.device) != (self.size, self.dtype, self.device):
            raise InvalidArgumentError(
                "all mini-batch operators must share size, dtype and device; got "
                f"{(op.size, op.dtype, op.device)} after {(self.size, self.dtype, self.device)}"
            )
        return op

    def draw(self, t: int) -> CurvatureOperator:
        if self._fixed is not None:
            return self._fixed[t % len(self._fixed)]
        assert self._factory is not None
        if t == 0:
            return self._first
        return self._check_same(resolve_operator(self._factory(t), self.backend)[0])

    def eval_ops(self, eval_operator: Any, start: int, count: int) -> list[CurvatureOperator]:
        if eval_operator is not None:
            return [self._check_same(resolve_operator(eval_operator, self.backend)[0])]
        if self._fixed is not None:
            return self._fixed
        return [self.draw(start + i) for i in range(count)]


def stochastic_power_iteration(
    operators: Any,
    num_eigs: int = 1,
    max_iter: int = 100,
    tol: float = 1e-6,
    *,
    momentum: float | Literal["auto"] = "auto",
    seed: int | torch.Generator | None = None,
    backend: LinAlgBackend | None = None,
    callback: Callback | None = None,
    eval_operator: Any = None,
    num_eval_batches: int = 8,
) -> EigenResult:
    """Top ``num_eigs`` (largest-magnitude) eigenpairs by momentum power iteration.

    Runs ``x_{t+1} = (A_t x_t − β x_{t−1}) / s_t`` (module docstring), which improves the rate
    from ``|λ₂/λ₁|`` to about ``1 − √(1 − |λ₂/λ₁|)`` for ``β ≈ λ₂²/4``; ``A_t`` may change every
    step (mini-batch operators). Cost per eigenpair: at most ``max_iter`` products, plus 10
    for ``momentum="auto"`` and one per evaluation operator; memory ``O(n · num_eigs)``.

    Args:
        operators: what to iterate with, one of

            * an operator (``CurvatureOperator``, square tensor, SciPy ``LinearOperator``):
              deterministic accelerated power iteration;
            * a sequence of operators (e.g. one ``HessianOperator`` per mini-batch): step t
              uses ``operators[t % len]``; the mean of all of them is the target;
            * a callable ``t -> operator`` returning the t-th mini-batch operator (fresh
              samples each call); its expectation is the target.
        num_eigs: eigenpairs wanted; each after the first runs on the operator deflated by
            the ones found (``P A P``).
        max_iter: steps (products, one mini-batch each) per eigenpair.
        tol: stop an eigenpair when consecutive iterates differ by an angle with
            ``sin ≤ tol``. With noisy mini-batches this is rarely reached and the run uses
            ``max_iter`` steps (no warning then; a single operator warns).
        momentum: ``β`` of the recurrence, or ``"auto"``: ``β = θ₂²/4`` from
            ``AUTO_MOMENTUM_STEPS`` = 10 Lanczos steps on the first (deflated) operator.
            Ritz values interlace inside the spectrum, so this β underestimates
            ``λ₂²/4`` — the safe side (a β above ``λ₁²/4`` would stall). ``0`` gives plain
            power iteration.
        seed: as in :func:`lanczos`.
        backend: as in :func:`lanczos`.
        callback: as in :func:`lanczos`.
        eval_operator: operator for the reported Rayleigh quotient and residual. Default:
            the operator itself, the mean over the whole sequence, or for a callable the
            mean over ``num_eval_batches`` further draws ``t = max_iter, …``.
        num_eval_batches: see ``eval_operator``.

    Returns:
        :class:`EigenResult` ordered by decreasing magnitude; ``num_matvecs`` includes the
        momentum estimate and the evaluation products.

    Example:
        Alternating between two "mini-batch" operators diag(4, 1, ½) and diag(6, 1, ½): the
        target is their mean diag(5, 1, ½), whose top eigenvalue is 5.

        >>> import torch
        >>> from hessian_eigenthings import stochastic_power_iteration
        >>> batches = [
        ...     torch.diag(torch.tensor([4.0, 1.0, 0.5], dtype=torch.float64)),
        ...     torch.diag(torch.tensor([6.0, 1.0, 0.5], dtype=torch.float64)),
        ... ]
        >>> result = stochastic_power_iteration(batches, max_iter=50, seed=0)
        >>> round(float(result.eigenvalues[0]), 4), result.converged
        (5.0, True)
        >>> round(abs(float(result.eigenvectors[0, 0])), 4)  # the eigenvector ±e₁
        1.0
    """
    src = _Source(operators, backend)
    total = src.backend.total_size(src.size)
    if isinstance(num_eigs, bool) or not isinstance(num_eigs, int) or not 1 <= num_eigs <= total:
        raise InvalidArgumentError(
            f"num_eigs must be an int between 1 and the operator size {total}, got {num_eigs!r}"
        )
    check_int(max_iter, "max_iter", minimum=1)
    tol = check_tol(tol)
    callback = check_callback(callback)
    check_int(num_eval_batches, "num_eval_batches", minimum=1)
    if momentum != "auto":
        momentum = check_tol(momentum, "momentum", allow_zero=True)
    gen = make_generator(seed)
    work = work_dtype(src.dtype)
    count = 0
    vectors: list[torch.Tensor] = []
    info: list[tuple[float, float, bool]] = []
    total_iters, stopped = 0, False
    for _ in range(num_eigs):
        V = torch.stack(vectors) if vectors else None
        beta = momentum
        if beta == "auto":
            beta, used = _auto_momentum(src, V, gen, work)
            count += used
        x0 = random_rows(src.backend, 1, src.size, generator=gen, dtype=work, device=src.device)
        x, iters, conv, used, stopped = _iterate(
            src, V, x0[0], float(beta), max_iter, tol, callback, count
        )
        count += used
        total_iters += iters
        theta, res, used = _evaluate(src, V, x, eval_operator, max_iter, num_eval_batches)
        count += used
        vectors.append(x)
        info.append((theta, res, conv))
        if stopped:
            break
    values = torch.tensor([t for t, _, _ in info], dtype=torch.float64)
    order = which_order(values, "LM").tolist()
    converged = len(info) == num_eigs and all(c for _, _, c in info)
    note = None
    if stopped:
        note = f"stopped by the callback after {len(info)} of {num_eigs} eigenpairs"
    elif not converged and src.kind == "operator":
        note = "not every eigenpair reached tol within max_iter"
        warnings.warn(f"stochastic_power_iteration: {note}", ConvergenceWarning, stacklevel=2)
    return EigenResult(
        eigenvalues=values[order],
        eigenvectors=torch.stack([vectors[i] for i in order]).to(src.dtype),
        residuals=torch.tensor([info[i][1] for i in order], dtype=torch.float64),
        iterations=total_iters,
        converged=converged,
        num_matvecs=count,
        note=note,
    )


def _apply(
    src: _Source, op: CurvatureOperator, V: torch.Tensor | None, x: torch.Tensor
) -> torch.Tensor:
    products = Products(op, "stochastic_power_iteration")
    return project_out(src.backend, V, products.rows(x.reshape(1, -1))[0])


def _auto_momentum(
    src: _Source, V: torch.Tensor | None, gen: torch.Generator, work: torch.dtype
) -> tuple[float, int]:
    """``θ₂²/4`` from a few Lanczos steps on ``P A_0 P``; returns (β, products used)."""
    op = src.draw(0)
    steps = min(AUTO_MOMENTUM_STEPS, src.backend.total_size(src.size))
    deflated = _Deflated(op, V, src.backend)
    products = Products(deflated, "stochastic_power_iteration")
    engine = BlockLanczos(
        products,
        src.backend,
        capacity=steps + 1,
        block_size=1,
        reorthogonalize=True,
        generator=gen,
        refill=False,
    )
    start = random_rows(src.backend, 1, src.size, generator=gen, dtype=work, device=src.device)
    engine.begin(project_out(src.backend, V, start[0]).reshape(1, -1))
    while not engine.exhausted and engine.steps < steps:
        engine.step()
    theta = engine.ritz()[0]
    mags = theta.abs().sort(descending=True).values
    second = float(mags[1]) if mags.numel() > 1 else 0.0
    return second * second / 4.0, products.count


class _Deflated(CurvatureOperator):
    """``P A P`` with ``P = I − Vᵀ V`` (V: orthonormal rows), in the work dtype."""

    def __init__(self, op: CurvatureOperator, V: torch.Tensor | None, backend: LinAlgBackend):
        self.op, self.V, self.backend = op, V, backend
        self._dtype = work_dtype(op.dtype)

    @property
    def size(self) -> int:
        return self.op.size

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self.op.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        x = project_out(self.backend, self.V, v)
        y = self.op.matvec(x.to(self.op.dtype)).to(self._dtype)
        return project_out(self.backend, self.V, y)


def _iterate(
    src: _Source,
    V: torch.Tensor | None,
    x0: torch.Tensor,
    beta: float,
    max_iter: int,
    tol: float,
    callback: Callback | None,
    done_before: int,
) -> tuple[torch.Tensor, int, bool, int, bool]:
    """The momentum recurrence; returns (unit x, steps, converged, products, stopped).
    ``done_before`` products were spent earlier (reported to the callback)."""
    backend = src.backend
    x = project_out(backend, V, x0)
    nrm = scalar(backend.norm(x))
    if nrm == 0.0:
        raise InvalidArgumentError("the start vector vanished after deflation; use another seed")
    x = x / nrm
    prev = torch.zeros_like(x)
    for t in range(max_iter):
        raw = _apply(src, src.draw(t), V, x)
        rayleigh = scalar(backend.dot(x, raw))
        y = raw - beta * prev if beta else raw
        s = scalar(backend.norm(y))
        if s == 0.0:
            return x, t + 1, True, t + 1, False
        new = y / s
        cos = scalar(backend.dot(new, x))
        change = math.sqrt(max(0.0, 1.0 - cos * cos))
        prev, x = x / s, new
        info = IterationInfo(
            algorithm="stochastic_power_iteration",
            iteration=t + 1,
            num_matvecs=done_before + t + 1,
            estimates=torch.tensor([rayleigh], dtype=torch.float64),
            residuals=torch.tensor([change], dtype=torch.float64),
            num_converged=int(change <= tol),
        )
        if notify(callback, info):
            return x, t + 1, change <= tol, t + 1, True
        if change <= tol:
            return x, t + 1, True, t + 1, False
    return x, max_iter, False, max_iter, False


def _evaluate(
    src: _Source,
    V: torch.Tensor | None,
    x: torch.Tensor,
    eval_operator: Any,
    start: int,
    count: int,
) -> tuple[float, float, int]:
    """Rayleigh quotient and residual of unit ``x`` on the mean evaluation operator."""
    ops = src.eval_ops(eval_operator, start, count)
    ybar = torch.zeros_like(x)
    for op in ops:
        ybar = ybar + _apply(src, op, V, x)
    ybar = ybar / len(ops)
    theta = scalar(src.backend.dot(x, ybar))
    res = scalar(src.backend.norm(ybar - theta * x))
    return theta, res, len(ops)
