# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Introduction > Performance Considerations > Memory Management (Parameter Filtering)
op = HessianOperator(model, dataloader, loss_fn, param_filter=filter_func)
