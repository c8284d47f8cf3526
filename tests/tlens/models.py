"""Tiny float64 TransformerLens models and token batches for the tests.

``MODEL_KINDS`` holds the kinds the installed TransformerLens builds from a config: the
``TransformerBridge`` (``boot_native``) on TransformerLens ≥ 4, ``HookedTransformer`` on older
releases (both where both exist), so the same tests exercise whichever API is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch
from torch import nn

from hessian_eigenthings_tlens import build_tlens_model, tlens_version
from hessian_eigenthings_tlens.models import ModelKind, has_native_bridge

#: vocabulary 13, d_model 8, 2 heads of width 4, contexts up to 8 tokens, MLP width 8.
TINY: dict[str, Any] = {
    "n_layers": 2,
    "d_model": 8,
    "d_head": 4,
    "n_heads": 2,
    "n_ctx": 8,
    "d_vocab": 13,
    "d_mlp": 8,
    "act_fn": "gelu",
    "normalization_type": "LN",
}


def _kinds() -> list[ModelKind]:
    kinds: list[ModelKind] = ["bridge"] if has_native_bridge() else []
    if tlens_version() < (4,):
        kinds.append("hooked")
    return kinds


MODEL_KINDS: list[ModelKind] = _kinds()


def jitter(model: nn.Module, scale: float = 0.3, seed: int = 1) -> nn.Module:
    """Move every parameter off its initial value (LayerNorm weights 1, biases 0): a generic
    point, where no second-derivative block vanishes by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def tiny_model(kind: ModelKind, **overrides: Any) -> nn.Module:
    """A jittered float64 model of the ``TINY`` config (``overrides`` change fields)."""
    model = build_tlens_model({**TINY, **overrides}, dtype=torch.float64, seed=0, kind=kind)
    return jitter(model)


def token_batches(vocab: int = 13, seed: int = 0) -> list[Any]:
    """Two batches of different shapes and formats: a plain (2, 7) token tensor (12 scored
    predictions) and a (3, 5) dict with padding on both sides and a loss mask (8 scored), so
    weighting batches by samples (2, 3) instead of scored tokens (12, 8) changes the result."""
    g = torch.Generator().manual_seed(seed)
    plain = torch.randint(0, vocab, (2, 7), generator=g)
    padded = torch.randint(0, vocab, (3, 5), generator=g)
    attention = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    loss_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 0, 0, 1]])
    return [plain, {"tokens": padded, "attention_mask": attention, "loss_mask": loss_mask}]


#: TransformerLens 4's builder that wraps an HF model in a TransformerBridge.
BRIDGE_BUILDER = "transformer_lens.model_bridge.sources._bridge_builder"


def has_bridge_builder() -> bool:
    """Whether the installed TransformerLens can wrap an HF model in a bridge (≥ 4)."""
    try:
        return importlib.util.find_spec(BRIDGE_BUILDER) is not None
    except ModuleNotFoundError:  # no transformer_lens.model_bridge at all
        return False


def gpt2_bridge() -> nn.Module:
    """A bridge around a jittered float64 one-layer HF GPT-2 (vocabulary 13, width 8, 2 heads,
    eager attention): tied embedding/unembedding and a fused ``c_attn`` split into q/k/v views."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=13, n_positions=8, n_embd=8, n_layer=1, n_head=2, n_inner=8,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = jitter(GPT2LMHeadModel(config).double().eval())
    build = importlib.import_module(BRIDGE_BUILDER).build_bridge_from_module
    bridge: nn.Module = build(hf, "GPT2LMHeadModel", hf_config=config)
    bridge.eval()
    return bridge
