# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Parameter Utilities > Advanced Filtering > Custom Filter Functions
def custom_filter(name: str, param: nn.Parameter) -> bool:
    # Include only parameters with > 1000 elements
    if param.numel() < 1000:
        return False
    # Exclude certain modules
    if "embedding" in name:
        return False
    # Include based on naming patterns
    return "layer" in name or "head" in name
operator = HessianOperator(
    model=model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    param_filter=custom_filter
)
