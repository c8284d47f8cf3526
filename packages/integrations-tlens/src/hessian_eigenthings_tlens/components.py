"""Curvature of a TransformerLens model component by component: blocks, attention, MLPs, heads.

:func:`component_operators` builds one curvature operator per component; each is the diagonal
block of the model's curvature for that component's parameters (the other parameters held
fixed), so its eigenvalues say how sharply the loss bends when only that component moves.
:func:`component_spectra` runs :func:`hessian_eigenthings.lanczos` on each.

Components (``components=``):

``"blocks"``   ``blocks.<l>``: every parameter of transformer block l.
``"attn"``     ``blocks.<l>.attn``: block l's attention parameters.
``"mlp"``      ``blocks.<l>.mlp``: block l's MLP parameters.
``"heads"``    ``blocks.<l>.attn.head.<h>``: the entries of block l's attention parameters that
               belong to head h — its rows of W_Q/W_K/W_V (and b_Q/b_K/b_V) and its columns of
               W_O. Entries shared by all heads (b_O, attention norms) belong to no head. With
               grouped-query attention the unit is the key/value group,
               ``blocks.<l>.attn.kv_group.<g>``: key/value head g and the query heads reading it.
a mapping      ``{name: pattern or [patterns]}`` with :func:`tlens_param_filter` patterns.

A head's operator is the layer's attention operator restricted to the head's coordinates,
``Pᵀ A P`` with P the coordinate injection, so each of its products costs one product of the
layer's attention operator. Eigenvectors of head components are in the head's own coordinates:
the selected entries in ``named_parameters()`` order, row-major within each tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeAlias

import torch
from torch import nn

from hessian_eigenthings.algorithms import EigenResult, lanczos
from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.operators import CurvatureOperator, LambdaOperator
from hessian_eigenthings.param_utils import ParamFilter
from hessian_eigenthings_tlens.losses import tlens_forward, tlens_loss, tlens_loss_of_output
from hessian_eigenthings_tlens.names import TLensParamNames, tlens_names, tlens_param_filter

__all__ = ["ComponentSpec", "OperatorFactory", "component_operators", "component_spectra"]

ComponentSpec: TypeAlias = (
    Literal["blocks", "attn", "mlp", "heads"] | Mapping[str, str | Sequence[str]]
)
"""How :func:`component_operators` cuts a model into components.

``"blocks"``, ``"attn"``, ``"mlp"`` (one component per layer), ``"heads"`` (one per attention
head or key/value group) or a mapping ``{name: pattern or [patterns]}`` with
:func:`tlens_param_filter` patterns (module docstring).

Example:
    >>> import torch
    >>> from hessian_eigenthings_tlens import build_tlens_model, component_operators
    >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
    ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
    ...                            "normalization_type": "LN"}, dtype="float64")
    >>> data = [torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])]
    >>> spec = {"embedding": "embed", "mlps": "blocks.*.mlp"}
    >>> {name: op.size for name, op in component_operators(model, data, components=spec).items()}
    {'embedding': 104, 'mlps': 144}
