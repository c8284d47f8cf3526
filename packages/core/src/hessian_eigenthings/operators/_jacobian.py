"""Exact Jacobian products of a model function, shared by the GGN and Fisher operators.

For z = fn(model, batch) (the model output, or the vector of per-sample losses) and the
selected parameters θ, J = ∂z/∂θ. The operators built on it are Jᵀ M J for an output-space
matrix M, computed per batch in three steps:

1. J v by forward-mode AD — dual tensors swapped in with :func:`torch.func.functional_call`
   under ``no_grad`` — exact, with no autograd graph: memory of a no-grad forward plus one
   tangent per live activation. Cost ≈ 1.5–3 forwards (a forward plus the tangent formulas;
   LayerNorm's and softmax's are elementwise-heavy).
2. the output-space product M (J v), supplied by the operator;
3. Jᵀ(·) by one ordinary forward with graph and a backward.

By default (``shared=False``) step 1 is separate from the forward of step 3. With
``shared=True`` the first direction's forward-mode pass runs on parameters that require grad
and its output carries the graph for step 3: one forward less (measured 1.5–2.1× a gradient
per product instead of 2.0–2.3×), but autograd then also records every tangent computation
and the tangents of saved activations stay alive — 2.65× a gradient's peak memory on the
benchmark transformer, against 1.07× for separate passes.

For m directions (``matmat``) the graph forward is shared and steps 1 and 3 run per direction.
Vectorising step 1 with ``torch.func.vmap`` measured 1.75× faster on an MLP and a transformer
but 1.26× slower on a CNN, with m tangents alive at once; vectorising step 3
(``is_grads_batched``) was no faster anywhere and 6× the memory on the CNN.

When an op has no forward-mode derivative, step 1 falls back (for the operator's lifetime) to
the double-vjp identity J v = ∂/∂w ⟨Jᵀ w, v⟩ on the graph of step 3: exact, reverse mode only,
about one backward more per direction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from torch import nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call

from hessian_eigenthings.errors import InvalidArgumentError

if TYPE_CHECKING:
    from hessian_eigenthings.operators.model_operator import ProductSink

__all__ = [
    "Blocks",
    "BoundFunction",
    "Linearization",
    "ModelFunction",
    "ModelJacobian",
    "is_vmap_failure",
]

Blocks: TypeAlias = list[torch.Tensor | None]
#: ``fn(model, batch) -> tensor``
ModelFunction: TypeAlias = Callable[[nn.Module, Any], torch.Tensor]


class BoundFunction(nn.Module):
    """``fn(model, batch)`` as a module, so :func:`functional_call` can swap the parameters."""

    def __init__(self, model: nn.Module, fn: ModelFunction) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> Any:
        return self.fn(self.model, batch)


def _is_forward_ad_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return "forward ad" in text or "forward-mode" in text or "jvp" in text or "fw_grad" in text


def is_vmap_failure(err: BaseException) -> bool:
    """Whether ``err`` is torch.func.vmap failing to batch an op (not a user error)."""
    text = str(err).lower()
    return any(key in text for key in ("vmap", "batching rule", "batched", "functorch"))


class ModelJacobian:
    """Products with J = ∂ fn(model, batch) / ∂θ for the given parameters θ.

    ``what`` names fn in error messages (e.g. ``"forward_fn"``).
    """

    def __init__(
        self,
        model: nn.Module,
        fn: ModelFunction,
        names: Sequence[str],
        params: Sequence[nn.Parameter],
        what: str,
    ) -> None:
        self.fn = fn
        self.params = tuple(params)
        self.what = what
        self.module = BoundFunction(model, fn)
        # tie_weights (the default) makes every alias of a shared parameter see the dual
        self.keys = tuple(f"model.{name}" for name in names)
        self._forward_ad_ok = True

    # -- evaluation -----------------------------------------------------------------------------

    def check_output(self, out: Any) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise InvalidArgumentError(
                f"{self.what} must return a torch.Tensor, got {type(out).__name__}"
            )
        return out

    def output(self, batch: Any) -> torch.Tensor:
        """fn(model, batch) with its autograd graph (for :meth:`vjp`)."""
        return self.check_output(self.fn(self.module.model, batch))

    # -- J V ------------------------------------------------------------------------------------

    def jvp(
        self, batch: Any, V: Sequence[torch.Tensor], *, shared: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(z, J V, graph): the output z (detached), the (m, *z.shape) products J V, and z with
        its graph when this call built it (``shared=True``: the first direction's forward-mode
        pass also records the graph; or the double-vjp fallback), else ``None``."""
        m = V[0].shape[0]
        if self._forward_ad_ok:
            try:
                cols = []
                graph = None
                for j in range(m):
                    record = shared and j == 0
                    z, tangent = self._dual_pass(batch, [v[j] for v in V], record=record)
                    cols.append(tangent)
                    if record:
                        graph, z = z, z.detach()
                return z, torch.stack(cols), graph
            except (RuntimeError, NotImplementedError) as err:
                if not _is_forward_ad_failure(err):
                    raise
                self._forward_ad_ok = False
        out = self.output(batch)
        return out.detach(), self._jvp_by_double_vjp(out, V), out

    def _dual_pass(
        self, batch: Any, v: Sequence[torch.Tensor], *, record: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, J v) by one forward-mode pass; ``record``: z keeps the graph to the parameters."""
        with torch.set_grad_enabled(record), fwAD.dual_level():
            # each tangent in its own buffer laid out like its parameter (forward AD would
            # otherwise zero-fill and copy a view into the big direction matrix)
            duals = {
                key: fwAD.make_dual(  # type: ignore[no-untyped-call]
                    p if record else p.detach(), torch.empty_like(p).copy_(t)
                )
                for key, p, t in zip(self.keys, self.params, v, strict=True)
            }
            out = self.check_output(functional_call(self.module, duals, (batch,)))
            primal, tangent = fwAD.unpack_dual(out)  # type: ignore[no-untyped-call]
            if tangent is None:  # the output does not depend on the parameters
                tangent = torch.zeros_like(primal)
            return primal, tangent.detach()

    def _jvp_by_double_vjp(self, out: torch.Tensor, V: Sequence[torch.Tensor]) -> torch.Tensor:
        """J v = ∂/∂w ⟨Jᵀ w, v⟩, for graphs with ops that lack forward-mode derivatives."""
        return self.linearize(out).jvp(V)

    def linearize(self, out: torch.Tensor) -> Linearization:
        """The graphs for J v and Jᵀ u at ``out`` (which must carry :meth:`output`'s graph)."""
        w = torch.zeros_like(out, requires_grad=True)
        if not out.requires_grad:  # nothing depends on the parameters
            return Linearization(out, w, [])
        grads = torch.autograd.grad(out, self.params, w, create_graph=True, allow_unused=True)
        live = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return Linearization(out, w, live)

    # -- Jᵀ W -----------------------------------------------------------------------------------

    def vjp(self, out: torch.Tensor, W: torch.Tensor) -> Blocks:
        """Jᵀ W[j] for the (m, *out.shape) cotangents, as per-parameter (m, *shape) blocks.

        ``out`` must carry the graph of :meth:`output`; it is consumed (not retained).
        """
        m = W.shape[0]
        if not out.requires_grad:  # nothing depends on the parameters
            return [None] * len(self.params)
        # One backward per direction on the shared graph: vmapping them (is_grads_batched)
        # measured no faster on an MLP and a transformer and 1.5× slower, with 6× the memory,
        # on a CNN (see docs/operators.md).
        cols = [
            torch.autograd.grad(out, self.params, W[j], retain_graph=j < m - 1, allow_unused=True)
            for j in range(m)
        ]
        if m == 1:
            return [None if g is None else g.unsqueeze(0) for g in cols[0]]
        return _stack_columns(cols, self.params)

    def vjp_into(
        self, out: torch.Tensor, W: torch.Tensor, sink: ProductSink, *, retain: bool = False
    ) -> None:
        """``sink += sink.weight · Jᵀ W[j]`` for every direction j, each parameter's block
        streamed into the sum as the backward produces it (:meth:`ProductSink.add_gradient`);
        same arithmetic as :meth:`vjp` without its n-sized result. ``retain`` keeps ``out``'s
        graph for later products."""
        if not out.requires_grad:  # nothing depends on the parameters: zero blocks
            return
        m = W.shape[0]
        for j in range(m):
            sink.add_gradient(j, out, W[j], retain_graph=retain or j < m - 1)


class Linearization:
    """z = fn(θ) with the graphs of Jᵀ w (w a zero dummy) and of z: J v = ∂⟨Jᵀw, v⟩/∂w by a
    backward through the first, Jᵀ u by a backward through the second; both are retained, so
    the pair serves any number of products. Memory: the forward's saved tensors plus those
    of the Jᵀ w backward (about a training step's activations twice)."""

    def __init__(
        self, out: torch.Tensor, w: torch.Tensor, live: list[tuple[int, torch.Tensor]]
    ) -> None:
        self.out = out
        self.z = out.detach()
        self.w = w
        self.live = live

    def jvp(self, V: Sequence[torch.Tensor]) -> torch.Tensor:
        """The (m, *z.shape) products J V[:, j], by one backward each (graphs retained)."""
        m = V[0].shape[0]
        if not self.live:
            return torch.zeros(m, *self.z.shape, dtype=self.z.dtype, device=self.z.device)
        cols = []
        for j in range(m):
            (col,) = torch.autograd.grad(
                [g for _, g in self.live],
                self.w,
                [V[i][j] for i, _ in self.live],
                retain_graph=True,
                allow_unused=True,
            )
            cols.append(torch.zeros_like(self.z) if col is None else col)
        return torch.stack(cols).detach()


def _stack_columns(
    cols: Sequence[Sequence[torch.Tensor | None]], params: Sequence[torch.Tensor]
) -> Blocks:
    """Per-parameter (m, *shape) blocks from m per-direction block lists (``None`` = zero)."""
    out: Blocks = []
    for i, p in enumerate(params):
        col = [c[i] for c in cols]
        if all(t is None for t in col):
            out.append(None)
        else:
            out.append(torch.stack([t if t is not None else torch.zeros_like(p) for t in col]))
    return out
