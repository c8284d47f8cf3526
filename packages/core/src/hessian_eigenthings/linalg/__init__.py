"""Linear-algebra backends: the only way algorithms touch operator-sized vectors."""

from hessian_eigenthings.linalg.backend import LinAlgBackend, SingleDeviceBackend
from hessian_eigenthings.linalg.distributed import DistributedBackend
from hessian_eigenthings.linalg.random import Distribution, make_generator, random_vectors
from hessian_eigenthings.linalg.replicated import ReplicatedBackend

__all__ = [
    "DistributedBackend",
    "Distribution",
    "LinAlgBackend",
    "ReplicatedBackend",
    "SingleDeviceBackend",
    "make_generator",
    "random_vectors",
]
