"""Token batches for TransformerLens models and the next-token targets they imply.

A batch is either

* a ``(B, T)`` integer tensor of token ids, or a one-element tuple/list holding one (what a
  ``DataLoader(TensorDataset(tokens))`` yields); or
* a mapping with the ids under ``"tokens"`` (or ``"input_ids"``) and optionally
  ``"attention_mask"`` (``(B, T)``, 1 = real token, 0 = padding; passed to the model) and
  ``"loss_mask"`` (``(B, T)``, 1 = score this token as a prediction target).

Position t is scored against token t+1 (the model cannot predict the first token). As in
TransformerLens' own ``lm_cross_entropy_loss``, a pair counts only when both tokens are real
(``attention_mask[:, t]`` and ``attention_mask[:, t + 1]``); ``loss_mask[:, t + 1]`` must also be
set when given. The targets are returned aligned with the logits, shape ``(B, T)``, with
:data:`IGNORE_INDEX` wherever nothing is scored, the last position included — so losses and
loss-Hessian products work on the whole ``(B, T, V)`` logits without a shifted copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hessian_eigenthings.errors import InvalidArgumentError

__all__ = ["IGNORE_INDEX", "TokenBatch", "count_targets", "next_token_targets", "parse_batch"]

IGNORE_INDEX = -100
"""Target value of unscored positions (``torch.nn.functional.cross_entropy``'s default).

Positions labelled ``IGNORE_INDEX`` add nothing to the loss or its curvature and are not
counted in a batch's weight.

Example:
    >>> import torch
    >>> from hessian_eigenthings_tlens import IGNORE_INDEX, TokenBatch, next_token_targets
    >>> IGNORE_INDEX
    -100
    >>> next_token_targets(TokenBatch(torch.tensor([[4, 2]])))  # the last position is unscored
    tensor([[   2, -100]])
"""

_TOKEN_KEYS = ("tokens", "input_ids")
_MASK_KEYS = ("attention_mask", "loss_mask")


@dataclass(frozen=True)
class TokenBatch:
    """A parsed batch: ``(B, T)`` token ids and optional ``(B, T)`` masks.

    ``attention_mask`` (1 = real token, 0 = padding) is passed to the model; ``loss_mask``
    (1 = score this token as a target) only restricts the targets. Holding one costs nothing:
    the tensors are not copied.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_tlens import TokenBatch, next_token_targets
        >>> batch = TokenBatch(torch.tensor([[3, 1, 4, 1]]),
        ...                    loss_mask=torch.tensor([[1, 1, 0, 1]]))  # do not score token 4
        >>> next_token_targets(batch)
        tensor([[   1, -100,    1, -100]])
    """

    tokens: torch.Tensor
    attention_mask: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None


def _fail(who: str, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{who}: {message}. A TransformerLens batch is a (batch, seq_len) integer tensor of "
        "token ids, or a dict {'tokens': ids, 'attention_mask': ..., 'loss_mask': ...} with "
        "(batch, seq_len) masks"
    )


def _unwrap(batch: Any, who: str) -> tuple[Any, dict[str, Any]]:
    if isinstance(batch, torch.Tensor):
        return batch, {}
    if isinstance(batch, Mapping):
        keys = [k for k in _TOKEN_KEYS if k in batch]
        if len(keys) != 1:
            raise _fail(who, f"the dict must have exactly one of {_TOKEN_KEYS}, got {list(batch)}")
        unknown = sorted(set(batch) - {keys[0], *_MASK_KEYS}, key=str)
        if unknown:
            raise _fail(who, f"unknown keys {unknown} in the batch dict")
        return batch[keys[0]], {k: batch[k] for k in _MASK_KEYS if k in batch}
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) == 1:
        return batch[0], {}
    raise _fail(who, f"got a {type(batch).__name__}")


def parse_batch(batch: Any, who: str = "tlens batch") -> TokenBatch:
    """Validate ``batch`` (formats in the module docstring) and return its parts."""
    tokens, masks = _unwrap(batch, who)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise _fail(who, f"token ids must be a 2-D tensor, got {shape}")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise _fail(who, f"token ids must be an integer tensor, got {tokens.dtype}")
    for key, mask in masks.items():
        if not isinstance(mask, torch.Tensor) or mask.shape != tokens.shape:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise _fail(who, f"{key} must have the tokens' shape {tuple(tokens.shape)}, got {got}")
    return TokenBatch(tokens, masks.get("attention_mask"), masks.get("loss_mask"))


def next_token_targets(batch: TokenBatch) -> torch.Tensor:
    """``(B, T)`` targets aligned with the logits: token t+1 at position t, else ignored.

    Position t is scored when tokens t and t+1 are both real (``attention_mask``) and token t+1
    is selected by ``loss_mask``; the last position never is. Cost: O(B·T); being aligned with
    the unsliced ``(B, T, V)`` logits, the targets spare a shifted copy of them.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_tlens import TokenBatch, next_token_targets
        >>> tokens = torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])
        >>> mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])  # row 1 ends in padding
        >>> next_token_targets(TokenBatch(tokens, attention_mask=mask))
        tensor([[   5,    3,    7, -100, -100],
                [   4,    4,    9,    6, -100]])
    """
    tokens = batch.tokens
    targets = torch.full_like(tokens, IGNORE_INDEX, dtype=torch.long)
    if tokens.shape[1] < 2:
        return targets
    keep = torch.ones_like(tokens[:, 1:], dtype=torch.bool)
    if batch.attention_mask is not None:
        real = batch.attention_mask.bool()
        keep &= real[:, :-1] & real[:, 1:]
    if batch.loss_mask is not None:
        keep &= batch.loss_mask.bool()[:, 1:]
    targets[:, :-1] = torch.where(keep, tokens[:, 1:].long(), IGNORE_INDEX)
    return targets


def count_targets(batch: TokenBatch) -> int:
    """Number of scored next-token predictions in ``batch``."""
    return int((next_token_targets(batch) != IGNORE_INDEX).sum())
