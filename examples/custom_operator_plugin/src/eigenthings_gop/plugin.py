"""Registers the operator with hessian-eigenthings' plugin manager."""

from __future__ import annotations

from eigenthings_gop.operator import GradientOuterProductOperator
from hessian_eigenthings.plugins import Register, hookimpl


@hookimpl
def register_operators(register: Register[object]) -> None:
    register(
        "gradient-outer-product",
        GradientOuterProductOperator,
        description="batch-gradient outer product Σ_b w_b g_b g_bᵀ / Σ_b w_b",
    )
