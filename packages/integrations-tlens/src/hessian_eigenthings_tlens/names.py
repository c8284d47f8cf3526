"""TransformerLens parameter names for any TransformerLens model, and filters built on them.

A ``HookedTransformer`` names its parameters the TransformerLens way (``blocks.0.attn.W_Q``).
A ``TransformerBridge`` does not: ``named_parameters()`` reports the wrapped model's names with
the bridge's wrapper modules spliced in, e.g.
``layers.0._original_component.attn._original_component.q._original_component.weight`` for a
config-built (native) bridge or ``transformer.h.0._original_component.attn.q...`` for GPT-2.
The same tensor is also reachable through the bridge's own module tree
(``blocks.0.attn.q._original_component.weight``), which follows TransformerLens' layout.

:func:`tlens_names` gives every parameter, keyed by the name ``named_parameters()`` reports
(the *raw* name the operators use), the names it answers to:

* its TransformerLens name (``blocks.0.attn.W_Q``, ``blocks.0.mlp.b_in``, ``blocks.0.ln1.w``,
  ``embed.W_E``, ``pos_embed.W_pos``, ``unembed.W_U``, ``ln_final.b``) where one applies;
* its paths through the bridge's module tree without the ``_original_component`` hops
  (``blocks.0.attn.q.weight``, ``blocks.0.mlp.in.weight``);
* the raw name, with and without those hops (``layers.0.attn.q.weight``).

:func:`tlens_param_filter` matches glob patterns (:func:`hessian_eigenthings.match_names`
semantics: ``*`` one dotted component, ``**`` any number, a module's name selects its
parameters) against all of them and returns an ordinary ``param_filter`` for the operators.
Tied parameters answer to the names of every place they are used (a GPT-2 bridge's embedding
is both ``embed.W_E`` and ``unembed.W_U``).

Some bridges split a fused weight into per-projection views: a GPT-2 bridge's
``attn.q``/``attn.k``/``attn.v`` weights are views into the storage of the original ``c_attn``
weight, which stays registered (as ``attn.qkv``) but which the forward no longer reads. Such a
*fused source* (a parameter whose storage holds other, smaller parameters) is flagged in
:class:`TLensParamNames` and never selected by :func:`tlens_param_filter`: its coordinates
are dead (zero curvature), and finite-difference products, which write parameters in place,
would move the views twice through the shared memory.

The plugin also registers :func:`tlens_param_namer` as the core's ``"transformer_lens"``
parameter namer, so the core's own filters see these names too:
``HessianOperator(bridge, ..., param_filter=match_names("blocks.*.attn.*"))`` selects what
``tlens_param_filter(bridge, "blocks.*.attn.*")`` selects (fused sources get no aliases there).
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.param_utils import ParamFilter, match_names

__all__ = ["TLensParamNames", "tlens_names", "tlens_param_filter", "tlens_param_namer"]

_WRAPPER = "_original_component"
_PROJECTIONS = {"q": "Q", "k": "K", "v": "V", "o": "O"}
_MLP_LINEARS = ("in", "out", "gate")
_EMBEDDINGS = {
    ("embed", "weight"): "W_E",
    ("pos_embed", "weight"): "W_pos",
    ("unembed", "weight"): "W_U",
    ("unembed", "bias"): "b_U",
}
# HookedTransformer's grouped-query attention stores its shared keys/values as _W_K etc.
_LEGACY_GROUPED = ("_W_K", "_W_V", "_b_K", "_b_V")


@dataclass(frozen=True)
class TLensParamNames:
    """The names of one parameter.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_tlens import build_tlens_model
        >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
        ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
        ...                            "normalization_type": "LN"}, dtype="float64")
        >>> from hessian_eigenthings_tlens import TLensParamNames, tlens_names
        >>> entry = next(e for e in tlens_names(model).values()
        ...              if e.canonical == "blocks.0.attn.W_Q")
        >>> isinstance(entry, TLensParamNames), entry.fused_source
        (True, False)
        >>> entry.aliases[0], entry.raw in entry.aliases
        ('blocks.0.attn.W_Q', True)

    Attributes:
        raw: the name ``model.named_parameters()`` reports (what operators and filters see).
        canonical: its TransformerLens name when it has one, else its shortest tree path.
        aliases: every name it answers to in :func:`tlens_param_filter`, ``canonical`` first.
        tree_path: a path to it through the model's own module tree (``None`` if unreachable).
        fused_source: its storage holds other, smaller parameters (a fused weight split into
            views, see the module docstring); filters never select it.
    """

    raw: str
    canonical: str
    aliases: tuple[str, ...]
    tree_path: str | None
    fused_source: bool = False


def _strip(path: str) -> str:
    return ".".join(part for part in path.split(".") if part != _WRAPPER)


def transformer_lens_name(path: str) -> str | None:
    """The TransformerLens name of a wrapper-free tree path, or ``None`` when none applies.

    >>> transformer_lens_name("blocks.0.attn.q.weight"), transformer_lens_name("ln_final.bias")
    ('blocks.0.attn.W_Q', 'ln_final.b')
    """
    parts = path.split(".")
    if len(parts) < 2:
        return None
    *head, parent, leaf = parts
    if leaf in _LEGACY_GROUPED:
        return ".".join([*head, parent, leaf[1:]])
    kind = {"weight": "W", "bias": "b"}.get(leaf)
    if kind is None:
        return None
    owner = head[-1] if head else ""
    if owner == "attn" and parent in _PROJECTIONS:
        return ".".join([*head, f"{kind}_{_PROJECTIONS[parent]}"])
    if owner == "mlp" and parent in _MLP_LINEARS:
        return ".".join([*head, f"{kind}_{parent}"])
    if (parent, leaf) in _EMBEDDINGS:
        return ".".join([*head, parent, _EMBEDDINGS[(parent, leaf)]])
    if parent.startswith("ln"):
        return ".".join([*head, parent, kind.lower()])
    return None


def _unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _fused_sources(params: list[torch.Tensor]) -> set[int]:
    """ids of parameters whose storage also backs a smaller parameter (split views)."""
    largest: dict[tuple[str, int], list[torch.Tensor]] = {}
    for p in params:
        if p.is_meta:  # no memory: every meta tensor reports the same (null) storage
            continue
        largest.setdefault((str(p.device), p.untyped_storage().data_ptr()), []).append(p)
    return {
        id(p)
        for group in largest.values()
        for p in group
        if any(q.numel() < p.numel() for q in group)
    }


def tlens_names(model: nn.Module) -> dict[str, TLensParamNames]:
    """Every parameter's names, keyed by raw name, in ``model.named_parameters()`` order.

    Each value is a :class:`TLensParamNames`: the TransformerLens name (``canonical``) and
    every alias a filter pattern may use (module docstring). Cost: one walk over the module
    tree and the parameters, O(number of parameter tensors · depth); no forward pass.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_tlens import build_tlens_model
        >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
        ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
        ...                            "normalization_type": "LN"}, dtype="float64")
        >>> from hessian_eigenthings_tlens import tlens_names
        >>> names = tlens_names(model)
        >>> [entry.canonical for entry in names.values()][:4]
        ['embed.W_E', 'pos_embed.W_pos', 'blocks.0.ln1.w', 'blocks.0.ln1.b']
        >>> list(names) == [raw for raw, _ in model.named_parameters()]
        True
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # nn.Module's own traversal: TransformerBridge overrides named_parameters() to report the
    # wrapped model's names, while its module tree carries the TransformerLens layout.
    tree: dict[int, list[str]] = {}
    for path, p in nn.Module.named_parameters(model, remove_duplicate=False):
        tree.setdefault(id(p), []).append(path)
    named = list(model.named_parameters())
    fused = _fused_sources([p for _, p in named])
    out: dict[str, TLensParamNames] = {}
    for raw, p in named:
        # Bridge components first: their paths take the fewest wrapper hops (the wrapped
        # model's own names, e.g. GPT-2's ln_1, come through more of them).
        paths = sorted(tree.get(id(p), []), key=lambda path: path.split(".").count(_WRAPPER))
        stripped = _unique([_strip(path) for path in paths])
        translated = [name for name in map(transformer_lens_name, stripped) if name is not None]
        raw_stripped = _strip(raw)
        if translated:
            canonical = translated[0]
        elif stripped:
            canonical = min(stripped, key=lambda s: (s.count("."), len(s)))
        else:
            canonical = raw_stripped
        aliases = _unique([canonical, *translated, *stripped, raw_stripped, raw])
        out[raw] = TLensParamNames(
            raw, canonical, aliases, paths[0] if paths else None, id(p) in fused
        )
    return out


