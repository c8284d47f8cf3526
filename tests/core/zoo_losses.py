"""Each zoo case's loss in the shapes of the GGN / Fisher / empirical-Fisher operators.

The oracles (tests/core/oracles.py) use ``case.loss_of_output``; these give the same losses
through the library's helpers (analytical curvature) or as per-sample losses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings.loss_fns import (
    LossOfOutput,
    bce_with_logits_loss_of_output,
    cross_entropy_loss_of_output,
    mse_loss_of_output,
)
from tests.core.zoo import IGNORE, Batch, Case


def analytical_loss(case: Case, fused: str = "eager") -> LossOfOutput:
    """The library helper computing ``case.loss_of_output`` (class dim last for CE)."""
    if case.task == "ce":
        return cross_entropy_loss_of_output(ignore_index=IGNORE, fused=fused)
    if case.task == "mse":
        return mse_loss_of_output()
    return bce_with_logits_loss_of_output()


def per_sample_loss(case: Case) -> Callable[[nn.Module, Any], torch.Tensor]:
    """``(model, (x, y))`` for one un-batched sample: the oracle's per-sample loss."""

    def loss(model: nn.Module, sample: Batch) -> torch.Tensor:
        batch = (sample[0].unsqueeze(0), sample[1].unsqueeze(0))
        return case.loss_of_output(model(batch[0]), batch)

    return loss


def per_sample_losses(case: Case) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """``(model, batch) -> (N,)``: each sample's loss, computed batched (no vmap)."""

    def losses(model: nn.Module, batch: Batch) -> torch.Tensor:
        x, y = batch
        out = model(x)
        if case.task == "ce" and out.ndim == 2:
            return F.cross_entropy(out, y, reduction="none")
        if case.task == "ce":  # tokens: the mean over each sample's valid labels
            b, t, v = out.shape
            flat = F.cross_entropy(
                out.reshape(-1, v), y.reshape(-1), ignore_index=IGNORE, reduction="none"
            )
            return flat.view(b, t).sum(1) / (y != IGNORE).sum(1)
        if case.task == "mse":
            return ((out - y) ** 2).flatten(1).mean(1)
        return F.binary_cross_entropy_with_logits(out, y, reduction="none").flatten(1).mean(1)

    return losses
