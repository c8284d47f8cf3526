"""Curvature of a small MLP classifier: top Hessian and GGN eigenvalues, trace, spectral density.

Trains a 2-layer MLP for a few hundred steps on a synthetic 4-class problem, then analyses the
curvature of its training loss. Runs on a CPU in a few seconds:

    uv run python examples/supervised_mlp.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings import (
    GGNOperator,
    HessianOperator,
    lanczos,
    spectral_density,
    trace,
)
from hessian_eigenthings.loss_fns import (
    supervised_forward,
    supervised_loss,
    supervised_loss_of_output,
)


def make_data(n: int = 512, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, 8, generator=g) * 2.0
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, 8, generator=g)
    return x, y


def main() -> None:
    torch.manual_seed(0)
    x, y = make_data()
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    batches = list(zip(x.split(128), y.split(128), strict=True))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"trained: loss {F.cross_entropy(model(x), y).item():.4f}, {n_params} parameters")

    hessian = HessianOperator(model, batches, supervised_loss(F.cross_entropy))
    ggn = GGNOperator(
        model, batches, supervised_forward, supervised_loss_of_output(F.cross_entropy)
    )
    top_h = lanczos(hessian, k=5, max_iter=60, which="LA", seed=0)
    top_g = lanczos(ggn, k=5, max_iter=60, which="LA", seed=0)
    print("top-5 Hessian eigenvalues:", [f"{v:.4g}" for v in top_h.eigenvalues.tolist()])
    print("top-5 GGN eigenvalues:    ", [f"{v:.4g}" for v in top_g.eigenvalues.tolist()])

    tr = trace(hessian, num_matvecs=60, method="hutch++", seed=0)
    print(f"Hessian trace: {tr.estimate:.4g} ± {tr.stderr:.2g} ({tr.num_matvecs} products)")

    density = spectral_density(hessian, num_runs=4, lanczos_steps=30, seed=0)
    step = float(density.grid[1] - density.grid[0])
    print(
        f"spectral density on [{density.grid[0]:.3g}, {density.grid[-1]:.3g}], "
        f"integral {float(density.density.sum()) * step:.3f}"
    )


if __name__ == "__main__":
    main()
