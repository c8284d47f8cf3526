# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Introduction > Usage Examples > Trace Estimation
from hessian_eigenthings import HessianOperator, trace
op = HessianOperator(model=model, dataloader=dataloader, loss_fn=loss_fn)
result = trace(op, num_matvecs=30, method="hutch++", seed=0)
print(f"Trace estimate: {result.estimate:.4e}")
