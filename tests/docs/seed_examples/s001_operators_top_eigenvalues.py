# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Curvature Operators > Common Usage Patterns > Computing Top Eigenvalues
from hessian_eigenthings import HessianOperator, lanczos
operator = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn
)
result = lanczos(operator, k=10, max_iter=100)
print(f"Top eigenvalues: {result.eigenvalues}")
