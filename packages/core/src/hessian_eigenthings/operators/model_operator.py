"""The engine under every model-based operator.

A model operator is the curvature of the dataset-mean loss over the batches it iterates:

    A = s · Σ_b w_b A_b / Σ_b w_b,

where A_b is the curvature of batch b's (mean-reduced) loss, w_b the batch's weight (its number
of samples, or whatever the loss callable's ``batch_weight(batch)`` declares, e.g. valid
tokens) and s = ``num_total_samples`` (1 by default; set it to N to get the curvature of the
*summed* loss over a training set of N samples). A short last batch therefore does not bias the
result, and ``microbatch_size`` — which splits each batch into chunks that are weighted the same
way — never changes it.

Subclasses supply the product for one batch, :meth:`ModelCurvatureOperator.batch_matmat` (or
:meth:`~ModelCurvatureOperator.batch_matvec`); the engine does everything else: parameter
selection and flat-vector views, batch iteration and device moves, microbatching and weighting,
input/output checks, and restoring the model's state after every product.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError, NonFiniteError
from hessian_eigenthings.linalg import LinAlgBackend, SingleDeviceBackend
from hessian_eigenthings.operators.base import CurvatureOperator
from hessian_eigenthings.operators.batching import (
    BatchWeightFn,
    as_reiterable,
    batch_leading_size,
    move_to_device,
    split_batch,
)
from hessian_eigenthings.operators.model_state import check_model_modes, preserved_model_state
from hessian_eigenthings.param_utils import ParamFilter, ParamSpace

__all__ = ["ModelCurvatureOperator"]


def _positive_int_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int or None, got {value!r}")
    return value


class ModelCurvatureOperator(CurvatureOperator, ABC):
    """Base class of operators defined by a model, a dataloader and a per-batch product.

    Args:
        model: the model; its selected parameters span the operator's vector space.
        dataloader: an iterable of batches, re-iterated for every product (one-shot iterators
            are materialised once). It must yield the same batches each time (no shuffling).
        param_filter: which parameters to include (all with ``requires_grad`` when ``None``).
        full_dataset: use every batch (``True``) or only the first ``num_batches`` (default 1).
        num_batches: use at most this many batches from the start of the dataloader.
        microbatch_size: split batches into chunks of at most this many samples (memory only:
            the result is unchanged).
        num_total_samples: scale the mean curvature by this (the summed-loss curvature of a
            training set this large).
        backend: the :class:`LinAlgBackend` algorithms should use with this operator.
        process_group: a ``torch.distributed`` process group whose ranks each iterate their
            own shard of the data; the product is then the weighted mean over the union of the
            shards (unequal shards and batch counts allowed). Each product costs one all-reduce
            of n·m values, done once after the local batches (never per batch). A
            DistributedDataParallel-wrapped model is unwrapped (its ``.module`` is used).
    """

    #: Operators that perturb the parameters (finite differences) set this so the engine
    #: snapshots and restores parameter and buffer values around every product.
    perturbs_parameters: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        dataloader: Any,
        *,
        param_filter: ParamFilter | None = None,
        full_dataset: bool = True,
        num_batches: int | None = None,
        microbatch_size: int | None = None,
        num_total_samples: int | None = None,
        backend: LinAlgBackend | None = None,
        process_group: Any = None,
    ) -> None:
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.process_group = process_group
        self.space = ParamSpace.from_model(model, param_filter)
        self.dataloader = as_reiterable(dataloader)
        self.num_batches = _positive_int_or_none(num_batches, "num_batches")
        if not full_dataset and self.num_batches is None:
            self.num_batches = 1
        self.microbatch_size = _positive_int_or_none(microbatch_size, "microbatch_size")
        self.num_total_samples = _positive_int_or_none(num_total_samples, "num_total_samples")
        self.backend: LinAlgBackend = backend if backend is not None else SingleDeviceBackend()
        self.weight_fn: BatchWeightFn = batch_leading_size
        self._dropout_warned = [False]

    # -- what a subclass provides ----------------------------------------------------------

    def batch_matmat(self, batch: Any, V: Sequence[torch.Tensor]) -> Sequence[torch.Tensor | None]:
        """Products of one batch's curvature with m directions.

        ``V[i]`` has shape ``(m, *param_i.shape)``; return tensors of the same shapes (``None``
        for an all-zero block). The default calls :meth:`batch_matvec` once per direction.
        """
        m = V[0].shape[0]
        cols = [self.batch_matvec(batch, [v[j] for v in V]) for j in range(m)]
        out: list[torch.Tensor | None] = []
        for i, v in enumerate(V):
            col_i = [c[i] for c in cols]
            if all(c is None for c in col_i):
                out.append(None)
            else:
                out.append(
                    torch.stack([c if c is not None else torch.zeros_like(v[0]) for c in col_i])
                )
        return out

    def batch_matvec(self, batch: Any, v: Sequence[torch.Tensor]) -> Sequence[torch.Tensor | None]:
        """Product of one batch's curvature with one parameter-shaped direction ``v``."""
        out = self.batch_matmat(batch, [t.unsqueeze(0) for t in v])
        first: list[torch.Tensor | None] = [None if t is None else t[0] for t in out]
        return first

    def batch_weight(self, batch: Any) -> float:
        """How much ``batch`` counts in the dataset mean: ``self.weight_fn(batch)``.

        ``weight_fn`` defaults to the batch's sample count; subclasses set it from their loss
        callables with :func:`~hessian_eigenthings.operators.batching.resolve_batch_weight`.
        """
        return float(self.weight_fn(batch))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        base = ModelCurvatureOperator
        if (
            not getattr(cls, "__abstractmethods__", None)
            and cls.batch_matmat is base.batch_matmat
            and cls.batch_matvec is base.batch_matvec
        ):
            raise TypeError(f"{cls.__name__} must override batch_matmat or batch_matvec")

    # -- CurvatureOperator ------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.space.size

    @property
    def dtype(self) -> torch.dtype:
        return self.space.dtype

    @property
    def device(self) -> torch.device:
        return self.space.device

    @property
    def params(self) -> tuple[nn.Parameter, ...]:
        """The selected parameters, in vector order."""
        return self.space.params

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.check_vector(v)
        return self._apply(v.unsqueeze(1))[:, 0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.check_vector(V, "V", ndim=2)
        if V.shape[1] == 0:
            return V.clone()
        return self._apply(V)

    # -- the engine -------------------------------------------------------------------------

    def iter_batches(self) -> Iterator[Any]:
        """The batches one product uses, on the operator's device (not split)."""
        for i, batch in enumerate(self.dataloader):
            if self.num_batches is not None and i >= self.num_batches:
                break
            yield move_to_device(batch, self.device)

    def _accumulate_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype in (torch.float16, torch.bfloat16) else self.dtype

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        """Σ_b w_b A_b V / Σ_b w_b over all (micro)batches, for V of shape (n, m)."""
        m = V.shape[1]
        numels = [p.numel() for p in self.params]
        directions = [
            chunk.T.reshape(m, *p.shape)
            for chunk, p in zip(torch.split(V.detach(), numels), self.params, strict=True)
        ]
        # Allocated by the first product (_add_blocks), so it is not alive while the first
        # batch's graphs are: on parameter-dominated models that is n·m values off the peak.
        acc = torch.empty(0, dtype=self._accumulate_dtype(), device=self.device)
        total_weight = 0.0
        seen = 0
        check_model_modes(self.model, warned=self._dropout_warned)
        failure: BaseException | None = None
        try:
            with preserved_model_state(self.model, restore_values=self.perturbs_parameters):
                for index, batch in enumerate(self.iter_batches()):
                    seen += 1
                    total_weight += self._accumulate_batch(acc, batch, index, directions)
        except Exception as err:
            if self.process_group is None:
                raise
            failure = err  # tell the other ranks before raising, so none waits forever
        if acc.numel() == 0:  # no product was added (no batches, all weights 0, or m = 0)
            acc.resize_(self.size, m).zero_()
        if self.process_group is not None:
            total_weight, seen = self._reduce_across_ranks(acc, total_weight, seen, failure)
        if seen == 0:
            raise InvalidArgumentError("dataloader yielded no batches; pass a non-empty dataloader")
        if total_weight == 0:
            raise InvalidArgumentError(
                "every batch had weight 0 (e.g. all labels ignored); the mean curvature is "
                "undefined for this data"
            )
        scale = (self.num_total_samples or 1) / total_weight
        return acc.mul_(scale).to(self.dtype)

    def _accumulate_batch(
        self, acc: torch.Tensor, batch: Any, index: int, directions: list[torch.Tensor]
    ) -> float:
        """Add w·A_chunk·V for every (micro)batch chunk of ``batch`` to ``acc``; return Σ w."""
        chunks = (
            [batch] if self.microbatch_size is None else split_batch(batch, self.microbatch_size)
        )
        total = 0.0
        for chunk in chunks:
            weight = self.batch_weight(chunk)
            if weight == 0:  # e.g. every token ignored: contributes nothing
                continue
            if not weight > 0:
                raise InvalidArgumentError(
                    f"batch {index} has weight {weight}; weights must be ≥ 0"
                )
            blocks = self.batch_matmat(chunk, directions)
            self._add_blocks(acc, blocks, weight, m=directions[0].shape[0])
            del blocks  # before the finiteness check below allocates
            total += weight
        # one pass, no allocation; the exact check only confirms (a finite sum can overflow)
        if not bool(torch.isfinite(acc.sum())) and not bool(torch.isfinite(acc).all()):
            raise NonFiniteError(
                f"the curvature product became non-finite at batch {index} (NaN or inf in its "
                "loss or derivatives); check that batch's inputs and the loss"
            )
        return total

    def _reduce_across_ranks(
        self, acc: torch.Tensor, weight: float, seen: int, failure: BaseException | None
    ) -> tuple[float, int]:
        """Sum ``acc`` (in place), the weights and batch counts over the process group.

        A small float64 all-reduce of (weight, batches, failed) goes first, so a rank whose
        loss raised makes every rank raise instead of leaving them blocked in the big one.
        """
        import torch.distributed as dist

        meta = torch.tensor(
            [weight, float(seen), 1.0 if failure is not None else 0.0],
            dtype=torch.float64,
            device=acc.device,
        )
        dist.all_reduce(meta, group=self.process_group)
        if failure is not None:
            raise failure
        if meta[2].item() > 0:
            raise RuntimeError(
                f"{int(meta[2].item())} other rank(s) raised while computing their part of this "
                "product; see their error messages"
            )
        dist.all_reduce(acc, group=self.process_group)
        return float(meta[0].item()), int(meta[1].item())

    def _add_blocks(
        self, acc: torch.Tensor, blocks: Sequence[torch.Tensor | None], weight: float, *, m: int
    ) -> None:
        """``acc += weight · blocks``, each block into its own rows of ``acc``.

        No n-sized temporary: the peak stays at ``acc`` plus the blocks being added.
        """
        if len(blocks) != len(self.params):
            raise RuntimeError(
                f"{type(self).__name__}.batch_matmat returned {len(blocks)} blocks for "
                f"{len(self.params)} parameters"
            )
        fresh = acc.numel() == 0
        if fresh:  # the first product: written, not added (no zero-fill pass)
            acc.resize_(self.size, m)
        offset = 0
        for b, p in zip(blocks, self.params, strict=True):
            k = p.numel()
            rows = acc[offset : offset + k]
            if b is None:  # an all-zero block
                if fresh:
                    rows.zero_()
                offset += k
                continue
            # (k, m) view of the block; for m = 1 a plain reshape (copy_ from a transposed
            # (k, 1) view takes a slow strided path)
            cols = b.detach().reshape(k, 1) if m == 1 else b.detach().reshape(m, k).T
            if fresh:
                rows.copy_(cols).mul_(weight)
            else:
                rows.add_(cols, alpha=weight)
            offset += k

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, params={len(self.params)}, "
            f"dtype={self.dtype}, device={self.device})"
        )
