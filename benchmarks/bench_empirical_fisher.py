"""Empirical Fisher: the forward-mode route against per-sample-gradient routes, by batch size.

For each workload of ``bench_operators.py`` (MLP, small CNN, tiny GPT-2-like model; float32,
one CPU thread) and each number of samples N in the batch, this measures in the same run:

* ``gradient`` — one plain gradient of the mean loss on the N samples: the unit;
* ``forward_mode`` — ``EmpiricalFisherOperator(..., per_sample_limit=0).matvec``: N directional
  derivatives by one forward-mode pass, then one weighted backward;
* ``forward_mode_shared_jvp`` — the same with ``jvp="shared"`` (no separate forward);
* ``default`` — the operator as constructed by default (``per_sample_limit=2``): one ordinary
  gradient per sample for N ≤ 2, the forward-mode route above;
* ``default_reuse_graph`` — the same with ``reuse_graph=True``: the N per-sample gradients
  (N ≤ 2) or the linearisation kept between products (the timed products reuse them);
* ``per_sample_loop`` — a plain loop of N gradients and Σ gᵢ (gᵢᵀ v)/N outside the operator: the
  per-sample route the operator must not be slower than when samples are few.

One JSON line per (workload, N, candidate): median time (interleaved rounds) and peak tensor
memory, both as ratios to the gradient. Targets: ``forward_mode`` ≤ 2.4× a gradient, peak
memory ≤ 2× a gradient's; ``default`` no slower than ``per_sample_loop`` when samples are few.

Run: ``uv run python benchmarks/bench_empirical_fisher.py`` (``--quick`` for small sizes).
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import emit, interleaved_medians, peak_tensor_bytes, tensor_bytes
from bench_operators import WORKLOADS, Batch, Workload

from hessian_eigenthings import EmpiricalFisherOperator
from hessian_eigenthings.operators._sandwich import JvpPass


def _per_sample_loss(w: Workload) -> Callable[[nn.Module, Batch], torch.Tensor]:
    def loss(model: nn.Module, sample: Batch) -> torch.Tensor:
        batch = (sample[0].unsqueeze(0), sample[1].unsqueeze(0))
        return w.loss_of_output(w.forward(model, batch), batch)

    return loss


def run(w: Workload, n: int, repeats: int) -> None:
    batch = (w.batch[0][:n], w.batch[1][:n])
    params = w.params
    size = sum(p.numel() for p in params)
    v = torch.randn(size, generator=torch.Generator().manual_seed(3))
    loss = _per_sample_loss(w)
    routes: tuple[tuple[str, int, JvpPass], ...] = (
        ("forward_mode", 0, "separate"),
        ("forward_mode_shared_jvp", 0, "shared"),
        ("default", 2, "separate"),
    )
    ops = {
        route: EmpiricalFisherOperator(w.model, [batch], loss, per_sample_limit=limit, jvp=jvp)
        for route, limit, jvp in routes
    }
    ops["default_reuse_graph"] = EmpiricalFisherOperator(w.model, [batch], loss, reuse_graph=True)

    def gradient() -> Any:
        return torch.autograd.grad(w.loss_fn(w.model, batch), params)

    def per_sample_loop() -> torch.Tensor:
        out = torch.zeros_like(v)
        for i in range(n):
            g = torch.autograd.grad(loss(w.model, (batch[0][i], batch[1][i])), params)
            flat = torch.cat([t.reshape(-1) for t in g])
            out.add_(flat, alpha=float(flat @ v) / n)
        return out

    candidates: dict[str, Callable[[], Any]] = {"gradient": gradient}
    candidates.update({route: functools.partial(op.matvec, v) for route, op in ops.items()})
    candidates["per_sample_loop"] = per_sample_loop
    reference = per_sample_loop()
    times = interleaved_medians(candidates, repeats=repeats)
    peaks = {name: peak_tensor_bytes(fn) for name, fn in candidates.items()}
    # what the kept route holds between products counts too: a fresh operator's first product
    # builds it, later ones run on top of it
    fresh = EmpiricalFisherOperator(w.model, [batch], loss, reuse_graph=True)
    first, held = tensor_bytes(lambda: fresh.matvec(v))
    later, _ = tensor_bytes(lambda: fresh.matvec(v))
    peaks["default_reuse_graph"] = max(first, held + later)
    for name, fn in candidates.items():
        record: dict[str, Any] = {
            "bench": "empirical_fisher_product",
            "workload": w.name,
            "samples": n,
            "params": size,
            "candidate": name,
            "time_s": round(times[name], 6),
            "time_vs_gradient": round(times[name] / times["gradient"], 3),
            "peak_bytes": peaks[name],
            "peak_vs_gradient": round(peaks[name] / peaks["gradient"], 3),
            "held_vs_gradient": round(held / peaks["gradient"], 3)
            if name == "default_reuse_graph"
            else 0.0,
        }
        if name != "gradient":
            out = fn()
            record["rel_err_vs_loop"] = float((out - reference).norm() / reference.norm())
        emit(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    parser.add_argument("--models", default="mlp,cnn,gpt")
    parser.add_argument("--samples", default="1,2,4,8,full", help="comma-separated N (or full)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    emit(
        {
            "bench": "empirical_fisher_setup",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "dtype": "float32",
            "targets": {"forward_mode time_vs_gradient": 2.4, "peak_vs_gradient": 2.0},
        }
    )
    for name in args.models.split(","):
        w = WORKLOADS[name](args.quick)
        full = int(w.batch[0].shape[0])
        for item in args.samples.split(","):
            run(w, full if item == "full" else min(int(item), full), repeats)


if __name__ == "__main__":
    main()
