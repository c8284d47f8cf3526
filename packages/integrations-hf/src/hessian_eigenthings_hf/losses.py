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

    Math: ``L = (1/n) Σ_{valid (b,t)} −log softmax(z_bt)[y_bt]`` with n valid targets, and
    ``.hvp`` gives ``∇²_z L · u = (p ⊙ u − p ⟨p, u⟩) / n`` per valid position (0 elsewhere),
    p = softmax(z). Cost: O(B·T·V) time and one (B, T, V) temporary per call. Made by
    :func:`hf_lm_shifted_ce` / :func:`hf_lm_loss_of_output` (causal) and
    :func:`hf_seq2seq_loss_of_output` (encoder-decoder).

    Example:
        The analytical ``.hvp`` equals autograd's Hessian-vector product of the loss:

        >>> import torch
        >>> from hessian_eigenthings_hf import TokenCrossEntropy, hf_lm_shifted_ce
        >>> ce = hf_lm_shifted_ce(fused="eager")
        >>> isinstance(ce, TokenCrossEntropy)
        True
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = torch.randn(2, 5, 11, dtype=torch.float64, generator=g)
        >>> u = torch.randn(2, 5, 11, dtype=torch.float64, generator=g)
        >>> batch = {"input_ids": torch.tensor([[1, 5, 3, 7, 2], [1, 4, 4, 9, 0]])}
        >>> z = logits.clone().requires_grad_()
        >>> (grad,) = torch.autograd.grad(ce(z, batch), z, create_graph=True)
        >>> (hvp,) = torch.autograd.grad(grad, z, u)
        >>> torch.allclose(ce.hvp(logits, batch, u), hvp)
        True
        >>> ce.batch_weight(batch)  # 2 rows × 4 next-token predictions
        8.0
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
    ``use_cache=False`` is passed where the config knows the option. Cost: one forward pass,
    under :func:`differentiable_attention` (SDPA on its math backend, which stores the
    (B, heads, T, T) attention weights). ``batch_weight(batch)`` counts the valid targets.
    Made by :func:`hf_lm_forward` and :func:`hf_seq2seq_forward`.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> _ = torch.manual_seed(0)
        >>> config = GPT2Config(vocab_size=11, n_embd=8, n_layer=1, n_head=2, n_positions=8,
        ...                     n_inner=8, bos_token_id=1, eos_token_id=2,
        ...                     attn_implementation="eager")
        >>> model = GPT2LMHeadModel(config).eval()
        >>> batch = {"input_ids": torch.tensor([[1, 5, 3, 7, 2], [1, 4, 4, 9, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}
        >>> from hessian_eigenthings_hf import LMForward, hf_lm_forward
        >>> forward = hf_lm_forward()
        >>> isinstance(forward, LMForward), forward(model, batch).shape
        (True, torch.Size([2, 5, 11]))
        >>> sorted(forward.inputs(model, batch))
        ['attention_mask', 'input_ids', 'use_cache']
        >>> forward.batch_weight(batch)  # 4 + 3 next-token targets (the last one is padding)
        7.0
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
    ``batch_weight``; ``.forward`` and ``.loss_of_output`` give the GGN split.

    Math: the mean token cross-entropy of the model's logits over the batch's valid targets
    (see :class:`TokenCrossEntropy`). Cost: one forward (:class:`LMForward`) and one
    O(B·T·V) cross-entropy per call. Made by :func:`hf_lm_loss` and :func:`hf_seq2seq_loss`.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> _ = torch.manual_seed(0)
        >>> config = GPT2Config(vocab_size=11, n_embd=8, n_layer=1, n_head=2, n_positions=8,
        ...                     n_inner=8, bos_token_id=1, eos_token_id=2,
        ...                     attn_implementation="eager")
        >>> model = GPT2LMHeadModel(config).eval()
        >>> batch = {"input_ids": torch.tensor([[1, 5, 3, 7, 2], [1, 4, 4, 9, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}
        >>> from hessian_eigenthings_hf import ModelLoss, hf_lm_loss
        >>> loss_fn = hf_lm_loss()
        >>> isinstance(loss_fn, ModelLoss)
        True
        >>> logits = loss_fn.forward(model, batch)
        >>> torch.equal(loss_fn(model, batch), loss_fn.loss_of_output(logits, batch))
        True
        >>> loss_fn.batch_weight(batch)
        7.0
    """

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
    With :func:`hf_lm_loss_of_output` it gives the GGN ``G = Jᵀ H_ℓ J`` (J the Jacobian of the
    logits, H_ℓ the cross-entropy Hessian), whose product costs one forward-mode and one
    reverse-mode pass per batch. Returns an :class:`LMForward`.

    Example:
        The GGN of a tiny GPT-2 is positive semi-definite: ``vᵀ G v ≥ 0``.

        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> _ = torch.manual_seed(0)
        >>> config = GPT2Config(vocab_size=11, n_embd=8, n_layer=1, n_head=2, n_positions=8,
        ...                     n_inner=8, bos_token_id=1, eos_token_id=2,
        ...                     attn_implementation="eager")
        >>> model = GPT2LMHeadModel(config).eval()
        >>> batch = {"input_ids": torch.tensor([[1, 5, 3, 7, 2], [1, 4, 4, 9, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}
        >>> from hessian_eigenthings import GGNOperator
        >>> from hessian_eigenthings_hf import hf_lm_forward, hf_lm_loss_of_output
        >>> ggn = GGNOperator(model, [batch], hf_lm_forward(), hf_lm_loss_of_output(fused="eager"))
        >>> ggn.size == sum(p.numel() for p in model.parameters())
        True
        >>> v = torch.randn(ggn.size)
        >>> bool(v @ (ggn @ v) >= 0)
        True
    """
    return LMForward(
        causal_lm_targets, encoder_decoder=False, attention=attention, who="hf_lm_forward"
    )


def hf_lm_shifted_ce(fused: str = "auto") -> TokenCrossEntropy:
    """Shifted next-token cross-entropy ``(logits, batch) -> loss`` with an analytical ``.hvp``.

    ``L = (1/n) Σ_{valid t} −log softmax(z_t)[y_{t+1}]``: the logits at position t are scored
    against token t+1 (targets from :func:`causal_lm_targets`), without slicing the logits.
    ``fused`` picks the cross-entropy HVP backend (``"auto"``, ``"eager"``, ``"compile"``, or a
    plugin's, e.g. ``"triton"``). Cost: O(B·T·V) per call. Returns a
    :class:`TokenCrossEntropy`.

    Example:
        The same value as slicing the logits and the tokens by hand:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from hessian_eigenthings_hf import hf_lm_shifted_ce
        >>> ids = torch.tensor([[1, 5, 3, 7, 2], [1, 4, 4, 9, 0]])
        >>> logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
        >>> loss = hf_lm_shifted_ce()(logits, {"input_ids": ids})
        >>> by_hand = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
        >>> torch.allclose(loss, by_hand)
        True
    """
    return TokenCrossEntropy(causal_lm_targets, fused=fused, who="hf_lm_shifted_ce")


def hf_lm_loss_of_output(fused: str = "auto") -> TokenCrossEntropy:
    """``loss_of_output_fn(logits, batch)`` for HF causal LMs: :func:`hf_lm_shifted_ce`, the
    companion of :func:`hf_lm_forward`.

    Its ``.hvp(logits, batch, u)`` is ``(p ⊙ u − p ⟨p, u⟩) / n`` at each valid position and 0
    elsewhere (p = softmax of the logits, n the number of valid targets): O(B·T·V) time, no
    autograd. Returns a :class:`TokenCrossEntropy`.

    Example:
        Checking the formula on random logits; the last position predicts nothing:

        >>> import torch
        >>> from hessian_eigenthings_hf import hf_lm_loss_of_output
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = torch.randn(1, 4, 6, dtype=torch.float64, generator=g)
        >>> u = torch.randn(1, 4, 6, dtype=torch.float64, generator=g)
        >>> batch = {"input_ids": torch.tensor([[1, 2, 3, 4]])}  # 3 valid targets
        >>> hvp = hf_lm_loss_of_output(fused="eager").hvp(logits, batch, u)
        >>> p = logits.softmax(-1)
        >>> formula = (p * u - p * (p * u).sum(-1, keepdim=True)) / 3
        >>> torch.allclose(hvp[:, :3], formula[:, :3]), bool((hvp[:, 3] == 0).all())
        (True, True)
    """
    return TokenCrossEntropy(causal_lm_targets, fused=fused, who="hf_lm_loss_of_output")


def hf_lm_loss(attention: AttentionMode = "auto") -> ModelLoss:
    """``loss_fn(model, batch)`` for HF causal LMs: ``model(**batch).loss`` semantics.

    Mean next-token cross-entropy (labels default to ``input_ids``; ``-100`` labels and padding
    ignored), in the model's precision; ``batch_weight`` = valid tokens, so the operators give
    the curvature of the token-mean loss over all batches. For
    :class:`~hessian_eigenthings.HessianOperator`, whose product costs one forward and a double
    backward per batch. Returns a :class:`ModelLoss`.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> _ = torch.manual_seed(0)
        >>> config = GPT2Config(vocab_size=11, n_embd=8, n_layer=1, n_head=2, n_positions=8,
        ...                     n_inner=8, bos_token_id=1, eos_token_id=2,
        ...                     attn_implementation="eager")
        >>> model = GPT2LMHeadModel(config).eval()
        >>> batch = {"input_ids": torch.tensor([[1, 5, 3, 7, 2], [1, 4, 4, 9, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}
        >>> from hessian_eigenthings import HessianOperator, lanczos
        >>> from hessian_eigenthings_hf import hf_lm_loss
        >>> loss_fn = hf_lm_loss()
        >>> labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        >>> torch.allclose(loss_fn(model, batch), model(**batch, labels=labels).loss)
        True
        >>> hessian = HessianOperator(model, [batch], loss_fn)
        >>> hessian.size == sum(p.numel() for p in model.parameters())
        True
        >>> lanczos(hessian, k=1, seed=0).converged
        True
    """
    return ModelLoss(hf_lm_forward(attention), hf_lm_shifted_ce("auto"), who="hf_lm_loss")


def hf_seq2seq_forward(attention: AttentionMode = "auto") -> LMForward:
    """``forward_fn(model, batch) -> decoder logits`` for HF encoder-decoder models (T5, BART).

    The decoder input is the model's own right shift of ``labels``; the logits (B, T_dec, V)
    are scored against the unshifted labels by :func:`hf_seq2seq_loss_of_output`. Cost: one
    encoder-decoder forward. Returns an :class:`LMForward`.

    Example:
        >>> import torch
        >>> from transformers import T5Config, T5ForConditionalGeneration
        >>> _ = torch.manual_seed(0)
        >>> config = T5Config(vocab_size=11, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=2,
        ...                   relative_attention_num_buckets=4, decoder_start_token_id=0,
        ...                   pad_token_id=0, eos_token_id=1, attn_implementation="eager")
        >>> model = T5ForConditionalGeneration(config).eval()
        >>> batch = {"input_ids": torch.tensor([[3, 4, 5, 1], [6, 7, 1, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        ...          "labels": torch.tensor([[8, 9, 1], [5, 1, -100]])}
        >>> from hessian_eigenthings_hf import hf_seq2seq_forward
        >>> forward = hf_seq2seq_forward()
        >>> forward(model, batch).shape  # (batch, decoder length, vocabulary)
        torch.Size([2, 3, 11])
        >>> "decoder_input_ids" in forward.inputs(model, batch), forward.batch_weight(batch)
        (True, 5.0)
    """
    return LMForward(
        seq2seq_targets, encoder_decoder=True, attention=attention, who="hf_seq2seq_forward"
    )


def hf_seq2seq_loss_of_output(fused: str = "auto") -> TokenCrossEntropy:
    """``loss_of_output_fn(logits, batch)`` for encoder-decoder models: cross-entropy against
    the unshifted ``labels``, with an analytical ``.hvp``.

    ``L = (1/n) Σ_{labels ≠ −100} −log softmax(z_t)[labels_t]`` (targets from
    :func:`seq2seq_targets`). Cost: O(B·T·V). Returns a :class:`TokenCrossEntropy`.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from hessian_eigenthings_hf import hf_seq2seq_loss_of_output
        >>> labels = torch.tensor([[8, 9, 1], [5, 1, -100]])
        >>> batch = {"input_ids": torch.tensor([[3, 4, 5, 1], [6, 7, 1, 0]]), "labels": labels}
        >>> logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(0))
        >>> loss = hf_seq2seq_loss_of_output()(logits, batch)
        >>> torch.allclose(loss, F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1)))
        True
    """
    return TokenCrossEntropy(seq2seq_targets, fused=fused, who="hf_seq2seq_loss_of_output")


def hf_seq2seq_loss(attention: AttentionMode = "auto") -> ModelLoss:
    """``loss_fn(model, batch)`` for HF encoder-decoder models.

    The batch holds the encoder's ``input_ids``/``attention_mask`` and the target ``labels``;
    the decoder input is the model's right shift of the labels. Mean cross-entropy over labels
    that are not ``-100`` (nor masked by ``decoder_attention_mask``); ``batch_weight`` = that
    count. Cost: one forward per call (a double backward more per Hessian product). Returns a
    :class:`ModelLoss`.

    Example:
        The same loss as the model's own ``.loss``:

        >>> import torch
        >>> from transformers import T5Config, T5ForConditionalGeneration
        >>> _ = torch.manual_seed(0)
        >>> config = T5Config(vocab_size=11, d_model=8, d_kv=2, d_ff=8, num_layers=1, num_heads=2,
        ...                   relative_attention_num_buckets=4, decoder_start_token_id=0,
        ...                   pad_token_id=0, eos_token_id=1, attn_implementation="eager")
        >>> model = T5ForConditionalGeneration(config).eval()
        >>> batch = {"input_ids": torch.tensor([[3, 4, 5, 1], [6, 7, 1, 0]]),
        ...          "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        ...          "labels": torch.tensor([[8, 9, 1], [5, 1, -100]])}
        >>> from hessian_eigenthings_hf import hf_seq2seq_loss
        >>> loss_fn = hf_seq2seq_loss()
        >>> torch.allclose(loss_fn(model, batch), model(**batch).loss)
        True
        >>> loss_fn.batch_weight(batch)  # labels that are not -100
        5.0
    """
    return ModelLoss(
        hf_seq2seq_forward(attention), hf_seq2seq_loss_of_output("auto"), who="hf_seq2seq_loss"
    )
