"""Algorithms that turn matrix-vector products into eigenpairs, traces and densities."""

from __future__ import annotations

from hessian_eigenthings.algorithms.result import (
    EigenResult,
    LanczosTridiag,
    SpectralDensityResult,
    TraceResult,
)

__all__ = ["EigenResult", "LanczosTridiag", "SpectralDensityResult", "TraceResult"]
