# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Parameter Utilities > Parameter Filtering Patterns > HuggingFace-Specific Patterns
# Attention parameters in GPT-2
attn_op = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=hf_lm_loss(),
    param_filter=match_names("transformer.h.*.attn.*"),
)
