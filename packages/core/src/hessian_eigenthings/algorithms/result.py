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
    unit-norm rows; ``residuals[i] = ‖A xᵢ − λᵢ xᵢ‖``, which bounds the eigenvalue error
    ``|λ − λᵢ| ≤ residuals[i]`` for symmetric A. ``converged`` is true when every residual met
    the tolerance; ``iterations`` and ``num_matvecs`` (operator products) give the cost. Memory:
    the k eigenvectors, ``O(k·n)``. Unpacks as ``eigenvalues, eigenvectors = result``.

    Example:
        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, lanczos
        >>> d = torch.arange(1.0, 11.0, dtype=torch.float64)
        >>> op = LambdaOperator(10, lambda v: d * v, dtype=torch.float64)  # diag(1, ..., 10)
        >>> result = lanczos(op, k=3, seed=0)
        >>> [round(x, 6) for x in result.eigenvalues.tolist()]
        [10.0, 9.0, 8.0]
        >>> result.eigenvectors.shape, result.converged
        (torch.Size([3, 10]), True)
        >>> vals, vecs = result  # unpacks like a (values, vectors) pair
        >>> int(vecs[0].abs().argmax())  # the top eigenvector of a diagonal matrix is e₁₀
        9
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
    """One Lanczos run: T = tridiag(betas, alphas, betas) and the basis that produced it.

    With the basis rows ``Q = [q₁; …; q_m]`` (orthonormal), ``T = Q A Qᵀ``: ``alphas[i] =
    ⟨qᵢ, A qᵢ⟩`` on the diagonal, ``betas[i] = ‖r_i‖`` below and above it. ``last_beta`` is the
    residual norm that would start the next vector (0 when the Krylov space is invariant, and
    then T's eigenvalues are eigenvalues of A). ``iterations = m`` products were spent; the
    basis holds ``m`` operator-sized vectors (memory ``O(n·m)``).

    Example:
        Four steps on diag(-5, 1, 2, 4) exhaust the space, so T has A's eigenvalues:

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, lanczos_tridiagonal
        >>> d = torch.tensor([-5.0, 1.0, 2.0, 4.0], dtype=torch.float64)
        >>> op = LambdaOperator(4, lambda v: d * v, dtype=torch.float64)
        >>> run = lanczos_tridiagonal(op, torch.ones(4, dtype=torch.float64), max_iter=4)
        >>> run.iterations, len(run.basis), run.last_beta
        (4, 4, 0.0)
        >>> T = torch.diag(run.alphas) + torch.diag(run.betas, 1) + torch.diag(run.betas, -1)
        >>> [round(x, 6) for x in torch.linalg.eigvalsh(T).tolist()]
        [-5.0, 1.0, 2.0, 4.0]
        >>> round(float(run.alphas[0]), 4)  # ⟨q₁, A q₁⟩ with q₁ = (1, 1, 1, 1)/2: mean of d
        0.5
    """

    alphas: torch.Tensor  # (m,)
    betas: torch.Tensor  # (m-1,)
    basis: list[torch.Tensor]  # m vectors of shape (n,)
    last_beta: float  # ‖r_m‖, the residual norm at termination
    iterations: int  # m


@dataclass(frozen=True)
class TraceResult:
    """A stochastic trace estimate and its standard error.

    ``estimate`` is the mean of the per-probe (or per-block) unbiased estimates in ``samples``
    and ``stderr`` their standard error of the mean (``inf`` for a single sample), so
    ``estimate ± 2·stderr`` is a rough 95% interval for ``tr A``. ``num_matvecs`` counts the
    operator products spent, ``operator_size`` is n and ``method`` names the estimator.

    Example:
        Rademacher probes ω (ωᵢ = ±1) give ``ωᵀ D ω = Σ dᵢ`` for any diagonal D, so every
        Hutchinson sample is exact:

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, hutchinson
        >>> d = torch.arange(1.0, 11.0, dtype=torch.float64)
        >>> op = LambdaOperator(10, lambda v: d * v, dtype=torch.float64)  # trace 55
        >>> result = hutchinson(op, num_samples=8, seed=0)
        >>> result.estimate, result.stderr, result.num_matvecs, result.operator_size
        (55.0, 0.0, 8, 10)
        >>> result.method, result.samples.shape
        ('hutchinson', torch.Size([8]))
    """

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

    ``density`` on ``grid`` integrates to 1: ``ρ(t) = (1/R) Σ_r Σ_j τ_rj · N(t; θ_rj, σ²)``.
    ``nodes[r]`` and ``weights[r]`` are run r's Gauss quadrature nodes θ_rj (Ritz values) and
    weights τ_rj (summing to 1); ``sigma`` is the Gaussian width σ used. ``eigenvalues`` is an
    alias of ``nodes``; ``plot()`` draws the density with matplotlib.

    Example:
        Four Lanczos steps on diag(-5, 1, 2, 4) make the quadrature exact: the nodes are the
        eigenvalues and each weight is 1/4:

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, spectral_density
        >>> d = torch.tensor([-5.0, 1.0, 2.0, 4.0], dtype=torch.float64)
        >>> op = LambdaOperator(4, lambda v: d * v, dtype=torch.float64)
        >>> result = spectral_density(op, num_runs=2, lanczos_steps=4, seed=0)
        >>> [round(x, 6) for x in result.nodes[0].tolist()]
        [-5.0, 1.0, 2.0, 4.0]
        >>> [round(x, 6) for x in result.weights[0].tolist()]
        [0.25, 0.25, 0.25, 0.25]
        >>> result.sigma  # default: span / (2 · lanczos_steps) = 9 / 8
        1.125
        >>> round(float(torch.trapezoid(result.density, result.grid)), 6)
        1.0
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

    Example:
        >>> import torch
        >>> from hessian_eigenthings import solve
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
        >>> result = solve(A, torch.ones(3, dtype=torch.float64))
        >>> [round(x, 6) for x in result.solution.tolist()]  # x = b / diag(A)
        [1.0, 0.5, 0.25]
        >>> result.converged, result.iterations, result.residual_norm < 1e-8
        (True, 3, True)
        >>> result.num_matvecs  # three CG steps plus the final true-residual check
        4
    """

    solution: torch.Tensor
    residual_norm: float
    iterations: int
    converged: bool
    num_matvecs: int = 0
    #: Why the solver stopped early (breakdown on a non-positive-definite matrix, a callback).
    note: str | None = None
