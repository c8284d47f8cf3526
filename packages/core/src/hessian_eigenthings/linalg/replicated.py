"""A :class:`LinAlgBackend` for vectors replicated on every rank of a process group.

A DDP-style operator (any model operator given a ``process_group``) holds the whole vector on
every rank and all-reduces its products, so every reduction is local and exact, as on one
device. The one thing the ranks must agree on is randomness: with ``seed=None`` each rank
would seed its own generator, the ranks would start from different vectors, and the
all-reduced products would mix them. :meth:`ReplicatedBackend.random` therefore draws as usual
(consuming the generator identically on every rank) and then broadcasts the first rank's draw.
Cost: one broadcast of the drawn block per draw — a start vector, a block of probes — small
next to the products it feeds.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from hessian_eigenthings.linalg.backend import SingleDeviceBackend
from hessian_eigenthings.linalg.random import Distribution

__all__ = ["ReplicatedBackend"]


class ReplicatedBackend(SingleDeviceBackend):
    """Single-device arithmetic; random draws shared from the group's first rank.

    The default backend of every model operator built with a ``process_group``, so algorithms
    run in lock step on all ranks with or without a seed.

    Args:
        process_group: the ``torch.distributed`` group whose ranks hold the same vectors
            (``None``: the default group).

    Example:
        >>> import torch
        >>> import torch.distributed as dist
        >>> from hessian_eigenthings.linalg import (
        ...     ReplicatedBackend, SingleDeviceBackend, make_generator)
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> kw = dict(dtype=torch.float64, device="cpu")
        >>> try:
        ...     draw = ReplicatedBackend().random((2, 3), generator=make_generator(0), **kw)
        ...     same = SingleDeviceBackend().random((2, 3), generator=make_generator(0), **kw)
        ...     print(draw.shape, torch.equal(draw, same))
        ... finally:
        ...     dist.destroy_process_group()
        torch.Size([2, 3]) True
    """

    def __init__(self, process_group: Any = None) -> None:
        self.process_group = process_group

    def random(
        self,
        shape: int | tuple[int, ...],
        *,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device | str,
        distribution: Distribution = "gaussian",
    ) -> torch.Tensor:
        import torch.distributed as dist

        out = super().random(
            shape, generator=generator, dtype=dtype, device=device, distribution=distribution
        )
        group = cast("dist.ProcessGroup", self.process_group or dist.group.WORLD)
        source = dist.get_global_rank(group, 0)
        dist.broadcast(out, src=source, group=self.process_group)
        return out
