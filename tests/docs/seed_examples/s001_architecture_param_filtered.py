# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: System Architecture > Usage Patterns > Parameter-Filtered Analysis
from hessian_eigenthings import HessianOperator, lanczos
# Analyze only attention parameters
attn_op = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=match_names("blocks.*.attn.*")
)
eig_attn = lanczos(attn_op, k=3)
