"""Attention implementations that curvature products can differentiate through.

Curvature products differentiate a model twice (Hessian: double backward; GGN with
``loss_hvp="autograd"``: forward-mode AD). HF models choose their attention kernel through
``config._attn_implementation``, and the default, ``"sdpa"``, dispatches on CPU to
``_scaled_dot_product_flash_attention_for_cpu``, which implements neither a double backward nor
forward-mode AD (the CUDA flash and memory-efficient kernels lack them too). PyTorch's *math*
SDPA backend is built from differentiable primitives, so running the forward under
``sdpa_kernel(SDPBackend.MATH)`` makes every derivative available without touching the model:
the backward graph records math ops no matter where it is later replayed.

The math backend stores the (batch, heads, T, T) attention weights for the backward, as the
``"eager"`` implementation does; the fused kernels do not. ``attention="keep"`` skips the switch
for uses that need first derivatives of the model only (``HessianOperator`` with
``method="finite_difference"``, plain gradients). The GGN and Fisher operators need forward-mode
derivatives (J v), so they need ``"auto"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from hessian_eigenthings.errors import InvalidArgumentError

__all__ = ["AttentionMode", "attention_implementations", "differentiable_attention"]

AttentionMode = Literal["auto", "keep"]
"""``"auto"`` (make attention twice differentiable, or raise) or ``"keep"`` (leave it alone).

Example:
    >>> from hessian_eigenthings_hf import hf_lm_forward
    >>> hf_lm_forward(attention="keep")  # first derivatives only, e.g. finite differences
    hf_lm_forward(attention='keep')
"""

#: Implementations whose every op has a double backward and a forward-mode derivative.
_DIFFERENTIABLE = frozenset({"eager"})
#: Implementations made differentiable by restricting SDPA to its math backend.
_SDPA = frozenset({"sdpa"})


def _configs(model: nn.Module) -> Iterator[Any]:
    """Every HF config reachable from the model's modules, sub-configs included (each once)."""
    seen: set[int] = set()
    stack = [getattr(m, "config", None) for m in model.modules()]
    while stack:
        config = stack.pop()
        if config is None or id(config) in seen:
            continue
        seen.add(id(config))
        yield config
        for key in getattr(config, "sub_configs", None) or ():
            stack.append(getattr(config, key, None))


def attention_implementations(model: nn.Module) -> set[str]:
    """The ``_attn_implementation`` values of every config in ``model`` (empty if none).

    Walks every module's ``config`` and its sub-configs once each: O(number of modules), no
    forward pass.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from hessian_eigenthings_hf import attention_implementations
        >>> config = GPT2Config(vocab_size=11, n_embd=8, n_layer=1, n_head=2, n_positions=8,
        ...                     n_inner=8, bos_token_id=1, eos_token_id=2,
        ...                     attn_implementation="sdpa")
        >>> attention_implementations(GPT2LMHeadModel(config))
        {'sdpa'}
        >>> attention_implementations(torch.nn.Linear(3, 2))  # not an HF model
        set()
    """
    found: set[str] = set()
    for config in _configs(model):
        impl = getattr(config, "_attn_implementation", None)
        if isinstance(impl, str):
            found.add(impl)
    return found


def differentiable_attention(
    model: nn.Module, attention: AttentionMode = "auto"
) -> AbstractContextManager[Any]:
    """A context for the model's forward under which its attention is twice differentiable.

    ``"auto"``: scaled-dot-product attention (HF's ``"sdpa"``, or any module calling
    ``F.scaled_dot_product_attention``) runs on the math backend for the duration of the
    context; ``"eager"`` attention is unaffected; any other implementation (flash-attention,
    flex-attention, hub kernels) raises :class:`InvalidArgumentError` naming the setting that
    fixes it. ``"keep"``: no change and no check.

    Cost: the math backend materialises the (batch, heads, T, T) attention weights for the
    backward, O(B·H·T²) memory, like ``"eager"`` attention; the fused kernels it replaces do not.

    Example:
        On CPU, HF's default ``"sdpa"`` attention has no double backward; under the context it
        does, so a Hessian-vector product goes through:

        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from hessian_eigenthings_hf import differentiable_attention
        >>> _ = torch.manual_seed(0)
        >>> config = GPT2Config(vocab_size=11, n_embd=8, n_layer=1, n_head=2, n_positions=8,
        ...                     n_inner=8, bos_token_id=1, eos_token_id=2,
        ...                     attn_implementation="sdpa")
        >>> model = GPT2LMHeadModel(config).eval()
        >>> ids = torch.tensor([[1, 5, 3, 7, 2]])
        >>> with differentiable_attention(model):
        ...     loss = model(ids, labels=ids).loss
        >>> params = list(model.parameters())
        >>> grads = torch.autograd.grad(loss, params, create_graph=True)
        >>> v = [torch.randn_like(p) for p in params]
        >>> hv = torch.autograd.grad(sum((g * w).sum() for g, w in zip(grads, v)), params)
        >>> len(hv) == len(params), all(bool(h.isfinite().all()) for h in hv)
        (True, True)
    """
    if attention == "keep":
        return nullcontext()
    if attention != "auto":
        raise InvalidArgumentError(f"attention must be 'auto' or 'keep', got {attention!r}")
    impls = attention_implementations(model)
    unsupported = sorted(impls - _DIFFERENTIABLE - _SDPA)
    if unsupported:
        raise InvalidArgumentError(
            f"the model uses attn_implementation={unsupported[0]!r}, whose kernels have no double "
            "backward or forward-mode derivative, so Hessian and autograd-GGN products cannot "
            'differentiate through it. Load the model with attn_implementation="eager" (or '
            '"sdpa", which runs on the math backend here), or call '
            'model.set_attn_implementation("eager"). If you only need first derivatives of the '
            'model (HessianOperator(method="finite_difference")), pass attention="keep" to the '
            "helper."
        )
    return sdpa_kernel(SDPBackend.MATH)
