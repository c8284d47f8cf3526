# Seed: 000_55e7f7ae4c69fa03.txt (Custom loss functions)
# Section: HessianOperator: loss_fn(model, batch) -> Tensor ("For common patterns we ship helpers")
from hessian_eigenthings.loss_fns import supervised_loss, hf_lm_loss, tlens_loss
# Equivalent to the loss_fn above
op = HessianOperator(model=model, dataloader=loader,
    loss_fn=supervised_loss(torch.nn.functional.cross_entropy))
