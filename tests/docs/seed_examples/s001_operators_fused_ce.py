# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Curvature Operators > GGNOperator > Fused Cross-Entropy HVP
# Auto-selects fastest backend: Triton > torch.compile > eager
hf_lm_loss_of_output(..., fused="auto")
