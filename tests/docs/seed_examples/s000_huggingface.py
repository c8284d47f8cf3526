# Seed: 000_55e7f7ae4c69fa03.txt (Custom loss functions)
# Section: HuggingFace and TransformerLens ("For HuggingFace causal LMs")
from hessian_eigenthings.loss_fns import hf_lm_loss, hf_lm_forward, hf_lm_loss_of_output
# Hessian
HessianOperator(model=hf_model, dataloader=batches, loss_fn=hf_lm_loss())
# GGN
GGNOperator(
    model=hf_model, dataloader=batches,
    forward_fn=hf_lm_forward(),
    loss_of_output_fn=hf_lm_loss_of_output(),
)
