"""Deterministic models, data shards and losses shared by the workers and the test process.

Every rank and the single-process reference build the same model from the same seed. The
data is split into per-rank shards of unequal size and batch count; the reference operator
iterates the union of the shards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DTYPE = torch.float64
Batch = tuple[torch.Tensor, torch.Tensor]

#: Batch sizes of each rank's shard (rank 0: three batches, rank 1: one).
SHARDS: tuple[tuple[int, ...], ...] = ((4, 4, 2), (5,))


def classifier(width: tuple[int, int, int] = (4, 6, 3)) -> nn.Module:
    torch.manual_seed(0)
    d_in, hidden, d_out = width
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out)).to(DTYPE)


def shards(d_in: int = 4, classes: int = 3, sizes: tuple[tuple[int, ...], ...] = SHARDS):
    """``sizes``-shaped list (per rank) of (x, y) classification batches."""
    g = torch.Generator().manual_seed(1)
    out: list[list[Batch]] = []
    for rank_sizes in sizes:
        batches = []
        for b in rank_sizes:
            x = torch.randn(b, d_in, generator=g, dtype=DTYPE)
            y = torch.randint(0, classes, (b,), generator=g)
            batches.append((x, y))
        out.append(batches)
    return out


def union(per_rank: list[list[Batch]]) -> list[Batch]:
    return [b for batches in per_rank for b in batches]


def forward_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(batch[0])  # type: ignore[no-any-return]


def loss_of_output(output: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(output, batch[1])


def loss_fn(model: nn.Module, batch: Batch) -> torch.Tensor:
    return loss_of_output(forward_fn(model, batch), batch)


def per_sample_losses(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The (N,) vector of the batch's per-sample losses."""
    return F.cross_entropy(model(batch[0]), batch[1], reduction="none")


def directions(n: int, m: int = 3, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, m, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())
