# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Distributed Computing with DDP > Usage Patterns > Basic Usage with DDP-wrapped Model
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from hessian_eigenthings.operators import DDPHessianOperator
from hessian_eigenthings.algorithms import lanczos
# Assume model, dataloader, and loss_fn are already set up
ddp_model = DDP(model)
# Create the distributed Hessian operator
hessian_op = DDPHessianOperator(
    model=ddp_model,
    dataloader=dataloader,
    loss_fn=loss_fn,
)
# Compute eigenvalues using Lanczos algorithm
eigenvalues, eigenvectors = lanczos(hessian_op, k=10, max_iter=50)
