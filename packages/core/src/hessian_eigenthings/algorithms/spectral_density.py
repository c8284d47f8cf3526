"""Spectral density by stochastic Lanczos quadrature (SLQ).

Math (Lin, Saad & Yang 2016; Ghorbani, Krishnan & Xiao 2019). The spectral measure
``μ = (1/n) Σᵢ δ(λ − λᵢ)`` satisfies ``∫ f dμ = (1/n) tr f(A) = E[vᵀ f(A) v]`` for unit
``v = ω/√n`` with Rademacher ω. m Lanczos steps from v give ``T_m = S diag(θ) Sᵀ`` and the
Gauss quadrature ``vᵀ f(A) v ≈ Σⱼ τⱼ f(θⱼ)`` with nodes θⱼ and weights ``τⱼ = S[0, j]²``
(exact for polynomials of degree < 2m; the weights sum to 1). Averaging over runs and
replacing each δ by a Gaussian of width σ gives the smooth density

    ρ(t) = (1/R) Σ_r Σ_j τ_rj · exp(−(t − θ_rj)² / 2σ²) / (σ√(2π)),

which integrates to 1 over the real line. Cost ``num_runs × lanczos_steps`` products; memory
``O(n · lanczos_steps)`` with reorthogonalisation, ``O(n)`` without (quadrature tolerates the
loss of orthogonality: ghost nodes split the weight of their eigenvalue).
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
    random_rows,
    resolve_operator,
)
from hessian_eigenthings.algorithms._krylov import BlockLanczos
from hessian_eigenthings.algorithms.result import SpectralDensityResult
from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend, make_generator

__all__ = ["spectral_density"]

#: Grid points of the default grid (more when σ is small compared with the spectrum).
DEFAULT_POINTS = 1024
#: The default grid extends this many σ beyond the extreme nodes (Gaussian tail < 1e-8).
PAD_SIGMAS = 6.0
#: Largest default grid.
MAX_POINTS = 1 << 20


def spectral_density(
    operator: Any,
    num_runs: int = 16,
    lanczos_steps: int = 50,
    *,
    seed: int | torch.Generator | None = None,
    grid: torch.Tensor | None = None,
    num_points: int | None = None,
    sigma: float | None = None,
    kernel: Literal["gaussian"] = "gaussian",
    reorthogonalize: bool = True,
    backend: LinAlgBackend | None = None,
    callback: Callback | None = None,
) -> SpectralDensityResult:
    """Estimate the eigenvalue density of a symmetric operator by SLQ.

    Each run does Lanczos from a random Rademacher unit vector v and turns ``T = S diag(θ) Sᵀ``
    into the Gauss quadrature ``vᵀ f(A) v ≈ Σⱼ S[0, j]² f(θⱼ)``; the density is the average over
    runs with every node smeared by a Gaussian of width σ (module docstring). Cost: at most
    ``num_runs · lanczos_steps`` products; memory ``O(n · lanczos_steps)`` with
    reorthogonalisation, ``O(n)`` without, plus ``O(num_points)`` for the grid.

    Args:
        operator: a :class:`CurvatureOperator`, a square tensor or a SciPy ``LinearOperator``.
        num_runs: independent Rademacher start vectors (the variance falls like 1/num_runs).
        lanczos_steps: Lanczos steps per run (fewer if the Krylov space becomes invariant,
            in which case the quadrature is exact). Resolution of the bulk ≈ spread/steps.
        seed: int (reproducible bit for bit), CPU generator or ``None``.
        grid: 1-D tensor of points to evaluate the density at. Default: ``num_points`` even
            points from ``min θ − 6σ`` to ``max θ + 6σ``, on which the trapezoidal integral
            of the density is 1 to about 1e-8.
        num_points: points of the default grid; default ``max(1024, 2·span/σ)`` (capped at
            2²⁰) so the grid step stays below σ/2.
        sigma: Gaussian width. Default ``(max θ − min θ) / (2 · lanczos_steps)`` — half the
            spacing Lanczos resolves — or, for a spectrum of one point, ``1e-3·|θ|``
            (1 if that is 0).
        kernel: only ``"gaussian"``.
        reorthogonalize: full reorthogonalisation of each run (default) or the bare
            three-term recurrence with ``O(n)`` memory.
        backend: vector arithmetic (default: the operator's or single-device).
        callback: called after each run with the run's nodes as ``estimates``; ``True``
            stops and the density uses the runs done.

    Returns:
        :class:`SpectralDensityResult` with float64 CPU ``grid`` and ``density``, per-run
        ``nodes`` and ``weights``, and the ``sigma`` used.

    Example:
        diag(1, …, 10) has ten eigenvalues of mass 1/10 each, so half the mass lies below 5.5:

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, spectral_density
        >>> d = torch.arange(1.0, 11.0, dtype=torch.float64)
        >>> op = LambdaOperator(10, lambda v: d * v, dtype=torch.float64)
        >>> grid = torch.linspace(-2.0, 13.0, 3001, dtype=torch.float64)
        >>> result = spectral_density(op, num_runs=4, lanczos_steps=10, sigma=0.2, grid=grid,
        ...                           seed=0)
        >>> round(float(torch.trapezoid(result.density, grid)), 4)
        1.0
        >>> below = grid <= 5.5
        >>> round(float(torch.trapezoid(result.density[below], grid[below])), 4)
        0.5
        >>> [round(x, 4) for x in result.nodes[0].tolist()]  # exact: 10 steps span R¹⁰
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    """
    op, backend = resolve_operator(operator, backend)
    check_int(num_runs, "num_runs", minimum=1)
    check_int(lanczos_steps, "lanczos_steps", minimum=1)
    callback = check_callback(callback)
    if kernel != "gaussian":
        raise InvalidArgumentError(f"kernel must be 'gaussian', got {kernel!r}")
    if sigma is not None:
        sigma = check_tol(sigma, "sigma")
    if num_points is not None:
        check_int(num_points, "num_points", minimum=2)
    if grid is not None and (not isinstance(grid, torch.Tensor) or grid.ndim != 1):
        raise InvalidArgumentError("grid must be a 1-D tensor of evaluation points")
    gen = make_generator(seed)
    products = Products(op, "spectral_density")
    nodes: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []
    for run in range(num_runs):
        engine = BlockLanczos(
            products,
            backend,
            capacity=min(backend.total_size(op.size), lanczos_steps + 1),
            block_size=1,
            reorthogonalize=reorthogonalize,
            generator=gen,
            refill=False,
            keep_basis=False,
        )
        v = random_rows(
            backend,
            1,
            op.size,
            generator=gen,
            dtype=products.work,
            device=op.device,
            distribution="rademacher",
        )
        engine.begin(v)
        while not engine.exhausted and engine.steps < lanczos_steps:
            engine.step()
        m = engine.start
        theta, S = torch.linalg.eigh(engine.H[:m, :m])
        nodes.append(theta)
        weights.append(S[0] ** 2)
        info = IterationInfo(
            algorithm="spectral_density",
            iteration=run + 1,
            num_matvecs=products.count,
            estimates=theta.clone(),
        )
        if notify(callback, info):
            break
    return _density(nodes, weights, lanczos_steps, grid, num_points, sigma)


def _density(
    nodes: list[torch.Tensor],
    weights: list[torch.Tensor],
    steps: int,
    grid: torch.Tensor | None,
    num_points: int | None,
    sigma: float | None,
) -> SpectralDensityResult:
    all_nodes = torch.cat(nodes)
    all_weights = torch.cat(weights) / len(nodes)
    lo, hi = float(all_nodes.min()), float(all_nodes.max())
    span = hi - lo
    if sigma is None:
        scale = max(abs(lo), abs(hi))
        sigma = span / (2 * steps) if span > 0 else (1e-3 * scale if scale > 0 else 1.0)
    if grid is None:
        points = num_points or min(MAX_POINTS, max(DEFAULT_POINTS, math.ceil(2 * span / sigma)))
        grid = torch.linspace(
            lo - PAD_SIGMAS * sigma, hi + PAD_SIGMAS * sigma, points, dtype=torch.float64
        )
    else:
        grid = grid.detach().to("cpu", torch.float64)
    # Sum the Gaussians in chunks of the grid so memory stays O(chunk · nodes).
    density = torch.empty_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    chunk = max(1, (1 << 22) // max(all_nodes.numel(), 1))
    for c0 in range(0, grid.numel(), chunk):
        g = grid[c0 : c0 + chunk, None]
        z = (g - all_nodes[None, :]) / sigma
        density[c0 : c0 + chunk] = (torch.exp(-0.5 * z * z) * all_weights).sum(1) * norm
    return SpectralDensityResult(
        grid=grid, density=density, nodes=nodes, weights=weights, sigma=float(sigma)
    )
