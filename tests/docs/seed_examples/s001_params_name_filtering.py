# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Parameter Utilities > Parameter Filtering Patterns > Name-Based Filtering with `match_names`
from hessian_eigenthings.operators import HessianOperator
from hessian_eigenthings.param_utils import match_names
# Filter attention parameters only
attn_filter = match_names("blocks.*.attn.*")
attn_op = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=attn_filter
)
# Filter MLP parameters only
mlp_filter = match_names("blocks.*.mlp.*")
mlp_op = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=mlp_filter
)
