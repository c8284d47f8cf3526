# Seed: 001_6a7c25e97bbd622d.txt (reference manual)
# Section: Distributed Computing with DDP > API Reference > Import Location ("Or via the distributed submodule")
from hessian_eigenthings.operators.distributed import DDPHessianOperator
