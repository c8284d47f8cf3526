"""Loss helpers for supervised batches ``(inputs, targets)``, in the shape each operator takes.

From one criterion ``criterion(output, targets) -> loss`` (``F.cross_entropy``,
``nn.MSELoss()``, ...):

* :func:`supervised_loss` → ``loss_fn(model, batch)`` (Hessian);
* :data:`supervised_forward` and :func:`supervised_loss_of_output` → ``forward_fn(model,
  batch)`` and ``loss_of_output_fn(output, batch)`` (GGN, Fisher);
* :func:`supervised_per_sample_loss` → ``per_sample_loss_fn(model, sample)`` of one un-batched
  sample (empirical Fisher).

The standard torch criteria are recognised — ``F.cross_entropy``, ``F.mse_loss``,
``F.binary_cross_entropy_with_logits``, ``functools.partial`` of them with their keyword
options, and ``nn.CrossEntropyLoss``, ``nn.MSELoss``, ``nn.BCEWithLogitsLoss`` instances —
and turned into a :class:`~hessian_eigenthings.loss_fns.loss_of_output.LossOfOutput` that
computes exactly the criterion's value (same layout, ``reduction``, ``ignore_index``,
``label_smoothing``) and carries the analytical Hessian products and the batch weight. Options
that change the Hessian (class ``weight``, ``pos_weight``) or a ``reduction="none"`` leave the
criterion unrecognised: it is then called as is, and the GGN differentiates it twice. A
:class:`LossOfOutput` passed as the criterion is used as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.loss_fns.loss_of_output import (
    BCEWithLogitsLossOfOutput,
    CrossEntropyLossOfOutput,
    LossOfOutput,
    MSELossOfOutput,
    batch_targets,
)
from hessian_eigenthings.operators.batching import map_tensors

__all__ = [
    "as_loss_of_output",
    "supervised_forward",
    "supervised_loss",
    "supervised_loss_of_output",
    "supervised_per_sample_loss",
]

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_CE_OPTIONS = {"ignore_index", "reduction", "label_smoothing"}
_REDUCTION_ONLY = {"reduction"}


def _inputs(batch: Any) -> Any:
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 1:
        return batch[0]
    raise InvalidArgumentError(
        f"supervised helpers expect batches (inputs, targets), got {type(batch).__name__}"
    )


def supervised_forward(model: nn.Module, batch: Any) -> torch.Tensor:
    """``forward_fn`` for batches ``(inputs, targets)``: ``model(inputs)``.

    The f in the GGN's and Fisher's Jᵀ H_ℓ J; costs one forward pass.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import supervised_forward
        >>> model, x = nn.Linear(3, 2), torch.randn(4, 3)
        >>> torch.equal(supervised_forward(model, (x, None)), model(x))
        True
    """
    output: torch.Tensor = model(_inputs(batch))
    return output


def _recognise(criterion: Any) -> LossOfOutput | None:
    """The analytical loss for a standard torch criterion, or ``None``."""
    func: Any = criterion
    options: dict[str, Any] = {}
    if isinstance(criterion, functools.partial):
        if criterion.args:
            return None
        func, options = criterion.func, dict(criterion.keywords)
    if type(func) is nn.CrossEntropyLoss:
        if func.weight is not None:
            return None
        func, options = (
            F.cross_entropy,
            {
                "ignore_index": func.ignore_index,
                "reduction": func.reduction,
                "label_smoothing": func.label_smoothing,
            },
        )
    elif type(func) in (nn.MSELoss, nn.BCEWithLogitsLoss):
        if (
            getattr(func, "weight", None) is not None
            or getattr(func, "pos_weight", None) is not None
        ):
            return None
        options = {"reduction": func.reduction}
        func = F.mse_loss if type(func) is nn.MSELoss else F.binary_cross_entropy_with_logits
    reduction = options.get("reduction", "mean")
    if reduction not in ("mean", "sum"):
        return None
    if func is F.cross_entropy and set(options) <= _CE_OPTIONS:
        return CrossEntropyLossOfOutput(
            ignore_index=int(options.get("ignore_index", -100)),
            reduction=reduction,
            label_smoothing=float(options.get("label_smoothing", 0.0)),
            class_dim="torch",
        )
    if func is F.mse_loss and set(options) <= _REDUCTION_ONLY:
        return MSELossOfOutput(reduction)
    if func is F.binary_cross_entropy_with_logits and set(options) <= _REDUCTION_ONLY:
        return BCEWithLogitsLossOfOutput(reduction)
    return None


class _CriterionOfOutput:
    """``criterion(output, targets)`` as a ``loss_of_output_fn``; no analytical curvature."""

    def __init__(self, criterion: Criterion) -> None:
        self.criterion = criterion

    def __call__(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        return self.criterion(output, batch_targets(batch))

    def __repr__(self) -> str:
        return f"supervised_loss_of_output({self.criterion!r})"


def as_loss_of_output(criterion: Any) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """``criterion`` as a ``loss_of_output_fn``: a :class:`LossOfOutput` when it is one or is a
    recognised torch criterion, else a plain wrapper calling ``criterion(output, targets)``."""
    if isinstance(criterion, LossOfOutput):
        return criterion
    if not callable(criterion):
        raise InvalidArgumentError(
            "criterion must be a callable criterion(output, targets) -> loss (e.g. "
            f"torch.nn.functional.cross_entropy), got {type(criterion).__name__}"
        )
    return _recognise(criterion) or _CriterionOfOutput(criterion)


def supervised_loss_of_output(criterion: Any) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """``loss_of_output_fn(output, batch) = criterion(output, targets)`` for the GGN/Fisher.

    Standard torch criteria come back as a :class:`LossOfOutput` with ``.hvp`` and the other
    analytical products (see the module docstring); anything else as a plain callable.

    With a :class:`LossOfOutput` the GGN's loss-Hessian products are closed forms (O(output
    size), no graph); a plain callable makes the GGN differentiate it twice (autograd, the
    loss's graph twice over) and cannot serve the true Fisher.

    Example:
        >>> import functools
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import LossOfOutput, supervised_loss_of_output
        >>> ce = supervised_loss_of_output(nn.CrossEntropyLoss(ignore_index=-1))
        >>> isinstance(ce, LossOfOutput), ce.ignore_index
        (True, -1)
        >>> weighted = functools.partial(F.cross_entropy, weight=torch.ones(3))
        >>> plain = supervised_loss_of_output(weighted)  # class weights: not recognised
        >>> isinstance(plain, LossOfOutput), hasattr(plain, "hvp")
        (False, False)
        >>> f, y = torch.randn(4, 3), torch.tensor([0, 2, 1, -1])
        >>> torch.equal(ce(f, (None, y)), F.cross_entropy(f, y, ignore_index=-1))
        True
    """
    return as_loss_of_output(criterion)


class _SupervisedLoss:
    """``loss_fn(model, batch) = loss_of_output(model(inputs), batch)``."""

    def __init__(self, loss_of_output: Callable[[torch.Tensor, Any], torch.Tensor]) -> None:
        self.loss_of_output = loss_of_output
        weight = getattr(loss_of_output, "batch_weight", None)
        if callable(weight):
            self.batch_weight = weight

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.loss_of_output(supervised_forward(model, batch), batch)

    def __repr__(self) -> str:
        return f"supervised_loss({self.loss_of_output!r})"


def supervised_loss(criterion: Any) -> Callable[[nn.Module, Any], torch.Tensor]:
    """``loss_fn(model, batch) = criterion(model(inputs), targets)`` for the Hessian.

    Carries the recognised loss's ``batch_weight`` (e.g. valid labels under ``ignore_index``),
    so token-level means stay exact across batches. Costs one forward pass and the
    criterion.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import supervised_loss
        >>> _ = torch.manual_seed(0)
        >>> model, x = nn.Linear(3, 4), torch.randn(5, 3)
        >>> y = torch.tensor([0, 3, -100, 1, -100])
        >>> loss_fn = supervised_loss(F.cross_entropy)
        >>> torch.equal(loss_fn(model, (x, y)), F.cross_entropy(model(x), y))
        True
        >>> loss_fn.batch_weight((x, y))  # the labels that count
        3.0
    """
    return _SupervisedLoss(as_loss_of_output(criterion))


class _PerSampleLoss:
    """``per_sample_loss_fn(model, (x, y))``: the loss of one un-batched sample."""

    def __init__(self, loss_of_output: Callable[[torch.Tensor, Any], torch.Tensor]) -> None:
        self.loss_of_output = loss_of_output

    def __call__(self, model: nn.Module, sample: Any) -> torch.Tensor:
        batch = map_tensors(sample, lambda t: t.unsqueeze(0))
        return self.loss_of_output(supervised_forward(model, batch), batch)

    def __repr__(self) -> str:
        return f"supervised_per_sample_loss({self.loss_of_output!r})"


def supervised_per_sample_loss(criterion: Any) -> Callable[[nn.Module, Any], torch.Tensor]:
    """``per_sample_loss_fn(model, sample)`` for the empirical Fisher: ``sample = (x, y)``
    without a batch dimension; the loss is ``criterion(model(x[None]), y[None])``.

    :class:`~hessian_eigenthings.operators.EmpiricalFisherOperator` vectorises it over the
    samples with ``torch.func.vmap``, so one call costs one forward of a single sample.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import supervised_per_sample_loss
        >>> _ = torch.manual_seed(0)
        >>> model, x, y = nn.Linear(3, 2), torch.randn(3), torch.randn(2)
        >>> per_sample = supervised_per_sample_loss(F.mse_loss)
        >>> loss = per_sample(model, (x, y))
        >>> loss.shape, torch.equal(loss, F.mse_loss(model(x[None]), y[None]))
        (torch.Size([]), True)
    """
    return _PerSampleLoss(as_loss_of_output(criterion))
