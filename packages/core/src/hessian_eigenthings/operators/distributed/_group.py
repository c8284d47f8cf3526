"""Process-group defaults and per-rank seeds shared by the distributed operators."""

from __future__ import annotations

from typing import Any

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg.distributed import require_initialized

__all__ = ["default_group", "rank_seed"]

_MASK64 = (1 << 64) - 1


def default_group(process_group: Any, what: str) -> Any:
    """``process_group``, or the default (WORLD) group; raises unless torch.distributed is up."""
    import torch.distributed as dist

    require_initialized(what)
    return process_group if process_group is not None else dist.group.WORLD


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def rank_seed(seed: int, rank: int) -> int:
    """A seed for ``rank`` derived from the user's ``seed``: ``splitmix64(splitmix64(seed) ⊕ rank)``
    reduced to 63 bits.

    Different ranks get unrelated streams (neighbouring seeds such as ``seed + rank`` would
    make rank r of one run reuse rank r+1's samples of a run seeded one higher), and the same
    (seed, rank) always gives the same seed, so a distributed run is reproducible for a fixed
    world size.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgumentError(f"seed must be an int, got {type(seed).__name__}")
    return _splitmix64(_splitmix64(seed & _MASK64) ^ rank) & ((1 << 63) - 1)
