# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: System Architecture > Loss Function Integration > HuggingFace Integration
hf_lm_loss(fused="auto") # Auto-selects Triton or torch.compile
