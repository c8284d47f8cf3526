"""Algorithms that turn matrix-vector products into eigenpairs, traces and densities."""

from __future__ import annotations

from hessian_eigenthings.algorithms._common import Callback, IterationInfo, Which
from hessian_eigenthings.algorithms.diagonal import diagonal
from hessian_eigenthings.algorithms.lanczos import lanczos, lanczos_tridiagonal
from hessian_eigenthings.algorithms.power_iteration import (
    deflated_power_iteration,
    power_iteration_one,
)
from hessian_eigenthings.algorithms.result import (
    EigenResult,
    LanczosTridiag,
    SolveResult,
    SpectralDensityResult,
    TraceResult,
)
from hessian_eigenthings.algorithms.solve import solve
from hessian_eigenthings.algorithms.spectral_density import spectral_density
from hessian_eigenthings.algorithms.stochastic_power_iteration import stochastic_power_iteration
from hessian_eigenthings.algorithms.trace import hutch_plus_plus, hutchinson, trace, xtrace

__all__ = [
    "Callback",
    "EigenResult",
    "IterationInfo",
    "LanczosTridiag",
    "SolveResult",
    "SpectralDensityResult",
    "TraceResult",
    "Which",
    "deflated_power_iteration",
    "diagonal",
    "hutch_plus_plus",
    "hutchinson",
    "lanczos",
    "lanczos_tridiagonal",
    "power_iteration_one",
    "solve",
    "spectral_density",
    "stochastic_power_iteration",
    "trace",
    "xtrace",
]
