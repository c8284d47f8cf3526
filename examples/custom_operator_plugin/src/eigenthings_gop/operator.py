"""The batch-gradient outer product Σ_b w_b g_b g_bᵀ / Σ_b w_b, g_b the gradient of batch b's loss.

A rank-(number of batches) PSD matrix, sometimes called the batch Fisher. Each product costs
one forward and one backward pass per batch. (Micro)batches are the units: splitting batches
changes this operator, unlike the Hessian's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hessian_eigenthings.operators import ModelCurvatureOperator


class GradientOuterProductOperator(ModelCurvatureOperator):
    """``v ↦ Σ_b w_b g_b ⟨g_b, v⟩ / Σ_b w_b`` for ``loss_fn(model, batch) -> scalar``."""

    def __init__(
        self,
        model: nn.Module,
        dataloader: Any,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        **engine_options: Any,
    ) -> None:
        super().__init__(model, dataloader, **engine_options)
        self.loss_fn = loss_fn

    def batch_matmat(self, batch: Any, V: Sequence[torch.Tensor]) -> Sequence[torch.Tensor | None]:
        loss = self.loss_fn(self.model, batch)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True, materialize_grads=True)
        # ⟨g, v_j⟩ for each of the m directions, then g ⟨g, v_j⟩.
        coeff = sum((g.unsqueeze(0) * v).flatten(1).sum(1) for g, v in zip(grads, V, strict=True))
        assert isinstance(coeff, torch.Tensor)
        return [coeff.view(-1, *([1] * g.ndim)) * g.unsqueeze(0) for g in grads]
