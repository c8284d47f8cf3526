"""Finite-difference Hessian of an FSDP2-sharded model, on the ranks' local parameter shards.

Why finite differences. ``torch.distributed.fsdp.fully_shard`` (FSDP2) all-gathers parameters
in forward hooks and reduce-scatters gradients in backward hooks; there is no double backward
through them, so autograd Hessian-vector products are unavailable. Two ordinary gradients are:

    H v ≈ ‖v‖ · (∇L(θ + ε v̂) − ∇L(θ − ε v̂)) / (2ε),   v̂ = v / ‖v‖,

the same formula, step and default ε as ``HessianOperator(method="finite_difference")``.

Vector space. Each rank holds the *local shards* (``DTensor.to_local()``) of the selected
parameters, concatenated in ``named_parameters()`` order; :attr:`size` is the local length,
and the global vector is the concatenation of the ranks' slices in rank order. Nothing is
ever gathered. ``‖v‖`` is global (one small collective through
:class:`~hessian_eigenthings.linalg.DistributedBackend`, which is also the operator's
``backend``, so ``lanczos``, ``trace`` and ``spectral_density`` run on the shards as they are).

Gradients. ∇L(θ') is the weighted mean over *all ranks'* batches, Σ w_b ∇L_b / Σ w_b. Each
rank backpropagates ``(w_b / W) · L_b`` for its (micro)batches, W being the total weight of
every rank (agreed beforehand with one small all-gather), and FSDP's reduce-scatter sums the
ranks' contributions into the local shard of ``.grad`` divided by its gradient divide factor
(the mesh size unless ``set_gradient_divide_factor`` changed it), which we multiply back.
FSDP issues collectives in every forward and backward, so every rank must run the same number
of passes: ranks with fewer (micro)batches pad with zero-weight passes on one of their own
batches (and so does a chunk of weight 0, whose loss may be NaN).

Cost of one product: two sweeps over the local data (a forward and a backward per
(micro)batch, each with FSDP's all-gathers and reduce-scatters) plus three tiny collectives.
Memory: one training step's, plus a copy of the local shards (to restore them bit for bit) and
one local gradient. Every parameter that requires grad gets a gradient in the sweeps, also
unselected ones (their ``.grad`` is restored afterwards).

Accuracy. Equal, up to rounding, to ``HessianOperator(method="finite_difference")`` on the
union of the ranks' data with the same ``fd_eps``: the truncation error ``O(ε²)`` is the same
function of θ and v, and only the order of the gradient sums differs. In float64 the two agree
to about ``δ‖∇L‖‖v‖/ε`` with δ ≈ 1e-16, i.e. ~1e-10 relative (the tests hold them to 1e-8);
against the exact Hessian the finite-difference error of ~1e-10 relative remains.

Failures. A failure found before the sweeps (an empty shard, bad weights, a dataloader that
raises) or after them (a non-finite product) raises on every rank. An exception *inside* a
rank's forward or backward leaves the other ranks waiting in an FSDP collective: they fail
when the failing process exits (the transport reports the closed connection) or after the
process group's timeout (``init_process_group(timeout=...)``).

Not supported: HSDP / 2-D meshes (parameters must be sharded over one mesh dimension) and
FSDP1 (``FullyShardedDataParallel``; its flat parameters are not DTensors).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError, NonFiniteError
from hessian_eigenthings.linalg.distributed import DistributedBackend, require_initialized
from hessian_eigenthings.operators.base import DENSE_SIZE_LIMIT
from hessian_eigenthings.operators.batching import split_batch
from hessian_eigenthings.operators.hessian import HessianOperator, LossFn
from hessian_eigenthings.operators.model_state import check_model_modes, preserved_model_state
from hessian_eigenthings.param_utils import ParamFilter

__all__ = ["FSDPHessianOperator"]


@dataclass
class _Plan:
    """What every rank agreed on before a product's sweeps."""

    total_weight: float  # Σ of every rank's (micro)batch weights
    passes: int  # forward/backward passes each rank runs per sweep (the ranks' maximum)
    pad: Any  # this rank's first chunk of positive weight, run with weight 0 as padding


