# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Curvature Operators > Module Exports
from hessian_eigenthings.operators import (
    CurvatureOperator,
    DDPHessianOperator,
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    LambdaOperator,
)
