# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: System Architecture > Usage Patterns > Trace Estimation
from hessian_eigenthings import HessianOperator, trace
trace_result = trace(
    hessian_op,
    num_matvecs=30,
    method="hutch++",
    seed=42
)
print(f"Trace estimate: {trace_result.estimate:.4e}")
