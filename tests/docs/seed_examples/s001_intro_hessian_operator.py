# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Introduction > Operators > HessianOperator
from hessian_eigenthings import HessianOperator, lanczos
# Basic usage
op = HessianOperator(model=model, dataloader=dataloader, loss_fn=loss_fn)
eigenvalues, eigenvectors = lanczos(op, k=10)
# With parameter filtering (subset of parameters)
op = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=match_names("transformer.h.*.attn.*"),
)
