# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Introduction > Performance Considerations > Memory Management (Microbatching)
op = HessianOperator(model, dataloader, loss_fn, microbatch_size=8)
