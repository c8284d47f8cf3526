# Seed: 000_55e7f7ae4c69fa03.txt (Custom loss functions)
# Section: HuggingFace and TransformerLens ("For TransformerLens")
from hessian_eigenthings.loss_fns import tlens_loss, tlens_forward, tlens_loss_of_output
HessianOperator(model=tlens_model, dataloader=tokens, loss_fn=tlens_loss())
GGNOperator(model=tlens_model, dataloader=tokens,
    forward_fn=tlens_forward(),
    loss_of_output_fn=tlens_loss_of_output())
