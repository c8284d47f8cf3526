"""Parameter selection and the flat-vector ↔ parameter views every operator uses.

The vector space of an operator is the concatenation, in ``model.named_parameters()`` order,
of the parameters that have ``requires_grad`` and pass the operator's ``param_filter``.
Shared (tied) parameters appear once, as ``named_parameters()`` reports them.

A filter sees each parameter's name as ``named_parameters()`` reports it (its *raw* name);
if it accepts none of them and a plugin knows the model, the other names the plugin gives each
parameter (:func:`param_aliases`): with
the TransformerLens plugin installed, ``match_names("blocks.*.attn")`` selects the attention
parameters of a ``TransformerBridge``, whose raw names read ``layers.0._original_component...``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError, PluginLoadWarning

__all__ = [
    "ParamFilter",
    "ParamSpace",
    "match_names",
    "match_regex",
    "param_aliases",
    "params_to_vector",
    "select_parameters",
    "vector_to_params",
]

ParamFilter: TypeAlias = Callable[[str, nn.Parameter], bool]
"""``param_filter(name, parameter) -> bool``: whether a parameter is in an operator's space.

Build one with :func:`match_names` or :func:`match_regex`, or write any callable.

Example:
    >>> from torch import nn
    >>> from hessian_eigenthings import select_parameters
    >>> def weights_only(name, param):
    ...     return name.endswith("weight")
    >>> model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> [name for name, _ in select_parameters(model, weights_only)]
    ['0.weight', '2.weight']
"""


def _glob_to_regex(pattern: str) -> str:
    """Translate a dotted-name glob into a regex body.

    ``*`` matches within one dotted component, ``?`` one character other than ``.``,
    ``[...]`` a character class (``[!...]`` negated), and ``**`` any number of components
    (including none when it stands as a whole component).
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            whole = (i == 0 or pattern[i - 1] == ".") and (i + 2 == n or pattern[i + 2] == ".")
            if whole and i + 2 < n:  # "**." : zero or more leading components
                out.append(r"(?:[^.]+\.)*")
                i += 3
                continue
            if whole and i > 0:  # ".**" at the end: drop the dot we already emitted
                out.pop()
                out.append(r"(?:\..+)?")
            else:
                out.append(".*")
            i += 2
        elif c == "*":
            out.append(r"[^.]*")
            i += 1
        elif c == "?":
            out.append(r"[^.]")
            i += 1
        elif c == "[":
            close = pattern.find("]", i + 2 if pattern.startswith("[!", i) else i + 1)
            if close == -1:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : close]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = close + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def match_names(*patterns: str) -> ParamFilter:
    """A filter selecting parameters whose dotted name matches any of the glob ``patterns``.

    ``*`` matches inside one name component, ``**`` any number of components, ``?`` one
    character, ``[abc]`` a character set. A pattern that names a module selects all of that
    module's parameters, so ``match_names("transformer.h.*.attn")`` and
    ``match_names("transformer.h.*.attn.*")`` both select ``transformer.h.0.attn.c_attn.weight``.

    Example:
        >>> from hessian_eigenthings import match_names
        >>> f = match_names("blocks.*.attn.*")
        >>> f("blocks.0.attn.W_Q", None), f("blocks.0.mlp.W_in", None)
        (True, False)
        >>> g = match_names("encoder", "**.bias")  # a module name selects all it holds
        >>> g("encoder.layers.3.weight", None), g("head.bias", None), g("head.weight", None)
        (True, True, False)
    """
    if not patterns:
        raise InvalidArgumentError("match_names needs at least one pattern, e.g. 'layers.*.attn'")
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise InvalidArgumentError(f"match_names patterns must be non-empty strings, got {p!r}")
    regex = re.compile("(?:" + "|".join(_glob_to_regex(p) for p in patterns) + r")(?:\..+)?")

    def _filter(name: str, param: nn.Parameter | None = None) -> bool:
        return regex.fullmatch(name) is not None

    _filter.__name__ = f"match_names({', '.join(map(repr, patterns))})"
    return _filter


def match_regex(pattern: str | re.Pattern[str]) -> ParamFilter:
    """A filter selecting parameters whose name contains a match of the regular expression.

    Uses ``re.search``; anchor with ``^``/``$`` for whole-name matches.

    Example:
        >>> from hessian_eigenthings import match_regex
        >>> f = match_regex(r"^layers[.][0-2][.]")
        >>> f("layers.1.weight", None), f("layers.12.weight", None)
        (True, False)
    """
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise InvalidArgumentError(
            f"match_regex: invalid regular expression {pattern!r}: {e}"
        ) from e

    def _filter(name: str, param: nn.Parameter | None = None) -> bool:
        return regex.search(name) is not None

    _filter.__name__ = f"match_regex({regex.pattern!r})"
    return _filter


