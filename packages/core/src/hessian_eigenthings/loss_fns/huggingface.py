"""The HuggingFace loss helpers under the import path the reference library used.

``from hessian_eigenthings.loss_fns.huggingface import hf_lm_loss`` works like
``from hessian_eigenthings.loss_fns import hf_lm_loss``: the names come from the
``hessian-eigenthings-hf`` plugin, resolved through the plugin registry on first access,
so importing this module never imports transformers. Without the plugin, accessing a name raises
:class:`~hessian_eigenthings.errors.PluginNotInstalledError` with the ``pip install`` line.
``__all__`` is empty on purpose: a star import would otherwise load the plugin.

Example:
    >>> import hessian_eigenthings.loss_fns.huggingface as shim
    >>> sorted(shim.NAMES)
    ['hf_lm_forward', 'hf_lm_loss', 'hf_lm_loss_of_output', 'hf_lm_shifted_ce', 'hf_seq2seq_loss']
"""

from __future__ import annotations

from typing import Any

from hessian_eigenthings.plugins.provided import provided_by, resolve_module_attribute

__all__: list[str] = []

#: The plugin-provided names this module resolves.
NAMES = provided_by("hessian-eigenthings-hf")


def __getattr__(name: str) -> Any:
    return resolve_module_attribute(__name__, NAMES, name)


def __dir__() -> list[str]:
    return sorted([*globals(), *NAMES])
