"""Curvature operators: matrix-free products with Hessian, GGN and Fisher matrices."""

from __future__ import annotations

from hessian_eigenthings.operators.adapters import as_operator
from hessian_eigenthings.operators.base import DENSE_SIZE_LIMIT, CurvatureOperator
from hessian_eigenthings.operators.distributed import (
    DDPEmpiricalFisherOperator,
    DDPFisherOperator,
    DDPGGNOperator,
    DDPHessianOperator,
    FSDPHessianOperator,
)
from hessian_eigenthings.operators.empirical_fisher import EmpiricalFisherOperator
from hessian_eigenthings.operators.fisher import FisherOperator
from hessian_eigenthings.operators.ggn import GGNOperator
from hessian_eigenthings.operators.ggn_diagonal import ggn_diagonal
from hessian_eigenthings.operators.hessian import HessianOperator
from hessian_eigenthings.operators.kfac import EKFACOperator, KFACInverseOperator, KFACOperator
from hessian_eigenthings.operators.lambda_operator import LambdaOperator
from hessian_eigenthings.operators.model_operator import ModelCurvatureOperator, ProductSink

__all__ = [
    "BUILTIN_OPERATORS",
    "DENSE_SIZE_LIMIT",
    "CurvatureOperator",
    "DDPEmpiricalFisherOperator",
    "DDPFisherOperator",
    "DDPGGNOperator",
    "DDPHessianOperator",
    "EKFACOperator",
    "EmpiricalFisherOperator",
    "FSDPHessianOperator",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "KFACInverseOperator",
    "KFACOperator",
    "LambdaOperator",
    "ModelCurvatureOperator",
    "ProductSink",
    "as_operator",
    "ggn_diagonal",
]

BUILTIN_OPERATORS: dict[str, tuple[type[CurvatureOperator], str]] = {
    "hessian": (HessianOperator, "exact Hessian of the mean loss"),
    "ggn": (GGNOperator, "generalized Gauss-Newton Jᵀ H_ℓ J of the mean loss"),
    "empirical-fisher": (EmpiricalFisherOperator, "mean outer product of per-sample gradients"),
    "fisher": (FisherOperator, "true Fisher of the model's predictive distribution"),
    "kfac": (KFACOperator, "Kronecker-factored (KFAC) GGN/Fisher of Linear and Conv2d layers"),
    "ekfac": (EKFACOperator, "KFAC with eigenvalues re-fitted in its eigenbasis (EKFAC)"),
}
"""Operators the core registers through ``register_operators``: name → (class, description).

These are the names the CLI and ``eigenthings plugins`` know the core's operators by;
plugins add theirs to the same registry.

Example:
    >>> from hessian_eigenthings.operators import BUILTIN_OPERATORS, GGNOperator
    >>> sorted(BUILTIN_OPERATORS)
    ['ekfac', 'empirical-fisher', 'fisher', 'ggn', 'hessian', 'kfac']
    >>> cls, description = BUILTIN_OPERATORS["ggn"]
    >>> cls is GGNOperator, description
    (True, 'generalized Gauss-Newton Jᵀ H_ℓ J of the mean loss')
"""
