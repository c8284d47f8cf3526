"""PyHessian's top-eigenvalue power iteration against ours, end to end, on the same batch.

PyHessian (``pip install pyhessian``; not a dependency of this project) keeps ∇L's graph from
its constructor on and runs power iteration on lists of per-parameter tensors. This runs, for
each workload of ``bench_operators.py`` (float32, one CPU thread), K power-iteration steps
(tolerances too small to stop early, so exactly K products) from construction to the eigenvalue:

* ``pyhessian`` — ``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(maxIter=K,
  tol=0)``;
* ``ours_reuse_graph`` — ``power_iteration_one(HessianOperator(..., reuse_graph=True), ...)``;
* ``ours_default`` — the same operator recomputing every product (the default).

One JSON line per (workload, candidate): the median wall time over interleaved rounds, per
product (total / K) as a ratio to one plain gradient measured in the same rounds, and the
eigenvalue found (the runs start from different random vectors, so they agree only as far as
K steps of power iteration converge).

Run: ``uv run --with pyhessian python benchmarks/bench_pyhessian.py`` (``--steps``,
``--repeats``, ``--models``).
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import emit, interleaved_medians
from bench_operators import WORKLOADS, Workload

from hessian_eigenthings import HessianOperator
from hessian_eigenthings.algorithms import power_iteration_one


def run(w: Workload, steps: int, repeats: int) -> None:
    from pyhessian import hessian  # imported here: an optional, benchmark-only peer

    x, y = w.batch
    params = w.params
    found: dict[str, float] = {}

    def criterion(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return w.loss_of_output(output, (x, targets))

    def gradient() -> Any:
        return torch.autograd.grad(w.loss_fn(w.model, w.batch), params)

    def pyhessian() -> None:
        h = hessian(w.model, criterion, data=(x, y), cuda=False)
        values, _ = h.eigenvalues(maxIter=steps, tol=0.0, top_n=1)
        found["pyhessian"] = float(values[0])
        for p in params:  # its constructor leaves ∇L (with graph) in .grad
            p.grad = None

    def ours(reuse: bool, name: str) -> Callable[[], None]:
        def go() -> None:
            op = HessianOperator(w.model, [w.batch], w.loss_fn, reuse_graph=reuse)
            value, _ = power_iteration_one(op, max_iter=steps, tol=1e-30, seed=0)
            found[name] = float(value)

        return go

    candidates: dict[str, Callable[[], Any]] = {
        "gradient": gradient,
        "pyhessian": pyhessian,
        "ours_reuse_graph": ours(True, "ours_reuse_graph"),
        "ours_default": ours(False, "ours_default"),
    }
    times = interleaved_medians(candidates, repeats=repeats)
    for name, t in times.items():
        per_product = t if name == "gradient" else t / steps
        emit(
            {
                "bench": "pyhessian_power_iteration",
                "workload": w.name,
                "candidate": name,
                "steps": steps,
                "time_s": round(t, 6),
                "time_per_product_vs_gradient": round(per_product / times["gradient"], 3),
                "eigenvalue": found.get(name),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,cnn,gpt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    emit(
        {
            "bench": "pyhessian_setup",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "steps": args.steps,
            "repeats": args.repeats,
        }
    )
    for name in args.models.split(","):
        run(WORKLOADS[name](False), args.steps, args.repeats)


if __name__ == "__main__":
    main()
