"""Tiny randomly initialised HF models (float64) and token batches for the HF tests.

Each architecture comes with batches of uneven shapes that exercise right padding
(``attention_mask`` 0) and ``-100`` labels, so token weighting is tested everywhere.

HF's RMS norms (Llama, T5) compute in float32 even in a float64 model, which caps every
derivative at float32 accuracy and would make a 1e-10 comparison meaningless; :func:`build`
gives those modules the same formula evaluated in the input's dtype.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers", reason="hessian-eigenthings-hf needs it")

Batch = dict[str, torch.Tensor]
VOCAB = 11


@dataclass
class Arch:
    """A tiny model and its data: ``kind`` is ``"causal"`` or ``"seq2seq"``."""

    name: str
    build: Callable[[str], nn.Module]
    kind: str


def _gpt2(attn: str) -> nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=8,
        n_layer=1,
        n_head=2,
        n_positions=10,
        n_inner=8,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation=attn,
    )
    return transformers.GPT2LMHeadModel(config)


def _llama(attn: str) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation=attn,
    )
    return transformers.LlamaForCausalLM(config)


def _t5(attn: str) -> nn.Module:
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=8,
        d_kv=2,
        d_ff=8,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        attn_implementation=attn,
    )
    return transformers.T5ForConditionalGeneration(config)


ARCHS = {
    "gpt2": Arch("gpt2", _gpt2, "causal"),
    "llama": Arch("llama", _llama, "causal"),
    "t5": Arch("t5", _t5, "seq2seq"),
}


def _rms_norm_in_input_dtype(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
    return self.weight * (x * rms)


def exact_norms(model: nn.Module) -> nn.Module:
    """``model`` with its RMS norms evaluated in the input dtype (see the module docstring)."""
    for m in model.modules():
        if type(m).__name__ in ("LlamaRMSNorm", "T5LayerNorm"):
            m.forward = types.MethodType(_rms_norm_in_input_dtype, m)
    return model


def build(arch: str, attn: str = "sdpa", seed: int = 0) -> nn.Module:
    """``arch``'s tiny model in float64 and eval mode (random weights from ``seed``)."""
    torch.manual_seed(seed)
    model = exact_norms(ARCHS[arch].build(attn).double().eval())
    with torch.no_grad():  # larger weights than HF's 0.02-std init: a less degenerate Hessian
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def causal_batches(seed: int = 0) -> list[Batch]:
    """Three batches of different shapes: full rows, right padding, -100 labels."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, VOCAB, (2, 5), generator=g)
    mask_a = torch.ones_like(a)
    mask_a[1, 3:] = 0  # right padding
    b = torch.randint(0, VOCAB, (3, 4), generator=g)
    labels_b = b.clone()
    labels_b[0, 2] = -100
    labels_b[2, 1] = -100
    c = torch.randint(0, VOCAB, (1, 7), generator=g)
    return [
        {"input_ids": a, "attention_mask": mask_a},
        {"input_ids": b, "attention_mask": torch.ones_like(b), "labels": labels_b},
        {"input_ids": c, "attention_mask": torch.ones_like(c)},
    ]


def seq2seq_batches(seed: int = 0) -> list[Batch]:
    """Encoder inputs with padding and decoder labels with -100, in batches of uneven shape."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, t_in, t_out in ((2, 5, 4), (3, 3, 5)):
        ids = torch.randint(2, VOCAB, (n, t_in), generator=g)
        mask = torch.ones_like(ids)
        mask[0, -1] = 0
        ids[0, -1] = 0
        labels = torch.randint(2, VOCAB, (n, t_out), generator=g)
        labels[-1, -2:] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def batches(arch: str, seed: int = 0) -> list[Batch]:
    return causal_batches(seed) if ARCHS[arch].kind == "causal" else seq2seq_batches(seed)


def helpers(arch: str) -> dict[str, Any]:
    """The package's loss helpers for ``arch``'s kind."""
    import hessian_eigenthings_hf as hf

    if ARCHS[arch].kind == "causal":
        return {
            "loss": hf.hf_lm_loss(),
            "forward": hf.hf_lm_forward(),
            "loss_of_output": hf.hf_lm_loss_of_output(fused="eager"),
        }
    return {
        "loss": hf.hf_seq2seq_loss(),
        "forward": hf.hf_seq2seq_forward(),
        "loss_of_output": hf.hf_seq2seq_loss_of_output(fused="eager"),
    }