class FSDPHessianOperator(HessianOperator):
    """Finite-difference Hessian of an FSDP2 (``fully_shard``) model on its local shards.

    Args:
        model: a model whose selected parameters are FSDP2 DTensors sharded over one mesh.
        dataloader: this rank's batches (re-iterated for every product, no shuffling). Every
            rank needs at least one batch.
        loss_fn: ``loss_fn(model, batch) -> scalar``, the batch's mean loss (a
            ``batch_weight(batch)`` attribute sets how much a batch counts).
        param_filter: as for :class:`~hessian_eigenthings.operators.HessianOperator`.
        full_dataset: as for :class:`~hessian_eigenthings.operators.HessianOperator`.
        num_batches: as for :class:`~hessian_eigenthings.operators.HessianOperator`.
        microbatch_size: as for :class:`~hessian_eigenthings.operators.HessianOperator`.
        num_total_samples: as for :class:`~hessian_eigenthings.operators.HessianOperator`.
        fd_eps: the step along the unit direction (default per dtype, as there).
        random_chunk: passed to the operator's
            :class:`~hessian_eigenthings.linalg.DistributedBackend` (how random start vectors
            are drawn).

    The process group is the parameters' device-mesh group. Vectors given to :meth:`matvec`
    are this rank's slices (length :attr:`size`); every rank must call it with its slice of
    the same global vector, in the same order (each product is a sequence of collectives).

    The operator is the Hessian of the weighted mean loss over every rank's batches, by
    central differences along the unit direction v̂ = v / ‖v‖ (‖v‖ global):
    H v ≈ ‖v‖ · (∇L(θ + ε v̂) − ∇L(θ − ε v̂)) / (2ε), with an O(ε²) truncation error.

    Cost per product: two sweeps over the local data (a forward and a backward per
    (micro)batch, with FSDP's all-gathers and reduce-scatters) and three tiny collectives;
    memory a training step's plus a copy of the local shards and one local gradient.

    Typical use, on every rank of a ``torchrun`` job (not run here: ``fully_shard`` needs an
    initialised process group and takes seconds to import):

    ```python
    dist.init_process_group("nccl")  # "gloo" on CPUs
    fully_shard(model)  # torch.distributed.fsdp.fully_shard, per block and at the root
    H = FSDPHessianOperator(model, this_ranks_batches, supervised_loss(F.cross_entropy))
    top = lanczos(H, k=5, seed=0)  # runs on the shards through H.backend
    ```

    Example:
        Without a process group the operator refuses to start, saying what to do:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from hessian_eigenthings.errors import InvalidArgumentError
        >>> from hessian_eigenthings.loss_fns import supervised_loss
        >>> from hessian_eigenthings.operators import FSDPHessianOperator
        >>> torch.distributed.is_initialized()
        False
        >>> try:
        ...     FSDPHessianOperator(nn.Linear(3, 2), [], supervised_loss(F.mse_loss))
        ... except InvalidArgumentError as err:
        ...     print(err)
        FSDPHessianOperator needs an initialised torch.distributed process group: call
        torch.distributed.init_process_group(...) first ...
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
        fd_eps: float | None = None,
        random_chunk: int | None = None,
    ) -> None:
        require_initialized(type(self).__name__)
        super().__init__(
            model,
            dataloader,
            loss_fn,
            param_filter=param_filter,
            full_dataset=full_dataset,
            num_batches=num_batches,
            microbatch_size=microbatch_size,
            num_total_samples=num_total_samples,
            method="finite_difference",
            fd_eps=fd_eps,
        )
        mesh = _common_mesh(self.space.names, self.params)
        self.process_group = mesh.get_group()
        self.backend = DistributedBackend(self.process_group, random_chunk=random_chunk)
        self._divide = _divide_factors(self.model, self.params, float(mesh.size()))
        self._numels = [_local(p).numel() for p in self.params]

    # -- the local vector space ------------------------------------------------------------

    @property
    def size(self) -> int:
        """Entries of this rank's slice (the local shards of the selected parameters)."""
        return sum(self._numels)

    @property
    def global_size(self) -> int:
        """Entries of the whole (unsharded) vector."""
        return self.space.size

    def to_dense(self, *, max_size: int = DENSE_SIZE_LIMIT, chunk: int = 64) -> torch.Tensor:
        """Not available: identity columns of the local slices are not columns of the global
        matrix. Use the algorithms, or a ``HessianOperator`` on an unsharded copy."""
        raise InvalidArgumentError(
            f"{type(self).__name__}.to_dense() is not supported: its vectors are sharded over "
            "the ranks. Use lanczos/trace/spectral_density (they run on the shards), or build "
            "HessianOperator(method='finite_difference') on an unsharded copy of the model"
        )

    # -- the product -----------------------------------------------------------------------

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        m = V.shape[1]
        acc = self._accumulate_dtype()
        out = torch.zeros(self.size, m, dtype=acc, device=self.device)
        check_model_modes(self.model, warned=self._dropout_warned)
        plan = self._agree_on_plan()
        norms = [float(self.backend.norm(V[:, j].to(acc))) for j in range(m)]
        with preserved_model_state(self.model, restore_values=False):
            with torch.no_grad():
                shards = [_local(p) for p in self.params]  # views of FSDP's sharded storage
                originals = [s.clone() for s in shards]
            try:
                for j, norm in enumerate(norms):
                    if norm == 0:  # the same on every rank: the norm is global
                        continue
                    direction = torch.split(V[:, j].detach().contiguous(), self._numels)
                    step = self.fd_eps / norm
                    plus = self._sweep(plan, shards, originals, direction, step)
                    minus = self._sweep(plan, shards, originals, direction, -step)
                    out[:, j] = plus.sub_(minus).mul_(norm / (2 * self.fd_eps))
            finally:
                with torch.no_grad():
                    for shard, original in zip(shards, originals, strict=True):
                        shard.copy_(original)
        self._check_finite(out)
        return out.mul_(self.num_total_samples or 1).to(self.dtype)

    def _sweep(
        self,
        plan: _Plan,
        shards: Sequence[torch.Tensor],
        originals: Sequence[torch.Tensor],
        direction: Sequence[torch.Tensor],
        step: float,
    ) -> torch.Tensor:
        """The local slice of the all-rank mean gradient at θ + step·direction."""
        acc = self._accumulate_dtype()
        with torch.no_grad():
            for shard, original, d in zip(shards, originals, direction, strict=True):
                shard.copy_(original.to(acc).add(d.reshape(original.shape).to(acc), alpha=step))
        for p in self.model.parameters():
            p.grad = None
        for chunk, scale in self._passes(plan):
            loss = self._loss(chunk)
            torch.autograd.backward(loss * scale)
        grads = []
        for p, factor, numel in zip(self.params, self._divide, self._numels, strict=True):
            g = p.grad
            if g is None:
                grads.append(torch.zeros(numel, dtype=acc, device=self.device))
            else:
                grads.append(_local(g).reshape(-1).to(acc) * factor)
        return torch.cat(grads)

    def _chunks(self) -> Iterator[tuple[Any, float]]:
        """This rank's (micro)batches with their weights."""
        for index, batch in enumerate(self.iter_batches()):
            parts = (
                [batch]
                if self.microbatch_size is None
                else split_batch(batch, self.microbatch_size)
            )
            for part in parts:
                weight = self.batch_weight(part)
                if not weight >= 0:
                    raise InvalidArgumentError(
                        f"batch {index} has weight {weight}; weights must be ≥ 0"
                    )
                yield part, weight

    def _passes(self, plan: _Plan) -> Iterator[tuple[Any, float]]:
        """``plan.passes`` (chunk, loss multiplier) pairs: the rank's own chunks with
        ``w / W``, then zero-weight passes on a chunk of positive weight. Chunks of weight 0
        are replaced by that chunk too (their own loss may be NaN, and 0 · NaN is NaN)."""
        done = 0
        for chunk, weight in self._chunks():
            yield (chunk, weight / plan.total_weight) if weight > 0 else (plan.pad, 0.0)
            done += 1
        for _ in range(plan.passes - done):
            yield plan.pad, 0.0

    def _agree_on_plan(self) -> _Plan:
        """Count and weigh the local chunks, then agree on the total weight and pass count.

        A rank that fails here (its dataloader or weight function raised) makes every rank
        raise, before any FSDP collective is started.
        """
        failure: BaseException | None = None
        count, weight, pad = 0, 0.0, None
        try:
            for chunk, w in self._chunks():
                count += 1
                weight += w
                if pad is None and w > 0:
                    pad = chunk
        except Exception as err:
            failure = err
        rows = _all_gather_floats(
            [weight, float(count), float(pad is not None), float(failure is not None)],
            self.process_group,
            self.device,
        )
        if failure is not None:
            raise failure
        failed = [r for r, row in enumerate(rows) if row[3] > 0]
        if failed:
            raise RuntimeError(
                f"rank(s) {failed} failed while reading their batches for this product; see "
                "their error messages"
            )
        empty = [r for r, row in enumerate(rows) if row[2] == 0]
        if empty:
            raise InvalidArgumentError(
                f"rank(s) {empty} have no batch of positive weight: under FSDP every rank runs "
                "the forward and backward passes (they hold collectives), so give every rank a "
                "non-empty shard of the data"
            )
        total = 0.0
        for row in rows:  # rank order: the same float on every rank
            total += row[0]
        return _Plan(total_weight=total, passes=int(max(row[1] for row in rows)), pad=pad)

    def _check_finite(self, out: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(out).all())
        rows = _all_gather_floats([float(bad)], self.process_group, self.device)
        ranks = [r for r, row in enumerate(rows) if row[0] > 0]
        if ranks:
            raise NonFiniteError(
                f"the finite-difference Hessian product is non-finite on rank(s) {ranks} (NaN "
                "or inf in a loss or gradient); check those ranks' data and the loss, or use a "
                "smaller fd_eps"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size} local of {self.global_size}, "
            f"params={len(self.params)}, dtype={self.dtype}, device={self.device})"
        )


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (a view of its storage), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        return t.to_local()
    return t


