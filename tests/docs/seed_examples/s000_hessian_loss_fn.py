# Seed: 000_55e7f7ae4c69fa03.txt (Custom loss functions)
# Section: HessianOperator: loss_fn(model, batch) -> Tensor (the custom closure)
from hessian_eigenthings.operators import HessianOperator
def loss_fn(model, batch):
    inputs, targets = batch
    logits = model(inputs)
    return torch.nn.functional.cross_entropy(logits, targets)
op = HessianOperator(model=model, dataloader=loader, loss_fn=loss_fn)
