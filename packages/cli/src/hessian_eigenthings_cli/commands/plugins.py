"""``eigenthings plugins``: every loaded plugin and what it registers."""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from rich.console import Console
from rich.table import Table

from hessian_eigenthings.plugins import CommandSpec, PluginInfo, get_registries, plugin_info
from hessian_eigenthings_cli.output import add_output_options, emit, payload

__all__ = ["SPEC"]

#: registry attribute → heading in the table
KINDS = {
    "loss_fns": "loss functions",
    "ce_hvp_backends": "CE-HVP backends",
    "operators": "operators",
    "commands": "commands",
    "loaders": "loaders",
    "param_namers": "parameter namers",
}


def _configure(parser: argparse.ArgumentParser) -> None:
    add_output_options(parser)


def _distribution(info: PluginInfo) -> tuple[str | None, str | None]:
    if info.distribution is not None:
        return info.distribution, info.version
    # Registered by hand (e.g. with autoloading off): entry points are named after their
    # distribution, so try the plugin's name.
    try:
        return info.name, version(info.name)
    except (PackageNotFoundError, ValueError):
        return None, None


def _describe() -> list[dict[str, Any]]:
    registries = get_registries()
    plugins: list[dict[str, Any]] = []
    for info in plugin_info():
        distribution, dist_version = _distribution(info)
        registers: dict[str, list[dict[str, str]]] = {kind: [] for kind in KINDS}
        for kind in KINDS:
            for entry in getattr(registries, kind):
                if entry.plugin == info.name:
                    registers[kind].append({"name": entry.name, "description": entry.description})
        plugins.append(
            {
                "name": info.name,
                "distribution": distribution,
                "version": dist_version,
                "builtin": info.builtin,
                "registers": registers,
            }
        )
    return plugins


def _run(args: argparse.Namespace) -> int:
    plugins = _describe()
    failures: list[str] = list(getattr(args, "plugin_failures", []))

    def render(console: Console) -> None:
        console.print("installed plugins")
        table = Table(show_lines=True)
        table.add_column("plugin", overflow="fold")
        table.add_column("version", no_wrap=True)
        table.add_column("registers", overflow="fold", ratio=1)
        for plugin in plugins:
            name = plugin["name"]
            if plugin["distribution"] not in (None, name):
                name += f"\n({plugin['distribution']})"
            lines = [
                f"{KINDS[kind]}: {', '.join(e['name'] for e in entries)}"
                for kind, entries in plugin["registers"].items()
                if entries
            ]
            table.add_row(name, plugin["version"] or "-", "\n".join(lines) or "(nothing)")
        console.print(table)
        for failure in failures:
            console.print(f"failed to load: {failure}", highlight=False, markup=False)

    emit(args, payload("plugins", plugins=plugins, load_failures=failures), render)
    return 0


SPEC = CommandSpec(
    help="list the installed plugins and what each registers", configure=_configure, run=_run
)
