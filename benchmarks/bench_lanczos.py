"""Lanczos vs ARPACK (scipy.sparse.linalg.eigsh) on an operator with a known spectrum.

Prints JSON lines on stdout:

* ``lanczos_vs_arpack``: products used for the top-k (``which="LM"``) eigenpairs of
  ``A = U diag(λ) Uᵀ`` (n = 1e5, U a product of Householder reflections), by our
  unrestarted Lanczos, our thick-restarted Lanczos with ARPACK's memory (its default
  ``ncv`` vectors), and ARPACK with its default ``ncv``; with each one's largest relative
  eigenvalue error against the known λ. Target: ours ≤ ARPACK.
* ``lanczos_overhead``: the share of wall (and CPU) time spent outside the operator's
  products, for operators made to cost about 1, 10 and 50 ms per product (more
  reflections). Target: < 5%. What is outside is the full reorthogonalisation — two
  memory-bound passes over the m stored vectors per step, ~2·n·m·8 bytes — plus a fixed
  per-step cost of a few dozen small tensor calls; so the share falls as the product gets
  dearer relative to n·m. ``load_average_1min`` is printed because other processes on the
  machine inflate wall times.

* ``floor`` (``--floor``): the least vector work any Lanczos step must do at this n, timed
  on bare torch with nothing else around it: ``lanczos_step`` is α = ⟨w, v⟩,
  ``w −= α v + β v_prev`` (one fused ``addmv`` over the two stacked rows), β = ‖w‖ and
  ``v_next = w / β`` into the next row of the basis; ``reorth_pass`` is one classical
  Gram–Schmidt pass against j stored rows (``h = Q w``, ``w −= Qᵀ h``: two gemv sweeps);
  ``first_touch`` is writing a row of freshly allocated memory (page faults; a stored
  basis pays it once per step). Each is timed ``cache="hot"`` (operands just used) and
  ``cache="cold"`` (a 64 MiB buffer swept in between, as a ≥ 1 ms operator does), as the
  median and 10th/90th percentiles over many repeats. ``run_floor`` adds them up for a
  run of ``steps`` steps with one reorthogonalisation pass each, as a fraction of
  ``steps`` products of 1 ms.

Tolerances: ARPACK stops when ``‖r_i‖ ≤ tol·|θ_i|`` for each pair, we stop when
``‖r_i‖ ≤ tol·max|θ|``; we pass ``tol · λ_k/λ_1`` so our test implies ARPACK's.

Run: ``OMP_NUM_THREADS=1 uv run python benchmarks/bench_lanczos.py`` (``--quick`` for a
smaller n, ``--floor`` for the floor records only).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from _harness import emit
from scipy.sparse.linalg import LinearOperator, eigsh

from hessian_eigenthings import CurvatureOperator, lanczos


class Timed(CurvatureOperator):
    """``U diag(λ) Uᵀ`` with U a product of Householder reflections; counts and times every
    call of :meth:`matvec` (the whole call: all of it is the operator's cost)."""

    def __init__(self, lam: torch.Tensor, reflections: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        us = torch.randn(reflections, lam.numel(), generator=g, dtype=torch.float64)
        self.us = us / us.norm(dim=1, keepdim=True)
        self.lam = lam
        self.count = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    @property
    def size(self) -> int:
        return self.lam.numel()

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        t0, c0 = time.perf_counter(), time.process_time()
        x = v.clone()
        r = self.us.shape[0]
        for j in range(r):  # Uᵀ x = H_r ⋯ H₁ x
            x.add_(self.us[j], alpha=-2.0 * float(torch.dot(self.us[j], x)))
        x.mul_(self.lam)
        for j in range(r - 1, -1, -1):  # U x = H₁ ⋯ H_r x
            x.add_(self.us[j], alpha=-2.0 * float(torch.dot(self.us[j], x)))
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.process_time() - c0
        self.count += 1
        return x

    def reset(self) -> None:
        self.count, self.seconds, self.cpu_seconds = 0, 0.0, 0.0


def spectra(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    bulk = torch.rand(n, generator=g, dtype=torch.float64)
    geometric = torch.cat([100.0 * 0.85 ** torch.arange(30, dtype=torch.float64), bulk[30:]])
    power_law = 100.0 / torch.arange(1, n + 1, dtype=torch.float64) ** 1.2
    return {"outliers_over_bulk": geometric, "power_law": power_law}


def rel_err(values: np.ndarray | torch.Tensor, truth: torch.Tensor) -> float:
    got = torch.as_tensor(np.asarray(values), dtype=torch.float64)
    got = got[torch.argsort(got.abs(), descending=True)]
    return float(((got - truth) / truth).abs().max())


def compare(name: str, lam: torch.Tensor, k: int, tol: float) -> dict[str, object]:
    n = lam.numel()
    truth = torch.sort(lam.abs(), descending=True).values[:k]
    op = lin = Timed(lam, reflections=4)
    ours_tol = tol * float(truth[-1] / truth[0])

    row: dict[str, object] = {"bench": "lanczos_vs_arpack", "spectrum": name, "n": n, "k": k}
    row["tol"] = tol
    t0 = time.perf_counter()
    res = lanczos(lin, k=k, max_iter=2000, tol=ours_tol, seed=0, restart=False)
    row["ours_matvecs"] = res.num_matvecs
    row["ours_wall_s"] = round(time.perf_counter() - t0, 3)
    row["ours_max_rel_err"] = rel_err(res.eigenvalues, truth)

    op.reset()
    ncv = min(n, max(2 * k + 1, 20))  # ARPACK's default basis size
    t0 = time.perf_counter()
    small = lanczos(lin, k=k, max_iter=5000, tol=ours_tol, seed=0, restart=True, max_basis=ncv)
    row["ours_restarted_ncv"] = ncv
    row["ours_restarted_matvecs"] = small.num_matvecs
    row["ours_restarted_wall_s"] = round(time.perf_counter() - t0, 3)
    row["ours_restarted_max_rel_err"] = rel_err(small.eigenvalues, truth)

    op.reset()
    sci = LinearOperator(
        (n, n),
        matvec=lambda x: op.matvec(torch.from_numpy(np.ascontiguousarray(x).reshape(-1))).numpy(),
        dtype=np.float64,
    )
    v0 = np.random.default_rng(0).standard_normal(n)
    t0 = time.perf_counter()
    vals = eigsh(sci, k=k, which="LM", tol=tol, v0=v0, return_eigenvectors=False)
    row["arpack_matvecs"] = op.count
    row["arpack_wall_s"] = round(time.perf_counter() - t0, 3)
    row["arpack_max_rel_err"] = rel_err(vals, truth)
    row["ours_le_arpack"] = res.num_matvecs <= op.count
    return row


def calibrate(lam: torch.Tensor, target_ms: float) -> int:
    """Reflections per product for a product cost of about ``target_ms``."""
    probe = Timed(lam, reflections=8)
    v = torch.randn(lam.numel(), dtype=torch.float64)
    for _ in range(3):
        probe.matvec(v)
    probe.reset()
    for _ in range(10):
        probe.matvec(v)
    per_reflection = probe.seconds / 10 / 16  # two passes of 8 reflections
    return max(1, round(target_ms / 1e3 / (2 * per_reflection)))


def overhead(lam: torch.Tensor, k: int, tol: float, target_ms: float) -> dict[str, object]:
    r = calibrate(lam, target_ms)
    op = lin = Timed(lam, reflections=r)
    lanczos(lin, k=k, max_iter=2000, tol=tol, seed=1, restart=False)  # warm-up
    # Without reorthogonalisation (same number of steps) only the fixed per-step cost remains.
    op.reset()
    t0 = time.perf_counter()
    bare = lanczos(lin, k=k, max_iter=2000, tol=tol, seed=0, reorthogonalize=False)
    bare_outside = 1.0 - op.seconds / (time.perf_counter() - t0)
    op.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    res = lanczos(lin, k=k, max_iter=2000, tol=tol, seed=0, restart=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "bench": "lanczos_overhead",
        "n": lam.numel(),
        "k": k,
        "reflections": r,
        "matvec_ms": round(1e3 * op.seconds / op.count, 3),
        "matvecs": res.num_matvecs,
        "wall_s": round(wall, 3),
        "fraction_outside_matvec": round(1.0 - op.seconds / wall, 4),
        "cpu_fraction_outside_matvec": round(1.0 - op.cpu_seconds / cpu, 4),
        "no_reorth_fraction_outside_matvec": round(bare_outside, 4),
        "no_reorth_matvecs": bare.num_matvecs,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
    }


def _quantiles_us(
    fn: Callable[[], object], repeats: int, flush: torch.Tensor | None
) -> dict[str, float]:
    """Median and 10th/90th percentile of ``fn()`` in µs; ``flush`` is swept before each."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        if flush is not None:
            flush.add_(1.0)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    q = np.quantile(np.asarray(times) * 1e6, [0.1, 0.5, 0.9])
    return {
        "median_us": round(float(q[1]), 1),
        "p10_us": round(float(q[0]), 1),
        "p90_us": round(float(q[2]), 1),
    }


def floor(n: int, steps: int, repeats: int) -> list[dict[str, object]]:
    """The ``floor`` records (module docstring)."""
    g = torch.Generator().manual_seed(0)
    Q = torch.randn(steps + 2, n, generator=g, dtype=torch.float64)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    coef = torch.empty(2, dtype=torch.float64)
    h = torch.empty(steps + 2, dtype=torch.float64)
    flush = torch.zeros(8 << 20, dtype=torch.float64)  # 64 MiB, twice the L3 cache
    out: list[dict[str, object]] = []

    def step() -> None:
        alpha = torch.linalg.vecdot(w, Q[1])
        coef[0], coef[1] = 1e-3, alpha  # β_prev, α (tiny β keeps w from decaying to 0)
        w.addmv_(Q[0:2].T, coef, alpha=-1.0)
        beta = torch.linalg.vector_norm(w)
        torch.div(w, beta, out=Q[2])

    # One never-touched row per call, like the next row of a growing basis (a small
    # temporary would come back from the allocator already mapped).
    fresh = torch.empty(2 * repeats + 20, n, dtype=torch.float64)
    used = iter(range(fresh.shape[0]))

    def first_touch() -> None:
        torch.div(w, 3.0, out=fresh[next(used)])

    def gs_pass(j: int) -> Callable[[], None]:
        def run() -> None:
            torch.mv(Q[:j], w, out=h[:j])
            w.addmv_(Q[:j].T, h[:j], alpha=-1.0)

        return run

    base = {"bench": "lanczos_floor", "n": n, "repeats": repeats}
    stats: dict[tuple[str, str, int], float] = {}
    for cache in ("hot", "cold"):
        sweep = flush if cache == "cold" else None
        cases: list[tuple[str, int, Callable[[], object]]] = [
            ("lanczos_step", 0, step),
            ("first_touch", 0, first_touch),
        ]
        cases += [("reorth_pass", j, gs_pass(j)) for j in (1, 5, 10, 20, steps)]
        for name, j, fn in cases:
            q = _quantiles_us(fn, repeats, sweep)
            stats[name, cache, j] = float(q["median_us"])
            rec: dict[str, object] = {**base, "floor": name, "cache": cache}
            if name == "reorth_pass":
                rec["rows"] = j
            rec.update(q)
            rec["fraction_of_1ms"] = round(float(q["median_us"]) / 1e3, 4)
            out.append(rec)
    for cache in ("hot", "cold"):
        # reorth_pass(j) is affine in j: interpolate between the measured sizes
        js = sorted(j for (name, c, j) in stats if name == "reorth_pass" and c == cache)
        per = [stats["reorth_pass", cache, j] for j in js]
        passes = sum(float(np.interp(j, js, per)) for j in range(1, steps + 1))
        bare = steps * stats["lanczos_step", cache, 0]
        touch = steps * stats["first_touch", cache, 0]
        out.append(
            {
                **base,
                "floor": "run_floor",
                "cache": cache,
                "steps": steps,
                "bare_steps_fraction_of_1ms": round(bare / (steps * 1e3), 4),
                "with_first_touch_fraction": round((bare + touch) / (steps * 1e3), 4),
                "with_one_reorth_pass_fraction": round((bare + touch + passes) / (steps * 1e3), 4),
                "load_average_1min": round(os.getloadavg()[0], 2),
                "torch_threads": torch.get_num_threads(),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--quick", action="store_true", help="n = 10_000, one overhead level")
    parser.add_argument("--floor", action="store_true", help="only the floor records")
    parser.add_argument("--repeats", type=int, default=300, help="repeats per floor timing")
    args = parser.parse_args(argv)
    n = 10_000 if args.quick else args.n
    for record in floor(n, steps=25, repeats=args.repeats):
        emit(record)
    if args.floor:
        return
    specs = spectra(n)
    for name, lam in specs.items():
        emit(compare(name, lam, args.k, args.tol))
    lam = specs["outliers_over_bulk"]
    truth = torch.sort(lam.abs(), descending=True).values[: args.k]
    ours_tol = args.tol * float(truth[-1] / truth[0])
    for target in (1.0,) if args.quick else (1.0, 10.0, 50.0):
        emit(overhead(lam, args.k, ours_tol, target))


if __name__ == "__main__":
    main()