def _common_mesh(names: Sequence[str], params: Sequence[torch.Tensor]) -> Any:
    """The one 1-D device mesh all selected parameters are sharded over."""
    from torch.distributed.tensor import DTensor, Shard

    mesh: Any = None
    for name, p in zip(names, params, strict=True):
        if not isinstance(p, DTensor):
            raise InvalidArgumentError(
                f"parameter {name!r} is not an FSDP2 DTensor: FSDPHessianOperator needs a model "
                "sharded with torch.distributed.fsdp.fully_shard (every selected parameter "
                "under it). For replicated (DDP) models use DDPHessianOperator or "
                "HessianOperator(..., process_group=...)"
            )
        if p.device_mesh.ndim != 1 or not isinstance(p.placements[0], Shard):
            raise InvalidArgumentError(
                f"parameter {name!r} has placements {p.placements} on a {p.device_mesh.ndim}-D "
                "mesh; only FSDP's 1-D sharding is supported (not HSDP or tensor parallelism)"
            )
        if mesh is None:
            mesh = p.device_mesh
        elif p.device_mesh != mesh:
            raise InvalidArgumentError(
                f"parameter {name!r} is sharded over a different device mesh than the others; "
                "select parameters of one mesh with param_filter"
            )
    return mesh


def _divide_factors(
    model: nn.Module, params: Sequence[torch.Tensor], default: float
) -> list[float]:
    """What FSDP divides each parameter's summed gradient by: its group's custom factor
    (``set_gradient_divide_factor``) or, by default, the data-parallel size."""
    from torch.distributed.fsdp import FSDPModule

    custom: dict[int, float] = {}
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        state = module._get_fsdp_state()
        for group in getattr(state, "_fsdp_param_groups", ()):
            factor = getattr(group, "gradient_divide_factor", None)
            if factor is None:
                continue
            for fsdp_param in getattr(group, "fsdp_params", ()):
                custom[id(fsdp_param.sharded_param)] = float(factor)
    return [custom.get(id(p), default) for p in params]


def _all_gather_floats(values: list[float], group: Any, device: torch.device) -> list[list[float]]:
    """Every rank's ``values`` (same length on all ranks), in rank order."""
    import torch.distributed as dist

    local = torch.tensor(values, dtype=torch.float64, device=device)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    return [p.tolist() for p in parts]
