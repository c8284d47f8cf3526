"""The loss of an analysis in every shape an operator may ask for.

Operators take the loss in different shapes: the Hessian a whole-batch ``loss_fn(model,
batch)``, the GGN and Fisher a ``forward_fn(model, batch)`` plus ``loss_of_output_fn(output,
batch)``, the empirical Fisher a ``per_sample_loss_fn``. A :class:`LossForms` holds the shapes
a loss source can provide; an operator that needs one it lacks is an incompatible pairing.

Sources: ``--loss NAME`` (a built-in criterion or ``MODULE:NAME`` of a criterion
``(output, target) -> scalar``, for batches ``(inputs, targets)``), ``--loss-fn MODULE:NAME``
(a whole ``loss_fn(model, batch)``), or a plugin loader's ``loss(args)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from hessian_eigenthings_cli.errors import CLIError
from hessian_eigenthings_cli.loading import call_factory, resolve_reference

__all__ = [
    "BUILTIN_CRITERIA",
    "FORM_NAMES",
    "LossForms",
    "criterion_forms",
    "from_loader",
    "loss_fn_forms",
]

#: ``--loss`` names → criterion class and what it is.
BUILTIN_CRITERIA: dict[str, tuple[type[nn.Module], str]] = {
    "cross_entropy": (nn.CrossEntropyLoss, "softmax cross-entropy of logits and class labels"),
    "mse": (nn.MSELoss, "mean squared error"),
    "bce": (nn.BCEWithLogitsLoss, "binary cross-entropy of logits and 0/1 targets"),
}
_ALIASES = {"ce": "cross_entropy", "crossentropy": "cross_entropy", "bce_with_logits": "bce"}


@dataclass(frozen=True)
class LossForms:
    """The shapes of one loss; ``None`` where the source cannot provide that shape."""

    source: str
    loss_fn: Callable[..., Any] | None = None
    forward_fn: Callable[..., Any] | None = None
    loss_of_output_fn: Callable[..., Any] | None = None
    per_sample_loss_fn: Callable[..., Any] | None = None

    def available(self) -> list[str]:
        return [name for name in FORM_NAMES if getattr(self, name) is not None]


#: The operator constructor arguments a :class:`LossForms` can fill, by name.
FORM_NAMES = tuple(f.name for f in fields(LossForms) if f.name != "source")


def _cross_entropy(ce_backend: str) -> Any:
    from hessian_eigenthings.loss_fns import cross_entropy_loss_of_output
    from hessian_eigenthings.plugins import get_registries

    backends = get_registries().ce_hvp_backends
    if ce_backend != "auto" and ce_backend not in backends:
        raise CLIError(
            f"--ce-backend: unknown cross-entropy HVP backend {ce_backend!r}; available: auto, "
            f"{', '.join(backends.names())}"
        )
    return cross_entropy_loss_of_output(fused=ce_backend)


def criterion_forms(name: str, *, ce_backend: str = "auto") -> LossForms:
    """The forms of ``--loss NAME``: a built-in criterion or ``MODULE:NAME``.

    ``ce_backend`` picks the fused cross-entropy HVP backend the GGN and Fisher use with
    ``cross_entropy`` (``"auto"``: the best available).
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key == "cross_entropy":
        criterion: Any = _cross_entropy(ce_backend)
        source = key
    elif key in BUILTIN_CRITERIA:
        criterion = BUILTIN_CRITERIA[key][0]()
        source = key
    elif ":" in name:
        criterion = resolve_reference(name, "--loss")
        if inspect.isclass(criterion):  # e.g. torch.nn:HuberLoss
            criterion = call_factory(criterion, name, "--loss")
        if not callable(criterion):
            raise CLIError(
                f"--loss: {name} is a {type(criterion).__name__}, not a criterion "
                "(output, target) -> scalar"
            )
        source = name
    else:
        choices = ", ".join(BUILTIN_CRITERIA)
        raise CLIError(
            f"--loss: unknown loss {name!r}; use one of {choices} or MODULE:NAME of a criterion "
            "(output, target) -> scalar (or --loss-fn MODULE:NAME for a whole loss_fn(model, "
            "batch))"
        )
    from hessian_eigenthings.loss_fns import (
        supervised_forward,
        supervised_loss,
        supervised_loss_of_output,
        supervised_per_sample_loss,
    )

    return LossForms(
        source=source,
        loss_fn=supervised_loss(criterion),
        forward_fn=supervised_forward,
        loss_of_output_fn=supervised_loss_of_output(criterion),
        per_sample_loss_fn=supervised_per_sample_loss(criterion),
    )


def loss_fn_forms(reference: str) -> LossForms:
    """The forms of ``--loss-fn MODULE:NAME``: only the whole-batch ``loss_fn``."""
    fn = resolve_reference(reference, "--loss-fn")
    if not callable(fn):
        raise CLIError(
            f"--loss-fn: {reference} is a {type(fn).__name__}, not a callable "
            "loss_fn(model, batch) -> scalar"
        )
    return LossForms(source=reference, loss_fn=fn)


def from_loader(option: str, value: Any) -> LossForms:
    """The forms a loader's ``loss(args)`` returned: ``(loss_fn, forward_fn,
    loss_of_output_fn[, per_sample_loss_fn])`` or a mapping with those keys."""
    if isinstance(value, LossForms):
        return value
    if isinstance(value, Mapping):
        unknown = set(value) - set(FORM_NAMES)
        if unknown:
            raise CLIError(f"the {option} loader returned unknown loss shapes {sorted(unknown)}")
        return LossForms(source=option, **dict(value))
    if isinstance(value, tuple | list) and len(value) in (3, 4):
        return LossForms(option, *value)
    raise CLIError(
        f"the {option} loader's loss() returned a {type(value).__name__}; it must return "
        "(loss_fn, forward_fn, loss_of_output_fn[, per_sample_loss_fn]) or a mapping"
    )
