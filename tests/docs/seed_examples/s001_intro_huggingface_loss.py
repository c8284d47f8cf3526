# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Introduction > Loss Functions > HuggingFace Transformers Loss
from hessian_eigenthings.loss_fns.huggingface import hf_lm_loss
loss_fn = hf_lm_loss() # For language modeling