def _checked_names(found: object, model: nn.Module) -> dict[str, tuple[str, ...]]:
    """A namer's answer as ``{raw: (other names)}`` over ``model``'s parameters, in
    ``named_parameters()`` order; malformed answers raise ``TypeError``."""
    if not isinstance(found, Mapping):
        raise TypeError(f"returned a {type(found).__name__}, expected a mapping or None")
    out: dict[str, tuple[str, ...]] = {}
    for raw, _ in model.named_parameters():
        names = found.get(raw, ())
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise TypeError(
                f"gave {raw!r} the names {names!r}; expected a sequence of strings "
                "(wrap a single name in a list)"
            )
        names = tuple(names)
        bad = [n for n in names if not isinstance(n, str) or not n]
        if bad:
            raise TypeError(f"gave {raw!r} names that are not non-empty strings: {bad!r}")
        unique = tuple(n for n in dict.fromkeys(names) if n != raw)
        if unique:
            out[raw] = unique
    return out


def param_aliases(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """The other names plugins give ``model``'s parameters: ``{raw name: (aliases, ...)}``.

    Asks the parameter namers plugins registered with the ``register_param_namers`` hook
    (:data:`~hessian_eigenthings.plugins.ParamNamer`), in registry order (the core's built-ins,
    then installed plugins in load order, then in-process ones); the first that returns a
    mapping for ``model`` supplies every alias, the others are not asked. Raw names without
    aliases, and a raw name listed as its own alias, are left out; ``{}`` when no namer knows
    the model. A namer that raises or answers something other than a mapping of raw names to
    sequences of names is reported with a :class:`~hessian_eigenthings.PluginLoadWarning`
    and skipped. :func:`select_parameters` offers a ``param_filter`` these names as well.

    Cost: one call per registered namer until one answers (namers return ``None`` for models
    they do not know after a type check), plus one pass over ``named_parameters()``.

    Example:
        No namer knows a plain ``nn.Sequential``; an in-process plugin teaches the core
        other names for it (the TransformerLens plugin does the same for its models):

        >>> from torch import nn
        >>> from hessian_eigenthings import match_names, param_aliases, select_parameters
        >>> from hessian_eigenthings.plugins import (
        ...     get_plugin_manager, hookimpl, refresh_registries)
        >>> model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
        >>> param_aliases(model)
        {}
        >>> def layer_names(model):
        ...     if not isinstance(model, nn.Sequential):
        ...         return None
        ...     return {"0.weight": ["hidden.W", "0.weight"], "2.weight": ["out.W"]}
        >>> class LayerNames:
        ...     @hookimpl
        ...     def register_param_namers(self, register):
        ...         register("layer-names", layer_names)
        >>> _ = get_plugin_manager().register(LayerNames(), name="layer-names")
        >>> _ = refresh_registries()
        >>> param_aliases(model)  # the raw name listed as its own alias is dropped
        {'0.weight': ('hidden.W',), '2.weight': ('out.W',)}
        >>> [name for name, _ in select_parameters(model, match_names("*.W"))]
        ['0.weight', '2.weight']
        >>> _ = get_plugin_manager().unregister(name="layer-names")
        >>> _ = refresh_registries()
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    from hessian_eigenthings.plugins.manager import get_registries

    for entry in get_registries().param_namers:
        try:
            found = entry.obj(model)
            if found is None:
                continue
            return _checked_names(found, model)
        except Exception as err:
            warnings.warn(
                f"hessian_eigenthings plugin {entry.plugin!r}: its parameter namer "
                f"{entry.name!r} failed on a {type(model).__name__} ({type(err).__name__}: "
                f"{err}); its names are ignored. Upgrade or uninstall the plugin.",
                PluginLoadWarning,
                stacklevel=2,
            )
    return {}


def _shown_names(model: nn.Module, aliases: Mapping[str, Sequence[str]], limit: int = 8) -> str:
    """The first ``limit`` parameter names, each with up to two of its aliases."""
    shown = []
    for name, _ in list(model.named_parameters())[:limit]:
        other = list(aliases.get(name, ()))[:2]
        shown.append(f"{name} (also {', '.join(other)})" if other else name)
    return "; ".join(shown) or "none"


def select_parameters(
    model: nn.Module, param_filter: ParamFilter | None = None
) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs an operator works on, in ``named_parameters()`` order.

    Keeps parameters with ``requires_grad`` that pass ``param_filter`` (all when ``None``).
    The filter is applied to the raw names (as ``named_parameters()`` reports them, and as
    they are returned). Only if it accepts none of them is it applied to the aliases of
    :func:`param_aliases` (the first plugin namer that knows the model), a parameter then
    passing when the filter accepts any of its aliases: a filter written in a plugin's naming
    scheme (``match_names("blocks.*.attn")`` on a TransformerLens bridge) works, and a filter
    that already selects by raw names, including one that *excludes* by name such as
    ``lambda name, p: not name.endswith("bias")``, means exactly what it did without plugins.
    Raises :class:`InvalidArgumentError` when nothing is selected.

    Example:
        >>> from torch import nn
        >>> from hessian_eigenthings import match_names, select_parameters
        >>> model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> _ = model[0].bias.requires_grad_(False)  # frozen: never selected
        >>> [name for name, _ in select_parameters(model)]
        ['0.weight', '2.weight', '2.bias']
        >>> [name for name, _ in select_parameters(model, match_names("2"))]
        ['2.weight', '2.bias']
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if param_filter is not None and not callable(param_filter):
        raise InvalidArgumentError(
            "param_filter must be a callable (name, parameter) -> bool, e.g. match_names('fc.*')"
        )
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if param_filter is None:
        selected = trainable
    else:
        selected = [(name, p) for name, p in trainable if param_filter(name, p)]
    aliases: dict[str, tuple[str, ...]] | None = None
    if not selected and param_filter is not None:
        # written in another naming scheme (a plugin's): offer every parameter's aliases
        aliases = param_aliases(model)
        selected = [
            (name, p)
            for name, p in trainable
            if any(param_filter(alias, p) for alias in aliases.get(name, ()))
        ]
    if not selected:
        shown = _shown_names(model, aliases if aliases is not None else param_aliases(model))
        raise InvalidArgumentError(
            "param_filter selected no trainable parameters; check its patterns against the "
            f"model's parameter names (first ones: {shown}) and that they have "
            "requires_grad=True"
        )
    return selected


def params_to_vector(params: Iterable[torch.Tensor] | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors (or a mapping's values, in order) into one flat vector.

    The result is a new tensor, detached from autograd.

    Example:
        >>> import torch
        >>> from hessian_eigenthings import params_to_vector
        >>> params_to_vector([torch.ones(2, 2), torch.zeros(3)])
        tensor([1., 1., 1., 1., 0., 0., 0.])
        >>> params_to_vector({"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([3.0])})
        tensor([1., 2., 3.])
    """
    tensors = list(params.values() if isinstance(params, Mapping) else params)
    if not tensors:
        raise InvalidArgumentError("params_to_vector needs at least one tensor")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise InvalidArgumentError(
            f"params_to_vector got tensors of several dtypes {sorted(map(str, dtypes))}; "
            "convert them to one dtype first"
        )
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def vector_to_params(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector into views shaped like ``like`` (the inverse of ``params_to_vector``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings import params_to_vector, vector_to_params
        >>> layer = nn.Linear(3, 2)
        >>> pieces = vector_to_params(torch.arange(8.0), list(layer.parameters()))
        >>> [tuple(p.shape) for p in pieces]
        [(2, 3), (2,)]
        >>> pieces[1]
        tensor([6., 7.])
        >>> torch.equal(params_to_vector(pieces), torch.arange(8.0))
        True
    """
    numels = [t.numel() for t in like]
    if vec.ndim != 1 or vec.numel() != sum(numels):
        raise InvalidArgumentError(
            f"vector must be 1-D with {sum(numels)} entries (the parameters' total size), "
            f"got shape {tuple(vec.shape)}"
        )
    chunks = torch.split(vec, numels)
    return [chunk.view(t.shape) for chunk, t in zip(chunks, like, strict=True)]


@dataclass(frozen=True)
class ParamSpace:
    """The selected parameters of a model and the layout of their flat vector.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings import ParamSpace, match_names
        >>> model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> space = ParamSpace.from_model(model, match_names("2"))
        >>> space.names, space.size
        (('2.weight', '2.bias'), 3)
        >>> vec = space.flatten([torch.ones(1, 2), None])  # None counts as zeros
        >>> vec
        tensor([1., 1., 0.])
        >>> [tuple(t.shape) for t in space.unflatten(vec)]
        [(1, 2), (1,)]
    """

    names: tuple[str, ...]
    params: tuple[nn.Parameter, ...]

    @classmethod
    def from_model(cls, model: nn.Module, param_filter: ParamFilter | None = None) -> ParamSpace:
        """Select as :func:`select_parameters` does; the selection must share dtype and device."""
        pairs = select_parameters(model, param_filter)
        space = cls(tuple(n for n, _ in pairs), tuple(p for _, p in pairs))
        kinds = {(p.dtype, p.device) for p in space.params}
        if len(kinds) > 1:
            raise InvalidArgumentError(
                "the selected parameters mix dtypes/devices "
                f"{sorted({f'{d}@{dev}' for d, dev in kinds})}; use param_filter to pick one kind"
            )
        return space

    @property
    def size(self) -> int:
        """Total number of entries n."""
        return sum(p.numel() for p in self.params)

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """One flat vector from parameter-shaped tensors (``None`` entries count as zeros)."""
        return torch.cat(
            [
                (t if t is not None else torch.zeros_like(p)).reshape(-1)
                for t, p in zip(tensors, self.params, strict=True)
            ]
        )

    def unflatten(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """Parameter-shaped views of a flat vector."""
        return vector_to_params(vec, self.params)
