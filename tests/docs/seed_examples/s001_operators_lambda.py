# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Curvature Operators > LambdaOperator
from hessian_eigenthings import LambdaOperator
# Custom operator that always returns a scaled vector
custom_op = LambdaOperator(
    size=1000,
    matvec=lambda v: 2.0 * v # Represents 2*I
)
