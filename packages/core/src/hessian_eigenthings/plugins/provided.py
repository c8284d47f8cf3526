"""Names of the reference API that live in plugin packages, resolved through the registry."""

from __future__ import annotations

from typing import Any

from hessian_eigenthings.errors import PluginNotInstalledError
from hessian_eigenthings.plugins.manager import get_registries

__all__ = ["PLUGIN_PROVIDED_NAMES", "resolve_provided_name"]

#: name → (distribution that provides it, extra of hessian-eigenthings that installs it)
PLUGIN_PROVIDED_NAMES: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        (
            "hf_lm_loss",
            "hf_lm_forward",
            "hf_lm_loss_of_output",
            "hf_lm_shifted_ce",
            "hf_seq2seq_loss",
        ),
        ("hessian-eigenthings-hf", "hf"),
    ),
    **dict.fromkeys(
        ("tlens_loss", "tlens_forward", "tlens_loss_of_output"),
        ("hessian-eigenthings-tlens", "tlens"),
    ),
}


def resolve_provided_name(name: str) -> Any:
    """The loss function registered as ``name``, or an ``ImportError`` naming what to install."""
    dist, extra = PLUGIN_PROVIDED_NAMES[name]
    registry = get_registries().loss_fns
    if name in registry:
        return registry.get(name)
    raise PluginNotInstalledError(
        f"{name} is provided by the plugin package {dist!r}, which is not installed or failed "
        f"to load. Install it with: pip install 'hessian-eigenthings[{extra}]' "
        f"(or pip install {dist})"
    )
