"""Loss-function helpers in the shapes each operator takes, with analytical loss-Hessian products.

Names that live in plugin packages (``hf_lm_loss``, ``tlens_loss``, ...) resolve here through
the plugin registry and raise an ``ImportError`` naming the package to install when absent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hessian_eigenthings.loss_fns.ce_hvp import ce_hvp, ce_hvp_eager, resolve_ce_hvp_backend
from hessian_eigenthings.loss_fns.ce_hvp_compiled import (
    COMPILE_MIN_AUTO_ELEMENTS,
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

BUILTIN_LOSS_FNS: dict[str, Callable[..., Any]] = {
    "supervised_loss": supervised_loss,
    "supervised_loss_of_output": supervised_loss_of_output,
    "supervised_per_sample_loss": supervised_per_sample_loss,
    "cross_entropy_loss_of_output": cross_entropy_loss_of_output,
    "mse_loss_of_output": mse_loss_of_output,
    "bce_with_logits_loss_of_output": bce_with_logits_loss_of_output,
}
"""Loss-function factories the core registers through ``register_loss_fns``: name → factory.

The CLI and ``eigenthings plugins`` find the core's loss helpers under these names; plugins
register theirs (``hf_lm_loss``, ``tlens_loss``, ...) in the same registry.

Example:
    >>> from hessian_eigenthings.loss_fns import BUILTIN_LOSS_FNS, mse_loss_of_output
    >>> sorted(BUILTIN_LOSS_FNS)  # doctest: +NORMALIZE_WHITESPACE
    ['bce_with_logits_loss_of_output', 'cross_entropy_loss_of_output', 'mse_loss_of_output',
     'supervised_loss', 'supervised_loss_of_output', 'supervised_per_sample_loss']
    >>> BUILTIN_LOSS_FNS["mse_loss_of_output"] is mse_loss_of_output
    True
"""
BUILTIN_CE_HVP_BACKENDS: dict[str, tuple[CEHvpBackend, str]] = {
    "eager": (
        CEHvpBackend(fn=ce_hvp_eager, priority=0, supports=lambda logits, u: None),
        "plain PyTorch reference; several (N, V) temporaries",
    ),
    "compile": (
        CEHvpBackend(
            compiled_ce_hvp,
            COMPILE_PRIORITY,
            compiled_ce_hvp_supports,
            min_auto_elements=COMPILE_MIN_AUTO_ELEMENTS,
        ),
        "torch.compile-fused row formula; the output is its only (N, V) buffer",
    ),
}
"""Cross-entropy HVP backends the core registers: name → (backend, description).

``fused="auto"`` takes the backend of highest ``priority`` whose ``supports(logits, u)``
returns ``None``; plugins add more (``triton``, priority 20). Each computes the row-wise
``scale · (p ⊙ u − p ⟨p, u⟩)`` in O(N·V) time: ``eager`` with about five (N, V) temporaries,
``compile`` with the output as its only (N, V) buffer (after a one-time compilation).

Example:
    >>> import torch
    >>> from hessian_eigenthings.loss_fns import BUILTIN_CE_HVP_BACKENDS
    >>> {name: backend.priority for name, (backend, _) in BUILTIN_CE_HVP_BACKENDS.items()}
    {'eager': 0, 'compile': 10}
    >>> eager, description = BUILTIN_CE_HVP_BACKENDS["eager"]
    >>> logits, u = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]])
    >>> eager.supports(logits, u) is None  # eager serves anything
    True
    >>> eager.fn(logits, u, torch.tensor([0]), -100, 1.0)  # p = (1/2, 1/2): H u = u / 2
    tensor([[ 0.5000, -0.5000]])
"""


def __getattr__(name: str) -> Any:
    if name in PLUGIN_PROVIDED_NAMES:
        return resolve_provided_name(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
