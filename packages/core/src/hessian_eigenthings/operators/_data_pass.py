"""One weighted pass over an operator's data, for quantities that are statistics of the data.

KFAC's Kronecker factors, EKFAC's eigenvalues and the exact GGN diagonal are sums over the data
computed once, not products recomputed for every vector. They still use the engine's data
exactly as its products do (:mod:`.model_operator`): the same batches (``full_dataset`` /
``num_batches``, device moves), the same ``microbatch_size`` chunks, the same batch weights
w (sample count, or the loss's ``batch_weight``), the same checks (train-mode BatchNorm,
dropout), and the model's ``.grad`` fields and ``training`` flags restored afterwards, also on
exceptions. A consumer receives each chunk with its weight and its rows inside the batch (so
Monte-Carlo draws made per batch do not depend on the microbatch split); zero-weight chunks
are skipped, as the engine skips them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from hessian_eigenthings.errors import InvalidArgumentError, NonFiniteError
from hessian_eigenthings.operators.batching import batch_leading_size, split_batch
from hessian_eigenthings.operators.model_operator import ModelCurvatureOperator
from hessian_eigenthings.operators.model_state import check_model_modes, preserved_model_state

__all__ = ["Chunk", "accumulate_over_data", "all_finite"]


@dataclass(frozen=True)
class Chunk:
    """A (micro)batch: rows ``start:stop`` of batch ``index``, which has ``batch_size`` rows."""

    batch: Any
    index: int
    start: int
    stop: int
    batch_size: int
    weight: float


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every entry is finite, without a bool copy of each tensor: a sum is finite
    unless an entry is NaN/inf (or the sum overflows, which the exact test then rules out)."""
    return all(math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all()) for t in tensors)


def _chunks(op: ModelCurvatureOperator, batch: Any, index: int) -> Iterator[Chunk]:
    n = batch_leading_size(batch)
    parts = [batch] if op.microbatch_size is None else split_batch(batch, op.microbatch_size)
    start = 0
    for part in parts:
        size = n if len(parts) == 1 else batch_leading_size(part)
        weight = op.batch_weight(part)
        if not (weight >= 0 and math.isfinite(weight)):
            raise InvalidArgumentError(f"batch {index} has weight {weight}; weights must be ≥ 0")
        if weight > 0:  # weight 0 (e.g. every label ignored): contributes nothing
            yield Chunk(part, index, start, start + size, n, weight)
        start += size


def accumulate_over_data(
    op: ModelCurvatureOperator,
    visit: Callable[[Chunk], None],
    *,
    finite: Callable[[], bool] | None = None,
    batches: Iterable[Any] | None = None,
) -> float:
    """Call ``visit`` on every positive-weight chunk of ``op``'s batches; return Σ weights.

    ``batches`` replaces ``op.iter_batches()`` (e.g. one given batch). After each batch,
    ``finite()`` (if given) must be true, else :class:`NonFiniteError` names the batch.
    """
    check_model_modes(op.model, warned=op._dropout_warned)
    source = op.iter_batches() if batches is None else batches
    total, seen = 0.0, 0
    with preserved_model_state(op.model, restore_values=op.perturbs_parameters):
        for index, batch in enumerate(source):
            seen += 1
            for chunk in _chunks(op, batch, index):
                visit(chunk)
                total += chunk.weight
            if finite is not None and not finite():
                raise NonFiniteError(
                    f"the accumulated statistics became non-finite at batch {index} (NaN or inf "
                    "in its outputs or derivatives); check that batch's inputs and the loss"
                )
    if seen == 0:
        raise InvalidArgumentError("dataloader yielded no batches; pass a non-empty dataloader")
    if total == 0:
        raise InvalidArgumentError(
            "every batch had weight 0 (e.g. all labels ignored); the mean curvature is "
            "undefined for this data"
        )
    return total
