# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Distributed Computing with DDP > Usage Patterns > Using with Different HVP Methods
# Using finite difference method (more memory-efficient)
hessian_op_fd = DDPHessianOperator(
    model=ddp_model,
    dataloader=dataloader,
    loss_fn=loss_fn,
    method="finite_difference",
    fd_eps=1e-5,
)
