# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Loss Functions > Usage Examples > Standard Classification
from hessian_eigenthings.operators import HessianOperator
from hessian_eigenthings.loss_fns.standard import cross_entropy_loss_of_output
operator = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]),
)