"""
#: ``factory(model, dataloader, param_filter) -> CurvatureOperator`` for other operators.
OperatorFactory: TypeAlias = Callable[[nn.Module, Any, ParamFilter], CurvatureOperator]

_BLOCK = re.compile(r"blocks\.(\d+)\.")


def _make_operator(
    operator: str | OperatorFactory,
    model: nn.Module,
    dataloader: Any,
    param_filter: ParamFilter,
    kwargs: Mapping[str, Any],
) -> CurvatureOperator:
    if callable(operator):
        made = operator(model, dataloader, param_filter)
        if not isinstance(made, CurvatureOperator):
            raise InvalidArgumentError(
                f"the operator factory returned a {type(made).__name__}, not a CurvatureOperator"
            )
        return made
    if operator == "hessian":
        from hessian_eigenthings.operators.hessian import HessianOperator

        return HessianOperator(model, dataloader, tlens_loss(), param_filter=param_filter, **kwargs)
    if operator == "ggn":
        from hessian_eigenthings.operators.ggn import GGNOperator

        return GGNOperator(
            model,
            dataloader,
            tlens_forward(),
            tlens_loss_of_output(),
            param_filter=param_filter,
            **kwargs,
        )
    raise InvalidArgumentError(
        f"operator must be 'hessian', 'ggn' or a factory (model, dataloader, param_filter) -> "
        f"CurvatureOperator, got {operator!r}"
    )


def _block_indices(names: Mapping[str, TLensParamNames]) -> list[int]:
    found = {
        int(m.group(1))
        for entry in names.values()
        for alias in entry.aliases
        if (m := _BLOCK.match(alias))
    }
    if not found:
        raise InvalidArgumentError(
            "the model has no parameters named blocks.<layer>.*; pass a TransformerLens model "
            "(TransformerBridge or HookedTransformer) or name components with patterns"
        )
    return sorted(found)


def _pattern_components(model: nn.Module, components: Any) -> dict[str, tuple[str, ...]]:
    if isinstance(components, Mapping):
        out: dict[str, tuple[str, ...]] = {}
        for name, patterns in components.items():
            patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
            if not isinstance(name, str) or not patterns:
                raise InvalidArgumentError(
                    f"components: entry {name!r} needs a string name and at least one pattern"
                )
            out[name] = patterns
        if not out:
            raise InvalidArgumentError("components: the mapping is empty")
        return out
    layers = _block_indices(tlens_names(model))
    if components == "blocks":
        return {f"blocks.{i}": (f"blocks.{i}",) for i in layers}
    if components in ("attn", "mlp"):
        names = tlens_names(model)
        prefixes = [f"blocks.{i}.{components}" for i in layers]
        present = [
            p
            for p in prefixes
            if any(a == p or a.startswith(p + ".") for e in names.values() for a in e.aliases)
        ]
        if not present:
            raise InvalidArgumentError(
                f"components={components!r}: the model has no blocks.<layer>.{components} "
                "parameters (an attention-only model has no MLPs)"
            )
        return {p: (p,) for p in present}
    raise InvalidArgumentError(
        "components must be 'blocks', 'attn', 'mlp', 'heads' or a mapping "
        f"{{name: pattern(s)}}, got {components!r}"
    )


# -- heads -----------------------------------------------------------------------------------


def _head_config(model: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "cfg", None)
    n_heads = getattr(cfg, "n_heads", None)
    d_head = getattr(cfg, "d_head", None)
    if not isinstance(n_heads, int) or not isinstance(d_head, int) or n_heads < 1 or d_head < 1:
        raise InvalidArgumentError(
            "components='heads' needs model.cfg.n_heads and model.cfg.d_head (a TransformerLens "
            "model's config)"
        )
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    if n_heads % n_kv:
        raise InvalidArgumentError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv}")
    return n_heads, d_head, n_kv


def _owner(model: nn.Module, entry: TLensParamNames) -> nn.Module | None:
    if entry.tree_path is None or "." not in entry.tree_path:
        return None
    try:
        return nn.Module.get_submodule(model, entry.tree_path.rsplit(".", 1)[0])
    except AttributeError:
        return None


def _head_of_entries(
    model: nn.Module, entry: TLensParamNames, param: torch.Tensor, cfg: tuple[int, int, int]
) -> torch.Tensor | None:
    """Per entry of ``param``, the head group it belongs to (``None``: shared by all heads)."""
    n_heads, d_head, n_kv = cfg
    leaf = entry.canonical.rsplit(".", 1)[-1]
    kind, _, proj = leaf.partition("_")
    if kind not in ("W", "b") or proj not in ("Q", "K", "V", "O") or (kind, proj) == ("b", "O"):
        return None
    n = n_kv if proj in ("K", "V") else n_heads
    shape = tuple(param.shape)
    owner = _owner(model, entry)
    # nn.Linear stores (out, in); HF's Conv1D stores (in, out). Biases are (out,) in both.
    layout = "linear" if isinstance(owner, nn.Linear) else None
    if type(owner).__name__ == "Conv1D":
        layout = "conv1d"
    head: torch.Tensor | None = None
    if layout is None and len(shape) >= 2 and shape[0] == n:
        # HookedTransformer layout: the head is the leading axis (W_Q (n, d_model, d_head)).
        head = torch.arange(n).view(n, *[1] * (len(shape) - 1)).expand(shape)
    elif layout is not None and kind == "b" and shape == (n * d_head,):
        head = torch.arange(shape[0]) // d_head
    elif layout is not None and kind == "W" and len(shape) == 2:
        # The head's d_head-wide slice sits on the output axis of Q/K/V, the input axis of O.
        out_axis = 0 if layout == "linear" else 1
        axis = out_axis if proj != "O" else 1 - out_axis
        if shape[axis] == n * d_head:
            along = torch.arange(shape[axis]) // d_head
            head = (along.view(-1, 1) if axis == 0 else along.view(1, -1)).expand(shape)
    if head is None:
        raise InvalidArgumentError(
            f"components='heads': cannot tell which head owns each entry of {entry.raw} "
            f"({entry.canonical}, shape {shape}, n_heads={n_heads}, d_head={d_head}); "
            "heads are supported for split q/k/v/o projections (nn.Linear or HF Conv1D) and "
            "HookedTransformer weights. Use components='attn' instead"
        )
    if proj in ("Q", "O"):
        head = head // (n_heads // n_kv)
    return head.reshape(-1)


def _restricted(base: CurvatureOperator, index: torch.Tensor) -> CurvatureOperator:
    """``Pᵀ A P`` for the coordinates ``index`` of ``base``."""
    index = index.to(base.device)

    def matmat(V: torch.Tensor) -> torch.Tensor:
        full = V.new_zeros(base.size, V.shape[1])
        full[index] = V
        return base.matmat(full)[index]

    return LambdaOperator(
        int(index.numel()),
        lambda v: matmat(v.unsqueeze(1))[:, 0],
        matmat=matmat,
        dtype=base.dtype,
        device=base.device,
    )


def _head_operators(
    model: nn.Module, make: Callable[[ParamFilter], CurvatureOperator]
) -> dict[str, CurvatureOperator]:
    cfg = _head_config(model)
    names = tlens_names(model)
    params = dict(model.named_parameters())
    unit = "head" if cfg[2] == cfg[0] else "kv_group"
    out: dict[str, CurvatureOperator] = {}
    for layer in _block_indices(names):
        base = make(tlens_param_filter(model, f"blocks.{layer}.attn"))
        raw_names: Sequence[str] = getattr(getattr(base, "space", None), "names", ())
        if not raw_names:
            raise InvalidArgumentError(
                "components='heads' needs a model operator (one with .space.names)"
            )
        owners, offset = [], 0
        for raw in raw_names:
            p = params[raw]
            head = _head_of_entries(model, names[raw], p, cfg)
            if head is not None:
                owners.append((head, offset))
            offset += p.numel()
        if not owners:
            raise InvalidArgumentError(
                f"components='heads': block {layer} has no per-head attention weights "
                "(W_Q/W_K/W_V/W_O); use components='attn'"
            )
        for g in range(cfg[2]):
            index = torch.cat([torch.nonzero(h == g).view(-1) + start for h, start in owners])
            if index.numel():
                out[f"blocks.{layer}.attn.{unit}.{g}"] = _restricted(base, index)
    return out


# -- public API ------------------------------------------------------------------------------


def component_operators(
    model: nn.Module,
    dataloader: Any,
    *,
    components: ComponentSpec = "blocks",
    operator: str | OperatorFactory = "hessian",
    **operator_kwargs: Any,
) -> dict[str, CurvatureOperator]:
    """One curvature operator per component of a TransformerLens model (see the module doc).

    Component c's operator is the diagonal block ``A_cc`` of the model's curvature A for c's
    parameters (the others held fixed). Building the operators costs nothing; each product
    costs what one product of the chosen operator costs (a forward and a double backward per
    batch for ``"hessian"``), and a head's product is one product of its layer's attention
    operator restricted to the head's coordinates (``Pᵀ A P``).

    Args:
        model: a ``TransformerBridge`` or ``HookedTransformer``.
        dataloader: token batches (see :mod:`hessian_eigenthings_tlens.batches`).
        components: ``"blocks"``, ``"attn"``, ``"mlp"``, ``"heads"`` or ``{name: patterns}``.
        operator: ``"hessian"`` (:class:`~hessian_eigenthings.HessianOperator` with
            :func:`tlens_loss`), ``"ggn"`` (:class:`~hessian_eigenthings.GGNOperator` with
            :func:`tlens_forward` and :func:`tlens_loss_of_output`), or a factory
            ``(model, dataloader, param_filter) -> CurvatureOperator``.
        **operator_kwargs: passed to the operator (``num_batches``, ``microbatch_size``,
            ``method``, ...); not ``param_filter``, which each component sets.

    Returns:
        ``{component name: CurvatureOperator}`` in layer order.

    Example:
        Each of the 2 heads owns its rows of W_Q, W_K, W_V (4 × 8 each), of b_Q, b_K, b_V
        (4 each) and its 4 × 8 slice of W_O: 140 coordinates; b_O belongs to no head.

        >>> import torch
        >>> from hessian_eigenthings_tlens import build_tlens_model
        >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
        ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
        ...                            "normalization_type": "LN"}, dtype="float64")
        >>> tokens = torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])
        >>> from hessian_eigenthings_tlens import component_operators
        >>> heads = component_operators(model, [tokens], components="heads")
        >>> {name: op.size for name, op in heads.items()}
        {'blocks.0.attn.head.0': 140, 'blocks.0.attn.head.1': 140}
        >>> attn = component_operators(model, [tokens], components="attn")
        >>> {name: op.size for name, op in attn.items()}  # 2 · 140 + 8 (b_O)
        {'blocks.0.attn': 288}
    """
    if "param_filter" in operator_kwargs:
        raise InvalidArgumentError(
            "component_operators sets param_filter per component; drop it (name parameter "
            "groups with components={name: patterns} instead)"
        )

    def make(param_filter: ParamFilter) -> CurvatureOperator:
        return _make_operator(operator, model, dataloader, param_filter, operator_kwargs)

    if components == "heads":
        return _head_operators(model, make)
    return {
        name: make(tlens_param_filter(model, *patterns))
        for name, patterns in _pattern_components(model, components).items()
    }


def component_spectra(
    model: nn.Module,
    dataloader: Any,
    *,
    components: ComponentSpec = "blocks",
    k: int = 3,
    operator: str | OperatorFactory = "hessian",
    which: Literal["LA", "LM", "SA"] = "LA",
    max_iter: int = 100,
    tol: float = 1e-8,
    seed: int | torch.Generator | None = 0,
    operator_kwargs: Mapping[str, Any] | None = None,
    **lanczos_kwargs: Any,
) -> dict[str, EigenResult]:
    """The top ``k`` eigenpairs of each component's curvature, by Lanczos.

    Returns ``{component name: EigenResult}`` in component order (blocks by layer; heads by
    layer, then head). ``which="LA"`` (default) gives the largest eigenvalues, ``"LM"`` the
    largest in magnitude, ``"SA"`` the smallest. ``seed`` makes every run reproducible; each
    component gets the same seed. ``operator_kwargs`` go to the operators, ``lanczos_kwargs``
    to :func:`hessian_eigenthings.lanczos`. A component smaller than ``k`` is an error that
    names it.

    Cost: one Lanczos run per component, each at most ``max_iter`` products of that
    component's operator, with memory ``O(size · iterations)`` for its basis.

    Example:
        The result for a component is the same as Lanczos on a Hessian restricted to it:

        >>> import torch
        >>> from hessian_eigenthings_tlens import build_tlens_model
        >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
        ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
        ...                            "normalization_type": "LN"}, dtype="float64")
        >>> tokens = torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])
        >>> from hessian_eigenthings import HessianOperator, lanczos
        >>> from hessian_eigenthings_tlens import (component_spectra, tlens_loss,
        ...                                        tlens_param_filter)
        >>> spectra = component_spectra(model, [tokens], components="mlp", k=2)
        >>> list(spectra), spectra["blocks.0.mlp"].converged
        (['blocks.0.mlp'], True)
        >>> mlp = HessianOperator(model, [tokens], tlens_loss(),
        ...                       param_filter=tlens_param_filter(model, "blocks.0.mlp"))
        >>> direct = lanczos(mlp, 2, which="LA", seed=0)
        >>> torch.allclose(spectra["blocks.0.mlp"].eigenvalues, direct.eigenvalues)
        True
    """
    operators = component_operators(
        model, dataloader, components=components, operator=operator, **dict(operator_kwargs or {})
    )
    for name, op in operators.items():
        if isinstance(k, int) and not isinstance(k, bool) and k > op.size:
            raise InvalidArgumentError(
                f"k={k} exceeds the size of component {name!r} ({op.size} parameters); pass "
                f"k <= {min(o.size for o in operators.values())}"
            )
    return {
        name: lanczos(op, k, max_iter, which=which, tol=tol, seed=seed, **lanczos_kwargs)
        for name, op in operators.items()
    }
