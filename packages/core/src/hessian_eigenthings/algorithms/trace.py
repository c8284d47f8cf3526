"""Stochastic trace estimation: Hutchinson, Hutch++ and XTrace.

Math.
* Hutchinson: ``tr A = E[ωᵀ A ω]`` for probes with ``E[ω ωᵀ] = I``; m probes give variance
  ``2‖A‖_F²/m`` for Gaussian probes and ``2 Σ_{i≠j} A_ij²/m`` for Rademacher ones (never
  more), so the error falls like ``1/√m``.
* Hutch++ (Meyer, Musco, Musco & Woodruff 2021): spend m/3 products on a sketch ``Q`` of the
  range of A and m/3 on ``tr(Q A Qᵀ)`` (exact), and Hutchinson with the remaining m/3 on the
  deflated ``(I − QᵀQ) A (I − QᵀQ)``. The dominant eigenvalues leave the variance, so for
  decaying spectra the error falls like ``1/m``.
* XTrace (Epperly, Tropp & Webber 2024): with s = m/2 probes, average over i the estimate
  that uses the sketch of all probes but ω_i for the exact part and ω_i for the Hutchinson
  part — every probe serves both roles. Unbiased, usually several times more accurate than
  Hutch++ at equal cost, and its spread gives an error estimate.

Every estimate is unbiased; ``stderr`` is the standard error of the mean of the per-probe
estimates (``TraceResult.samples``, whose mean is ``estimate``). For Hutch++ it is the
error of the Hutchinson part given the sketch. Products are taken in blocks through
``matmat``; memory ``O(n · block)`` for Hutchinson and ``O(n · m)`` for Hutch++/XTrace.

Adaptive mode: pass ``tol`` (relative) and/or ``atol`` (absolute); probes are drawn until
``stderr ≤ max(atol, tol·|estimate|)`` or the budget (``num_samples`` / ``num_matvecs``) is
spent. The standard error is trusted only from 8 probes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from hessian_eigenthings.algorithms._common import (
    Callback,
    IterationInfo,
    Products,
    check_callback,
    check_distribution,
    check_int,
    check_tol,
    notify,
    random_rows,
    resolve_operator,
)
from hessian_eigenthings.algorithms._sketch import leave_one_out_vectors, row_dots, sketch_of
from hessian_eigenthings.algorithms.result import TraceResult
from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend, make_generator
from hessian_eigenthings.operators.base import CurvatureOperator

__all__ = ["hutch_plus_plus", "hutchinson", "trace", "xtrace"]

TraceMethod = Literal["hutch++", "hutchinson", "xtrace"]
Distribution = Literal["rademacher", "gaussian"]
#: Probes multiplied per ``matmat`` call.
PROBE_BLOCK = 16
#: Probes needed before an adaptive run trusts its standard error.
MIN_ADAPTIVE_PROBES = 8


@dataclass
class _Setup:
    op: CurvatureOperator
    backend: LinAlgBackend
    products: Products
    gen: torch.Generator
    distribution: Distribution
    target: Callable[[float], float] | None
    callback: Callback | None
    name: str

    def draw(self, b: int) -> torch.Tensor:
        return random_rows(
            self.backend,
            b,
            self.op.size,
            generator=self.gen,
            dtype=self.products.work,
            device=self.op.device,
            distribution=self.distribution,
        )


def _setup(
    operator: Any,
    name: str,
    seed: Any,
    backend: LinAlgBackend | None,
    distribution: Any,
    tol: float | None,
    atol: float | None,
    callback: Any,
) -> _Setup:
    op, backend = resolve_operator(operator, backend)
    distribution = check_distribution(distribution)
    rtol = None if tol is None else check_tol(tol)
    abs_tol = None if atol is None else check_tol(atol, "atol")
    target: Callable[[float], float] | None = None
    if rtol is not None or abs_tol is not None:

        def target(estimate: float) -> float:
            return max(abs_tol or 0.0, (rtol or 0.0) * abs(estimate))

    return _Setup(
        op=op,
        backend=backend,
        products=Products(op, name),
        gen=make_generator(seed),
        distribution=distribution,
        target=target,
        callback=check_callback(callback),
        name=name,
    )


def _stats(samples: torch.Tensor) -> tuple[float, float]:
    m = samples.numel()
    mean = float(samples.mean())
    stderr = float(samples.std() / math.sqrt(m)) if m > 1 else math.inf
    return mean, stderr


def _probe(st: _Setup, budget: int) -> torch.Tensor:
    """Hutchinson probes in blocks until the budget or the adaptive target; returns the
    per-probe values ``ωᵀ A ω``."""
    values: list[torch.Tensor] = []
    used = 0
    while used < budget:
        b = min(PROBE_BLOCK, budget - used)
        G = st.draw(b)
        values.append(row_dots(st.backend, G, st.products.rows(G)))
        used += b
        samples = torch.cat(values)
        if _report(st, samples.numel(), samples) or _reached(st, samples):
            break
    return torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)


def _report(st: _Setup, iteration: int, samples: torch.Tensor) -> bool:
    """Tell the callback the running estimate; true when it asks to stop."""
    estimate, stderr = _stats(samples)
    info = IterationInfo(
        algorithm=st.name,
        iteration=iteration,
        num_matvecs=st.products.count,
        estimates=torch.tensor([estimate], dtype=torch.float64),
        stderr=stderr,
    )
    return notify(st.callback, info)


def _reached(st: _Setup, samples: torch.Tensor) -> bool:
    """Whether an adaptive run may stop (enough probes and a small enough stderr)."""
    if st.target is None or samples.numel() < MIN_ADAPTIVE_PROBES:
        return False
    estimate, stderr = _stats(samples)
    return stderr <= st.target(estimate)


def _result(st: _Setup, samples: torch.Tensor, method: str) -> TraceResult:
    estimate, stderr = _stats(samples)
    return TraceResult(
        estimate=estimate,
        stderr=stderr,
        num_matvecs=st.products.count,
        operator_size=st.backend.total_size(st.op.size),
        method=method,
        samples=samples,
    )


def hutchinson(
    operator: Any,
    *,
    num_samples: int = 100,
    distribution: Distribution = "rademacher",
    seed: int | torch.Generator | None = None,
    backend: LinAlgBackend | None = None,
    tol: float | None = None,
    atol: float | None = None,
    callback: Callback | None = None,
) -> TraceResult:
    """Hutchinson's estimate ``(1/m) Σ ωᵢᵀ A ωᵢ`` from ``num_samples`` probes.

    Unbiased since ``E[ωωᵀ] = I``; the variance of one sample is ``2 Σ_{i≠j} A_ij²`` for
    Rademacher probes (default) and ``2‖A‖_F²`` for Gaussian ones, so the error falls like
    ``1/√m``. Cost: ``num_samples`` products in blocks of 16 (``matmat``); memory ``O(16·n)``.
    ``tol`` / ``atol`` switch on adaptive mode (module doc) with ``num_samples`` as the budget.
    The callback receives the running estimate and stderr after each block of 16 probes.

    Example:
        For a diagonal matrix every Rademacher sample ``Σ dᵢ ωᵢ²`` is the exact trace; Gaussian
        probes are not exact:

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, hutchinson
        >>> d = torch.arange(1.0, 11.0, dtype=torch.float64)
        >>> op = LambdaOperator(10, lambda v: d * v, dtype=torch.float64)  # trace 55
        >>> exact = hutchinson(op, num_samples=8, seed=0)
        >>> exact.estimate, exact.stderr
        (55.0, 0.0)
        >>> noisy = hutchinson(op, num_samples=8, distribution="gaussian", seed=0)
        >>> noisy.stderr > 0, abs(noisy.estimate - 55.0) < 3 * noisy.stderr
        (True, True)
    """
    check_int(num_samples, "num_samples", minimum=1)
    st = _setup(operator, "hutchinson", seed, backend, distribution, tol, atol, callback)
    return _result(st, _probe(st, num_samples), "hutchinson")


def hutch_plus_plus(
    operator: Any,
    *,
    num_matvecs: int = 30,
    seed: int | torch.Generator | None = None,
    backend: LinAlgBackend | None = None,
    distribution: Distribution = "rademacher",
    tol: float | None = None,
    atol: float | None = None,
    callback: Callback | None = None,
) -> TraceResult:
    """Hutch++ with a budget of ``num_matvecs`` (≥ 3) products.

    ``tr A = tr(Q A Qᵀ) + tr((I − QᵀQ) A (I − QᵀQ))``: the first term exactly from a sketch Q
    of A's range, the second by Hutchinson; the top eigenvalues leave the variance, so for
    decaying spectra the error falls like ``1/m`` instead of ``1/√m``. Memory ``O(n·m)``.

    One-shot: ``⌊m/3⌋`` probes sketch the range, up to as many products give the exact part
    ``tr(Q A Qᵀ)``, and the rest (at least a third) are Hutchinson probes of the deflated
    operator. Adaptive (``tol``/``atol``): start with 8 sketch and 8 Hutchinson probes and
    double both while the error is too large and the budget allows. Earlier products are
    all reused — the deflated quadratic form ``gᵀ(I−Π)A(I−Π)g`` follows from the stored
    ``A g`` and ``Z = A Qᵀ`` — only the exact part is re-multiplied for each new basis.

    Example:
        A rank-2 matrix (eigenvalues 10 and 5, random eigenvectors in R⁵⁰): the sketch holds
        its whole range, so the estimate is exact and the Hutchinson part is zero.

        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> U, _ = torch.linalg.qr(torch.randn(50, 2, dtype=torch.float64, generator=g))
        >>> A = U @ torch.diag(torch.tensor([10.0, 5.0], dtype=torch.float64)) @ U.T  # rank 2
        >>> from hessian_eigenthings import hutch_plus_plus
        >>> result = hutch_plus_plus(A, num_matvecs=12, seed=0)
        >>> round(result.estimate, 6), result.stderr < 1e-12
        (15.0, True)
        >>> result.num_matvecs  # 4 sketch + 2 exact-part (rank 2) + 4 Hutchinson probes
        10
    """
    check_int(num_matvecs, "num_matvecs", minimum=3, hint=" (Hutch++ splits it in three)")
    st = _setup(operator, "hutch++", seed, backend, distribution, tol, atol, callback)
    s = num_matvecs // 3
    if st.target is not None:
        s = min(s, MIN_ADAPTIVE_PROBES)
    g = num_matvecs - 2 * s if st.target is None else s
    S = Y = G = AG = st.draw(0)
    rounds = 0
    while True:
        new_s, new_g = st.draw(s - S.shape[0]), st.draw(g - G.shape[0])
        S, G = torch.cat([S, new_s]), torch.cat([G, new_g])
        Y = torch.cat([Y, st.products.rows(new_s)]) if new_s.shape[0] else Y
        AG = torch.cat([AG, st.products.rows(new_g)]) if new_g.shape[0] else AG
        samples = _hutchpp_estimates(st, Y, G, AG)
        rounds += 1
        if _report(st, rounds, samples) or st.target is None or _reached(st, samples):
            break
        grow = min(2 * s, (num_matvecs - st.products.count + 2 * s) // 3)
        if grow <= s:
            break
        g += grow - s
        s = grow
    return _result(st, samples, "hutch++")


def _hutchpp_estimates(
    st: _Setup, Y: torch.Tensor, G: torch.Tensor, AG: torch.Tensor
) -> torch.Tensor:
    """``tr(Q A Qᵀ) + gᵀ(I − Π) A (I − Π) g`` for each probe g, with Π = QᵀQ the projector on
    the sketch ``Y``'s range: ``gᵀAg − 2 (Q A g)·(Q g) + (Q g)ᵀ H (Q g)``, ``H = Q A Qᵀ``."""
    sk = sketch_of(st.backend, Y)
    gag = row_dots(st.backend, G, AG)
    if sk.Q.shape[0] == 0:
        return gag
    Z = st.products.rows(sk.Q)
    Hm = _cpu(st.backend.inner(sk.Q, Z.T))
    Hm = (Hm + Hm.T) / 2
    QG = _cpu(st.backend.inner(sk.Q, G.T))
    QAG = _cpu(st.backend.inner(sk.Q, AG.T))
    return Hm.trace() + gag - 2 * (QG * QAG).sum(0) + (QG * (Hm @ QG)).sum(0)


