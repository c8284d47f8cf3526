# Seed: 000_55e7f7ae4c69fa03.txt (Custom loss functions)
# Section: GGNOperator: split into forward_fn + loss_of_output_fn (the two closures)
from hessian_eigenthings.operators import GGNOperator
def forward_fn(model, batch):
    inputs, _ = batch
    return model(inputs)
def loss_of_output_fn(output, batch):
    _, targets = batch
    return torch.nn.functional.cross_entropy(output, targets)
op = GGNOperator(
    model=model,
    dataloader=loader,
    forward_fn=forward_fn,
    loss_of_output_fn=loss_of_output_fn,
)
