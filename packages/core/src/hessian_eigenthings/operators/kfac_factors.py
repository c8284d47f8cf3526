"""Kronecker blocks of KFAC / EKFAC: which layers, their rows, their factor statistics.

A supported layer (``nn.Linear``, ``nn.Conv2d`` with ``groups=1``) maps an input row a ∈ R^{d_in}
to an output row z = W a + b at each of T weight-sharing positions per sample (T = 1 for a
Linear on (N, d_in); the middle dimensions of a Linear on (N, ..., d_in); the output locations
of a convolution, whose rows are the unfolded input patches). With the weight viewed as the
(d_out, d_in) matrix ``W.reshape(d_out, -1)`` — row-major, as PyTorch flattens it — the
gradient of a loss term is Σ_t g_t a_tᵀ, with g = ∂ℓ/∂z, and a Kronecker block G ⊗ A acts on
a direction M (same shape as W) as G M A.

The bias is either folded into the weight by appending a constant 1 to every input row
(default: one block of shape (d_out, d_in + 1) whose last column is the bias) or a block of its
own, G ⊗ [1] (``separate_weight_and_bias=True``; the weight-bias cross terms are then dropped).
A layer whose weight is not selected keeps only the bias block, and vice versa.

Rows per ``kfac_approx`` (Eschenhagen et al., 2023), for sample n and position t:

``"expand"``  every (n, t) is a row: a_{n,t} and g_{n,t}.
``"reduce"``  one row per sample: ā_n = mean_t a_{n,t} and ĝ_n = Σ_t g_{n,t}.

A layer called several times in one forward (a shared module) contributes each call's
positions as further weight-sharing positions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.operators._jacobian import is_vmap_failure

__all__ = [
    "SUPPORTED_LAYERS",
    "KFACApprox",
    "KroneckerBlock",
    "LayerTap",
    "Slot",
    "add_row_moments",
    "eigen_correction",
    "find_blocks",
    "input_rows",
    "output_gradients",
    "output_rows",
]

KFACApprox: TypeAlias = Literal["expand", "reduce"]
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class Slot:
    """A selected parameter: its index among the operator's parameters and flat offset."""

    index: int
    offset: int
    shape: torch.Size


@dataclass
class KroneckerBlock:
    """One diagonal block G ⊗ A of KFAC, acting on (d_out, d_in) matrices.

    ``d_in`` counts the weight's fan-in, plus one when the bias is folded in (``weight`` and
    ``bias`` both set); a bias-only block has d_in = 1 and A = [1].
    """

    module_name: str
    module: nn.Module
    weight: Slot | None
    bias: Slot | None
    d_out: int
    d_in: int
    slots: tuple[Slot, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.slots = tuple(s for s in (self.weight, self.bias) if s is not None)

    def to_matrix(self, V: Sequence[torch.Tensor]) -> torch.Tensor:
        """(m, d_out, d_in) from the per-parameter (m, *shape) directions ``V``."""
        parts = [V[s.index].reshape(V[s.index].shape[0], self.d_out, -1) for s in self.slots]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    def from_matrix(self, M: torch.Tensor) -> Iterator[tuple[Slot, torch.Tensor]]:
        """The (m, *shape) pieces of the (m, d_out, d_in) ``M``, with their slots."""
        m = M.shape[0]
        if len(self.slots) == 1:
            yield self.slots[0], M.reshape(m, *self.slots[0].shape)
            return
        assert self.weight is not None
        assert self.bias is not None
        yield self.weight, M[:, :, :-1].reshape(m, *self.weight.shape)
        yield self.bias, M[:, :, -1].reshape(m, *self.bias.shape)

    def rows(self, x: torch.Tensor | None, n: int, t: int) -> torch.Tensor:
        """The block's (n, t, d_in) input rows from the layer's (n, t, fan-in) rows ``x``."""
        if self.weight is None:
            return torch.ones(n, t, 1, dtype=self.dtype, device=self.device)
        assert x is not None
        if self.bias is None:
            return x
        return torch.cat([x, x.new_ones(n, t, 1)], dim=2)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.module.parameters())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.module.parameters())).device


def _layer_problem(module: nn.Module, role: str, in_mha: bool) -> str | None:
    if not isinstance(module, SUPPORTED_LAYERS) or role not in ("weight", "bias"):
        return type(module).__name__
    if in_mha:
        return f"{type(module).__name__} used functionally by nn.MultiheadAttention"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return f"Conv2d with groups={module.groups} (only groups=1 is supported)"
    return None


