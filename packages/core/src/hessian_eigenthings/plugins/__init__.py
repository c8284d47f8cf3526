"""The plugin system: hook specifications, the manager and the registries.

Write a plugin as a module with ``@hookimpl`` functions and declare it in your package::

    [project.entry-points.hessian_eigenthings]
    my-distribution-name = "my_package.plugin"
"""

from hessian_eigenthings.plugins.manager import (
    DISABLE_AUTOLOAD_ENV,
    PluginInfo,
    get_plugin_manager,
    get_registries,
    plugin_info,
    refresh_registries,
    reset_plugins,
)
from hessian_eigenthings.plugins.markers import PROJECT_NAME, hookimpl, hookspec
from hessian_eigenthings.plugins.registry import Entry, Register, Registries, Registry
from hessian_eigenthings.plugins.types import (
    CEHvpBackend,
    CEHvpFn,
    CommandSpec,
    LoaderSpec,
    ParamNamer,
)

__all__ = [
    "DISABLE_AUTOLOAD_ENV",
    "PROJECT_NAME",
    "CEHvpBackend",
    "CEHvpFn",
    "CommandSpec",
    "Entry",
    "LoaderSpec",
    "ParamNamer",
    "PluginInfo",
    "Register",
    "Registries",
    "Registry",
    "get_plugin_manager",
    "get_registries",
    "hookimpl",
    "hookspec",
    "plugin_info",
    "refresh_registries",
    "reset_plugins",
]
