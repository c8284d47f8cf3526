"""Registries: what the loaded plugins registered, by kind and name."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from hessian_eigenthings.errors import InvalidArgumentError, PluginError
from hessian_eigenthings.plugins.types import CEHvpBackend, CommandSpec, LoaderSpec, ParamNamer

__all__ = ["Entry", "Register", "Registries", "Registry"]

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Register(Protocol[T_contra]):
    """The callable a hook receives: ``register(name, obj, description="...")``.

    Each call records one entry in the hook's registry, under the calling plugin's name.

    Example:
        A hook called with a stand-in ``register`` that fills a registry directly:

        >>> from hessian_eigenthings.plugins import Register, Registry
        >>> widgets = Registry("widget")
        >>> def register(name, obj, *, description=""):
        ...     widgets.add(name, obj, plugin="my-plugin", description=description)
        >>> def register_widgets(register: Register[object]) -> None:
        ...     register("cog", 42, description="a cog")
        >>> register_widgets(register)
        >>> widgets.entry("cog")
        Entry(name='cog', obj=42, plugin='my-plugin', description='a cog')
    """

    def __call__(self, name: str, obj: T_contra, *, description: str = "") -> None: ...


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing and the plugin that registered it.

    Example:
        >>> from hessian_eigenthings.plugins import get_registries
        >>> entry = get_registries().operators.entry("hessian")
        >>> entry.name, entry.plugin, entry.obj.__name__
        ('hessian', 'core:builtin', 'HessianOperator')
        >>> entry.description
        'exact Hessian of the mean loss'
    """

    name: str
    obj: T
    plugin: str
    description: str = ""


@dataclass
class Registry(Generic[T]):
    """Named things of one kind (``kind`` is e.g. ``"loss function"``).

    Example:
        >>> from hessian_eigenthings.plugins import Registry
        >>> colours = Registry("colour")
        >>> colours.add("red", (255, 0, 0), plugin="palette", description="pure red")
        >>> "red" in colours, len(colours), colours.names()
        (True, 1, ['red'])
        >>> colours.get("red")
        (255, 0, 0)
        >>> colours.get("blue")
        Traceback (most recent call last):
        ...
        hessian_eigenthings.errors.InvalidArgumentError: unknown colour 'blue'; available: ['red']
    """

    kind: str
    _entries: dict[str, Entry[T]] = field(default_factory=dict)

    def add(self, name: str, obj: T, *, plugin: str, description: str = "") -> None:
        """Record ``obj`` as ``name``; a name another plugin took is a :class:`PluginError`."""
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} with an empty name")
        if name in self._entries:
            other = self._entries[name].plugin
            raise PluginError(
                f"{self.kind} {name!r} is registered by both {other!r} and {plugin!r}; "
                "uninstall one of them or block it via get_plugin_manager().set_blocked(name)"
            )
        self._entries[name] = Entry(name, obj, plugin, description)

    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name lists the available ones."""
        try:
            return self._entries[name].obj
        except KeyError:
            raise InvalidArgumentError(
                f"unknown {self.kind} {name!r}; available: {sorted(self._entries) or 'none'}"
            ) from None

    def entry(self, name: str) -> Entry[T]:
        self.get(name)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)


@dataclass
class Registries:
    """One registry per hook. Built by :func:`~hessian_eigenthings.plugins.get_registries`.

    Example:
        >>> from hessian_eigenthings.plugins import get_registries
        >>> registries = get_registries()
        >>> sorted(registries.by_plugin()["core:builtin"])
        ['ce_hvp_backends', 'loss_fns', 'operators']
        >>> "ggn" in registries.operators, "eager" in registries.ce_hvp_backends
        (True, True)
    """

    loss_fns: Registry[Any] = field(default_factory=lambda: Registry("loss function"))
    ce_hvp_backends: Registry[CEHvpBackend] = field(
        default_factory=lambda: Registry("cross-entropy HVP backend")
    )
    operators: Registry[Any] = field(default_factory=lambda: Registry("operator"))
    commands: Registry[CommandSpec] = field(default_factory=lambda: Registry("command"))
    loaders: Registry[LoaderSpec] = field(default_factory=lambda: Registry("loader"))
    param_namers: Registry[ParamNamer] = field(default_factory=lambda: Registry("parameter namer"))

    #: hook name → registry attribute
    HOOKS = (
        ("register_loss_fns", "loss_fns"),
        ("register_ce_hvp_backends", "ce_hvp_backends"),
        ("register_operators", "operators"),
        ("register_commands", "commands"),
        ("register_loaders", "loaders"),
        ("register_param_namers", "param_namers"),
    )

    def by_plugin(self) -> dict[str, dict[str, list[str]]]:
        """``{plugin: {registry: [names]}}`` for listing what each plugin provides."""
        out: dict[str, dict[str, list[str]]] = {}
        for _, attr in self.HOOKS:
            for entry in getattr(self, attr):
                out.setdefault(entry.plugin, {}).setdefault(attr, []).append(entry.name)
        return out
