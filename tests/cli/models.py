"""Factories the CLI tests pass as ``--model``/``--data``/``--loss``: a tiny float64 classifier.

Loaded by the ``eigenthings`` subprocess both as a dotted module (``tests.cli.models``, from the
repository root) and as a file path (``tests/cli/models.py``).
"""

from __future__ import annotations

import torch
from torch import nn

IN, HIDDEN, CLASSES = 4, 6, 3
#: A short last batch: the operators weight batches by size, so the mean is over all 21 samples.
BATCH_SIZES = (8, 8, 5)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, CLASSES)).double()


def make_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(n, IN, generator=g, dtype=torch.float64),
            torch.randint(0, CLASSES, (n,), generator=g),
        )
        for n in BATCH_SIZES
    ]


def make_regression_data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Float targets shaped like the model's output (for ``--loss mse``)."""
    g = torch.Generator().manual_seed(2)
    return [
        (
            torch.randn(n, IN, generator=g, dtype=torch.float64),
            torch.randn(n, CLASSES, generator=g, dtype=torch.float64),
        )
        for n in BATCH_SIZES
    ]


def full_batch() -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*make_data(), strict=True)
    return torch.cat(xs), torch.cat(ys)


def broken_model() -> nn.Module:
    raise RuntimeError("checkpoint is corrupt")


def not_a_model() -> str:
    return "a string"


def squared_logits(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A custom criterion ``(output, target) -> scalar`` (target unused)."""
    return 0.5 * (output**2).sum(dim=1).mean()


def whole_batch_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A whole ``loss_fn(model, batch)``: cross-entropy, written out."""
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
