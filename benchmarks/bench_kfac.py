"""Cost of KFAC: building the Kronecker factors and one product, as ratios to one gradient.

For an MLP and a small CNN (float32, one CPU thread, the workloads of ``bench_operators.py``)
this measures in the same run, interleaved:

* ``gradient`` — forward + backward on the batch: the unit;
* ``factors/<ours|curvlinops>/<fisher_type>`` — computing the Kronecker factors from scratch
  (our ``KFACOperator.compute_factors()``, curvlinops' ``compute_kronecker_factors()``);
* ``ekfac/<ours|curvlinops>`` — the EKFAC eigenvalue correction pass (type-2), with the
  factors and their eigenvectors already computed (both libraries cache them);
* ``matvec/<ours|curvlinops>`` — one product with cached factors (folded bias for both).

Each line also carries the relative difference of the two libraries' products (float32) and,
for the factor passes, the peak tensor memory as a ratio to the gradient's.

Run: ``uv run python benchmarks/bench_kfac.py`` (``--quick`` for small sizes and few repeats;
``--models mlp`` to select). curvlinops-for-pytorch must be installed (the test group has it).
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import emit, interleaved_medians, peak_tensor_bytes
from bench_operators import WORKLOADS, Workload

from hessian_eigenthings import KFACOperator
from hessian_eigenthings.loss_fns import cross_entropy_loss_of_output

FISHER_TYPES = ("type-2", "mc", "empirical")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run(w: Workload, repeats: int) -> None:
    import curvlinops

    params = w.params
    n = sum(p.numel() for p in params)
    v = torch.randn(n, generator=torch.Generator().manual_seed(3))
    data = [w.batch]
    criterion = nn.CrossEntropyLoss()

    def ours(fisher_type: str, **kw: Any) -> KFACOperator:
        return KFACOperator(
            w.model,
            data,
            w.forward,
            cross_entropy_loss_of_output(),
            fisher_type=fisher_type,  # type: ignore[arg-type]
            seed=0,
            **kw,
        )

    def theirs(fisher_type: str, cls: Any = None) -> Any:
        return (cls or curvlinops.KFACLinearOperator)(
            w.model,
            criterion,
            params,
            data,
            fisher_type=fisher_type,
            separate_weight_and_bias=False,
            check_deterministic=False,
        )

    def gradient() -> Any:
        return torch.autograd.grad(w.loss_fn(w.model, w.batch), params)

    candidates: dict[str, Callable[[], Any]] = {"gradient": gradient}
    for ft in FISHER_TYPES:
        candidates[f"factors/ours/{ft}"] = ours(ft).compute_factors
        candidates[f"factors/curvlinops/{ft}"] = theirs(ft).compute_kronecker_factors
    ours_ekfac = ours("type-2", correct_eigenvalues=True)
    ours_ekfac.compute_factors()
    theirs_ekfac = theirs("type-2", curvlinops.EKFACLinearOperator)
    theirs_ekfac.compute_kronecker_factors()

    factors = ours_ekfac._kronecker_factors(None)
    factors.eigen()  # both libraries keep the factor eigenvectors: time the correction alone

    def ours_correction() -> Any:
        return ours_ekfac._corrected_eigenvalues(factors, None)

    candidates["ekfac/ours/type-2"] = ours_correction
    candidates["ekfac/curvlinops/type-2"] = theirs_ekfac.compute_eigenvalue_correction
    ours_kfac, theirs_kfac = ours("type-2"), theirs("type-2")
    agreement = {
        "matvec": _rel(ours_kfac @ v, theirs_kfac @ v),
        "ekfac": _rel(ours_ekfac @ v, theirs_ekfac @ v),
    }
    candidates["matvec/ours/type-2"] = lambda: ours_kfac @ v
    candidates["matvec/curvlinops/type-2"] = lambda: theirs_kfac @ v

    times = interleaved_medians(candidates, repeats=repeats)
    peaks = {
        name: peak_tensor_bytes(fn)
        for name, fn in candidates.items()
        if name == "gradient" or name.startswith(("factors/", "ekfac/"))
    }
    for name, t in times.items():
        kind = name.split("/")[0]
        record: dict[str, Any] = {
            "bench": "kfac",
            "workload": w.name,
            "params": n,
            "batch": int(w.batch[0].shape[0]),
            "candidate": name,
            "time_s": round(t, 6),
            "time_vs_gradient": round(t / times["gradient"], 3),
        }
        if name in peaks:
            record["peak_vs_gradient"] = round(peaks[name] / peaks["gradient"], 3)
        if name.startswith(("matvec/", "ekfac/")):
            record["rel_diff_vs_other_library"] = agreement[kind]
        if name.startswith(("factors/", "ekfac/", "matvec/")) and "/ours/" in name:
            other = name.replace("/ours/", "/curvlinops/")
            record["time_vs_curvlinops"] = round(t / times[other], 3)
        record.update(
            threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine()
        )
        emit(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models.split(","):
        run(WORKLOADS[name](args.quick), repeats=3 if args.quick else 7)


if __name__ == "__main__":
    main()
