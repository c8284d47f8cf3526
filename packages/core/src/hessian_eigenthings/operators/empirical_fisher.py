"""The empirical Fisher: the mean outer product of per-sample loss gradients.

With gᵢ = ∇_θ ℓᵢ the gradient of sample i's loss, a batch of N samples contributes

    F_b = (1/N) Σᵢ gᵢ gᵢᵀ = (1/N) J_bᵀ J_b,   J_b = ∂(ℓ₁, …, ℓ_N)/∂θ  (the N × n gradient matrix),

and the operator is the engine's sample-weighted mean over batches, i.e. (1/N_total) Σ gᵢ gᵢᵀ
over the data (times ``num_total_samples`` if given). It is positive semi-definite, of rank at
most the number of samples, and — unlike the true Fisher — uses the observed labels.

Per batch the product never forms J_b (the reference implementation materialises it: N
gradients). Instead (see :mod:`._jacobian`):

1. the N directional derivatives dᵢ = gᵢᵀ v come from one forward-mode pass through the
   vectorised per-sample losses (``torch.func.vmap`` over the sample dimension);
2. F_b v = (1/N) Σᵢ dᵢ gᵢ is one ordinary backward of the per-sample losses weighted by d/N.

Cost: a forward-mode pass, a forward and a backward — about 2–3× a gradient (vmapping the
per-sample loss makes each a little dearer than its batched counterpart), memory about a
training step's whatever N is; ``jvp="shared"`` saves the forward at the price of memory, as for
the GGN. With very few samples per batch (≤ ``per_sample_limit``, default 2) the per-sample
gradients themselves are cheaper (vmap's fixed cost dominates at such sizes): one ordinary
gradient gᵢ per sample, folded in as gᵢ (gᵢᵀ V)/N and dropped — a gradient's memory, and all m
directions of a ``matmat`` for the price of N gradients. (This route calls
``per_sample_loss_fn`` directly, so it also serves models vmap cannot batch.)

The loss comes in one of two shapes:

``per_sample_loss_fn(model, sample)`` — the loss of ONE un-batched sample (its tensors without
    the sample dimension ``sample_dim``); it is vectorised with ``torch.func.vmap``, so the model
    must support vmap (``nn.LSTM`` does not — use the other shape). Build it from a criterion
    with :func:`~hessian_eigenthings.loss_fns.supervised_per_sample_loss`.
``loss_fn=..., per_sample=True`` — ``loss_fn(model, batch)`` returns the (N,) vector of
    per-sample losses of the batch (e.g. ``reduction="none"``); no vmap needed. ``loss_fn`` is
    read only with ``per_sample=True``; a mean-reduced ``loss_fn`` cannot give per-sample
    gradients.

Every batch tensor whose size along ``sample_dim`` is the batch's sample count is split into
samples; other tensors (and non-tensors) are shared by all samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import vmap
from torch.utils import _pytree as pytree

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend
from hessian_eigenthings.operators._jacobian import Blocks, Linearization, is_vmap_failure
from hessian_eigenthings.operators._sandwich import JvpPass, SandwichOperator, check_callable
from hessian_eigenthings.operators.batching import iter_tensors
from hessian_eigenthings.operators.model_operator import ProductSink
from hessian_eigenthings.param_utils import ParamFilter

__all__ = ["EmpiricalFisherOperator", "PerSampleLossFn"]

#: ``per_sample_loss_fn(model, sample) -> 0-d tensor`` for one un-batched sample
PerSampleLossFn = Callable[[nn.Module, Any], torch.Tensor]


def _sample_count(batch: Any, sample_dim: int) -> int:
    for t in iter_tensors(batch):
        if t.ndim > sample_dim:
            return int(t.shape[sample_dim])
    raise InvalidArgumentError(
        f"the batch has no tensor with a sample dimension {sample_dim} (sample_dim); the "
        "empirical Fisher needs one to split the batch into samples"
    )


class _PerSampleLosses:
    """``(model, batch) -> (N,)``: ``per_sample_loss_fn`` vectorised over the samples."""

    def __init__(self, per_sample_loss_fn: PerSampleLossFn, sample_dim: int) -> None:
        self.per_sample_loss_fn = per_sample_loss_fn
        self.sample_dim = sample_dim

    def _dim(self, x: Any, n: int) -> int | None:
        """The sample dimension of batch leaf ``x`` (``None``: shared by every sample)."""
        d = self.sample_dim
        split = isinstance(x, torch.Tensor) and x.ndim > d and x.shape[d] == n
        return d if split else None

    def in_dims(self, batch: Any) -> Any:
        n = _sample_count(batch, self.sample_dim)
        return pytree.tree_map(lambda x: self._dim(x, n), batch)

    def sample(self, batch: Any, i: int, n: int) -> Any:
        """Sample ``i`` of a batch of ``n`` (shared leaves as they are)."""
        return pytree.tree_map(
            lambda x: x if self._dim(x, n) is None else x.select(self.sample_dim, i), batch
        )

    @staticmethod
    def checked(loss: Any) -> torch.Tensor:
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InvalidArgumentError(
                "per_sample_loss_fn must return a scalar (the loss of the one sample it is "
                f"given), got {shape}"
            )
        return loss

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        def one(sample: Any) -> torch.Tensor:
            return self.checked(self.per_sample_loss_fn(model, sample))

        losses: torch.Tensor = self.vectorized(one, (self.in_dims(batch),), batch)
        return losses

    def vectorized(self, fn: Callable[..., Any], in_dims: Any, *args: Any) -> Any:
        """``vmap(fn, in_dims)(*args)``, with a pointer to the vmap-free form if it fails."""
        try:
            return vmap(fn, in_dims=in_dims)(*args)
        except (RuntimeError, NotImplementedError, ValueError) as err:
            if isinstance(err, InvalidArgumentError) or not is_vmap_failure(err):
                raise
            raise InvalidArgumentError(
                f"per_sample_loss_fn could not be vectorised over the samples with "
                f"torch.func.vmap ({err}). Pass loss_fn=<(model, batch) -> (N,) per-sample "
                "losses> with per_sample=True instead (e.g. a criterion with reduction='none')"
            ) from err


class EmpiricalFisherOperator(SandwichOperator):
    """Empirical Fisher (1/N) Σᵢ ∇ℓᵢ ∇ℓᵢᵀ over the dataloader's samples.

    F = (s / N) Σᵢ gᵢ gᵢᵀ with gᵢ = ∇_θ ℓᵢ the gradient of sample i's loss at its observed
    label, N the number of samples and s = ``num_total_samples`` or 1; positive semi-definite,
    of rank at most N. The N × n matrix of the gᵢ is never formed (see the module docstring).

    Cost per product and batch: a forward-mode pass through the vectorised per-sample losses,
    a forward and a backward — about 2–3× a gradient, at a training step's memory whatever N
    is. Batches of at most ``per_sample_limit`` samples take N ordinary gradients instead.

    Args:
        model: the model; its selected parameters span the operator's vector space.
        dataloader: an iterable of batches (re-iterated for every product).
        per_sample_loss_fn: ``per_sample_loss_fn(model, sample) -> scalar`` for one
            un-batched sample (see the module docstring).
        loss_fn: with ``per_sample=True``: ``loss_fn(model, batch) -> (N,)`` per-sample losses
            (the reference API's form). Ignored when ``per_sample_loss_fn`` is given and
            ``per_sample`` is False.
        per_sample: whether ``loss_fn`` returns per-sample losses (it must).
        sample_dim: the sample dimension of the batch tensors (microbatching needs 0).
        per_sample_limit: batches (chunks) of at most this many samples use explicit
            per-sample gradients, one ordinary gradient each (faster for tiny batches; N
            gradients of memory; meant for a handful). 0 disables.
        jvp: ``"separate"`` (default: J V by its own no-grad forward-mode pass; peak memory
            of a training step) or ``"shared"`` (that pass also records the graph for Jᵀ: one
            forward less per product, but up to ~2.7× a gradient's memory).

    The keyword arguments ``param_filter``, ``full_dataset``, ``num_batches``,
    ``microbatch_size``, ``num_total_samples``, ``backend``, ``process_group`` and
    ``reuse_graph`` are those of every model operator
    (:class:`~hessian_eigenthings.operators.model_operator.ModelCurvatureOperator`).

    Example:
        For a bias-free linear model under the per-sample mean squared error
        ℓᵢ = ‖W xᵢ − yᵢ‖² / K, the gradients are gᵢ = vec((2/K) rᵢ xᵢᵀ) with residuals
        rᵢ = W xᵢ − yᵢ, which gives the operator in closed form:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import supervised_per_sample_loss
        >>> from hessian_eigenthings.operators import EmpiricalFisherOperator
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 2, bias=False).double()
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> Y = torch.randn(5, 2, dtype=torch.float64)
        >>> ef = EmpiricalFisherOperator(model, [(X, Y)], supervised_per_sample_loss(F.mse_loss))
        >>> R = (X @ model.weight.T - Y).detach()
        >>> grads = (2 / 2) * torch.einsum("nk,nd->nkd", R, X).reshape(5, 6)  # rows gᵢ
        >>> torch.allclose(ef.to_dense(), grads.T @ grads / 5)
        True
        >>> def losses(model, batch):  # the other form: (model, batch) -> (N,) losses
        ...     inputs, targets = batch
        ...     return F.mse_loss(model(inputs), targets, reduction="none").mean(1)
        >>> per_sample = EmpiricalFisherOperator(model, [(X, Y)], loss_fn=losses, per_sample=True)
        >>> v = torch.randn(6, dtype=torch.float64)
        >>> torch.allclose(per_sample @ v, ef @ v)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        dataloader: Any,
        per_sample_loss_fn: PerSampleLossFn | None = None,
        *,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        per_sample: bool = False,
        sample_dim: int = 0,
        per_sample_limit: int = 2,
        param_filter: ParamFilter | None = None,
        full_dataset: bool = True,
        num_batches: int | None = None,
        microbatch_size: int | None = None,
        num_total_samples: int | None = None,
        backend: LinAlgBackend | None = None,
        process_group: Any = None,
        jvp: JvpPass = "separate",
        reuse_graph: bool = False,
    ) -> None:
        if isinstance(sample_dim, bool) or not isinstance(sample_dim, int) or sample_dim < 0:
            raise InvalidArgumentError(f"sample_dim must be an int ≥ 0, got {sample_dim!r}")
        if microbatch_size is not None and sample_dim != 0:
            raise InvalidArgumentError(
                "microbatch_size splits batches along dimension 0; with sample_dim="
                f"{sample_dim} leave microbatch_size None (or put the samples first)"
            )
        if isinstance(per_sample_limit, bool) or not isinstance(per_sample_limit, int):
            raise InvalidArgumentError(
                f"per_sample_limit must be an int ≥ 0, got {per_sample_limit!r}"
            )
        fn: Callable[[nn.Module, Any], torch.Tensor]
        self.per_sample_loss_fn = per_sample_loss_fn
        if per_sample:
            if per_sample_loss_fn is not None:
                raise InvalidArgumentError(
                    "pass either per_sample_loss_fn or loss_fn with per_sample=True, not both"
                )
            check_callable(loss_fn, "loss_fn", "loss_fn(model, batch) -> (N,) per-sample losses")
            assert loss_fn is not None
            fn = loss_fn
            what = "loss_fn"
        elif per_sample_loss_fn is not None:
            check_callable(
                per_sample_loss_fn,
                "per_sample_loss_fn",
                "per_sample_loss_fn(model, sample) -> scalar loss of one sample",
            )
            fn = _PerSampleLosses(per_sample_loss_fn, sample_dim)
            what = "per_sample_loss_fn"
        elif loss_fn is not None:
            raise InvalidArgumentError(
                "the empirical Fisher needs per-sample gradients, which a batch-mean loss_fn "
                "cannot give: pass per_sample=True with a loss_fn returning the (N,) per-sample "
                "losses (e.g. reduction='none'), or per_sample_loss_fn(model, sample)"
            )
        else:
            raise InvalidArgumentError(
                "EmpiricalFisherOperator needs per_sample_loss_fn(model, sample) -> scalar, or "
                "loss_fn(model, batch) -> (N,) per-sample losses with per_sample=True"
            )
        super().__init__(
            model,
            dataloader,
            fn,
            what,
            param_filter=param_filter,
            full_dataset=full_dataset,
            num_batches=num_batches,
            microbatch_size=microbatch_size,
            num_total_samples=num_total_samples,
            backend=backend,
            process_group=process_group,
            reuse_graph=reuse_graph,
            jvp=jvp,
        )
        self.loss_fn = loss_fn
        self.per_sample = per_sample
        self.sample_dim = sample_dim
        self.per_sample_limit = per_sample_limit
        self.weight_fn = lambda batch: _sample_count(batch, sample_dim)

    def _losses_check(self, z: torch.Tensor, batch: Any) -> int:
        n = _sample_count(batch, self.sample_dim)
        if z.shape != (n,):
            raise InvalidArgumentError(
                f"{self.jacobian.what} must give one loss per sample: expected shape ({n},) for "
                f"batch {self.batch_index}, got {tuple(z.shape)}"
            )
        return n

    def output_matmat(self, z: torch.Tensor, batch: Any, U: torch.Tensor) -> torch.Tensor:
        return U / self._losses_check(z, batch)

    def batch_matmat(self, batch: Any, V: Sequence[torch.Tensor]) -> Blocks:
        explicit = self._explicit_route(batch)
        if explicit is not None:
            return self._explicit(*explicit, batch, V)
        return super().batch_matmat(batch, V)

    def batch_accumulate(self, batch: Any, V: Sequence[torch.Tensor], sink: ProductSink) -> None:
        explicit = self._explicit_route(batch)
        if explicit is None:
            super().batch_accumulate(batch, V, sink)
        else:
            losses, n = explicit
            _add_samples(self._sample_gradients(losses, n, batch), n, V, sink)

    def batch_linearize(self, batch: Any) -> Any:  # Linearization | _SampleGradients
        """Kept for ``reuse_graph``: the per-sample gradients of a batch small enough for the
        explicit route (N gradients, then no autograd at all per product), else z with the
        graphs of J v and Jᵀ u."""
        explicit = self._explicit_route(batch)
        if explicit is None:
            return super().batch_linearize(batch)
        return _SampleGradients(list(self._sample_gradients(*explicit, batch)))

    def linearized_accumulate(
        self,
        lin: Linearization | _SampleGradients,
        batch: Any,
        V: Sequence[torch.Tensor],
        sink: ProductSink,
    ) -> None:
        if isinstance(lin, Linearization):
            super().linearized_accumulate(lin, batch, V, sink)
            return
        _add_samples(lin.grads, len(lin.grads), V, sink)

    def _explicit_route(self, batch: Any) -> tuple[_PerSampleLosses, int] | None:
        """(losses, N) when this batch is small enough for one gradient per sample."""
        losses = self.jacobian.fn
        if isinstance(losses, _PerSampleLosses):
            n = _sample_count(batch, self.sample_dim)
            if n <= self.per_sample_limit:
                return losses, n
        return None

    def _explicit(
        self, losses: _PerSampleLosses, n: int, batch: Any, V: Sequence[torch.Tensor]
    ) -> Blocks:
        """(1/N) Σᵢ gᵢ (gᵢᵀ V) for a tiny batch, one ordinary gradient gᵢ per sample.

        For N ≤ ``per_sample_limit`` (a handful) this measured faster than the vmapped routes,
        whose fixed cost dominates at such sizes. Each gᵢ is folded in and dropped, so the
        memory is a gradient's plus the output.
        """
        return _fold_samples(self._sample_gradients(losses, n, batch), n, V)

    def _sample_gradients(
        self, losses: _PerSampleLosses, n: int, batch: Any
    ) -> Iterator[tuple[torch.Tensor | None, ...]]:
        """gᵢ = ∇ℓᵢ for each of the batch's n samples, one ordinary backward each."""
        for i in range(n):
            loss = losses.checked(losses.per_sample_loss_fn(self.model, losses.sample(batch, i, n)))
            yield torch.autograd.grad(loss, self.params, allow_unused=True)


