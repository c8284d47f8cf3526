"""Which logit position predicts which token: the label tensors the cross-entropy helpers use.

Batches are mappings (dicts, ``BatchEncoding``) with ``input_ids`` of shape (B, T), optionally
``attention_mask`` (B, T) and ``labels`` (B, T). Both functions return a target tensor aligned
with the logits — ``targets[b, t]`` is the token the logits at position t are scored against,
or :data:`IGNORE_INDEX` — so the loss and its Hessian work on the unsliced (B, T, V) logits and
never copy them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hessian_eigenthings.errors import InvalidArgumentError

__all__ = ["IGNORE_INDEX", "causal_lm_targets", "count_valid", "require_mapping", "seq2seq_targets"]

IGNORE_INDEX = -100
"""HF's label value for "not a target" (also ``F.cross_entropy``'s default ``ignore_index``).

Positions whose target is ``IGNORE_INDEX`` add nothing to the loss, its gradient or its
curvature, and are not counted in a batch's weight.

Example:
    >>> import inspect
    >>> import torch.nn.functional as F
    >>> from hessian_eigenthings_hf import IGNORE_INDEX
    >>> IGNORE_INDEX
    -100
    >>> IGNORE_INDEX == inspect.signature(F.cross_entropy).parameters["ignore_index"].default
    True
"""


def require_mapping(batch: Any, who: str) -> Mapping[str, Any]:
    """``batch`` if it is a mapping holding ``input_ids``, else an error naming the fix."""
    if not isinstance(batch, Mapping):
        raise InvalidArgumentError(
            f"{who} takes batches that are dicts of tensors (input_ids, attention_mask, optional "
            f"labels), got a {type(batch).__name__}; build batches like "
            "{'input_ids': ids, 'attention_mask': mask}"
        )
    if "input_ids" not in batch:
        raise InvalidArgumentError(
            f"{who}: the batch has no 'input_ids' (keys: {sorted(batch)}); add the token ids"
        )
    return batch


def _matching(batch: Mapping[str, Any], key: str, shape: torch.Size) -> torch.Tensor | None:
    value = batch.get(key)
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.shape != shape:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidArgumentError(
            f"batch[{key!r}] must be a tensor of shape {tuple(shape)}, got {got}"
        )
    return value


def causal_lm_targets(batch: Mapping[str, Any]) -> torch.Tensor:
    """Next-token targets (B, T): ``targets[:, t]`` is ``labels[:, t + 1]`` or ignored.

    ``labels`` default to ``input_ids``. A prediction is ignored when its target is labelled
    ``IGNORE_INDEX``, or when the predicted *or* the predicting position has
    ``attention_mask == 0`` (padding on either side), and always at the last position.
    Cost: O(B·T); the targets are aligned with the unsliced logits, so no shifted copy of the
    (B, T, V) logits is ever made.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_hf import causal_lm_targets
        >>> ids = torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])
        >>> mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])  # row 2 is left-padded
        >>> labels = ids.clone()
        >>> labels[0, 2] = -100  # do not score token 3
        >>> causal_lm_targets({"input_ids": ids, "attention_mask": mask, "labels": labels})
        tensor([[   5, -100,    7,    2, -100],
                [-100,    4,    9,    6, -100]])
    """
    ids = batch["input_ids"]
    labels = _matching(batch, "labels", ids.shape)
    mask = _matching(batch, "attention_mask", ids.shape)
    labels = ids if labels is None else labels
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    if mask is not None:
        keep = mask[:, 1:].bool() & mask[:, :-1].bool()
        targets[:, :-1].masked_fill_(~keep, IGNORE_INDEX)
    return targets


def seq2seq_targets(batch: Mapping[str, Any]) -> torch.Tensor:
    """Decoder targets (B, T_dec): ``labels`` as they are (the decoder input is shifted instead),
    ignored where ``decoder_attention_mask == 0`` if the batch has one.

    Cost: O(B·T_dec); no copy when there is no decoder mask.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_hf import seq2seq_targets
        >>> batch = {"input_ids": torch.tensor([[3, 4, 1]]),
        ...          "labels": torch.tensor([[8, 9, 1, 5]]),
        ...          "decoder_attention_mask": torch.tensor([[1, 1, 1, 0]])}
        >>> seq2seq_targets(batch)
        tensor([[   8,    9,    1, -100]])
    """
    labels = batch.get("labels")
    if not isinstance(labels, torch.Tensor):
        raise InvalidArgumentError(
            "encoder-decoder batches need 'labels' (the target token ids, IGNORE_INDEX=-100 for "
            f"positions that are not scored); the batch has keys {sorted(batch)}"
        )
    mask = _matching(batch, "decoder_attention_mask", labels.shape)
    if mask is None:
        return labels
    return labels.masked_fill(~mask.bool(), IGNORE_INDEX)


def count_valid(targets: torch.Tensor) -> int:
    """How many targets are scored (not ``IGNORE_INDEX``)."""
    return int((targets != IGNORE_INDEX).sum())
