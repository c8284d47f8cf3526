# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Distributed Computing with DDP > Usage Patterns > With Parameter Filtering
from hessian_eigenthings.param_utils import match_names
# Focus on specific layer parameters
hessian_op = DDPHessianOperator(
    model=ddp_model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=match_names("layer.4.*"),
)
