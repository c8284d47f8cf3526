"""Curvature of a tiny GPT-2 built from a config: nothing is downloaded, runs on a CPU.

Builds a randomly initialised 2-layer GPT-2 (HF's default ``sdpa`` attention), makes a few
batches of token sequences of different lengths with right padding, and computes with Lanczos

1. the top eigenvalues of the Hessian of the token-mean next-token loss restricted to the
   attention parameters (``match_names("transformer.h.*.attn.*")``), and
2. the top eigenvalues of the generalized Gauss-Newton matrix Jᵀ H_ℓ J on the same parameters,
   with the analytical cross-entropy loss-Hessian product (``loss_hvp="analytical"``).

The GGN is positive semi-definite and, for cross-entropy, equals the Fisher; the Hessian adds
the residual term Σ (∂ℓ/∂z) ∇²z, which can be indefinite. Run: ``uv run python
examples/huggingface_tiny_gpt2.py``.
"""

from __future__ import annotations

import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hessian_eigenthings import GGNOperator, HessianOperator, lanczos, match_names
from hessian_eigenthings.loss_fns import hf_lm_forward, hf_lm_loss, hf_lm_loss_of_output

VOCAB = 96
SEED = 0


def make_model() -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(SEED)
    return GPT2LMHeadModel(config).eval()  # eval: dropout off, the operators are deterministic


def make_batches() -> list[dict[str, torch.Tensor]]:
    """Sequences that count upwards modulo VOCAB from a random start (a learnable pattern),
    in batches of different lengths; the second batch has right padding."""
    g = torch.Generator().manual_seed(SEED)
    out = []
    for n, length in ((4, 24), (4, 32), (2, 16)):
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        ids = (start + torch.arange(length)) % VOCAB
        mask = torch.ones_like(ids)
        if length == 32:
            mask[1:, 20:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def main() -> None:
    model = make_model()
    data = make_batches()
    attention = match_names("transformer.h.*.attn.*")
    tokens = int(sum(hf_lm_loss().batch_weight(b) for b in data))
    print(
        f"model: GPT-2, {sum(p.numel() for p in model.parameters()):,} parameters, attention "
        f"implementation {model.config._attn_implementation!r}"
    )
    print(f"data: {len(data)} batches, {tokens} scored next-token predictions")

    t0 = time.perf_counter()
    hessian = HessianOperator(model, data, hf_lm_loss(), param_filter=attention)
    result = lanczos(hessian, k=3, max_iter=40, tol=1e-4, seed=SEED)
    print(f"\nHessian of the token-mean loss, attention parameters only (n = {hessian.size:,}):")
    for i, value in enumerate(result.eigenvalues.tolist(), 1):
        print(f"  λ_{i} = {value:+.5e}")
    print(f"  ({result.num_matvecs} products, {time.perf_counter() - t0:.1f} s)")

    t0 = time.perf_counter()
    # fused="eager": with 96 classes, compiling the fused CE-HVP kernel (what "auto" picks on a
    # CPU) would take longer than the whole run
    ggn = GGNOperator(
        model, data, hf_lm_forward(), hf_lm_loss_of_output(fused="eager"), param_filter=attention
    )
    result = lanczos(ggn, k=3, max_iter=40, tol=1e-4, seed=SEED)
    print(f"\nGGN (= Fisher for cross-entropy), same parameters (n = {ggn.size:,}):")
    for i, value in enumerate(result.eigenvalues.tolist(), 1):
        print(f"  λ_{i} = {value:+.5e}")
    print(f"  ({result.num_matvecs} products, {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
