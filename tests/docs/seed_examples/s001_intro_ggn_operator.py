# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Introduction > Operators > GGNOperator
from hessian_eigenthings import GGNOperator
op = GGNOperator(
    model=model,
    dataloader=dataloader,
    forward_fn=model_forward,
    loss_of_output_fn=loss_of_output_fn,
)
