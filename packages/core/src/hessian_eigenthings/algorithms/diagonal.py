"""Stochastic estimation of the diagonal of an operator.

Math.
* Hutchinson / Bekas et al. (2007): ``diag A ≈ (Σ ωᵢ ⊙ A ωᵢ) ⊘ (Σ ωᵢ ⊙ ωᵢ)``. With Rademacher
  probes the denominator is m and the estimator is unbiased, entry j having variance
  ``Σ_{k≠j} A_jk² / m``. Gaussian probes use Bekas' normalisation (consistent, not unbiased).
* XDiag (Epperly, Tropp & Webber 2024): with s = m/2 Rademacher probes, average over i of
  ``diag(Q_(i)ᵀ Q_(i) A) + ωᵢ ⊙ (I − Q_(i)ᵀQ_(i)) A ωᵢ``, where ``Q_(i)`` sketches the range
  of A from every probe but ω_i. The low-rank part is exact, so the error comes from the
  part of A outside the sketch: much smaller than Hutchinson's for decaying spectra.
  Averaging in closed form gives ``diag(Qᵀ (I − S Sᵀ/s) Z) + (1/s) Σᵢ cᵢ ωᵢ ⊙ Qᵀ sᵢ`` with
  ``Z = A Qᵀ`` rows, ``cᵢ = sᵢᵀ rᵢ`` (see ``_sketch``).

Cost ``num_matvecs`` products; memory ``O(n · 16)`` for Hutchinson and ``O(n · m)`` for XDiag.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from hessian_eigenthings.algorithms._common import (
    Callback,
    IterationInfo,
    Products,
    check_callback,
    check_distribution,
    check_int,
    notify,
    random_rows,
    resolve_operator,
)
from hessian_eigenthings.algorithms._sketch import leave_one_out_vectors, sketch
from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend, make_generator

__all__ = ["diagonal"]

#: Probes multiplied per ``matmat`` call by the Hutchinson estimator.
PROBE_BLOCK = 16


def diagonal(
    operator: Any,
    num_matvecs: int = 100,
    *,
    method: Literal["hutchinson", "xdiag"] = "hutchinson",
    seed: int | torch.Generator | None = None,
    distribution: Literal["rademacher", "gaussian"] = "rademacher",
    backend: LinAlgBackend | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Estimate ``diag A`` with ``num_matvecs`` products.

    Hutchinson: ``diag A ≈ (Σ ωᵢ ⊙ A ωᵢ) ⊘ (Σ ωᵢ ⊙ ωᵢ)``, unbiased for Rademacher probes with
    entry-j variance ``Σ_{k≠j} A_jk² / m``; XDiag adds an exact low-rank part from a sketch of
    A's range (module docstring). Cost: ``num_matvecs`` products (XDiag: ``2·⌊m/2⌋`` at most);
    memory ``O(16·n)`` for Hutchinson, ``O(n·m)`` for XDiag.

    Args:
        operator: a :class:`CurvatureOperator`, a square tensor or a SciPy ``LinearOperator``.
        num_matvecs: products to spend (XDiag needs at least 2 and uses an even number).
        method: ``"hutchinson"`` (default: no memory beyond a block, any spectrum) or
            ``"xdiag"`` (far more accurate when a few directions dominate, as for Hessians).
        seed: int (reproducible), CPU generator or ``None``.
        distribution: probe distribution for Hutchinson; XDiag uses Rademacher probes only.
        backend: vector arithmetic (default: the operator's or single-device).
        callback: called after each block of 16 Hutchinson probes (once for XDiag) with the
            running estimate of the trace (the sum of the diagonal) as ``estimates``;
            returning ``True`` stops and returns the estimate from the probes so far.

    Returns:
        The (n,) estimate in the operator's dtype and device.

    Example:
        For a diagonal matrix, Rademacher probes (``ωᵢ² = 1``) recover the diagonal exactly:

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, diagonal
        >>> d = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
        >>> op = LambdaOperator(4, lambda v: d * v, dtype=torch.float64)
        >>> diagonal(op, num_matvecs=4, seed=0).tolist()
        [1.0, 2.0, 3.0, 4.0]

        For a rank-2 matrix, XDiag's sketch captures the whole range and is exact too, while
        Hutchinson with the same budget is not:

        >>> g = torch.Generator().manual_seed(0)
        >>> U, _ = torch.linalg.qr(torch.randn(50, 2, dtype=torch.float64, generator=g))
        >>> A = U @ torch.diag(torch.tensor([10.0, 5.0], dtype=torch.float64)) @ U.T
        >>> torch.allclose(diagonal(A, num_matvecs=10, method="xdiag", seed=0), A.diagonal())
        True
        >>> torch.allclose(diagonal(A, num_matvecs=10, seed=0), A.diagonal())
        False
    """
    op, backend = resolve_operator(operator, backend)
    distribution = check_distribution(distribution)
    callback = check_callback(callback)
    gen = make_generator(seed)

    def report(iteration: int, estimate: torch.Tensor) -> bool:
        info = IterationInfo(
            algorithm=f"diagonal({method})",
            iteration=iteration,
            num_matvecs=products.count,
            estimates=estimate.sum().reshape(1).detach().to("cpu", torch.float64),
        )
        return notify(callback, info)

    products = Products(op, f"diagonal({method})")

    def draw(b: int) -> torch.Tensor:
        return random_rows(
            backend,
            b,
            op.size,
            generator=gen,
            dtype=products.work,
            device=op.device,
            distribution=distribution,
        )

    if method == "hutchinson":
        check_int(num_matvecs, "num_matvecs", minimum=1)
        num = torch.zeros(op.size, dtype=products.work, device=op.device)
        den = torch.zeros_like(num)
        for block, start in enumerate(range(0, num_matvecs, PROBE_BLOCK)):
            G = draw(min(PROBE_BLOCK, num_matvecs - start))
            num += (G * products.rows(G)).sum(0)
            den += (G * G).sum(0)
            if report(block + 1, num / den):
                break
        return (num / den).to(op.dtype)
    if method == "xdiag":
        check_int(num_matvecs, "num_matvecs", minimum=2, hint=" (XDiag uses pairs of products)")
        if distribution != "rademacher":
            raise InvalidArgumentError(
                "method='xdiag' uses Rademacher probes; drop distribution='gaussian'"
            )
        s = num_matvecs // 2
        Omega = draw(s)
        sk = sketch(products, backend, Omega)
        if sk.Q.shape[0] == 0:
            return (Omega * sk.Y).mean(0).to(op.dtype)
        Z = products.rows(sk.Q)
        S = leave_one_out_vectors(sk.R)
        c = (S * sk.R).sum(0)
        M = torch.eye(S.shape[0], dtype=torch.float64) - S @ S.T / s
        low_rank = ((M.T.to(Z) @ sk.Q) * Z).sum(0)
        rest = (Omega * ((S * c).T.to(Z) @ sk.Q)).sum(0) / s
        report(1, low_rank + rest)
        return (low_rank + rest).to(op.dtype)
    raise InvalidArgumentError(f"method must be 'hutchinson' or 'xdiag', got {method!r}")
