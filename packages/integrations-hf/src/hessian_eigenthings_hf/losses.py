"""Loss helpers for HF causal and encoder-decoder language models, in each operator's shape.

The loss is the mean token cross-entropy over the batch's *valid* targets (see
:mod:`.targets`): for a causal LM, position t is scored against token t+1 unless that label is
``-100`` or either position is padding (``attention_mask == 0``); for an encoder-decoder model
the decoder logits are scored against ``labels`` directly.

Every helper carries ``batch_weight(batch)`` = the batch's number of valid targets, so the
operators weight batches by tokens: over batches b with n_b valid tokens and mean losses L_b,

    Σ_b n_b ∇²L_b / Σ_b n_b = ∇² (Σ_b Σ_tokens ℓ / Σ_b n_b),

the curvature of the token-mean loss over all the data, however tokens fall into batches.

The loss is computed from the logits in the logits' precision (float32 at least): a float64
model gives a float64 loss. (HF's ``model(**batch).loss`` casts logits to float32.) The
loss-of-output helpers are the core's cross-entropy loss of output with HF targets, so they
carry the analytical loss-Hessian product

    H_ℓ u = (p ⊙ u − p ⟨p, u⟩) / n   per valid position (zero elsewhere), p = softmax(logits),

computed by :func:`hessian_eigenthings.loss_fns.ce_hvp` on the whole (B, T, V) logits (the
ignored last position and padding rows come out zero), so no shifted copy is made. Cost: O(B·T·V)
time; memory: the (B, T, V) output plus whatever the chosen ``fused`` backend needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.loss_fns import CrossEntropyLossOfOutput
from hessian_eigenthings_hf.attention import AttentionMode, differentiable_attention
from hessian_eigenthings_hf.targets import (
    IGNORE_INDEX,
    causal_lm_targets,
    count_valid,
    require_mapping,
    seq2seq_targets,
)

__all__ = [
    "LMForward",
    "ModelLoss",
    "TokenCrossEntropy",
    "hf_lm_forward",
    "hf_lm_loss",
    "hf_lm_loss_of_output",
    "hf_lm_shifted_ce",
    "hf_seq2seq_forward",
    "hf_seq2seq_loss",
    "hf_seq2seq_loss_of_output",
]

TargetsFn = Callable[[Mapping[str, Any]], torch.Tensor]


def _logits_of(output: Any) -> torch.Tensor:
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise InvalidArgumentError(
            "the model must return logits of shape (batch, seq_len, vocab) (an HF ModelOutput "
            f"with .logits, or a tensor); got {type(output).__name__}"
        )
    return logits


class TokenCrossEntropy(CrossEntropyLossOfOutput):
    """``loss_of_output_fn(logits, batch)``: mean cross-entropy over the batch's valid targets.

    The core's :class:`~hessian_eigenthings.loss_fns.CrossEntropyLossOfOutput` (logits
    (B, T, V), class dimension last, ``ignore_index=-100``) with the targets read from an HF
    batch by ``targets_fn`` (shifted for causal LMs), so it carries the whole loss-of-output
    protocol: ``.hvp`` (analytical GGN), ``.hessian_sqrt_matmul`` (type-2 Fisher),
    ``.sample_gradients`` (Monte-Carlo Fisher) and ``.batch_weight`` (valid targets).
    """

    def __init__(self, targets_fn: TargetsFn, *, fused: str = "auto", who: str) -> None:
        super().__init__(ignore_index=IGNORE_INDEX, reduction="mean", fused=fused)
        self._targets_fn = targets_fn
        self._who = who

    def targets(self, batch: Any) -> torch.Tensor:
        """The (B, T) targets aligned with the logits, ``-100`` where not scored."""
        return self._targets_fn(require_mapping(batch, self._who))

    def __call__(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """The mean over valid targets, in the logits' precision (float32 at least); 0 for a
        batch without valid targets (which the operators give weight 0)."""
        targets = self.targets(batch).to(output.device)
        if output.ndim != 3 or output.shape[:2] != targets.shape:
            raise InvalidArgumentError(
                f"{self._who}: logits must have shape (batch, seq_len, vocab) matching the "
                f"targets {tuple(targets.shape)}, got {tuple(output.shape)}"
            )
        dtype = torch.promote_types(output.dtype, torch.float32)
        total = F.cross_entropy(
            output.reshape(-1, output.shape[-1]).to(dtype),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return total / max(count_valid(targets), 1)

    def __repr__(self) -> str:
        return f"{self._who}(fused={self.fused!r})"


class LMForward:
    """``forward_fn(model, batch)``: the model's logits (B, T, V), differentiable twice.

    Causal models get the batch without ``labels`` (so HF computes no loss of its own);
    encoder-decoder models additionally get ``decoder_input_ids`` made from ``labels`` by the
    model's own shift (``prepare_decoder_input_ids_from_labels``) unless the batch has them.
    """

    def __init__(
        self, targets_fn: TargetsFn, *, encoder_decoder: bool, attention: AttentionMode, who: str
    ) -> None:
        self._targets_fn = targets_fn
        self.encoder_decoder = encoder_decoder
        self.attention = attention
        self._who = who

    def batch_weight(self, batch: Any) -> float:
        """Number of valid (scored) targets in ``batch``."""
        return float(count_valid(self._targets_fn(require_mapping(batch, self._who))))

    def inputs(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        """The keyword arguments the model is called with."""
        batch = require_mapping(batch, self._who)
        kwargs = {k: v for k, v in batch.items() if k != "labels"}
        if self.encoder_decoder and "decoder_input_ids" not in kwargs:
            seq2seq_targets(batch)  # checks that the batch has labels
            shift = getattr(model, "prepare_decoder_input_ids_from_labels", None)
            if not callable(shift):
                raise InvalidArgumentError(
                    f"{type(model).__name__} has no prepare_decoder_input_ids_from_labels; put "
                    "'decoder_input_ids' (the labels shifted right) in the batch"
                )
            kwargs["decoder_input_ids"] = shift(labels=batch["labels"])
        if getattr(getattr(model, "config", None), "use_cache", None) is not None:
            kwargs.setdefault("use_cache", False)  # no key/value cache: it only costs memory
        return kwargs

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        kwargs = self.inputs(model, batch)
        with differentiable_attention(model, self.attention):
            return _logits_of(model(**kwargs))

    def __repr__(self) -> str:
        return f"{self._who}(attention={self.attention!r})"


class ModelLoss:
    """``loss_fn(model, batch) = loss_of_output(forward(model, batch), batch)`` with the same
    ``batch_weight``; ``.forward`` and ``.loss_of_output`` give the GGN split."""

    def __init__(self, forward: LMForward, loss_of_output: TokenCrossEntropy, who: str) -> None:
        self.forward = forward
        self.loss_of_output = loss_of_output
        self._who = who

    def batch_weight(self, batch: Any) -> float:
        """Number of valid (scored) targets in ``batch``."""
        return self.loss_of_output.batch_weight(batch)

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.loss_of_output(self.forward(model, batch), batch)

    def __repr__(self) -> str:
        return f"{self._who}(attention={self.forward.attention!r})"


# -- the factories (registered names) --------------------------------------------------------


def hf_lm_forward(attention: AttentionMode = "auto") -> LMForward:
    """``forward_fn(model, batch) -> logits`` for HF causal LMs (GGN/Fisher operators).

    ``attention="auto"`` runs SDPA attention on its math backend so it can be differentiated
    twice; ``"keep"`` leaves the model's attention kernel alone (first derivatives only).
    """
    return LMForward(
        causal_lm_targets, encoder_decoder=False, attention=attention, who="hf_lm_forward"
    )


def hf_lm_shifted_ce(fused: str = "auto") -> TokenCrossEntropy:
    """Shifted next-token cross-entropy ``(logits, batch) -> loss`` with an analytical ``.hvp``.

    ``fused`` picks the cross-entropy HVP backend (``"auto"``, ``"eager"``, ``"compile"``, or a
    plugin's, e.g. ``"triton"``).
    """
    return TokenCrossEntropy(causal_lm_targets, fused=fused, who="hf_lm_shifted_ce")


def hf_lm_loss_of_output(fused: str = "auto") -> TokenCrossEntropy:
    """``loss_of_output_fn(logits, batch)`` for HF causal LMs: :func:`hf_lm_shifted_ce`, the
    companion of :func:`hf_lm_forward`."""
    return TokenCrossEntropy(causal_lm_targets, fused=fused, who="hf_lm_loss_of_output")


def hf_lm_loss(attention: AttentionMode = "auto") -> ModelLoss:
    """``loss_fn(model, batch)`` for HF causal LMs: ``model(**batch).loss`` semantics.

    Mean next-token cross-entropy (labels default to ``input_ids``; ``-100`` labels and padding
    ignored), in the model's precision; ``batch_weight`` = valid tokens.
    """
    return ModelLoss(hf_lm_forward(attention), hf_lm_shifted_ce("auto"), who="hf_lm_loss")


def hf_seq2seq_forward(attention: AttentionMode = "auto") -> LMForward:
    """``forward_fn(model, batch) -> decoder logits`` for HF encoder-decoder models (T5, BART)."""
    return LMForward(
        seq2seq_targets, encoder_decoder=True, attention=attention, who="hf_seq2seq_forward"
    )


def hf_seq2seq_loss_of_output(fused: str = "auto") -> TokenCrossEntropy:
    """``loss_of_output_fn(logits, batch)`` for encoder-decoder models: cross-entropy against
    the unshifted ``labels``, with an analytical ``.hvp``."""
    return TokenCrossEntropy(seq2seq_targets, fused=fused, who="hf_seq2seq_loss_of_output")


def hf_seq2seq_loss(attention: AttentionMode = "auto") -> ModelLoss:
    """``loss_fn(model, batch)`` for HF encoder-decoder models.

    The batch holds the encoder's ``input_ids``/``attention_mask`` and the target ``labels``;
    the decoder input is the model's right shift of the labels. Mean cross-entropy over labels
    that are not ``-100`` (nor masked by ``decoder_attention_mask``).
    """
    return ModelLoss(
        hf_seq2seq_forward(attention), hf_seq2seq_loss_of_output("auto"), who="hf_seq2seq_loss"
    )
