"""In-process checks of the distributed entry points (no process group is started here)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import DistributedBackend
from hessian_eigenthings.loss_fns import cross_entropy_loss_of_output
from hessian_eigenthings.operators import (
    DDPEmpiricalFisherOperator,
    DDPFisherOperator,
    DDPGGNOperator,
    DDPHessianOperator,
    FSDPHessianOperator,
)
from hessian_eigenthings.operators.distributed import rank_seed

pytestmark = pytest.mark.skipif(
    dist.is_available() and dist.is_initialized(), reason="needs no process group initialised"
)


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def _forward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return model(batch[0])  # type: ignore[no-any-return]


def _per_sample(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1], reduction="none")


def test_distributed_classes_need_an_initialised_group() -> None:
    model = nn.Linear(3, 2)
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    ce = cross_entropy_loss_of_output(fused="eager")
    attempts = {
        "DDPHessianOperator": lambda: DDPHessianOperator(model, data, _loss),
        "DDPGGNOperator": lambda: DDPGGNOperator(model, data, _forward, ce),
        "DDPEmpiricalFisherOperator": lambda: DDPEmpiricalFisherOperator(
            model, data, loss_fn=_per_sample, per_sample=True
        ),
        "DDPFisherOperator": lambda: DDPFisherOperator(model, data, _forward, ce, seed=0),
        "FSDPHessianOperator": lambda: FSDPHessianOperator(model, data, _loss),
        "DistributedBackend": lambda: DistributedBackend(),
    }
    for name, make in attempts.items():
        with pytest.raises(InvalidArgumentError, match=f"{name} needs an initialised"):
            make()


def test_rank_seeds_are_reproducible_and_distinct() -> None:
    seeds = [rank_seed(3, r) for r in range(64)]
    assert seeds == [rank_seed(3, r) for r in range(64)]
    assert len(set(seeds)) == 64
    assert all(0 <= s < 2**63 for s in seeds)
    # unlike seed + rank, neighbouring seeds do not share streams across ranks
    assert len({rank_seed(s, r) for s in range(8) for r in range(8)}) == 64
    assert rank_seed(-1, 0) == rank_seed(2**64 - 1, 0)  # reduced modulo 2**64
    with pytest.raises(InvalidArgumentError, match="seed must be an int"):
        rank_seed(1.5, 0)  # type: ignore[arg-type]
