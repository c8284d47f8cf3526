# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Curvature Matrices Explained > Module Exports
from hessian_eigenthings.operators import (
    CurvatureOperator,
    HessianOperator,
    GGNOperator,
    EmpiricalFisherOperator,
    DDPHessianOperator, # For DistributedDataParallel
    LambdaOperator, # Custom curvature wrappers
)
from hessian_eigenthings.algorithms import (
    lanczos, # Top-k eigendecomposition
    trace, # Trace estimation
    spectral_density, # Density plot via SLQ
    deflated_power_iteration,
)
