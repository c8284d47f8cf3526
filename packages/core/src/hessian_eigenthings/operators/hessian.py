"""The Hessian of the dataset-mean loss, known through Hessian-vector products.

For a loss callable ``loss_fn(model, batch) -> scalar`` the operator is

    H = s · Σ_b w_b ∇²_θ L_b(θ) / Σ_b w_b,

the engine's weighted mean over batches (see :mod:`.model_operator`), with θ the selected
parameters. Three ways to get one batch's product ``∇²L_b · v`` are offered (``method``):

``"autograd"`` (default) — exact reverse-over-reverse (Pearlmutter). A forward pass and a
    ``create_graph`` backward give ∇L_b with its graph; the m directions are contracted with it,
    s_j = ⟨∇L_b, v_j⟩, and a second backward of s gives all m products. For m > 1 that backward
    is vmapped over j (``is_grads_batched``), so one graph serves every direction; an op that
    vmap cannot batch makes it fall back to one backward per direction on the same graph.
    Cost: about 3 gradients' worth of matrix products on a deep network (each matmul of the
    forward and first backward is differentiated once more), less when the first layer
    dominates since its input carries no tangent. Memory: the saved activations of the forward
    plus those of the first backward — roughly twice a gradient's activations. ∇L_b itself is
    dropped once contracted, so the n-sized buffers alive at the peak are the product and the
    gradient being built, as in a training step.
``"forward_over_reverse"`` (alias ``"func"``) — exact: ``torch.func.jvp`` of ``torch.func.grad``
    through :func:`torch.func.functional_call`, vmapped over directions. Same arithmetic as
    above in another order; on CPU it measured slower than double backward (see
    ``docs/operators.md``). It needs a model that ``torch.func`` can transform (custom
    ``autograd.Function`` s must define ``setup_context``).
``"finite_difference"`` — central differences of two ordinary gradients along the unit
    direction v̂ = v/‖v‖:

        H v ≈ ‖v‖ · (∇L(θ + ε v̂) − ∇L(θ − ε v̂)) / (2ε).

    No second-order graph: memory is one training step's plus a copy of the selected
    parameters (to restore them bit for bit), which is why it is the method for FSDP/TP
    setups. Error: a truncation bias (ε²/6)·‖v‖·‖∇³L[v̂, v̂, ·]‖ = O(ε²), plus a roundoff term
    ≈ δ·‖∇L‖·‖v‖/ε where δ is the gradient's relative rounding error. Stepping along v̂ keeps
    both independent of ‖v‖ (and so of n). The default ε balances the two — about the cube
    root of the dtype's machine epsilon: 6e-6 for float64, 5e-3 for float32, 0.2 for
    bfloat16, 5e-2 for float16. With float64 and O(1) third derivatives the relative error is
    ~1e-10; the tests hold it to 1e-6. Half-precision models get their two gradients
    subtracted and accumulated in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeAlias, cast

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend
from hessian_eigenthings.operators.batching import iter_tensors, map_tensors, resolve_batch_weight
from hessian_eigenthings.operators.model_operator import ModelCurvatureOperator, ProductSink
from hessian_eigenthings.param_utils import ParamFilter

__all__ = ["DEFAULT_FD_EPS", "HessianOperator", "HvpMethod", "LossFn"]

#: ``loss_fn(model, batch) -> 0-d tensor``: the (mean-reduced) loss of one batch.
LossFn: TypeAlias = Callable[[nn.Module, Any], torch.Tensor]
HvpMethod: TypeAlias = Literal["autograd", "forward_over_reverse", "func", "finite_difference"]

_METHODS = ("autograd", "forward_over_reverse", "finite_difference")
_ALIASES = {"func": "forward_over_reverse"}

#: Default finite-difference step per parameter dtype (≈ cube root of machine epsilon; float16
#: is halved to stay clear of its narrow range).
DEFAULT_FD_EPS: dict[torch.dtype, float] = {
    torch.float64: 6e-6,
    torch.float32: 5e-3,
    torch.bfloat16: 0.2,
    torch.float16: 5e-2,
}

Blocks: TypeAlias = list[torch.Tensor | None]


def _check_method(method: Any) -> str:
    name = _ALIASES.get(method, method) if isinstance(method, str) else method
    if name not in _METHODS:
        raise InvalidArgumentError(
            f"method must be one of {', '.join(map(repr, _METHODS))} (or 'func', an alias of "
            f"'forward_over_reverse'), got {method!r}"
        )
    return cast(str, name)


def _check_fd_eps(fd_eps: Any, method: str, dtype: torch.dtype) -> float:
    if fd_eps is None:
        return DEFAULT_FD_EPS.get(dtype, float(torch.finfo(dtype).eps ** (1 / 3)))
    if method != "finite_difference":
        raise InvalidArgumentError(
            f"fd_eps only applies to method='finite_difference' (method is {method!r}); "
            "drop fd_eps or switch the method"
        )
    ok = isinstance(fd_eps, int | float) and not isinstance(fd_eps, bool)
    if not ok or not math.isfinite(fd_eps) or fd_eps <= 0:
        raise InvalidArgumentError(
            f"fd_eps must be a positive finite number (the step along the unit direction), "
            f"got {fd_eps!r}; leave it None for the dtype's default"
        )
    return float(fd_eps)


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap its parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


class HessianOperator(ModelCurvatureOperator):
    """Hessian of ``loss_fn(model, batch)``, averaged over the dataloader's batches.

    H = s · Σ_b w_b ∇²_θ L_b(θ) / Σ_b w_b, with L_b the batch's mean loss, w_b its weight and
    s = ``num_total_samples`` or 1; see the module docstring for the three ways of computing
    one batch's product ``∇²L_b v`` (``method``).

    Cost per product and batch: ``"autograd"`` — a forward, a backward with graph and a
    second backward, about 3 gradients' worth of work; memory about twice a gradient's
    activations. ``"forward_over_reverse"`` — the same arithmetic through ``torch.func``.
    ``"finite_difference"`` — two ordinary gradients (2 forwards, 2 backwards), a training
    step's memory plus a copy of the selected parameters, and an O(ε²) error. A ``matmat`` of
    m directions shares one graph for all of them (``"autograd"``).

    Args:
        model: the model; its selected parameters span the operator's vector space.
        dataloader: an iterable of batches (re-iterated for every product; one-shot iterators
            are materialised once).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``, the batch's mean loss. A
            ``batch_weight(batch)`` attribute on it sets how much each batch counts (e.g. its
            valid tokens); otherwise batches weigh their number of samples.
        param_filter: which parameters to include (all with ``requires_grad`` when ``None``).
        full_dataset: use every batch (``True``) or only the first ``num_batches`` (default 1).
        num_batches: use at most this many batches from the start of the dataloader.
        microbatch_size: split batches into chunks of at most this many samples (the result is
            unchanged; peak memory drops).
        num_total_samples: scale the mean Hessian by this (the Hessian of the summed loss).
        method: ``"autograd"`` (exact double backward, the fastest exact path measured),
            ``"forward_over_reverse"`` / ``"func"`` (exact, ``torch.func``) or
            ``"finite_difference"`` (two gradients, O(ε²) bias); see the module docstring.
        fd_eps: the finite-difference step along the unit direction (default per dtype:
            :data:`DEFAULT_FD_EPS`).
        backend: the :class:`~hessian_eigenthings.linalg.LinAlgBackend` algorithms should use.
        process_group: a ``torch.distributed`` group whose ranks each hold a shard of the data;
            products are then the weighted mean over all shards (see
            :class:`~hessian_eigenthings.operators.model_operator.ModelCurvatureOperator`).
        reuse_graph: keep ∇L with its graph between products while the model and data are
            unchanged, so that a product is only the second backward (``"autograd"`` only;
            more memory, see
            :class:`~hessian_eigenthings.operators.model_operator.ModelCurvatureOperator`).

    Example:
        For a bias-free linear model f(x) = W x (W of shape K×d) under the mean squared error
        over N samples, L = Σ (W xₙ − yₙ)² / (N K), the Hessian with respect to the row-major
        vec(W) is the closed form (2 / (N K)) · I_K ⊗ XᵀX:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import supervised_loss
        >>> from hessian_eigenthings.operators import HessianOperator
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 2, bias=False).double()
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> Y = torch.randn(5, 2, dtype=torch.float64)
        >>> H = HessianOperator(model, [(X, Y)], supervised_loss(F.mse_loss))
        >>> H.size  # the 2×3 weight
        6
        >>> closed_form = 2 / (5 * 2) * torch.kron(torch.eye(2, dtype=torch.float64), X.T @ X)
        >>> v = torch.randn(6, dtype=torch.float64)
        >>> torch.allclose(H @ v, closed_form @ v)
        True
        >>> torch.allclose(H.to_dense(), closed_form)  # 6 products
        True
        >>> fd = HessianOperator(model, [(X, Y)], supervised_loss(F.mse_loss),
        ...                      method="finite_difference")
        >>> torch.allclose(fd @ v, H @ v)  # a quadratic loss: differences are exact
        True
    """

    def __init__(
        self,
        model: nn.Module,
        dataloader: Any,
        loss_fn: LossFn,
        *,
        param_filter: ParamFilter | None = None,
        full_dataset: bool = True,
        num_batches: int | None = None,
        microbatch_size: int | None = None,
        num_total_samples: int | None = None,
        method: HvpMethod = "autograd",
        fd_eps: float | None = None,
        backend: LinAlgBackend | None = None,
        process_group: Any = None,
        reuse_graph: bool = False,
    ) -> None:
        if not callable(loss_fn):
            raise InvalidArgumentError(
                "loss_fn must be a callable loss_fn(model, batch) -> scalar tensor, got "
                f"{type(loss_fn).__name__}"
            )
        self.method = _check_method(method)
        super().__init__(
            model,
            dataloader,
            param_filter=param_filter,
            full_dataset=full_dataset,
            num_batches=num_batches,
            microbatch_size=microbatch_size,
            num_total_samples=num_total_samples,
            backend=backend,
            process_group=process_group,
            reuse_graph=reuse_graph,
        )
        self.loss_fn = loss_fn
        self.weight_fn = resolve_batch_weight(loss_fn)
        self.fd_eps = _check_fd_eps(fd_eps, self.method, self.dtype)
        self._loss_module = _LossModule(self.model, loss_fn)
        self._func_names = tuple(f"model.{name}" for name in self.space.names)
        self._vmap_ok = True  # cleared when an op cannot be batched over directions
        self._dual_batch = False  # set when torch.func needs explicit zero batch tangents
        self._batch_index = 0

    # -- batch bookkeeping -------------------------------------------------------------------

    def iter_batches(self) -> Iterator[Any]:
        for index, batch in enumerate(super().iter_batches()):
            self._batch_index = index  # for error messages naming the batch
            yield batch

    def _checked_loss(self, loss: Any) -> torch.Tensor:
        i = self._batch_index
        if not isinstance(loss, torch.Tensor):
            raise InvalidArgumentError(
                f"loss_fn must return a scalar torch.Tensor; got {type(loss).__name__} for "
                f"batch {i}"
            )
        if loss.ndim != 0:
            raise InvalidArgumentError(
                f"loss_fn must return a scalar; got shape {tuple(loss.shape)} for batch {i} — "
                "reduce it with .mean()"
            )
        return loss

    def _loss(self, batch: Any) -> torch.Tensor:
        loss = self._checked_loss(self.loss_fn(self.model, batch))
        if not loss.requires_grad:
            raise InvalidArgumentError(
                f"the loss of batch {self._batch_index} does not depend on any trainable "
                "parameter (it has no autograd graph); make sure loss_fn does not detach it or "
                "run under torch.no_grad()"
            )
        return loss

    def _gradient(self, batch: Any, *, create_graph: bool) -> tuple[torch.Tensor | None, ...]:
        return torch.autograd.grad(
            self._loss(batch), self.params, create_graph=create_graph, allow_unused=True
        )

    def _batched(self, batched: Callable[[], Blocks], looped: Callable[[], Blocks]) -> Blocks:
        """``batched()`` (vmapped over directions), or ``looped()`` if vmap fails for an op."""
        if self._vmap_ok:
            try:
                return batched()
            except (RuntimeError, NotImplementedError) as err:
                # only vmap's own failures ("Batching rule not implemented", data-dependent
                # control flow, random ops); anything else is the user's error, raised once
                if isinstance(err, torch.OutOfMemoryError) or not _is_vmap_failure(err):
                    raise
                self._vmap_ok = False
        return looped()

    # -- the per-batch product ---------------------------------------------------------------

    def batch_matmat(self, batch: Any, V: Sequence[torch.Tensor]) -> Blocks:
        if self.method == "autograd":
            return self._double_backward(batch, V)
        if self.method == "forward_over_reverse":
            return self._forward_over_reverse(batch, V)
        return self._finite_difference(batch, V)

    def batch_accumulate(self, batch: Any, V: Sequence[torch.Tensor], sink: ProductSink) -> None:
        if self.method != "autograd" or V[0].shape[0] != 1:
            super().batch_accumulate(batch, V, sink)
            return
        # one direction: the second backward streams each block into the sum as it is
        # produced, so no second n-sized result exists (see ProductSink.add_gradient)
        with sink.recording_graph():
            s = self._directional_derivatives(batch, V)
        if s is not None:
            sink.add_gradient(0, s[0])

    def batch_linearize(self, batch: Any) -> _Gradient | None:
        """∇L of the batch with its graph (kept for ``reuse_graph``; ``"autograd"`` only)."""
        if self.method != "autograd":
            return None
        grads = self._gradient(batch, create_graph=True)
        return [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]

    def linearized_accumulate(
        self, lin: _Gradient, batch: Any, V: Sequence[torch.Tensor], sink: ProductSink
    ) -> None:
        # only the second backward: ∇²L V = ∂⟨∇L, V⟩/∂θ on the kept graph, which it retains
        if not lin:
            return
        if sink.m == 1:  # V as the backward's seeds: no contraction graph, no n-sized seed
            grads, seeds = [g for _, g in lin], [V[i][0] for i, _ in lin]
            sink.add_gradient(0, grads, seeds, retain_graph=True)
            return
        s = _contract(lin, V)
        assert s is not None
        sink.add_blocks(self._second_backward(s, retain=True))

    def _directional_derivatives(
        self, batch: Any, V: Sequence[torch.Tensor]
    ) -> torch.Tensor | None:
        """s_j = ⟨∇L, v_j⟩ with its graph (m values), or ``None`` if ∇L is constant."""
        grads = self._gradient(batch, create_graph=True)
        # ∇L can be freed afterwards (only s's graph is needed)
        return _contract(
            [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad], V
        )

    def _double_backward(self, batch: Any, V: Sequence[torch.Tensor]) -> Blocks:
        s = self._directional_derivatives(batch, V)
        if s is None:
            return [None] * len(self.params)
        return self._second_backward(s, retain=False)

    def _second_backward(self, s: torch.Tensor, *, retain: bool) -> Blocks:
        """Blocks of ∂s_j/∂θ for the m directional derivatives s (``retain``: keep the graph)."""
        params = self.params
        m = s.shape[0]
        if m == 1:
            return _with_leading_dim(
                torch.autograd.grad(s[0], params, retain_graph=retain, allow_unused=True)
            )

        def batched() -> Blocks:
            eye = torch.eye(m, dtype=s.dtype, device=s.device)
            return list(
                torch.autograd.grad(
                    s, params, eye, retain_graph=True, allow_unused=True, is_grads_batched=True
                )
            )

        def looped() -> Blocks:
            cols = [
                torch.autograd.grad(
                    s[j], params, retain_graph=retain or j < m - 1, allow_unused=True
                )
                for j in range(m)
            ]
            return _stack_columns(cols, params)

        return self._batched(batched, looped)

    def _forward_over_reverse(self, batch: Any, V: Sequence[torch.Tensor]) -> Blocks:
        names = self._func_names
        floats = [t for t in iter_tensors(batch) if t.is_floating_point()]

        def loss_of(ps: tuple[torch.Tensor, ...], data: Sequence[torch.Tensor]) -> torch.Tensor:
            it = iter(data)
            rebuilt = map_tensors(batch, lambda t: next(it) if t.is_floating_point() else t)
            params = dict(zip(names, ps, strict=True))
            return self._checked_loss(functional_call(self._loss_module, params, (rebuilt,)))

        grad_fn = grad(loss_of)
        primals = tuple(p.detach() for p in self.params)

        def hvp(*tangents: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out: tuple[torch.Tensor, ...]
            if not self._dual_batch:
                try:
                    out = jvp(lambda ps: grad_fn(ps, floats), (primals,), (tangents,))[1]
                    return out
                except RuntimeError as err:
                    if "ZeroTensor" not in str(err):
                        raise
                    self._dual_batch = True
            # torch 2.15: some losses' forward-mode backward formulas (F.mse_loss) write into
            # the implicit zero tangent of a non-dual target and fail; explicit zero tangents
            # for the batch's floating tensors avoid it.
            zeros = [torch.zeros_like(t) for t in floats]
            out = jvp(grad_fn, (primals, floats), (tangents, zeros))[1]
            return out

        m = V[0].shape[0]
        # Outer autograd (for parameters outside the selection) is not needed: torch.func
        # differentiates regardless of no_grad.
        with torch.no_grad():
            if m == 1:
                return _with_leading_dim(hvp(*(v[0] for v in V)))
            return self._batched(
                lambda: list(vmap(hvp)(*V)),
                lambda: _stack_columns([hvp(*(v[j] for v in V)) for j in range(m)], self.params),
            )

    def _finite_difference(self, batch: Any, V: Sequence[torch.Tensor]) -> Blocks:
        params = self.params
        m = V[0].shape[0]
        acc = self._accumulate_dtype()
        norms = torch.stack([v.reshape(m, -1).to(acc).pow(2).sum(1) for v in V]).sum(0).sqrt()
        out: Blocks = [None] * len(params)
        with torch.no_grad():
            originals = [p.detach().clone() for p in params]
        try:
            for j, norm in enumerate(norms.tolist()):
                if norm == 0:
                    continue
                step = self.fd_eps / norm  # θ ± ε v̂ = θ ± (ε/‖v‖) v
                plus = list(self._gradient_at(batch, originals, [v[j] for v in V], step))
                minus = list(self._gradient_at(batch, originals, [v[j] for v in V], -step))
                scale = norm / (2 * self.fd_eps)
                for i, p in enumerate(params):
                    gp, gm = plus[i], minus[i]
                    plus[i] = minus[i] = None  # release each gradient block once used
                    if gp is None and gm is None:
                        continue
                    # difference first (exact for nearby values), then scale
                    diff = (_as(gp, p, acc) - _as(gm, p, acc)).mul_(scale)
                    if m == 1:
                        out[i] = diff.unsqueeze(0)
                        continue
                    block = out[i]
                    if block is None:
                        block = out[i] = torch.zeros((m, *p.shape), dtype=acc, device=p.device)
                    block[j] = diff
        finally:
            with torch.no_grad():
                for p, original in zip(params, originals, strict=True):
                    p.copy_(original)
        return out

    def _gradient_at(
        self,
        batch: Any,
        originals: Sequence[torch.Tensor],
        direction: Sequence[torch.Tensor],
        step: float,
    ) -> tuple[torch.Tensor | None, ...]:
        """∇L of ``batch`` at θ + step·direction (the parameters are left there)."""
        acc = self._accumulate_dtype()  # half precision: form θ + step·d in float32, then round
        with torch.no_grad():
            for p, original, d in zip(self.params, originals, direction, strict=True):
                p.copy_(original.to(acc).add(d.to(acc), alpha=step))
        return self._gradient(batch, create_graph=False)


#: The live blocks of ∇L with their graph: (parameter index, gradient block).
_Gradient: TypeAlias = list[tuple[int, torch.Tensor]]


def _contract(grads: _Gradient, V: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """s_j = ⟨∇L, v_j⟩ (m values, with ∇L's graph), or ``None`` if ∇L is constant."""
    if not grads:  # the gradient is constant: the Hessian is zero
        return None
    m = V[0].shape[0]
    s = sum(V[i].reshape(m, -1) @ g.reshape(-1) for i, g in grads)
    return cast(torch.Tensor, s)


def _is_vmap_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return any(key in text for key in ("vmap", "batching rule", "batched", "functorch"))


def _as(t: torch.Tensor | None, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, or zeros shaped like ``like`` for ``None`` (an unused parameter)."""
    return torch.zeros_like(like, dtype=dtype) if t is None else t.to(dtype)


def _with_leading_dim(blocks: Sequence[torch.Tensor | None]) -> Blocks:
    """Parameter-shaped products of one direction as (1, *shape) blocks."""
    return [None if b is None else b.unsqueeze(0) for b in blocks]


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
