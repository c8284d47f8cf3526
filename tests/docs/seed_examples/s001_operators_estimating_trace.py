# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Curvature Operators > Common Usage Patterns > Estimating Trace
from hessian_eigenthings import GGNOperator, trace
operator = GGNOperator(
    model=model,
    dataloader=dataloader,
    forward_fn=model_forward,
    loss_of_output_fn=loss_fn
)
result = trace(operator, num_matvecs=100, method="hutch++")
print(f"Trace estimate: {result.estimate:.4e} ± {result.stderr:.4e}")
