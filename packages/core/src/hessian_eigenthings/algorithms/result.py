"""Result types returned by the algorithms."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "EigenResult",
    "LanczosTridiag",
    "SolveResult",
    "SpectralDensityResult",
    "TraceResult",
]


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs found by an eigensolver.

    ``eigenvalues`` is (k,), ordered by the solver's ``which``; ``eigenvectors`` is (k, n) with
    unit-norm rows; ``residuals[i] = ‖A xᵢ − λᵢ xᵢ‖``. ``converged`` is true when every residual
    met the tolerance. Unpacks as ``eigenvalues, eigenvectors = result``.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    iterations: int
    converged: bool
    num_matvecs: int = 0
    #: Set when the Krylov space became invariant before k pairs were found (e.g. 2·I); then
    #: fewer than k eigenpairs may be returned and this says why.
    note: str | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.eigenvalues, self.eigenvectors))


@dataclass(frozen=True)
class LanczosTridiag:
    """One Lanczos run: T = tridiag(betas, alphas, betas) and the basis that produced it."""

    alphas: torch.Tensor  # (m,)
    betas: torch.Tensor  # (m-1,)
    basis: list[torch.Tensor]  # m vectors of shape (n,)
    last_beta: float  # ‖r_m‖, the residual norm at termination
    iterations: int  # m


@dataclass(frozen=True)
class TraceResult:
    """A stochastic trace estimate and its standard error."""

    estimate: float
    stderr: float
    num_matvecs: int
    operator_size: int
    method: str = "hutch++"
    #: Per-probe (or per-block) contributions, kept for diagnostics.
    samples: torch.Tensor | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SpectralDensityResult:
    """Stochastic Lanczos quadrature estimate of the spectral density.

    ``density`` on ``grid`` integrates to 1. ``nodes[r]`` and ``weights[r]`` are run r's Gauss
    quadrature nodes (Ritz values) and weights.
    """

    grid: torch.Tensor
    density: torch.Tensor
    nodes: list[torch.Tensor]
    weights: list[torch.Tensor]
    sigma: float = 0.0

    @property
    def eigenvalues(self) -> list[torch.Tensor]:
        """Alias of :attr:`nodes` (the reference library's name)."""
        return self.nodes

    def plot(self, ax: Any = None, *, log: bool = True, **kwargs: Any) -> Any:
        """Draw the density on ``ax`` (a new figure when ``None``); matplotlib is imported lazily.

        ``log=True`` uses a logarithmic density axis, which shows outliers over the bulk.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        density = self.density.detach().cpu().double()
        if log:
            density = density.clamp_min(1e-12)
        ax.plot(self.grid.detach().cpu().double().numpy(), density.numpy(), **kwargs)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        return ax


@dataclass(frozen=True)
class SolveResult:
    """The outcome of a linear solve ``(A + damping·I) x = b``.

    ``residual_norm`` is the true residual ‖b − (A + damping·I) x‖ of the returned ``solution``
    (recomputed with one product at the end, not the recursively updated one); ``converged`` is
    true when it met the tolerance. ``num_matvecs`` counts the operator products.
    """

    solution: torch.Tensor
    residual_norm: float
    iterations: int
    converged: bool
    num_matvecs: int = 0
    #: Why the solver stopped early (breakdown on a non-positive-definite matrix, a callback).
    note: str | None = None
