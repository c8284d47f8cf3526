# Seed: 001_6a7c25e97bbd622d.txt (reference manual); corrected variant, see WRONG_IN_REFERENCE
# Section: System Architecture > Loss Function Integration > HuggingFace Integration
hf_lm_shifted_ce(fused="auto") # Auto-selects Triton or torch.compile
