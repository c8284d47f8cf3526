"""Cross-entropy loss-Hessian-vector products and the backend dispatcher.

For logits z ∈ R^V at one position with p = softmax(z), the Hessian of −log p_y is
diag(p) − p pᵀ, so for a direction u

    H u = p ⊙ u − p ⟨p, u⟩,

independent of the label y. Over N positions with mean reduction each row is divided by the
number of positions whose label is not ``ignore_index``; ignored rows are zero.

Backends compute the same formula with different memory: ``eager`` (plain torch, several
(N, V) temporaries), ``compile`` (torch.compile-fused) and any registered by plugins (e.g.
``triton``). ``fused="auto"`` asks each registered backend whether it can serve the given
tensors and uses the one with the highest priority.
"""

from __future__ import annotations

from typing import Literal

import torch

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.plugins.manager import get_registries
from hessian_eigenthings.plugins.types import CEHvpBackend

__all__ = ["ce_hvp", "ce_hvp_eager", "resolve_ce_hvp_backend"]

Reduction = Literal["mean", "sum"]


def ce_hvp_eager(
    logits: torch.Tensor, u: torch.Tensor, labels: torch.Tensor, ignore_index: int, scale: float
) -> torch.Tensor:
    """Reference implementation: ``scale · (p ⊙ u − p ⟨p, u⟩)`` row-wise, ignored rows zero.

    Accumulates in float32 (float64 for float64 inputs); returns ``u``'s dtype.
    """
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    p = torch.softmax(logits.to(acc), dim=-1)
    pu = p * u.to(acc)
    out = pu - p * pu.sum(dim=-1, keepdim=True)
    keep = (labels != ignore_index).to(acc).unsqueeze(-1) * scale
    return (out * keep).to(u.dtype)


def resolve_ce_hvp_backend(
    fused: str, logits: torch.Tensor, u: torch.Tensor
) -> tuple[str, CEHvpBackend]:
    """The backend ``fused`` names, or for ``"auto"`` the best one that can serve these tensors.

    An explicitly named backend that cannot serve them raises (no silent fallback).
    """
    registry = get_registries().ce_hvp_backends
    if fused == "auto":
        ranked = sorted(registry, key=lambda e: -e.obj.priority)
        for entry in ranked:
            if entry.obj.supports(logits, u) is None:
                return entry.name, entry.obj
        raise InvalidArgumentError(
            f"no cross-entropy HVP backend can serve {logits.dtype} logits on {logits.device} "
            f"(registered: {[e.name for e in ranked]})"
        )
    if fused not in registry:
        raise InvalidArgumentError(
            f"fused={fused!r} is not a registered cross-entropy HVP backend; choose 'auto' or one "
            f"of {registry.names()} (plugins such as hessian-eigenthings[triton] add more)"
        )
    backend = registry.get(fused)
    reason = backend.supports(logits, u)
    if reason is not None:
        raise InvalidArgumentError(
            f"fused={fused!r} cannot serve {logits.dtype} logits on {logits.device}: {reason}. "
            "Use fused='auto' to pick an available backend, or fused='eager'."
        )
    return fused, backend


def ce_hvp(
    logits: torch.Tensor,
    u: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    fused: str = "auto",
) -> torch.Tensor:
    """Cross-entropy loss-Hessian times ``u`` for logits of shape (..., V).

    ``labels`` has the logits' shape without the last dimension; positions labelled
    ``ignore_index`` contribute nothing. ``reduction="mean"`` divides by the number of
    non-ignored positions (the result is zero when there are none), ``"sum"`` does not.
    """
    if logits.shape != u.shape:
        raise InvalidArgumentError(
            f"u must have the logits' shape {tuple(logits.shape)}, got {tuple(u.shape)}"
        )
    if labels.shape != logits.shape[:-1]:
        raise InvalidArgumentError(
            f"labels must have shape {tuple(logits.shape[:-1])} (logits without the class "
            f"dimension), got {tuple(labels.shape)}"
        )
    if reduction not in ("mean", "sum"):
        raise InvalidArgumentError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_u = u.reshape(-1, vocab)
    flat_labels = labels.reshape(-1)
    if reduction == "mean":
        n_valid = int((flat_labels != ignore_index).sum())
        scale = 1.0 / n_valid if n_valid else 0.0
    else:
        scale = 1.0
    _, backend = resolve_ce_hvp_backend(fused, flat_logits, flat_u)
    return backend.fn(flat_logits, flat_u, flat_labels, ignore_index, scale).reshape(u.shape)
