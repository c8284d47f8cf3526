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

import itertools
import sys
from abc import ABC
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError, NonFiniteError
from hessian_eigenthings.linalg import LinAlgBackend, ReplicatedBackend, SingleDeviceBackend
from hessian_eigenthings.operators.base import CurvatureOperator
from hessian_eigenthings.operators.batching import (
    BatchWeightFn,
    as_reiterable,
    batch_leading_size,
    move_to_device,
    split_batch,
)
from hessian_eigenthings.operators.graph_reuse import GraphCache, batch_key
from hessian_eigenthings.operators.model_state import check_model_modes, preserved_model_state
from hessian_eigenthings.param_utils import ParamFilter, ParamSpace

__all__ = ["ModelCurvatureOperator", "ProductSink"]


def _positive_int_or_none(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int or None, got {value!r}")
    return value


class ProductSink:
    """The (n, m) sum Σ w_b A_b V of one product, fed one block at a time.

    The engine hands one to :meth:`ModelCurvatureOperator.batch_accumulate` per (micro)batch
    chunk, with that chunk's ``weight``. The buffer is allocated (uninitialised) when the first
    block arrives and each parameter's rows are written (copied, not added) by their first
    block, so no zero-fill pass is needed.

    :meth:`add_gradient` can stream a backward's gradients into the sum one parameter at a time,
    so that no second n-sized result exists. Before the buffer exists that is a trade: the
    buffer is then allocated while the autograd graph is still alive. It pays when the graph
    is smaller than the buffer (parameter-dominated models, e.g. language models on short
    batches), so a subclass records its graph-building code under :meth:`recording_graph` and
    the first backward streams only if the tensors autograd saved there take fewer bytes than
    the buffer will.

    Example:
        A subclass whose per-batch product is the gradient outer product g gᵀ v hands its
        block to the sink as a backward of ⟨g, v⟩ (no graph is recorded, so it streams):

        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.operators import ModelCurvatureOperator, ProductSink
        >>> class GradientOuterProduct(ModelCurvatureOperator):
        ...     def batch_accumulate(self, batch, V, sink: ProductSink):
        ...         loss = self.model(batch).pow(2).mean()
        ...         g = torch.autograd.grad(loss, self.params)
        ...         for j in range(sink.m):  # column j: (g·v_j) ∂loss/∂θ
        ...             gv = sum((gi * vi[j]).sum() for gi, vi in zip(g, V))
        ...             sink.add_gradient(j, self.model(batch).pow(2).mean() * gv.detach())
        >>> model = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        >>> x = torch.tensor([[1.0, 0.0]])  # loss = w₁², g = (2, 0)
        >>> op = GradientOuterProduct(model, [x])
        >>> op @ torch.tensor([1.0, 1.0])  # g gᵀ v = (2, 0)·2
        tensor([4., 0.])
    """

    def __init__(self, params: Sequence[torch.Tensor], m: int, dtype: torch.dtype) -> None:
        self.params = tuple(params)
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.offsets = [0, *itertools.accumulate(self.numels)][:-1]
        self.m = m
        device = self.params[0].device if self.params else torch.device("cpu")
        self.buffer = torch.empty(0, dtype=dtype, device=device)
        self.weight = 1.0
        #: the engine's unit of batch weight (the first chunk's); 0 until it is set
        self.unit = 0.0
        #: set by the engine for products from a kept linearisation (``reuse_graph``): their
        #: graph outlives the backward, and collecting the blocks, then copying them in,
        #: measured faster than streaming (0.5 against 1.3 ms over the bare backward on the
        #: benchmark MLP), with a lower first-product peak for the Hessian (3.34 against 3.81
        #: gradients there; 5% higher for the GGN)
        self.collect = False
        self._written = [[False] * m for _ in self.shapes]
        self._unwritten = len(self.shapes) * m  # blocks not yet written (result() zeroes them)
        self._graph_bytes = 0

    @property
    def fresh(self) -> bool:
        """Whether the buffer is not allocated yet (no block has arrived)."""
        return self.buffer.numel() == 0

    @contextmanager
    def recording_graph(self) -> Iterator[None]:
        """Count the bytes of the tensors autograd saves inside (while the sum is fresh).

        Storages are counted once, and the parameters' own storages not at all. Under saved-
        tensor hooks of the caller's (e.g. ``torch.autograd.graph.save_on_cpu``) nothing is
        recorded, since pushing ours would switch theirs off; the first backward then does not
        stream.
        """
        if not self.fresh:
            yield
            return
        top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
        if top is None or top(False) is not None:
            self._graph_bytes = sys.maxsize  # unknown: keep the first backward unstreamed
            yield
            return
        seen = {p.untyped_storage().data_ptr() for p in self.params}

        def pack(t: torch.Tensor) -> torch.Tensor:
            try:
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
            except (RuntimeError, NotImplementedError):  # no plain storage (wrapper tensors)
                key, size = id(t), t.numel() * t.element_size()
            if key not in seen:
                seen.add(key)
                self._graph_bytes += size
            # Not t itself: a saved output would then hold its own grad_fn through the packed
            # object, a reference cycle through C++ that is never freed. The autograd edge of
            # a saved tensor is restored from the graph on unpacking, not from this tensor.
            return t.detach()

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield

    def _rows(self, i: int) -> torch.Tensor:
        if self.fresh:  # first block: allocate, don't touch (no zero-fill)
            self.buffer.resize_(sum(self.numels), self.m)
        return self.buffer[self.offsets[i] : self.offsets[i] + self.numels[i]]

    def add(self, i: int, j: int, block: torch.Tensor, alpha: float = 1.0) -> None:
        """Column ``j`` of parameter ``i`` += ``weight · alpha · block`` (``block`` shaped like
        it), in one pass over the block and no temporary."""
        target = self._rows(i)[:, j].view(self.shapes[i])
        factor = self.weight * alpha
        if self._written[i][j]:
            target.add_(block.detach(), alpha=factor)
            return
        if factor == 1.0:
            target.copy_(block.detach())
        else:
            torch.mul(block.detach(), factor, out=target)
        self._written[i][j] = True
        self._unwritten -= 1

    def add_blocks(self, blocks: Sequence[torch.Tensor | None]) -> None:
        """``sum += weight · blocks`` for per-parameter (m, *shape) blocks (``None`` = zero)."""
        if len(blocks) != len(self.shapes):
            raise RuntimeError(
                f"a batch product returned {len(blocks)} blocks for {len(self.shapes)} parameters"
            )
        for i, b in enumerate(blocks):
            if b is None:  # an all-zero block: nothing to add
                continue
            rows, k = self._rows(i), self.numels[i]
            # (k, m) view of the block; for m = 1 a plain reshape (copy_ from a transposed
            # (k, 1) view takes a slow strided path)
            cols = b.detach().reshape(k, 1) if self.m == 1 else b.detach().reshape(self.m, k).T
            if all(self._written[i]):
                rows.add_(cols, alpha=self.weight)
                continue
            for j in range(self.m):
                self.add(i, j, cols[:, j].view(self.shapes[i]))

    def add_gradient(
        self,
        j: int,
        outputs: torch.Tensor | Sequence[torch.Tensor],
        grad_outputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
        *,
        retain_graph: bool = False,
    ) -> None:
        """Column ``j`` += ``weight · ∂⟨outputs, grad_outputs⟩/∂params`` (one tensor or
        matching sequences, as for :func:`torch.autograd.grad`).

        Streamed when the buffer exists or the graph recorded by :meth:`recording_graph` is
        smaller than it: a hook on each parameter hands its gradient to :meth:`add` as soon as
        the backward produces it and gives autograd a stride-0 zero instead, so each gradient
        is freed at once and the peak is the sum plus the gradients in flight (for a
        124M-parameter model that saves 0.5 GB). Otherwise the gradients are collected and
        then added — always so for products from a kept linearisation (:attr:`collect`). The
        hooks are removed before this returns, also when the backward raises.
        """
        nbytes = sum(self.numels) * self.m * self.buffer.element_size()
        if self.collect or (self.fresh and self._graph_bytes >= nbytes):
            grads: list[torch.Tensor | None] = list(
                torch.autograd.grad(
                    outputs,
                    self.params,
                    grad_outputs,
                    retain_graph=retain_graph,
                    allow_unused=True,
                )
            )
            for i, g in enumerate(grads):
                if g is not None:
                    self.add(i, j, g)
                    grads[i] = None  # freed as soon as it is in the sum
            return
        handles = [
            p.register_hook(self._hook(i, j, p))  # type: ignore[no-untyped-call]
            for i, p in enumerate(self.params)
        ]
        try:
            torch.autograd.grad(
                outputs, self.params, grad_outputs, retain_graph=retain_graph, allow_unused=True
            )
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, i: int, j: int, p: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        zero = torch.zeros((), dtype=p.dtype, device=p.device).expand(p.shape)

        def hook(g: torch.Tensor) -> torch.Tensor:
            self.add(i, j, g)
            return zero

        return hook

    def result(self) -> torch.Tensor:
        """The (n, m) sum so far, with never-written blocks zeroed (they were all zero)."""
        if self._unwritten:  # once all are written (usually after the first batch): O(1)
            for i, columns in enumerate(self._written):
                for j, done in enumerate(columns):
                    if not done:
                        self._rows(i)[:, j].zero_()
                        columns[j] = True
            self._unwritten = 0
        if self.buffer.numel() == 0:  # m = 0
            self.buffer.resize_(sum(self.numels), self.m)
        return self.buffer


class ModelCurvatureOperator(CurvatureOperator, ABC):
    """Base class of operators defined by a model, a dataloader and a per-batch product.

    The operator is A = s · Σ_b w_b A_b / Σ_b w_b over the batches b the dataloader yields
    (see the module docstring), A_b being what the subclass's :meth:`batch_matmat` (or
    :meth:`batch_matvec`) multiplies by, w_b the batch's weight (its leading size unless
    :meth:`batch_weight` says otherwise) and s = ``num_total_samples`` or 1. A subclass
    supplies only that per-batch product; parameter selection, batching, weighting, checks and
    restoring the model after every product come from here.

    Cost of a product: the subclass's per-batch products over every (micro)batch, plus an
    (n, m) accumulator (allocated by the first batch's product) and, with a
    ``process_group``, one all-reduce of n·m values.

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
        backend: the :class:`LinAlgBackend` algorithms should use with this operator (default:
            single-device arithmetic; with a ``process_group``, a :class:`ReplicatedBackend`
            so that every rank starts from the same random vectors even with ``seed=None``).
        process_group: a ``torch.distributed`` process group whose ranks each iterate their
            own shard of the data; the product is then the weighted mean over the union of the
            shards (unequal shards and batch counts allowed). Each product costs one all-reduce
            of n·m values, done once after the local batches (never per batch). A
            DistributedDataParallel-wrapped model is unwrapped (its ``.module`` is used).
        reuse_graph: keep, per (micro)batch, what a product computes before it meets the
            directions (the forward pass and the graph of the first backward) and reuse it in
            later products while the model and the batches are unchanged — checked before
            every product, see :mod:`~hessian_eigenthings.operators.graph_reuse`. Products
            then cost about 1.2–2.2 gradients instead of 2.2–3.4, for memory: about one
            product's graph per batch held between products (:meth:`clear_graph_cache` frees
            it). Needs the batches in memory as a list or tuple. Operators without such a
            split (finite differences) ignore it.

    Example:
        A toy subclass whose batch b contributes c_b·I with c_b the batch's mean square;
        batches of 3 and 1 samples with c = 1 and c = 9 give the sample-weighted mean
        (3·1 + 1·9) / 4 = 3:

        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.operators import ModelCurvatureOperator
        >>> class MeanSquareTimesIdentity(ModelCurvatureOperator):
        ...     def batch_matvec(self, batch, v):
        ...         c = float(batch.pow(2).mean())
        ...         return [c * t for t in v]
        >>> model = nn.Linear(2, 1)
        >>> batches = [torch.full((3, 1), 1.0), torch.full((1, 1), 3.0)]
        >>> op = MeanSquareTimesIdentity(model, batches)
        >>> op.size  # 2 weights + 1 bias
        3
        >>> op @ torch.ones(3)
        tensor([3., 3., 3.])
        >>> op2 = MeanSquareTimesIdentity(model, batches, num_total_samples=4)
        >>> op2 @ torch.ones(3)  # the curvature of the summed loss: 4× the mean
        tensor([12., 12., 12.])
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
        reuse_graph: bool = False,
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
        if backend is None:  # replicated vectors; with a group, ranks must share random draws
            backend = (
                SingleDeviceBackend() if process_group is None else ReplicatedBackend(process_group)
            )
        self.backend: LinAlgBackend = backend
        self.weight_fn: BatchWeightFn = batch_leading_size
        self._dropout_warned = [False]
        if not isinstance(reuse_graph, bool):
            raise InvalidArgumentError(f"reuse_graph must be True or False, got {reuse_graph!r}")
        if reuse_graph and not isinstance(self.dataloader, list | tuple):
            raise InvalidArgumentError(
                "reuse_graph=True needs the batches in memory as a list or tuple (a "
                f"{type(self.dataloader).__name__} may shuffle or augment between products); "
                "pass list(dataloader) or reuse_graph=False"
            )
        self.reuse_graph = reuse_graph
        self._graph_cache = GraphCache()
        self._source_batch: Any = None

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

    def batch_accumulate(self, batch: Any, V: Sequence[torch.Tensor], sink: ProductSink) -> None:
        """Add ``sink.weight`` times this batch's product with ``V`` into ``sink``.

        The engine calls this once per (micro)batch chunk. The default adds the blocks of
        :meth:`batch_matmat`; a subclass that can hand over one parameter's block at a time
        overrides it to keep its peak memory at the sum plus one block.
        """
        blocks = self.batch_matmat(batch, V)
        sink.add_blocks(blocks)

    def batch_linearize(self, batch: Any) -> Any:
        """The part of this batch's product that does not depend on the directions, or ``None``.

        An operator that returns something here (e.g. the gradient with its graph) also
        implements :meth:`linearized_accumulate`; the engine then keeps the result across
        products while the model and the batch are unchanged (``reuse_graph``). ``None``
        (the default): nothing to reuse, every product calls :meth:`batch_accumulate`.
        """
        return None

    def linearized_accumulate(
        self, lin: Any, batch: Any, V: Sequence[torch.Tensor], sink: ProductSink
    ) -> None:
        """Add ``sink.weight`` times the batch's product with ``V`` into ``sink``, from the
        result of :meth:`batch_linearize`, leaving ``lin`` usable for the next product."""
        raise NotImplementedError(
            f"{type(self).__name__}.batch_linearize returned a value, so it must implement "
            "linearized_accumulate"
        )

    def clear_graph_cache(self) -> None:
        """Free the linearisations kept for ``reuse_graph`` (they are rebuilt when needed)."""
        self._graph_cache.clear()

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
            and cls.batch_accumulate is base.batch_accumulate
        ):
            raise TypeError(
                f"{cls.__name__} must override batch_matmat, batch_matvec or batch_accumulate"
            )

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
            self._source_batch = batch  # as the dataloader holds it (the reuse key)
            yield move_to_device(batch, self.device)
        self._source_batch = None

    def _check_parameters_current(self) -> None:
        """Refuse to multiply if a selected parameter was replaced in the model since."""
        current = {id(p) for p in self.model.parameters()}
        gone = [
            n for n, p in zip(self.space.names, self.params, strict=True) if id(p) not in current
        ]
        if gone:
            raise InvalidArgumentError(
                f"parameter(s) {', '.join(gone[:3])}{' …' if len(gone) > 3 else ''} of this "
                "operator are no longer the model's (replaced since the operator was built); "
                "build a new operator for the model as it is now"
            )

    def _reuses_graph(self) -> bool:
        """Whether this product keeps and reuses linearisations (see ``reuse_graph``)."""
        overridden = type(self).batch_linearize is not ModelCurvatureOperator.batch_linearize
        return self.reuse_graph and overridden and isinstance(self.dataloader, list | tuple)

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
        sink = ProductSink(self.params, m, self._accumulate_dtype())
        total_weight = 0.0
        seen = 0
        reuse = self._reuses_graph()
        if not reuse:
            self._graph_cache.clear()
        if not (reuse and self._graph_cache.validate(self.model)):
            # (a model unchanged since a product built the kept state passed these then)
            check_model_modes(self.model, warned=self._dropout_warned)
            self._check_parameters_current()
        failure: BaseException | None = None
        try:
            with preserved_model_state(self.model, restore_values=self.perturbs_parameters):
                for index, batch in enumerate(self.iter_batches()):
                    seen += 1
                    total_weight += self._accumulate_batch(sink, batch, index, directions, reuse)
            self._graph_cache.trim(seen)
        except Exception as err:
            self._graph_cache.clear()  # a half-built or half-used linearisation is not kept
            if self.process_group is None:
                raise
            failure = err  # tell the other ranks before raising, so none waits forever
        acc = sink.result()  # zeros if no product was added (no batches or all weights 0)
        if self.process_group is not None:
            total_weight, seen = self._reduce_across_ranks(acc, total_weight, seen, failure)
        if seen == 0:
            raise InvalidArgumentError("dataloader yielded no batches; pass a non-empty dataloader")
        if total_weight == 0:
            raise InvalidArgumentError(
                "every batch had weight 0 (e.g. all labels ignored); the mean curvature is "
                "undefined for this data"
            )
        scale = (self.num_total_samples or 1) * sink.unit / total_weight
        if scale != 1.0:  # one batch (the common case): the sum already is the mean
            acc.mul_(scale)
        return acc.to(self.dtype)

    def _accumulate_batch(
        self,
        sink: ProductSink,
        batch: Any,
        index: int,
        directions: list[torch.Tensor],
        reuse: bool = False,
    ) -> float:
        """Add w·A_chunk·V for every (micro)batch chunk of ``batch`` to ``sink``; return Σ w."""
        chunks = (
            [batch] if self.microbatch_size is None else split_batch(batch, self.microbatch_size)
        )
        source = self._source_batch
        key = batch_key(source) if reuse else ()
        total = 0.0
        for k, chunk in enumerate(chunks):
            weight = self.batch_weight(chunk)
            if weight == 0:  # e.g. every token ignored: contributes nothing
                continue
            if not weight > 0:
                raise InvalidArgumentError(
                    f"batch {index} has weight {weight}; weights must be ≥ 0"
                )
            if sink.unit == 0.0:  # weights relative to the first chunk's: one batch needs
                # no scaling at all (ranks share the unit 1, since their sums are added)
                sink.unit = weight if self.process_group is None else 1.0
            sink.weight = weight / sink.unit
            lin = self._graph_cache.get((index, k), key) if reuse else None
            if reuse and lin is None:
                lin = self.batch_linearize(chunk)
                if lin is not None:
                    self._graph_cache.put((index, k), key, source, lin)
            if lin is None:
                self.batch_accumulate(chunk, directions, sink)
            else:
                sink.collect = True
                self.linearized_accumulate(lin, chunk, directions, sink)
            total += weight
        acc = sink.result()
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

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, params={len(self.params)}, "
            f"dtype={self.dtype}, device={self.device})"
        )
