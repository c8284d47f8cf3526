"""Curvature operators: matrix-free products with Hessian, GGN and Fisher matrices."""

from __future__ import annotations

from hessian_eigenthings.operators.adapters import as_operator
from hessian_eigenthings.operators.base import DENSE_SIZE_LIMIT, CurvatureOperator
from hessian_eigenthings.operators.hessian import HessianOperator
from hessian_eigenthings.operators.lambda_operator import LambdaOperator
from hessian_eigenthings.operators.model_operator import ModelCurvatureOperator

__all__ = [
    "BUILTIN_OPERATORS",
    "DENSE_SIZE_LIMIT",
    "CurvatureOperator",
    "HessianOperator",
    "LambdaOperator",
    "ModelCurvatureOperator",
    "as_operator",
]

#: Operators the core registers through ``register_operators``: name → (class, description).
BUILTIN_OPERATORS: dict[str, tuple[type[CurvatureOperator], str]] = {
    "hessian": (HessianOperator, "exact Hessian of the mean loss"),
}