def find_blocks(
    model: nn.Module,
    names: Sequence[str],
    params: Sequence[nn.Parameter],
    *,
    separate_bias: bool,
) -> list[KroneckerBlock]:
    """The Kronecker blocks covering the selected parameters, in flat-vector order.

    Raises :class:`InvalidArgumentError` naming every selected parameter that is not the
    weight or bias of exactly one supported layer.
    """
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    functional: set[int] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            functional.update(id(sub) for sub in mod.modules() if sub is not mod)
        for role, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((mod_name, mod, role))
    layers: dict[str, tuple[nn.Module, dict[str, Slot]]] = {}
    problems: list[str] = []
    offset = 0
    for index, (name, p) in enumerate(zip(names, params, strict=True)):
        slot = Slot(index, offset, p.shape)
        offset += p.numel()
        own = owners.get(id(p), [])
        if len(own) != 1:
            where = " and ".join(repr(o[0]) for o in own)
            problems.append(f"{name!r} (shared by modules {where})")
            continue
        mod_name, mod, role = own[0]
        problem = _layer_problem(mod, role, id(mod) in functional)
        if problem is not None:
            problems.append(f"{name!r} ({problem})")
            continue
        layers.setdefault(mod_name, (mod, {}))[1][role] = slot
    if problems:
        raise InvalidArgumentError(
            "KFAC covers the weights and biases of nn.Linear and nn.Conv2d (groups=1) layers "
            f"only; these selected parameters are not: {', '.join(problems)}. Exclude them with "
            "param_filter (e.g. match_names('fc*', 'conv*'))"
        )
    blocks: list[KroneckerBlock] = []
    for mod_name, (mod, slots) in layers.items():
        weight = cast(torch.Tensor, mod.weight)
        d_out, fan_in = int(weight.shape[0]), int(weight[0].numel())
        w, b = slots.get("weight"), slots.get("bias")
        if w is not None and b is not None and separate_bias:
            blocks.append(KroneckerBlock(mod_name, mod, w, None, d_out, fan_in))
            blocks.append(KroneckerBlock(mod_name, mod, None, b, d_out, 1))
        elif w is not None:
            blocks.append(KroneckerBlock(mod_name, mod, w, b, d_out, fan_in + (b is not None)))
        else:
            blocks.append(KroneckerBlock(mod_name, mod, None, b, d_out, 1))
    blocks.sort(key=lambda blk: blk.slots[0].offset)
    return blocks


# -- rows of one layer call ---------------------------------------------------------------------


