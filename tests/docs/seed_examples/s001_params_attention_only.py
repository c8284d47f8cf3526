# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Parameter Utilities > Practical Examples > Computing Attention-Only Hessian Eigendecomposition
from hessian_eigenthings.algorithms import lanczos
from hessian_eigenthings.operators import HessianOperator
from hessian_eigenthings.param_utils import match_names
# Create attention-only operator
attn_op = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=match_names("blocks.*.attn.*")
)
print(f"Attention-only Hessian size: {attn_op.size} parameters")
# Compute top-3 eigenvalues
eig_attn = lanczos(attn_op, k=3, max_iter=20, tol=1e-3, seed=0)
for i, val in enumerate(eig_attn.eigenvalues):
    print(f" λ_{i + 1} = {val.item(): .4e}")
