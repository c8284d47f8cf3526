# Seed: 000_55e7f7ae4c69fa03.txt (Custom loss functions)
# Section: GGNOperator: split into forward_fn + loss_of_output_fn ("Or use the helpers")
from hessian_eigenthings.loss_fns import supervised_forward, supervised_loss_of_output
op = GGNOperator(
    model=model,
    dataloader=loader,
    forward_fn=supervised_forward,
    loss_of_output_fn=supervised_loss_of_output(torch.nn.functional.cross_entropy),
)
