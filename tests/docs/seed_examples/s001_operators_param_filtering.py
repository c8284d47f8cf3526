# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Curvature Operators > Base Class: CurvatureOperator > Parameter Filtering
from hessian_eigenthings import HessianOperator, match_names
# Filter to attention parameters only
attn_op = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=match_names("blocks.*.attn.*")
)
