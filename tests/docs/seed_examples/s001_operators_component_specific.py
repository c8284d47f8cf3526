# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Curvature Operators > Common Usage Patterns > Component-Specific Analysis
from hessian_eigenthings import HessianOperator, match_regex
# Analyze only attention weights in transformer
attn_only = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=match_regex(r"blocks\.\d+\.attn\.")
)
# Analyze only MLP weights
mlp_only = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=match_regex(r"blocks\.\d+\.mlp\.")
)
