"""The TransformerLens loss helpers under the import path the reference library used.

``from hessian_eigenthings.loss_fns.transformer_lens import tlens_loss`` works like
``from hessian_eigenthings.loss_fns import tlens_loss``: the names come from the
``hessian-eigenthings-tlens`` plugin, resolved through the plugin registry on first access,
so importing this module never imports transformer_lens. Without the plugin, accessing a name raises
:class:`~hessian_eigenthings.errors.PluginNotInstalledError` with the ``pip install`` line.
``__all__`` is empty on purpose: a star import would otherwise load the plugin.

Example:
    >>> import hessian_eigenthings.loss_fns.transformer_lens as shim
    >>> sorted(shim.NAMES)
    ['tlens_forward', 'tlens_loss', 'tlens_loss_of_output']
"""

from __future__ import annotations

from typing import Any

from hessian_eigenthings.plugins.provided import provided_by, resolve_module_attribute

__all__: list[str] = []

#: The plugin-provided names this module resolves.
NAMES = provided_by("hessian-eigenthings-tlens")


def __getattr__(name: str) -> Any:
    return resolve_module_attribute(__name__, NAMES, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *NAMES])
