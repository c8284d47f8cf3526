"""Dense float64 oracles for TransformerLens models, built with torch.func from the logits.

The loss here is written independently of the package (log-softmax and gather, masks applied
by hand). The Hessian is ``jacrev(grad(f))`` over a flat parameter vector (``torch.func.hessian``
is wrong for LayerNorm's affine weight on this torch); the GGN is ``Jᵀ H_ℓ J`` with J the
Jacobian of the logits. Both are guarded by a symmetry check and a central finite difference
of the gradient computed on the *live* module (parameters perturbed in place, then restored),
which checks the functional evaluation against the model itself.

Stateless evaluation of a TransformerBridge needs care: the bridge registers each wrapped
module under several paths and ``TransformerBridge.named_parameters`` reports the wrapped
model's names, so ``functional_call``'s default ``tie_weights=True`` swaps one slot several
times and leaves the override installed (TransformerLens documents this). The oracle instead
writes each tensor into every distinct (module, attribute) slot holding the parameter — once
per slot, which also covers genuinely tied weights (a GPT-2 embedding reused as unembedding) —
with ``tie_weights=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev

from hessian_eigenthings_tlens.batches import parse_batch


def param_slots(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) → one path per distinct (module, attribute) slot that holds it."""
    slots: dict[int, list[str]] = {}
    for path, module in nn.Module.named_modules(model):  # each module object once
        for attr, p in module._parameters.items():
            if p is not None:
                slots.setdefault(id(p), []).append(f"{path}.{attr}" if path else attr)
    return slots


