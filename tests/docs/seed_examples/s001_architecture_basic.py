# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: System Architecture > Usage Patterns > Basic Hessian Eigenvalue Computation
from hessian_eigenthings import HessianOperator, lanczos
# Create operator
hessian_op = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
)
# Compute top eigenvalues
eig_result = lanczos(hessian_op, k=10, max_iter=100)
print(eig_result.eigenvalues)