def _conv_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(N, L, C_in·kh·kw): the input patch of each of the L output locations."""
    if conv.padding_mode != "zeros":
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding: tuple[int, int] = (0, 0)
    elif isinstance(conv.padding, str):
        padding = (0, 0)
        if conv.padding == "same":  # torch puts the odd extra row/column at the end
            pads: list[int] = []
            for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
    else:
        padding = (int(conv.padding[0]), int(conv.padding[1]))
    cols = F.unfold(
        x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride
    )
    return cols.transpose(1, 2)


def add_row_moments(S: torch.Tensor, X: torch.Tensor, augment: bool) -> None:
    """S += Xᵀ X for the (R, d) rows X, or, with ``augment``, += [X 1]ᵀ [X 1] (the bias
    folded in) without building the augmented copy."""
    d = X.shape[1]
    S[:d, :d].addmm_(X.T, X)
    if augment:
        col = X.sum(0)
        S[:d, d] += col
        S[d, :d] += col
        S[d, d] += X.shape[0]


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, T, fan-in) input rows of one call of a supported layer on input ``x``."""
    if isinstance(module, nn.Conv2d):
        return _conv_patches(module, x if x.ndim == 4 else x.unsqueeze(0))
    if x.ndim == 1:
        return x.reshape(1, 1, -1)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def output_rows(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """(K, N, T, d_out) rows of the (K, *output.shape) output gradients of one call."""
    k = g.shape[0]
    if isinstance(module, nn.Conv2d):
        if g.ndim == 4:  # an unbatched call: (K, C, H, W)
            g = g.unsqueeze(1)
        return g.reshape(k, g.shape[1], g.shape[2], -1).transpose(2, 3)
    if g.ndim == 2:
        return g.reshape(k, 1, 1, -1)
    return g.reshape(k, g.shape[1], -1, g.shape[-1])


# -- capturing layer calls ----------------------------------------------------------------------


@dataclass
class LayerCall:
    input: torch.Tensor
    output: torch.Tensor
    version: int


class LayerTap:
    """Forward hooks that record every call of the given layers: detached input, output."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        on_input: Callable[[str, nn.Module, torch.Tensor], None] | None = None,
    ) -> None:
        self.modules = modules
        self.on_input = on_input  # called with each call's (detached) input, during the forward
        self.calls: dict[str, list[LayerCall]] = {name: [] for name in modules}

    @contextmanager
    def installed(self) -> Iterator[LayerTap]:
        handles = []
        try:
            for name, mod in self.modules.items():
                handles.append(mod.register_forward_hook(self._hook(name)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if len(args) != 1 or not isinstance(args[0], torch.Tensor):
                raise InvalidArgumentError(
                    f"layer {name!r} was called with {len(args)} positional inputs; KFAC needs "
                    "layers called on one input tensor"
                )
            out = output if isinstance(output, torch.Tensor) else output[0]
            self.calls[name].append(LayerCall(args[0].detach(), out, out._version))
            if self.on_input is not None:
                self.on_input(name, module, args[0].detach())

        return hook

    def check_unmodified(self) -> None:
        for name, calls in self.calls.items():
            if any(c.output._version != c.version for c in calls):
                raise InvalidArgumentError(
                    f"the output of layer {name!r} was modified in place after the layer ran (e.g."
                    " by an activation with inplace=True); KFAC needs the layer outputs intact: "
                    "use inplace=False there"
                )

    def clear(self) -> None:
        for calls in self.calls.values():
            calls.clear()


def output_gradients(
    z: torch.Tensor, outputs: Sequence[torch.Tensor], X: torch.Tensor
) -> list[torch.Tensor]:
    """Jᵀ X[k] at each of the ``outputs`` (tensors upstream of ``z``), as (K, *out.shape).

    One backward batched over the K columns (``is_grads_batched``; a loop if vmap fails).
    """
    k = X.shape[0]
    live = [i for i, o in enumerate(outputs) if o.requires_grad] if z.requires_grad else []
    targets = [outputs[i] for i in live]
    X = X.to(z.dtype)
    grads: Sequence[torch.Tensor | None] = []
    if targets and k == 1:
        grads = torch.autograd.grad(z, targets, X[0], retain_graph=True, allow_unused=True)
        grads = [None if g is None else g.unsqueeze(0) for g in grads]
    elif targets:
        try:
            grads = torch.autograd.grad(
                z, targets, X, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        except (RuntimeError, NotImplementedError) as err:
            if isinstance(err, torch.OutOfMemoryError) or not is_vmap_failure(err):
                raise
            cols = [
                torch.autograd.grad(z, targets, x, retain_graph=True, allow_unused=True) for x in X
            ]
            grads = [
                None
                if all(c[j] is None for c in cols)
                else torch.stack([c[j] if c[j] is not None else torch.zeros_like(t) for c in cols])
                for j, t in enumerate(targets)
            ]
    found = {i: g for i, g in zip(live, grads, strict=True) if g is not None}
    return [
        found[i].detach() if i in found else o.new_zeros(k, *o.shape) for i, o in enumerate(outputs)
    ]


# -- EKFAC --------------------------------------------------------------------------------------

Strategy: TypeAlias = Literal["gram", "per-sample"]


def eigen_correction(
    g: torch.Tensor, rows: torch.Tensor, *, strategy: Strategy | None = None
) -> torch.Tensor:
    """Σ_{k,n} (P_{k,n})²_ij for the per-sample gradients P_{k,n} = Σ_t g_{k,n,t} a_{n,t}ᵀ.

    ``g`` is (K, N, T, d_out) and ``rows`` (N, T, d_in), both already rotated into the
    Kronecker eigenbasis (g Q_G, a Q_A). Without weight sharing (T = 1) this is one small
    product of squares. Otherwise either the K·N per-sample gradients are formed (memory
    K·N·d_out·d_in) or the position Gram matrices (memory N·T²·(d_out + d_in)), whichever is
    smaller (``strategy`` forces one).
    """
    k, _, t, d_out = g.shape
    d_in = rows.shape[-1]
    if t == 1:
        return g[:, :, 0].square().sum(0).T @ rows[:, 0].square()
    if strategy is None:
        strategy = "gram" if t * t * (d_out + d_in) < k * d_out * d_in else "per-sample"
    if strategy == "gram":
        Yg = torch.einsum("knso,knto->nsto", g, g)
        Xg = torch.einsum("nsi,nti->nsti", rows, rows)
        return torch.einsum("nsto,nsti->oi", Yg, Xg)
    per_sample = torch.einsum("knto,nti->knoi", g, rows)
    return per_sample.square().sum((0, 1))
