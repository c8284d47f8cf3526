"""Loss helpers for TransformerLens models, in the shape each curvature operator takes.

Works with the current ``TransformerBridge`` (TransformerLens ≥ 4) and with the older
``HookedTransformer``: both map a ``(B, T)`` token tensor to ``(B, T, V)`` logits when called
as ``model(tokens)`` (``attention_mask=`` is passed only when the batch has one). Batches are
described in :mod:`hessian_eigenthings_tlens.batches`.

The loss is the mean next-token cross-entropy over the batch's scored predictions,

    L_b = (1/n_b) Σ_{(i,t) scored} −log softmax(z_{i,t})[x_{i,t+1}],

computed from the logits in their own precision (float32 at least): a float64 model gives a
float64 loss. Every helper carries ``batch_weight(batch)`` = n_b, so the operators weigh each
batch by its scored tokens and the result is the curvature of the token-mean loss over all the
data, however the tokens fall into batches or microbatches.

``tlens_loss_of_output`` is the core's cross-entropy loss of output
(:class:`~hessian_eigenthings.loss_fns.CrossEntropyLossOfOutput`) with these targets, so it
carries the analytical loss-Hessian product

    H_ℓ u = (p ⊙ u − p ⟨p, u⟩) / n_b   at each scored position (zero elsewhere), p = softmax(z),

(and the square-root and sampling forms the Fisher operators use), computed on the whole
``(B, T, V)`` logits with the unscored positions (the last one, padding, masked targets)
labelled ignored, so no shifted copy of the logits is made. Cost: O(B·T·V) time; memory: the
output plus what the chosen ``fused`` CE-HVP backend needs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.loss_fns import CrossEntropyLossOfOutput
from hessian_eigenthings_tlens.batches import (
    IGNORE_INDEX,
    count_targets,
    next_token_targets,
    parse_batch,
)

__all__ = [
    "TLensCrossEntropy",
    "TLensForward",
    "TLensLoss",
    "tlens_forward",
    "tlens_loss",
    "tlens_loss_of_output",
]


def _batch_weight(batch: Any) -> int:
    return count_targets(parse_batch(batch))


class TLensForward:
    """``forward_fn(model, batch)``: the model's ``(B, T, V)`` logits for the batch's tokens.

    Calls ``model(tokens)`` (with ``attention_mask=`` when the batch has one) and checks the
    shape of what comes back. Cost: one forward. ``batch_weight(batch)`` is the number of
    scored next-token predictions, O(B·T). Made by :func:`tlens_forward`.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_tlens import build_tlens_model
        >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
        ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
        ...                            "normalization_type": "LN"}, dtype="float64")
        >>> tokens = torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])
        >>> from hessian_eigenthings_tlens import TLensForward, tlens_forward
        >>> forward = tlens_forward()
        >>> isinstance(forward, TLensForward), forward(model, tokens).shape
        (True, torch.Size([2, 5, 13]))
        >>> mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
        >>> forward.batch_weight({"tokens": tokens, "attention_mask": mask})  # 2 + 4 pairs
        6
    """

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        parsed = parse_batch(batch, "tlens_forward")
        if parsed.attention_mask is None:
            logits = model(parsed.tokens)
        else:
            logits = model(parsed.tokens, attention_mask=parsed.attention_mask)
        expected = tuple(parsed.tokens.shape)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[:2] != expected:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise InvalidArgumentError(
                f"tlens_forward: model(tokens) must return logits of shape {(*expected, 'vocab')}"
                f", got {got}; pass a TransformerBridge or HookedTransformer whose default "
                "return_type is 'logits'"
            )
        return logits

    def batch_weight(self, batch: Any) -> int:
        """Number of scored next-token predictions in ``batch``."""
        return _batch_weight(batch)

    def __repr__(self) -> str:
        return "tlens_forward()"


class TLensCrossEntropy(CrossEntropyLossOfOutput):
    """``loss_of_output_fn(logits, batch)``: mean next-token cross-entropy of given logits.

    The core's cross-entropy loss of output with the batch's next-token targets
    (:func:`~hessian_eigenthings_tlens.batches.next_token_targets`) as labels, so it carries the
    whole loss-of-output protocol: ``.hvp(logits, batch, u)`` (GGN), ``.hessian_sqrt_matmul``
    and ``.sample_gradients`` (Fisher operators) and ``.batch_weight(batch)``.

    Math: ``L = (1/n) Σ_{scored (i,t)} −log softmax(z_it)[x_i,t+1]`` and
    ``∇²_z L · u = (p ⊙ u − p ⟨p, u⟩) / n`` at each scored position, p = softmax(z).
    Cost: O(B·T·V) per call. Made by :func:`tlens_loss_of_output`.

    Example:
        The loss needs no model, only logits; ``.hvp`` equals autograd's:

        >>> import torch
        >>> from hessian_eigenthings_tlens import TLensCrossEntropy
        >>> ce = TLensCrossEntropy(fused="eager")
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = torch.randn(2, 5, 13, dtype=torch.float64, generator=g)
        >>> u = torch.randn(2, 5, 13, dtype=torch.float64, generator=g)
        >>> tokens = torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])
        >>> z = logits.clone().requires_grad_()
        >>> (grad,) = torch.autograd.grad(ce(z, tokens), z, create_graph=True)
        >>> (hvp,) = torch.autograd.grad(grad, z, u)
        >>> torch.allclose(ce.hvp(logits, tokens, u), hvp), ce.batch_weight(tokens)
        (True, 8.0)
    """

    def __init__(self, *, fused: str = "auto") -> None:
        super().__init__(ignore_index=IGNORE_INDEX, reduction="mean", fused=fused)

    def targets(self, batch: Any) -> torch.Tensor:
        """The ``(B, T)`` next-token targets of ``batch``, ``-100`` where nothing is scored."""
        return next_token_targets(parse_batch(batch, "tlens_loss_of_output"))

    def __call__(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        targets = self.targets(batch)
        if output.ndim != 3 or output.shape[:2] != targets.shape:
            raise InvalidArgumentError(
                f"tlens_loss_of_output: logits must have shape (batch, seq_len, vocab) matching "
                f"the tokens {tuple(targets.shape)}, got {tuple(output.shape)}"
            )
        n = int((targets != IGNORE_INDEX).sum())
        # float16/bfloat16 logits are upcast; float32 and float64 stay as they are.
        dtype = torch.promote_types(output.dtype, torch.float32)
        total = F.cross_entropy(
            output.reshape(-1, output.shape[-1]).to(dtype),
            targets.to(output.device).reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        return total / max(n, 1)  # no scored token: 0 (the engine gives the batch weight 0)

    def __repr__(self) -> str:
        return f"tlens_loss_of_output(fused={self.fused!r})"


class TLensLoss:
    """``loss_fn(model, batch)``: mean next-token cross-entropy of the model on the batch.

    ``TLensCrossEntropy()(TLensForward()(model, batch), batch)`` with
    ``batch_weight(batch)`` = scored predictions. Cost: one forward and an O(B·T·V)
    cross-entropy per call. Made by :func:`tlens_loss`.

    Example:
        The same value as TransformerLens' own loss on an unpadded batch:

        >>> import torch
        >>> from hessian_eigenthings_tlens import build_tlens_model
        >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
        ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
        ...                            "normalization_type": "LN"}, dtype="float64")
        >>> tokens = torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])
        >>> from hessian_eigenthings_tlens import TLensLoss, tlens_loss
        >>> loss_fn = tlens_loss()
        >>> isinstance(loss_fn, TLensLoss)
        True
        >>> torch.allclose(loss_fn(model, tokens), model(tokens, return_type="loss"))
        True
        >>> loss_fn.batch_weight(tokens)  # 2 rows × 4 next-token predictions
        8
    """

    def __init__(self) -> None:
        self._forward = TLensForward()
        self._loss = TLensCrossEntropy()

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self._loss(self._forward(model, batch), batch)

    def batch_weight(self, batch: Any) -> int:
        """Number of scored next-token predictions in ``batch``."""
        return _batch_weight(batch)

    def __repr__(self) -> str:
        return "tlens_loss()"


def tlens_loss() -> TLensLoss:
    """Next-token cross-entropy ``loss_fn(model, batch)`` of a TransformerLens model.

    For :class:`~hessian_eigenthings.HessianOperator` (and any operator taking a loss closure),
    whose product then costs a forward and a double backward per batch. Batches are weighted
    by their scored predictions, so the operator is the curvature of the token-mean loss
    (module docstring). Returns a :class:`TLensLoss`.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_tlens import build_tlens_model
        >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
        ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
        ...                            "normalization_type": "LN"}, dtype="float64")
        >>> tokens = torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])
        >>> from hessian_eigenthings import HessianOperator, lanczos
        >>> from hessian_eigenthings_tlens import tlens_loss
        >>> hessian = HessianOperator(model, [tokens], tlens_loss())
        >>> result = lanczos(hessian, k=1, seed=0)
        >>> result.converged, result.eigenvectors.shape == (1, hessian.size)
        (True, True)
    """
    return TLensLoss()


def tlens_forward() -> TLensForward:
    """``forward_fn(model, batch)`` returning a TransformerLens model's logits (for GGN).

    With :func:`tlens_loss_of_output` it gives the GGN ``G = Jᵀ H_ℓ J`` (J the Jacobian of the
    logits, H_ℓ the cross-entropy Hessian), a positive semi-definite matrix whose product costs
    one forward-mode and one reverse-mode pass per batch. Returns a :class:`TLensForward`.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_tlens import build_tlens_model
        >>> model = build_tlens_model({"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2,
        ...                            "n_ctx": 8, "d_vocab": 13, "d_mlp": 8, "act_fn": "gelu",
        ...                            "normalization_type": "LN"}, dtype="float64")
        >>> tokens = torch.tensor([[1, 5, 3, 7, 2], [0, 4, 4, 9, 6]])
        >>> from hessian_eigenthings import GGNOperator
        >>> from hessian_eigenthings_tlens import tlens_forward, tlens_loss_of_output
        >>> ggn = GGNOperator(model, [tokens], tlens_forward(), tlens_loss_of_output(fused="eager"))
        >>> g = torch.Generator().manual_seed(0)
        >>> v = torch.randn(ggn.size, dtype=torch.float64, generator=g)
        >>> bool(v @ (ggn @ v) >= 0)  # vᵀ G v = (Jv)ᵀ H_ℓ (Jv) ≥ 0
        True
    """
    return TLensForward()


def tlens_loss_of_output(*, fused: str = "auto") -> TLensCrossEntropy:
    """Next-token cross-entropy of logits, with the analytical ``.hvp`` (for GGN/Fisher).

    ``fused`` picks the cross-entropy HVP backend: ``"auto"`` (the best registered one that can
    serve the tensors), ``"eager"``, ``"compile"`` or one a plugin registers. ``.hvp`` is
    ``(p ⊙ u − p ⟨p, u⟩) / n`` at each scored position and 0 elsewhere (p = softmax of the
    logits, n the scored count), O(B·T·V) without autograd. Returns a
    :class:`TLensCrossEntropy`.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_tlens import tlens_loss_of_output
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = torch.randn(1, 4, 6, dtype=torch.float64, generator=g)
        >>> u = torch.randn(1, 4, 6, dtype=torch.float64, generator=g)
        >>> tokens = torch.tensor([[1, 2, 3, 4]])  # 3 scored predictions
        >>> hvp = tlens_loss_of_output(fused="eager").hvp(logits, tokens, u)
        >>> p = logits.softmax(-1)
        >>> formula = (p * u - p * (p * u).sum(-1, keepdim=True)) / 3
        >>> torch.allclose(hvp[:, :3], formula[:, :3]), bool((hvp[:, 3] == 0).all())
        (True, True)
    """
    return TLensCrossEntropy(fused=fused)