def _described(patterns: tuple[str, ...]) -> str:
    return ", ".join(map(repr, patterns))


def tlens_param_filter(model: nn.Module, *patterns: str) -> ParamFilter:
    """A ``param_filter`` selecting ``model``'s parameters any of whose names match a pattern.

    Names are those of :func:`tlens_names`, so ``tlens_param_filter(bridge, "blocks.*.attn")``
    selects every attention parameter of a ``TransformerBridge`` whose raw names do not
    contain ``blocks``. Fused sources (see the module docstring) are never selected. Each
    pattern must select at least one parameter. Cost: one :func:`tlens_names` call when the
    filter is built; the returned filter is a set lookup.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_tlens import build_tlens_model
        >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
        ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
        ...                            "normalization_type": "LN"}, dtype="float64")
        >>> tokens = torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])
        >>> from hessian_eigenthings import HessianOperator
        >>> from hessian_eigenthings_tlens import tlens_loss, tlens_names, tlens_param_filter
        >>> keep = tlens_param_filter(model, "blocks.*.attn.W_*")
        >>> names = tlens_names(model)
        >>> [names[raw].canonical for raw, p in model.named_parameters() if keep(raw, p)]
        ['blocks.0.attn.W_Q', 'blocks.0.attn.W_K', 'blocks.0.attn.W_V', 'blocks.0.attn.W_O']
        >>> HessianOperator(model, [tokens], tlens_loss(), param_filter=keep).size  # 4 · 8 · 8
        256
    """
    if not patterns:
        raise InvalidArgumentError(
            "tlens_param_filter needs at least one pattern, e.g. 'blocks.*.attn'"
        )
    names = tlens_names(model)
    params = dict(model.named_parameters())
    selected: set[str] = set()
    for pattern in patterns:
        matches = match_names(pattern)
        hits = {
            raw
            for raw, entry in names.items()
            if not entry.fused_source
            and any(matches(alias, params[raw]) for alias in entry.aliases)
        }
        if not hits:
            shown = [entry.canonical for entry in names.values()][:12]
            raise InvalidArgumentError(
                f"tlens_param_filter: pattern {pattern!r} matches no parameter of the model; "
                f"its TransformerLens names include {shown} (see tlens_names(model) for all)"
            )
        selected |= hits

    def _filter(name: str, param: Any = None) -> bool:
        return name in selected

    _filter.__name__ = f"tlens_param_filter({_described(patterns)})"
    return _filter


