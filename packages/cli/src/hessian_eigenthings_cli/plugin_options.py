"""Command-line options that sibling plugin packages provide, for a useful message when absent."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

from hessian_eigenthings.plugins import DISABLE_AUTOLOAD_ENV

__all__ = ["PLUGIN_OPTION_PREFIXES", "missing_plugin_message"]

#: option prefix → (distribution that provides it, extra of hessian-eigenthings installing it)
PLUGIN_OPTION_PREFIXES: dict[str, tuple[str, str]] = {
    "--hf": ("hessian-eigenthings-hf", "hf"),
    "--tlens": ("hessian-eigenthings-tlens", "tlens"),
}


def _installed_version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def missing_plugin_message(option: str) -> str | None:
    """Why ``option`` is unknown if a plugin package would provide it, else ``None``."""
    for prefix, (dist, extra) in PLUGIN_OPTION_PREFIXES.items():
        if option == prefix or option.startswith(prefix + "-"):
            installed = _installed_version(dist)
            if installed is None:
                return (
                    f"{option} is provided by the plugin package {dist!r}, which is not "
                    f"installed; install it with: pip install 'hessian-eigenthings[{extra}]'"
                )
            if os.environ.get(DISABLE_AUTOLOAD_ENV):
                return (
                    f"{option} is provided by the plugin package {dist!r}, which is installed "
                    f"({installed}) but not loaded because {DISABLE_AUTOLOAD_ENV} is set; unset "
                    "it to load installed plugins"
                )
            return (
                f"{option} is provided by the plugin package {dist!r} ({installed} is installed) "
                "but it is not loaded or registers no such option; check `eigenthings plugins` "
                f"for load warnings, and upgrade it with: pip install -U {dist}"
            )
    return None
