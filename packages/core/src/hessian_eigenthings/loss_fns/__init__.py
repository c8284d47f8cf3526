"""Loss-function helpers in the shapes each operator takes, with analytical loss-Hessian products.

Names that live in plugin packages (``hf_lm_loss``, ``tlens_loss``, ...) resolve here through
the plugin registry and raise an ``ImportError`` naming the package to install when absent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hessian_eigenthings.loss_fns.ce_hvp import ce_hvp, ce_hvp_eager, resolve_ce_hvp_backend
from hessian_eigenthings.loss_fns.ce_hvp_compiled import (
    COMPILE_PRIORITY,
    compiled_ce_hvp,
    compiled_ce_hvp_supports,
)
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
from hessian_eigenthings.plugins.provided import PLUGIN_PROVIDED_NAMES, resolve_provided_name
from hessian_eigenthings.plugins.types import CEHvpBackend

__all__ = [
    "BUILTIN_CE_HVP_BACKENDS",
    "BUILTIN_LOSS_FNS",
    "BCEWithLogitsLossOfOutput",
    "CrossEntropyLossOfOutput",
    "LossOfOutput",
    "MSELossOfOutput",
    "bce_with_logits_loss_of_output",
    "ce_hvp",
    "ce_hvp_eager",
    "cross_entropy_loss_of_output",
    "mse_loss_of_output",
    "resolve_ce_hvp_backend",
    "supervised_forward",
    "supervised_loss",
    "supervised_loss_of_output",
    "supervised_per_sample_loss",
]

#: Loss-function factories the core registers through ``register_loss_fns``.
BUILTIN_LOSS_FNS: dict[str, Callable[..., Any]] = {
    "supervised_loss": supervised_loss,
    "supervised_loss_of_output": supervised_loss_of_output,
    "supervised_per_sample_loss": supervised_per_sample_loss,
    "cross_entropy_loss_of_output": cross_entropy_loss_of_output,
    "mse_loss_of_output": mse_loss_of_output,
    "bce_with_logits_loss_of_output": bce_with_logits_loss_of_output,
}
#: CE-HVP backends the core registers: name → (backend, description).
BUILTIN_CE_HVP_BACKENDS: dict[str, tuple[CEHvpBackend, str]] = {
    "eager": (
        CEHvpBackend(fn=ce_hvp_eager, priority=0, supports=lambda logits, u: None),
        "plain PyTorch reference; several (N, V) temporaries",
    ),
    "compile": (
        CEHvpBackend(compiled_ce_hvp, COMPILE_PRIORITY, compiled_ce_hvp_supports),
        "torch.compile-fused row formula; the output is its only (N, V) buffer",
    ),
}


def __getattr__(name: str) -> Any:
    if name in PLUGIN_PROVIDED_NAMES:
        return resolve_provided_name(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
