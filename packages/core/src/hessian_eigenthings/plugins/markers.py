"""The pluggy markers. The project name is also the entry-point group and the registry name."""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "hessian_eigenthings"
"""The pluggy project name, which is also the entry-point group plugins are declared in.

Example:
    >>> from hessian_eigenthings.plugins import PROJECT_NAME, get_plugin_manager
    >>> PROJECT_NAME
    'hessian_eigenthings'
    >>> get_plugin_manager().project_name == PROJECT_NAME
    True
"""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks the hook specifications of :mod:`hessian_eigenthings.plugins.hookspecs` (the core's
only use; plugins implement hooks with :data:`hookimpl`).

Example:
    >>> from hessian_eigenthings.plugins import PROJECT_NAME, hookspec, hookspecs
    >>> hookspec.project_name == PROJECT_NAME
    True
    >>> sorted(name for name in hookspecs.__all__
    ...        if hasattr(getattr(hookspecs, name), PROJECT_NAME + "_spec"))
    ['register_ce_hvp_backends', 'register_commands', 'register_loaders', 'register_loss_fns',
     'register_operators', 'register_param_namers']
"""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Decorates a plugin's hook functions: ``@hookimpl def register_loss_fns(register): ...``.

A plugin is a module (declared as an entry point) or any object with such functions.

Example:
    An in-process plugin registering a loss function:

    >>> import types
    >>> from hessian_eigenthings.plugins import get_plugin_manager, hookimpl, refresh_registries
    >>> def sum_of_squares(model, batch):
    ...     return model(batch).pow(2).sum()
    >>> @hookimpl
    ... def register_loss_fns(register):
    ...     register("sum_of_squares", sum_of_squares, description="sum of squared outputs")
    >>> plugin = types.SimpleNamespace(register_loss_fns=register_loss_fns)
    >>> _ = get_plugin_manager().register(plugin, name="example-plugin")
    >>> entry = refresh_registries().loss_fns.entry("sum_of_squares")
    >>> entry.plugin, entry.obj is sum_of_squares
    ('example-plugin', True)
    >>> _ = get_plugin_manager().unregister(name="example-plugin")
    >>> _ = refresh_registries()
"""
