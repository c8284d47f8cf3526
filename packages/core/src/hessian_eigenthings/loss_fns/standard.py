"""The standard losses under the reference API's module path
(``hessian_eigenthings.loss_fns.standard``); everything here is also in
:mod:`hessian_eigenthings.loss_fns`."""

from __future__ import annotations

from hessian_eigenthings.loss_fns.loss_of_output import (
    BCEWithLogitsLossOfOutput,
    CrossEntropyLossOfOutput,
    LossOfOutput,
    MSELossOfOutput,
    bce_with_logits_loss_of_output,
    cross_entropy_loss_of_output,
    mse_loss_of_output,
)
from hessian_eigenthings.loss_fns.supervised import (
    supervised_forward,
    supervised_loss,
    supervised_loss_of_output,
    supervised_per_sample_loss,
)

__all__ = [
    "BCEWithLogitsLossOfOutput",
    "CrossEntropyLossOfOutput",
    "LossOfOutput",
    "MSELossOfOutput",
    "bce_with_logits_loss_of_output",
    "cross_entropy_loss_of_output",
    "mse_loss_of_output",
    "supervised_forward",
    "supervised_loss",
    "supervised_loss_of_output",
    "supervised_per_sample_loss",
]
