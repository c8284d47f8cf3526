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
"""Environment variable that, set to a non-empty value, keeps the manager from loading
installed plugins (the core's built-ins still register). It is read when the manager is built,
so set it before the first use of a registry, or call :func:`reset_plugins` after setting it.

Example:
    >>> import os
    >>> from unittest import mock
    >>> from hessian_eigenthings.plugins import DISABLE_AUTOLOAD_ENV, plugin_info, reset_plugins
    >>> with mock.patch.dict(os.environ, {DISABLE_AUTOLOAD_ENV: "1"}):
    ...     reset_plugins()
    ...     loaded = [info.name for info in plugin_info()]
    >>> loaded
    ['core:builtin']
    >>> reset_plugins()  # the next use loads the installed plugins again
"""

BUILTIN_PLUGINS: tuple[str, ...] = ("hessian_eigenthings.plugins.builtin",)
"""Modules of the core registered as plugins before any entry point, named ``core:<suffix>``."""


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin: its name, the distribution that ships it and that distribution's version.

    Example:
        >>> from hessian_eigenthings.plugins import PluginInfo, plugin_info
        >>> core = plugin_info()[0]
        >>> isinstance(core, PluginInfo)
        True
        >>> core.name, core.distribution, core.builtin
        ('core:builtin', 'hessian-eigenthings', True)
    """

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

    Example:
        >>> from hessian_eigenthings.plugins import PROJECT_NAME, get_plugin_manager
        >>> manager = get_plugin_manager()
        >>> manager is get_plugin_manager()  # built once, then cached
        True
        >>> manager.project_name == PROJECT_NAME, manager.has_plugin("core:builtin")
        (True, True)
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
    """Everything the loaded plugins registered (computed once, then cached).

    Example:
        >>> from hessian_eigenthings.plugins import get_registries
        >>> registries = get_registries()
        >>> registries is get_registries()
        True
        >>> {"hessian", "ggn", "fisher"} <= set(registries.operators.names())
        True
        >>> registries.operators.get("hessian").__name__
        'HessianOperator'
    """
    global _registries
    with _lock:
        if _registries is None:
            _registries = _collect(get_plugin_manager())
        return _registries


def refresh_registries() -> Registries:
    """Recollect the registries, e.g. after registering an in-process plugin.

    Example:
        >>> from hessian_eigenthings import LambdaOperator
        >>> from hessian_eigenthings.plugins import (
        ...     get_plugin_manager, get_registries, hookimpl, refresh_registries)
        >>> class IdentityPlugin:
        ...     @hookimpl
        ...     def register_operators(self, register):
        ...         register("identity", lambda n: LambdaOperator(n, lambda v: v))
        >>> _ = get_registries()
        >>> _ = get_plugin_manager().register(IdentityPlugin(), name="identity-plugin")
        >>> "identity" in get_registries().operators  # still the cached registries
        False
        >>> "identity" in refresh_registries().operators
        True
        >>> _ = get_plugin_manager().unregister(name="identity-plugin")
        >>> "identity" in refresh_registries().operators
        False
    """
    global _registries
    with _lock:
        _registries = None
        return get_registries()


def reset_plugins() -> None:
    """Forget the manager and registries; the next use rebuilds them (rereads entry points).

    In-process plugins registered on the old manager are gone afterwards.

    Example:
        >>> from hessian_eigenthings.plugins import get_plugin_manager, reset_plugins
        >>> before = get_plugin_manager()
        >>> reset_plugins()
        >>> after = get_plugin_manager()
        >>> after is before, after.has_plugin("core:builtin")
        (False, True)
    """
    global _manager, _registries
    with _lock:
        _manager = None
        _registries = None
        _info.clear()


def plugin_info() -> list[PluginInfo]:
    """The loaded plugins, built-ins first, then entry points in load order.

    Example:
        >>> from hessian_eigenthings.plugins import plugin_info
        >>> infos = plugin_info()
        >>> infos[0].name, infos[0].builtin
        ('core:builtin', True)
        >>> all(not info.builtin for info in infos[1:])  # installed entry points, if any
        True
    """
    pm = get_plugin_manager()
    return [
        _info.get(name, PluginInfo(name, None, None, False)) for name, _ in pm.list_name_plugin()
    ]
