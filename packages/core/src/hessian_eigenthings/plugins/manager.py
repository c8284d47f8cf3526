"""The plugin manager: built lazily on first use, cached, never at import time.

Built-in features (the core's own operators, loss functions and CE-HVP backends) are registered
as ordinary plugins, then every installed entry point of the ``hessian_eigenthings`` group is
loaded, unless the environment variable ``HESSIAN_EIGENTHINGS_DISABLE_PLUGIN_AUTOLOAD`` is set
to a non-empty value. A plugin that fails to import or to register is reported with a
:class:`~hessian_eigenthings.errors.PluginLoadWarning` and skipped.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from dataclasses import dataclass
from functools import partial
from importlib.metadata import entry_points
from typing import Any

import pluggy

from hessian_eigenthings.errors import PluginError, PluginLoadWarning
from hessian_eigenthings.plugins import hookspecs
from hessian_eigenthings.plugins.markers import PROJECT_NAME
from hessian_eigenthings.plugins.registry import Registries, Registry

__all__ = [
    "BUILTIN_PLUGINS",
    "DISABLE_AUTOLOAD_ENV",
    "PluginInfo",
    "get_plugin_manager",
    "get_registries",
    "plugin_info",
    "refresh_registries",
    "reset_plugins",
]

DISABLE_AUTOLOAD_ENV = "HESSIAN_EIGENTHINGS_DISABLE_PLUGIN_AUTOLOAD"

#: Modules of the core registered as plugins before any entry point, named ``core:<suffix>``.
BUILTIN_PLUGINS: tuple[str, ...] = ("hessian_eigenthings.plugins.builtin",)


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name, the distribution that ships it and that distribution's version."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_registries: Registries | None = None
_info: dict[str, PluginInfo] = {}


def _warn(name: str, what: str, err: BaseException) -> None:
    warnings.warn(
        f"hessian_eigenthings plugin {name!r} {what}: {type(err).__name__}: {err}. "
        "Its features are unavailable; reinstall or upgrade it, or set "
        f"{DISABLE_AUTOLOAD_ENV}=1 to skip installed plugins.",
        PluginLoadWarning,
        stacklevel=4,
    )


def _build_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        name = "core:" + module_name.rsplit(".", 1)[-1]
        pm.register(importlib.import_module(module_name), name=name)
        _info[name] = PluginInfo(name, "hessian-eigenthings", _version("hessian-eigenthings"), True)
    if not os.environ.get(DISABLE_AUTOLOAD_ENV):
        for ep in entry_points(group=PROJECT_NAME):
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as err:
                _warn(ep.name, f"({ep.value}) failed to load", err)
                continue
            dist = ep.dist.name if ep.dist is not None else None
            _info[ep.name] = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else None, False)
    pm.check_pending()
    return pm


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built on first call).

    Tests and applications may register in-process plugins on it with
    ``get_plugin_manager().register(obj, name=...)`` followed by :func:`refresh_registries`.
    """
    global _manager
    with _lock:
        if _manager is None:
            _manager = _build_manager()
        return _manager


def _add(
    registry: Registry[Any], plugin: str, name: str, obj: Any, *, description: str = ""
) -> None:
    registry.add(name, obj, plugin=plugin, description=description)


def _collect(pm: pluggy.PluginManager) -> Registries:
    regs = Registries()
    for hook_name, attr in Registries.HOOKS:
        registry = getattr(regs, attr)
        caller = getattr(pm.hook, hook_name)
        # Call each implementation on its own so every entry records who registered it, and
        # one plugin's failure does not take down the others.
        for impl in caller.get_hookimpls():  # registration order: built-ins first
            try:
                impl.function(register=partial(_add, registry, impl.plugin_name))
            except PluginError:
                raise
            except Exception as err:
                _warn(impl.plugin_name, f"failed in {hook_name}", err)
    return regs


def get_registries() -> Registries:
    """Everything the loaded plugins registered (computed once, then cached)."""
    global _registries
    with _lock:
        if _registries is None:
            _registries = _collect(get_plugin_manager())
        return _registries


def refresh_registries() -> Registries:
    """Recollect the registries, e.g. after registering an in-process plugin."""
    global _registries
    with _lock:
        _registries = None
        return get_registries()


def reset_plugins() -> None:
    """Forget the manager and registries; the next use rebuilds them (rereads entry points)."""
    global _manager, _registries
    with _lock:
        _manager = None
        _registries = None
        _info.clear()


def plugin_info() -> list[PluginInfo]:
    """The loaded plugins, built-ins first, then entry points in load order."""
    pm = get_plugin_manager()
    return [
        _info.get(name, PluginInfo(name, None, None, False)) for name, _ in pm.list_name_plugin()
    ]
