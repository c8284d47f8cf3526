# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Introduction > Usage Examples > Analyzing Attention Layers Only
from hessian_eigenthings import HessianOperator, lanczos
from hessian_eigenthings.util import match_names
# Filter to attention parameters only
attn_op = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=match_names("blocks.*.attn.*"),
)
eigenvalues = lanczos(attn_op, k=5)