class _SampleGradients:
    """The N per-sample gradients of a tiny batch (the explicit route's linearisation)."""

    def __init__(self, grads: list[tuple[torch.Tensor | None, ...]]) -> None:
        self.grads = grads


def _add_samples(
    grads: Iterable[Sequence[torch.Tensor | None]],
    n: int,
    V: Sequence[torch.Tensor],
    sink: ProductSink,
) -> None:
    """``sink += Σᵢ gᵢ (gᵢᵀ V) / n`` over the per-sample gradients ``grads`` (each used and
    dropped in turn). One direction: each block written straight into the sum, no temporary."""
    if sink.m > 1:
        sink.add_blocks(_fold_samples(grads, n, V))
        return
    for g in grads:
        live = [(k, t) for k, t in enumerate(g) if t is not None]
        del g
        d = sum(torch.dot(V[k][0].reshape(-1), t.reshape(-1)) for k, t in live)
        coeff = float(d) / n
        while live:  # each block dropped once it is in the sum
            k, t = live.pop()
            sink.add(k, 0, t, alpha=coeff)
            del t


def _fold_samples(
    grads: Iterable[Sequence[torch.Tensor | None]], n: int, V: Sequence[torch.Tensor]
) -> Blocks:
    """Σᵢ gᵢ (gᵢᵀ V) / n as per-parameter (m, *shape) blocks, each gᵢ dropped in turn."""
    out: Blocks = [None] * len(V)
    for g in grads:
        _fold(out, g, V, 1 / n)
        del g  # before the next gradient is computed
    return out


def _fold(
    out: Blocks, g: Sequence[torch.Tensor | None], V: Sequence[torch.Tensor], scale: float
) -> None:
    """out += scale · g (gᵀ V), in place; g is dropped on return, before the next sample's."""
    live = [(k, t) for k, t in enumerate(g) if t is not None]
    if not live:
        return
    m = V[0].shape[0]
    d = sum(V[k].reshape(m, -1) @ t.reshape(-1) for k, t in live)  # gᵀ V, shape (m,)
    assert isinstance(d, torch.Tensor)
    d = d * scale
    for k, t in live:
        coeff = d.reshape(m, *([1] * t.ndim))
        prev = out[k]
        out[k] = coeff * t if prev is None else prev.addcmul_(coeff, t)