def xtrace(
    operator: Any,
    *,
    num_matvecs: int = 30,
    seed: int | torch.Generator | None = None,
    backend: LinAlgBackend | None = None,
    distribution: Distribution = "rademacher",
    tol: float | None = None,
    atol: float | None = None,
    callback: Callback | None = None,
) -> TraceResult:
    """XTrace with a budget of ``num_matvecs`` (≥ 2) products: ``⌊m/2⌋`` probes.

    Each probe ωᵢ gives ``tr(Q₍ᵢ₎ A Q₍ᵢ₎ᵀ) + uᵢᵀ A uᵢ`` with ``Q₍ᵢ₎`` the sketch of the other
    probes and ``uᵢ = (I − Q₍ᵢ₎ᵀQ₍ᵢ₎) ωᵢ``; their mean is unbiased, and every probe serves both
    as sketch and as Hutchinson probe. Cost: s products for the probes plus one per sketch
    direction; memory ``O(n·m)``.
    ``samples`` holds the ``s`` exchangeable estimates and ``stderr`` their standard error.
    Adaptive mode (``tol``/``atol``) starts from 8 probes and doubles them while the error is
    too large and the budget allows; each round re-multiplies the new basis (the probes'
    products are kept), so it costs up to ~1.5× the products of a one-shot run of the final
    size.

    Example:
        On a rank-2 matrix, 5 probes leave 4 for each leave-one-out sketch, which spans the
        range, so every sample is the exact trace 15:

        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> U, _ = torch.linalg.qr(torch.randn(50, 2, dtype=torch.float64, generator=g))
        >>> A = U @ torch.diag(torch.tensor([10.0, 5.0], dtype=torch.float64)) @ U.T  # rank 2
        >>> from hessian_eigenthings import xtrace
        >>> result = xtrace(A, num_matvecs=10, seed=0)
        >>> round(result.estimate, 6), result.samples.shape
        (15.0, torch.Size([5]))
        >>> result.num_matvecs  # 5 probes + 2 products with the rank-2 basis
        7
    """
    check_int(num_matvecs, "num_matvecs", minimum=2, hint=" (XTrace uses pairs of products)")
    st = _setup(operator, "xtrace", seed, backend, distribution, tol, atol, callback)
    s = num_matvecs // 2 if st.target is None else min(num_matvecs // 2, MIN_ADAPTIVE_PROBES)
    Omega = st.draw(0)
    Y = Omega
    rounds = 0
    while True:
        new = st.draw(s - Omega.shape[0])
        Omega = torch.cat([Omega, new])
        Y = torch.cat([Y, st.products.rows(new)]) if new.shape[0] else Y
        samples = _xtrace_estimates(st, Omega, Y)
        rounds += 1
        if _report(st, rounds, samples) or st.target is None or _reached(st, samples):
            break
        grow = min(2 * s, (num_matvecs - st.products.count + s) // 2)
        if grow <= s:
            break
        s = grow
    return _result(st, samples, "xtrace")


def _xtrace_estimates(st: _Setup, Omega: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """The s exchangeable estimates ``tr(Q_(i) A Q_(i)ᵀ) + uᵢᵀ A uᵢ``,
    ``uᵢ = (I − Q_(i)ᵀQ_(i)) ωᵢ``, from the products ``Y = A Ω`` and ``Z = A Q``."""
    sk = sketch_of(st.backend, Y)
    d = row_dots(st.backend, Omega, Y)
    if sk.Q.shape[0] == 0:
        return d
    Z = st.products.rows(sk.Q)
    Hm = _cpu(st.backend.inner(sk.Q, Z.T))
    Hm = (Hm + Hm.T) / 2
    W = _cpu(st.backend.inner(sk.Q, Omega.T))  # (r, s): Q ω_i
    S = leave_one_out_vectors(sk.R)
    s_dot_w = (S * W).sum(0)
    PW = W - S * s_dot_w  # (I − s_i s_iᵀ) Q ω_i
    exact = Hm.trace() - (S * (Hm @ S)).sum(0)
    cross = (sk.R * PW).sum(0)  # ω_iᵀ A Qᵀ P w_i, using Q A ω_i = r_i
    quad = (PW * (Hm @ PW)).sum(0)
    return exact + d - 2 * cross + quad


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def trace(
    operator: Any,
    num_matvecs: int = 30,
    *,
    method: TraceMethod = "hutch++",
    seed: int | torch.Generator | None = None,
    tol: float | None = None,
    atol: float | None = None,
    distribution: Distribution = "rademacher",
    backend: LinAlgBackend | None = None,
    callback: Callback | None = None,
) -> TraceResult:
    """Estimate ``tr A`` with at most ``num_matvecs`` products.

    ``method``: ``"hutch++"`` (default; the reference's choice, robust for any spectrum),
    ``"xtrace"`` (usually the most accurate per product) or ``"hutchinson"`` (no memory
    beyond one block, best when the spectrum is flat). The default budget is 30 (the
    reference's signature; its manual also shows 100). ``tol`` (relative) / ``atol``
    (absolute) turn on adaptive mode: stop once ``stderr ≤ max(atol, tol·|estimate|)``,
    with ``num_matvecs`` as the budget. Every method is unbiased; the math and the memory of
    each are in :func:`hutchinson`, :func:`hutch_plus_plus` and :func:`xtrace`.

    Example:
        The trace of a rank-2 matrix with eigenvalues 10 and 5 is 15; the sketching methods
        find it exactly, plain Hutchinson only within its error bars:

        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> U, _ = torch.linalg.qr(torch.randn(50, 2, dtype=torch.float64, generator=g))
        >>> A = U @ torch.diag(torch.tensor([10.0, 5.0], dtype=torch.float64)) @ U.T  # rank 2
        >>> from hessian_eigenthings import trace
        >>> round(trace(A, num_matvecs=12, seed=0).estimate, 6)
        15.0
        >>> round(trace(A, num_matvecs=12, method="xtrace", seed=0).estimate, 6)
        15.0
        >>> rough = trace(A, num_matvecs=12, method="hutchinson", seed=0)
        >>> rough.num_matvecs, abs(rough.estimate - 15.0) < 3 * rough.stderr
        (12, True)
    """
    check_int(num_matvecs, "num_matvecs", minimum=1)
    common: dict[str, Any] = {
        "seed": seed,
        "backend": backend,
        "distribution": distribution,
        "tol": tol,
        "atol": atol,
        "callback": callback,
    }
    if method == "hutchinson":
        return hutchinson(operator, num_samples=num_matvecs, **common)
    if method == "hutch++":
        return hutch_plus_plus(operator, num_matvecs=num_matvecs, **common)
    if method == "xtrace":
        return xtrace(operator, num_matvecs=num_matvecs, **common)
    raise InvalidArgumentError(
        f"method must be 'hutch++', 'hutchinson' or 'xtrace', got {method!r}"
    )
