# Seed: 000_55e7f7ae4c69fa03.txt (Custom loss functions)
# Section: EmpiricalFisherOperator: per_sample_loss_fn(model, sample) -> Tensor
from hessian_eigenthings.operators import EmpiricalFisherOperator
def per_sample_loss(model, sample):
    x, y = sample
    return torch.nn.functional.cross_entropy(
        model(x.unsqueeze(0)), y.unsqueeze(0)
    )
op = EmpiricalFisherOperator(
    model=model,
    dataloader=loader,
    per_sample_loss_fn=per_sample_loss,
    sample_dim=0, # which axis of the batch tensors is the sample axis
)
