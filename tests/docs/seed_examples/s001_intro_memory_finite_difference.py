# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Introduction > Performance Considerations > Memory Management (Finite Difference Method)
op = HessianOperator(model, dataloader, loss_fn, method="finite_difference")