# model → (its parameters' (raw name, id, device, data pointer), the namer's answer). Weak keys:
# the cache never keeps a model alive.
_Layout = tuple[tuple[str, int, str, int], ...]
_namer_cache: weakref.WeakKeyDictionary[
    nn.Module, tuple[_Layout, Mapping[str, tuple[str, ...]]]
] = weakref.WeakKeyDictionary()


def _is_transformer_lens_model(model: object) -> bool:
    # A model of a transformer_lens class exists only once transformer_lens is imported; the
    # module check keeps this free for every other model and never imports transformer_lens.
    if "transformer_lens" not in sys.modules:
        return False
    return any(cls.__module__.split(".", 1)[0] == "transformer_lens" for cls in type(model).__mro__)


def tlens_param_namer(model: nn.Module) -> Mapping[str, tuple[str, ...]] | None:
    """The core's parameter namer for TransformerLens models (registered as ``"transformer_lens"``).

    For a model of a TransformerLens class (``TransformerBridge``, ``HookedTransformer``, or a
    subclass) it maps each raw parameter name to the other names :func:`tlens_names` gives it
    (``aliases`` without the raw name itself); fused sources get none, so only a filter that
    accepts their raw name selects them. For any other model it returns ``None`` without
    importing anything. With it registered,
    :func:`~hessian_eigenthings.select_parameters` (and so every operator's ``param_filter``)
    matches ``match_names("blocks.*.attn")`` against these names.

    Cost: a check of the model's class; for a TransformerLens model one :func:`tlens_names`
    call, cached per model (weakly) and recomputed when its parameters (names, objects,
    devices or memory) change, so a repeat costs one pass over ``named_parameters()``.

    Example:
        >>> from torch import nn
        >>> from hessian_eigenthings_tlens import build_tlens_model, tlens_param_namer
        >>> tlens_param_namer(nn.Linear(3, 2)) is None  # not a TransformerLens model
        True
        >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
        ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
        ...                            "normalization_type": "LN"}, dtype="float64")
        >>> names = tlens_param_namer(model)
        >>> raw = [name for name, _ in model.named_parameters()]
        >>> names[raw[4]]
        ('blocks.0.attn.W_Q', 'blocks.0.attn.q.weight', 'layers.0.attn.q.weight')
        >>> from hessian_eigenthings import match_names, select_parameters
        >>> len(select_parameters(model, match_names("blocks.*.attn.*")))  # Q, K, V, O + biases
        8
    """
    if not _is_transformer_lens_model(model):
        return None
    layout: _Layout = tuple(
        (raw, id(p), str(p.device), p.data_ptr()) for raw, p in model.named_parameters()
    )
    cached = _namer_cache.get(model)
    if cached is not None and cached[0] == layout:
        return cached[1]
    answer = MappingProxyType(
        {
            raw: () if entry.fused_source else tuple(a for a in entry.aliases if a != raw)
            for raw, entry in tlens_names(model).items()
        }
    )
    _namer_cache[model] = (layout, answer)
    return answer
