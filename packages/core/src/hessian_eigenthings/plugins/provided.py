"""Names of the reference API that live in plugin packages, resolved through the registry."""

from __future__ import annotations

from typing import Any

from hessian_eigenthings.errors import PluginNotInstalledError
from hessian_eigenthings.plugins.manager import get_registries

__all__ = [
    "PLUGIN_PROVIDED_NAMES",
    "provided_by",
    "resolve_module_attribute",
    "resolve_provided_name",
]

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


def provided_by(dist: str) -> tuple[str, ...]:
    """The plugin-provided names that the distribution ``dist`` supplies."""
    return tuple(name for name, (d, _) in PLUGIN_PROVIDED_NAMES.items() if d == dist)


def resolve_module_attribute(module: str, names: tuple[str, ...], name: str) -> Any:
    """A shim module's ``__getattr__``: ``name`` resolved if it is one of ``names``."""
    if name in names:
        return resolve_provided_name(name)
    raise AttributeError(f"module {module!r} has no attribute {name!r}")
