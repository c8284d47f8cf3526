# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Loss Functions > Usage Examples > HuggingFace Large Model (Memory-Optimized)
from hessian_eigenthings.operators import GGNOperator
from hessian_eigenthings.loss_fns.huggingface import hf_lm_shifted_ce
loss_fn = hf_lm_shifted_ce(fused="auto") # Auto-selects best backend
operator = GGNOperator(
    model=model,
    dataloader=dataloader,
    forward_fn=lambda m, b: m(**b).logits,
    loss_of_output_fn=loss_fn,
    loss_hvp="analytical", # Default, uses .hvp attribute
)