def trainable(model: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    """Raw names of trainable parameters in named_parameters() order (optionally a subset)."""
    keep = None if names is None else set(names)
    return [
        n for n, p in model.named_parameters() if p.requires_grad and (keep is None or n in keep)
    ]


def functional_logits(
    model: nn.Module, names: Sequence[str]
) -> tuple[Callable[[torch.Tensor, Any], torch.Tensor], torch.Tensor]:
    """``(logits_of(flat, batch), θ)`` with the parameters ``names`` read from ``flat``."""
    params = dict(model.named_parameters())
    slots = param_slots(model)
    chosen = [params[n] for n in names]
    theta = torch.cat([p.detach().reshape(-1) for p in chosen])
    numels = [p.numel() for p in chosen]

    def logits_of(flat: torch.Tensor, batch: Any) -> torch.Tensor:
        new: dict[str, torch.Tensor] = {}
        for p, piece in zip(chosen, torch.split(flat, numels), strict=True):
            for path in slots[id(p)]:
                new[path] = piece.view(p.shape)
        parsed = parse_batch(batch)
        kwargs = {} if parsed.attention_mask is None else {"attention_mask": parsed.attention_mask}
        out: torch.Tensor = functional_call(
            model, new, (parsed.tokens,), kwargs, tie_weights=False, strict=False
        )
        return out

    return logits_of, theta


def scored(batch: Any) -> torch.Tensor:
    """(B, T-1) mask of the next-token predictions that are scored, written by hand."""
    parsed = parse_batch(batch)
    B, T = parsed.tokens.shape
    mask = torch.ones(B, T - 1, dtype=torch.bool)
    if parsed.attention_mask is not None:
        am = parsed.attention_mask.bool()
        mask = mask & am[:, :-1] & am[:, 1:]
    if parsed.loss_mask is not None:
        mask = mask & parsed.loss_mask.bool()[:, 1:]
    return mask


def summed_token_loss(logits: torch.Tensor, batch: Any) -> torch.Tensor:
    """Σ over scored predictions of −log softmax(z_t)[x_{t+1}]."""
    tokens = parse_batch(batch).tokens
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return (nll * scored(batch)).sum()


def total_targets(batches: Sequence[Any]) -> int:
    return int(sum(int(scored(b).sum()) for b in batches))


def live_logits(model: nn.Module, batch: Any) -> torch.Tensor:
    parsed = parse_batch(batch)
    if parsed.attention_mask is None:
        out: torch.Tensor = model(parsed.tokens)
    else:
        out = model(parsed.tokens, attention_mask=parsed.attention_mask)
    return out


def live_gradient(model: nn.Module, names: Sequence[str], batches: Sequence[Any]) -> torch.Tensor:
    """∇ of the dataset token-mean loss by autograd on the live module."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    loss = sum(summed_token_loss(live_logits(model, b), b) for b in batches) / total_targets(
        batches
    )
    grads = torch.autograd.grad(loss, chosen, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, chosen, strict=True)
        ]
    )


def _perturbed(
    model: nn.Module, names: Sequence[str], v: torch.Tensor, fn: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """Central difference (fn(θ + εv) − fn(θ − εv)) / 2ε on the live module, θ restored."""
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    saved = [p.detach().clone() for p in chosen]
    pieces = torch.split(v, [p.numel() for p in chosen])
    eps = 1e-5
    outs = []
    try:
        for step in (eps, -eps):
            with torch.no_grad():
                for p, s, d in zip(chosen, saved, pieces, strict=True):
                    p.copy_(s + step * d.view(p.shape))
            outs.append(fn().detach())
    finally:
        with torch.no_grad():
            for p, s in zip(chosen, saved, strict=True):
                p.copy_(s)
    return (outs[0] - outs[1]) / (2 * eps)


def _unit(n: int, dtype: torch.dtype, seed: int = 7) -> torch.Tensor:
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return v / v.norm()


def _close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-6) -> None:
    err = float((a - b).norm() / b.norm())
    assert err < tol, (
        f"{what}: oracle disagrees with finite differences of the live model ({err:.2e})"
    )


def _check_symmetric(M: torch.Tensor, atol: float = 1e-10) -> None:
    scale = max(1.0, M.abs().max().item())
    assert torch.allclose(M, M.T, rtol=0, atol=atol * scale), "oracle is not symmetric"


def dense_hessian(
    model: nn.Module, batches: Sequence[Any], names: Sequence[str] | None = None
) -> torch.Tensor:
    """Hessian of the token-mean loss over all ``batches`` w.r.t. ``names`` (default all)."""
    names = trainable(model, names)
    logits_of, theta = functional_logits(model, names)
    n_total = total_targets(batches)

    def f(flat: torch.Tensor) -> torch.Tensor:
        total = sum(summed_token_loss(logits_of(flat, b), b) for b in batches)
        return torch.as_tensor(total) / n_total

    H = jacrev(grad(f))(theta)
    _check_symmetric(H)
    v = _unit(H.shape[0], H.dtype)
    fd = _perturbed(model, names, v, lambda: live_gradient(model, names, batches))
    _close(H @ v, fd, "Hessian")
    return H


def dense_ggn(
    model: nn.Module, batches: Sequence[Any], names: Sequence[str] | None = None
) -> torch.Tensor:
    """Σ_b J_bᵀ H_b J_b: J_b the Jacobian of batch b's logits, H_b the Hessian of its share
    (summed token losses / all scored tokens) of the token-mean loss w.r.t. those logits."""
    names = trainable(model, names)
    logits_of, theta = functional_logits(model, names)
    n_total = total_targets(batches)
    G = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype)
    for b in batches:
        z = logits_of(theta, b).detach()
        J = jacrev(lambda flat, b=b: logits_of(flat, b).reshape(-1))(theta)
        v = _unit(theta.numel(), theta.dtype)
        fd = _perturbed(model, names, v, lambda b=b: live_logits(model, b).reshape(-1))
        _close(J @ v, fd, "logits Jacobian")

        def share(flat_z: torch.Tensor, b: Any = b, shape: torch.Size = z.shape) -> torch.Tensor:
            return summed_token_loss(flat_z.view(shape), b) / n_total

        H_out = jacrev(grad(share))(z.reshape(-1))
        _check_symmetric(H_out, 1e-12)
        u = _unit(z.numel(), z.dtype, seed=11)
        eps = 1e-5
        fd_out = (grad(share)(z.reshape(-1) + eps * u) - grad(share)(z.reshape(-1) - eps * u)) / (
            2 * eps
        )
        _close(H_out @ u, fd_out, "loss Hessian w.r.t. logits")
        G += J.T @ H_out @ J
    _check_symmetric(G)
    return G
