# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Curvature Matrices Explained > Parameter Filtering
# Analyze only attention weights
attn_op = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=match_names("blocks.*.attn.*"),
)
