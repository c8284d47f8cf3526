"""Loss-function helpers in the shapes each operator takes, with analytical loss-Hessian products.

Names that live in plugin packages (``hf_lm_loss``, ``tlens_loss``, ...) resolve here through
the plugin registry and raise an ``ImportError`` naming the package to install when absent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hessian_eigenthings.plugins.provided import PLUGIN_PROVIDED_NAMES, resolve_provided_name
from hessian_eigenthings.plugins.types import CEHvpBackend

__all__ = ["BUILTIN_CE_HVP_BACKENDS", "BUILTIN_LOSS_FNS"]

#: Loss-function factories the core registers through ``register_loss_fns``.
BUILTIN_LOSS_FNS: dict[str, Callable[..., Any]] = {}
#: CE-HVP backends the core registers: name → (backend, description).
BUILTIN_CE_HVP_BACKENDS: dict[str, tuple[CEHvpBackend, str]] = {}


def __getattr__(name: str) -> Any:
    if name in PLUGIN_PROVIDED_NAMES:
        return resolve_provided_name(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
