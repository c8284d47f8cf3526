"""Batch plumbing shared by every model operator: device moves, microbatch splits, weights.

A batch is any nesting of tensors in tuples, lists, named tuples and mappings (HF-style dicts).
Its *sample dimension* is dimension 0 of its tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from hessian_eigenthings.errors import InvalidArgumentError

__all__ = [
    "BatchWeightFn",
    "batch_leading_size",
    "iter_tensors",
    "map_tensors",
    "move_to_device",
    "resolve_batch_weight",
    "split_batch",
]

#: ``fn(batch) -> weight``: how much a batch counts in the dataset mean (samples, valid tokens).
BatchWeightFn = Callable[[Any], "float | int | torch.Tensor"]


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in a nested batch, keeping the containers' types."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        items = {k: map_tensors(v, fn) for k, v in batch.items()}
        ctor: Any = type(batch)
        try:
            return ctor(items)
        except Exception:  # containers whose constructor takes something else
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # named tuple
        return type(batch)(*(map_tensors(v, fn) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def iter_tensors(batch: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nested batch, depth first."""
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, Mapping):
        for v in batch.values():
            yield from iter_tensors(v)
    elif isinstance(batch, list | tuple):
        for v in batch:
            yield from iter_tensors(v)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor on ``device`` (no copy for tensors already there)."""
    return map_tensors(batch, lambda t: t.to(device, non_blocking=True))


def batch_leading_size(batch: Any) -> int:
    """Dimension 0 of the batch's first tensor: its number of samples."""
    for t in iter_tensors(batch):
        if t.ndim > 0:
            return int(t.shape[0])
    raise InvalidArgumentError(
        "cannot tell how many samples this batch holds (it has no tensor with a sample "
        "dimension); give the loss function a `batch_weight(batch)` attribute"
    )


def split_batch(batch: Any, microbatch_size: int) -> list[Any]:
    """Split along dimension 0 into chunks of ``microbatch_size`` samples.

    Tensors whose dimension 0 differs from the batch's sample count (e.g. shared masks) are
    passed whole to every chunk.
    """
    n = batch_leading_size(batch)
    if microbatch_size >= n:
        return [batch]
    starts = range(0, n, microbatch_size)

    def _chunk(start: int) -> Any:
        return map_tensors(
            batch,
            lambda t: t[start : start + microbatch_size] if t.ndim > 0 and t.shape[0] == n else t,
        )

    return [_chunk(s) for s in starts]


def resolve_batch_weight(*sources: Any) -> BatchWeightFn:
    """The first ``batch_weight`` attribute among ``sources`` (loss callables), else sample count.

    A loss callable declares how much a batch weighs (e.g. its number of valid tokens) by
    carrying a ``batch_weight(batch)`` attribute; the HF and TLens helpers do.
    """
    for src in sources:
        fn = getattr(src, "batch_weight", None)
        if callable(fn):
            return fn  # type: ignore[no-any-return]
    return batch_leading_size


def as_reiterable(dataloader: Any) -> Iterable[Any]:
    """A data source that can be iterated once per product.

    One-shot iterators (generators) are materialised into a list, since every matvec must see
    the same batches; re-iterable sources (lists, DataLoaders) are used as they are.
    """
    if dataloader is None or not isinstance(dataloader, Iterable):
        raise InvalidArgumentError(
            "dataloader must be an iterable of batches (a list, a DataLoader, ...), "
            f"got {type(dataloader).__name__}"
        )
    if iter(dataloader) is dataloader:
        return list(dataloader)
    return dataloader
