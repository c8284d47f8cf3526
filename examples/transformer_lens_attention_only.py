"""Attention-only curvature of a small TransformerLens model, built from a config on the CPU.

A 2-layer attention-only transformer is trained for a few seconds on sequences that repeat
themselves (the second half copies the first, so the model can learn to look back), then:

1. the top eigenvalues of the Hessian restricted to the attention parameters, selected with the
   TransformerLens pattern ``blocks.*.attn.*``;
2. the same for the generalized Gauss-Newton matrix (positive semi-definite);
3. the top eigenvalue of each layer's attention block and of each head's block.

Nothing is downloaded; it runs in well under a minute on a laptop CPU.
Run: ``python examples/transformer_lens_attention_only.py``
"""

from __future__ import annotations

import time

import torch

from hessian_eigenthings import GGNOperator, HessianOperator, lanczos
from hessian_eigenthings_tlens import (
    build_tlens_model,
    component_spectra,
    tlens_forward,
    tlens_loss,
    tlens_loss_of_output,
    tlens_param_filter,
)

CONFIG = {
    "n_layers": 2,
    "d_model": 32,
    "d_head": 8,
    "n_heads": 4,
    "n_ctx": 16,
    "d_vocab": 24,
    "attn_only": True,
    "normalization_type": "LN",
}


def repeated_sequences(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 16) token rows whose second half repeats the first."""
    half = torch.randint(0, CONFIG["d_vocab"], (n, CONFIG["n_ctx"] // 2), generator=generator)
    return torch.cat([half, half], dim=1)


def train(model: torch.nn.Module, steps: int, generator: torch.Generator) -> float:
    loss_fn = tlens_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = loss_fn(model, repeated_sequences(32, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return float(loss.detach())


def main() -> None:
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    model = build_tlens_model(CONFIG, seed=0)
    final_loss = train(model, steps=150, generator=generator)
    print(f"{type(model).__name__} with {sum(p.numel() for p in model.parameters())} parameters")
    print(f"training loss after 150 steps: {final_loss:.3f} (uniform guessing: 3.178)")

    batches = [repeated_sequences(16, generator) for _ in range(2)]
    attention = tlens_param_filter(model, "blocks.*.attn.*")

    hessian = HessianOperator(model, batches, tlens_loss(), param_filter=attention)
    top = lanczos(hessian, k=3, max_iter=40, which="LA", tol=1e-4, seed=0)
    print(f"\nattention-only Hessian ({hessian.size} parameters), top eigenvalues:")
    for i, value in enumerate(top.eigenvalues.tolist(), 1):
        print(f"  λ_{i} = {value: .4e}")

    # fused="eager": for a run this small, compiling the fused CE-HVP kernel would cost more
    # than it saves.
    ggn = GGNOperator(
        model, batches, tlens_forward(), tlens_loss_of_output(fused="eager"), param_filter=attention
    )
    top_ggn = lanczos(ggn, k=3, max_iter=40, which="LA", tol=1e-4, seed=0)
    print("attention-only GGN, top eigenvalues:")
    for i, value in enumerate(top_ggn.eigenvalues.tolist(), 1):
        print(f"  λ_{i} = {value: .4e}")

    print("\ntop Hessian eigenvalue per component:")
    for components in ("attn", "heads"):
        spectra = component_spectra(
            model, batches[:1], components=components, k=1, max_iter=25, tol=1e-3, seed=0
        )
        for name, result in spectra.items():
            print(f"  {name:<22} λ_1 = {result.eigenvalues[0].item(): .4e}")
    print(f"\ndone in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
