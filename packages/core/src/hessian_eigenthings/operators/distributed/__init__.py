"""Curvature operators for data-parallel (DDP) and sharded (FSDP2) training setups.

Every model operator accepts ``process_group=``; the ``DDP*`` classes default it to the default
group. :class:`FSDPHessianOperator` works on FSDP2 parameter shards with finite differences.
:func:`rank_seed` is how ``DDPFisherOperator`` derives each rank's Monte-Carlo seed.
"""

from __future__ import annotations

from hessian_eigenthings.operators.distributed._group import rank_seed
from hessian_eigenthings.operators.distributed.ddp import (
    DDPEmpiricalFisherOperator,
    DDPFisherOperator,
    DDPGGNOperator,
    DDPHessianOperator,
)
from hessian_eigenthings.operators.distributed.fsdp import FSDPHessianOperator

__all__ = [
    "DDPEmpiricalFisherOperator",
    "DDPFisherOperator",
    "DDPGGNOperator",
    "DDPHessianOperator",
    "FSDPHessianOperator",
    "rank_seed",
]
