"""Operators with a known spectrum for testing the algorithms against exact answers.

* :func:`dense_known` builds ``A = U diag(λ) Uᵀ`` with a Haar-random orthogonal U (QR of a
  Gaussian matrix with the sign fix), as an explicit float64 matrix and an operator.
* :func:`householder_known` builds the same kind of operator for large n without an n×n
  matrix: ``U = H₁ H₂ ⋯ H_r`` is a product of a few random Householder reflections
  ``Hⱼ = I − 2 uⱼ uⱼᵀ``, so a product costs ``O(r n)`` and eigenvector i is ``U e_i``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hessian_eigenthings import LambdaOperator


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    """A Haar-distributed n×n orthogonal matrix (float64)."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, n, generator=g, dtype=torch.float64)
    Q, R = torch.linalg.qr(Z)
    return Q * torch.sign(torch.diagonal(R))


@dataclass
class Known:
    """An operator, its eigenvalues (as given) and a way to get its eigenvectors."""

    operator: LambdaOperator
    eigenvalues: torch.Tensor  # (n,) float64, in the order they were given
    eigenvector: Callable[[int], torch.Tensor]  # i -> unit (n,) float64 eigenvector of λ_i
    dense: torch.Tensor | None = None  # the explicit matrix when n is small

    def sorted(self, which: str, k: int) -> torch.Tensor:
        """The k true eigenvalues selected and ordered as ``which`` does."""
        lam = self.eigenvalues
        if which == "SA":
            return torch.sort(lam).values[:k]
        by_value = torch.sort(lam, descending=True).values
        if which == "LA":
            return by_value[:k]
        order = torch.sort(by_value.abs(), descending=True, stable=True).indices
        return by_value[order][:k]

    def residual(self, value: float, vector: torch.Tensor) -> float:
        """``‖A x − θ x‖`` in float64, for a unit x."""
        x = vector.to(torch.float64)
        Ax = self.operator.matvec(x.to(self.operator.dtype)).to(torch.float64)
        return float((Ax - value * x).norm())


def dense_known(
    eigenvalues: torch.Tensor | list[float], seed: int = 0, dtype: torch.dtype = torch.float64
) -> Known:
    """``U diag(λ) Uᵀ`` with Haar-random U; the operator works in ``dtype``."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    U = random_orthogonal(lam.numel(), seed)
    A = (U * lam) @ U.T
    A = (A + A.T) / 2
    Ad = A.to(dtype)
    op = LambdaOperator(lam.numel(), matvec=lambda v: Ad @ v, matmat=lambda V: Ad @ V, dtype=dtype)
    return Known(op, lam, lambda i: U[:, i].clone(), dense=A)


def householder_known(eigenvalues: torch.Tensor, num_reflections: int = 3, seed: int = 0) -> Known:
    """``U diag(λ) Uᵀ`` with U a product of random Householder reflections (large n)."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    n = lam.numel()
    g = torch.Generator().manual_seed(seed)
    us = torch.randn(num_reflections, n, generator=g, dtype=torch.float64)
    us = us / us.norm(dim=1, keepdim=True)

    def reflect(X: torch.Tensor, order: range) -> torch.Tensor:
        for j in order:
            u = us[j]
            X = X - 2.0 * torch.outer(u, u @ X) if X.ndim == 2 else X - 2.0 * (u @ X) * u
        return X

    def apply_u(X: torch.Tensor) -> torch.Tensor:  # U X = H₁(H₂(⋯ H_r X))
        return reflect(X, range(num_reflections - 1, -1, -1))

    def apply_ut(X: torch.Tensor) -> torch.Tensor:  # Uᵀ X = H_r(⋯ H₁ X)
        return reflect(X, range(num_reflections))

    def mv(v: torch.Tensor) -> torch.Tensor:
        return apply_u(lam * apply_ut(v))

    def mm(V: torch.Tensor) -> torch.Tensor:
        return apply_u(lam[:, None] * apply_ut(V))

    def eigenvector(i: int) -> torch.Tensor:
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = 1.0
        return apply_u(e)

    op = LambdaOperator(n, matvec=mv, matmat=mm, dtype=torch.float64)
    return Known(op, lam, eigenvector)


def sin_angle_to_eigenspace(known: Known, value: float, x: torch.Tensor, atol: float) -> float:
    """sin of the angle between x and the eigenspace of the true eigenvalue(s) within ``atol``
    of ``value`` (the whole eigenspace for a repeated eigenvalue)."""
    idx = torch.nonzero((known.eigenvalues - value).abs() <= atol).flatten().tolist()
    assert idx, f"no true eigenvalue within {atol} of {value}"
    basis = torch.stack([known.eigenvector(i) for i in idx])
    x = x.to(torch.float64)
    x = x / x.norm()
    return float((x - basis.T @ (basis @ x)).norm())


def gap(known: Known, value: float, atol: float) -> float:
    """Distance from ``value`` to the true eigenvalues not within ``atol`` of it."""
    d = (known.eigenvalues - value).abs()
    rest = d[d > atol]
    return float(rest.min()) if rest.numel() else float("inf")
