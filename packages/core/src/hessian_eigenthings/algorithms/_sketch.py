"""Randomised range sketches and the leave-one-out algebra of XTrace / XDiag.

A sketch of s probes ``Ω`` (rows) is ``Y = A Ω`` with an orthonormal basis ``Q`` (r ≤ s rows)
and coefficients ``R`` (r × s, float64) such that ``y_i = Qᵀ r_i``. Directions of Y below
``√eps · max‖y_i‖`` are dropped (they are rounding noise and would make ``R`` singular).

Exchangeable estimators need, for every probe i, the basis of ``A Ω_{−i}`` (all probes but
the i-th). Its projector is ``Q_(i) Q_(i)ᵀ = Qᵀ (I − s_i s_iᵀ) Q`` where ``s_i`` is the unit
vector of Rʳ orthogonal to every column of R but the i-th, or 0 when removing column i
does not lower the rank (Epperly, Tropp & Webber 2024). With the SVD ``R = U Σ Vᵀ``,
``s_i ∝ U Σ⁻¹ Vᵀ e_i`` when column i's leverage ``‖Vᵀ e_i‖²`` is 1, which for a square
invertible R is the familiar ``R⁻ᵀ e_i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hessian_eigenthings.algorithms._common import Products, eps, orthonormal_rows, scalar
from hessian_eigenthings.linalg import LinAlgBackend

__all__ = ["Sketch", "leave_one_out_vectors", "row_dots", "sketch", "sketch_of"]


@dataclass
class Sketch:
    Y: torch.Tensor  # (s, n) products A ω_i, work dtype
    Q: torch.Tensor  # (r, n) orthonormal rows spanning Y
    R: torch.Tensor  # (r, s) float64 CPU, y_i = Qᵀ R[:, i]


def sketch(products: Products, backend: LinAlgBackend, Omega: torch.Tensor) -> Sketch:
    """Multiply the probe rows ``Omega`` and orthonormalise the products."""
    Y = products.rows(Omega)
    return sketch_of(backend, Y)


def sketch_of(backend: LinAlgBackend, Y: torch.Tensor) -> Sketch:
    """Orthonormal basis and coefficients of already computed products ``Y``."""
    biggest = max((scalar(backend.norm(y)) for y in Y), default=0.0)
    drop = math.sqrt(eps(Y.dtype)) * biggest
    Q, R, _ = orthonormal_rows(backend, Y, drop_tol=drop)
    return Sketch(Y=Y, Q=Q, R=R)


def row_dots(backend: LinAlgBackend, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``⟨x_i, y_i⟩`` for matching rows, as a float64 CPU tensor."""
    dots = [backend.dot(x, y).detach().to("cpu", torch.float64) for x, y in zip(X, Y, strict=True)]
    return torch.stack(dots)


def leave_one_out_vectors(R: torch.Tensor) -> torch.Tensor:
    """The (r, s) matrix whose column i is ``s_i`` (unit, or zero) — see the module doc."""
    r, s = R.shape
    if r == 0:
        return torch.zeros(0, s, dtype=torch.float64)
    U, sig, Vh = torch.linalg.svd(R, full_matrices=False)
    essential = (Vh * Vh).sum(0) > 1.0 - 1e-8
    S = U @ (Vh / sig[:, None])
    S = S / S.norm(dim=0, keepdim=True).clamp_min(1e-300)
    out: torch.Tensor = S * essential.to(S.dtype)
    return out
