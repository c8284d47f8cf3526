"""Time and peak memory of the cross-entropy HVP backends (JSON lines on stdout).

    uv run python benchmarks/bench_ce_hvp.py [--threads 1] [--repeats 5] [--cpu-full]

For every device present (CPU; CUDA if available) and every registered backend that can serve
it (``eager`` and ``compile`` on CPU; ``eager``, ``compile`` and ``triton`` on a GPU), the
product ``ce_hvp(logits, u, labels, fused=backend)`` is measured on float32 logits of shape
(N, V) = (4096, 50257) — a GPT-2 vocabulary over 4096 positions — and on the CPU-sized
(512, 50257); on CPU the large shape only with ``--cpu-full``. A backend that cannot serve a
device gets a ``"skipped"`` record and its reason on stderr.

Each measurement runs in a fresh worker process (``--worker``) so that one backend's memory and
compilation state never leak into another's:

1. the backend is called once on a (2, V) input; that time is ``first_call_s`` (lazy imports
   plus compilation for ``compile``/``triton``, nothing for ``eager``);
2. the inputs are allocated and filled, then the product is computed once more for memory;
3. the product is timed ``--repeats`` times: wall-clock median and minimum (CUDA is
   synchronised) and the median CPU time of the process, which on a shared machine is the
   steadier figure for CPU runs (with one thread it is the work done).

Peak memory is reported ABOVE the inputs, as bytes and in units of one (N, V) buffer of the
logits' dtype (the output alone is one buffer). On CUDA it is ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats`` minus the memory allocated before the call. On CPU torch has no
allocator statistics, so the worker uses the kernel's resident-set high-water mark: it writes
``5`` to ``/proc/self/clear_refs`` (which resets ``VmHWM`` to the current ``VmRSS``), reads
``VmRSS``, calls the backend and reads ``VmHWM`` again. This is reliable here because (a) the
warm-up has already paid for imports and compilation, so their memory is excluded; (b) glibc
serves allocations of more than 32 MiB (every (N, V) buffer here) with ``mmap`` and returns them
on free, so resident memory follows the live tensors; (c) every buffer is written in full, so its
pages are resident; (d) it counts every allocation, including those of Inductor-generated code
that torch's profiler would not attribute. ``ru_maxrss`` alone could not be used as the baseline
because it keeps the compile-time peak. Where ``clear_refs`` is not writable the record says
``"memory_method": "unavailable"``.

The parent adds a ``summary`` record per shape and device with each backend's time and memory
relative to ``eager`` measured in the same run, plus a ``first_call`` record per compiled backend
with empty compiler caches (``TORCHINDUCTOR_CACHE_DIR``/``TRITON_CACHE_DIR`` pointed at a fresh
directory), i.e. the cost a user pays on a machine that never compiled the kernel.
``--threads`` (default 1, also ``OMP_NUM_THREADS``) sets ``torch.set_num_threads`` in workers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

IGNORE = -100
SHAPES_GPU = [(4096, 50257), (512, 50257)]
SHAPES_CPU = [(512, 50257)]
SHAPES_CPU_FULL = [(4096, 50257), (512, 50257)]


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hessian_eigenthings.loss_fns import ce_hvp

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    n, v = args.n, args.v

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def make(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator(device=device).manual_seed(seed)
        logits = 3 * torch.randn(rows, v, generator=g, device=device, dtype=dtype)
        u = torch.randn(rows, v, generator=g, device=device, dtype=dtype)
        labels = torch.randint(0, v, (rows,), generator=g, device=device)
        labels[::10] = IGNORE
        return logits, u, labels

    small = make(2, 1)
    t0 = time.perf_counter()
    ce_hvp(*small, fused=args.backend)
    sync()
    first_call = time.perf_counter() - t0
    record: dict[str, Any] = {
        "bench": "ce_hvp",
        "backend": args.backend,
        "device": device.type,
        "dtype": args.dtype,
        "N": n,
        "V": v,
        "threads": args.threads,
        "first_call_s": round(first_call, 3),
        "torch": torch.__version__,
    }
    if args.first_call_only:
        return record

    logits, u, labels = make(n, 0)
    buffer_bytes = logits.numel() * logits.element_size()
    sync()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = ce_hvp(logits, u, labels, fused=args.backend)
        sync()
        extra: int | None = torch.cuda.max_memory_allocated(device) - base
        method = "torch.cuda.max_memory_allocated"
    elif _reset_cpu_peak() and (base_rss := _proc_status("VmRSS")) is not None:
        out = ce_hvp(logits, u, labels, fused=args.backend)
        hwm = _proc_status("VmHWM")
        extra = None if hwm is None else hwm - base_rss
        method = "proc VmHWM after clear_refs"
    else:
        out = ce_hvp(logits, u, labels, fused=args.backend)
        extra, method = None, "unavailable"
    del out

    times, cpu_times = [], []
    for _ in range(args.repeats):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        out = ce_hvp(logits, u, labels, fused=args.backend)
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        del out
    record.update(
        {
            "repeats": args.repeats,
            "time_s_median": round(statistics.median(times), 5),
            "time_s_min": round(min(times), 5),
            "cpu_s_median": round(statistics.median(cpu_times), 5),
            "buffer_bytes": buffer_bytes,
            "extra_peak_bytes": extra,
            "extra_peak_buffers": None if extra is None else round(extra / buffer_bytes, 3),
            "memory_method": method,
        }
    )
    return record


def _run_worker(
    backend: str, device: str, n: int, v: int, args: argparse.Namespace, *, cold: bool = False
) -> dict[str, Any]:
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, __file__, "--worker", "--backend", backend, "--device", device]
    cmd += ["--n", str(n), "--v", str(v), "--dtype", args.dtype]
    cmd += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    with tempfile.TemporaryDirectory() as cache:
        if cold:
            cmd.append("--first-call-only")
            env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(cache, "inductor")
            env["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"bench": "ce_hvp", "backend": backend, "device": device, "N": n, "V": v,
                "error": " | ".join(tail)}  # fmt: skip
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _available(device: str) -> dict[str, str | None]:
    """Each registered backend's reason not to serve float32 tensors on ``device`` (None: can)."""
    import torch

    from hessian_eigenthings.plugins import get_registries

    os.environ.pop("TRITON_INTERPRET", None)  # the interpreter is for tests, not timings
    x = torch.zeros(2, 8, device=device)
    return {e.name: e.obj.supports(x, x) for e in get_registries().ce_hvp_backends}


def main(args: argparse.Namespace) -> None:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if not torch.cuda.is_available():
        print("bench_ce_hvp: no CUDA device; GPU figures (and triton) skipped", file=sys.stderr)
    for device in devices:
        reasons = _available(device)
        backends = [name for name, reason in reasons.items() if reason is None]
        for name, reason in reasons.items():
            if reason is not None:
                print(f"bench_ce_hvp: {name} on {device} skipped: {reason}", file=sys.stderr)
                _emit({"bench": "ce_hvp", "backend": name, "device": device, "skipped": reason})
        order = ["eager", *sorted(b for b in backends if b != "eager")]
        for name in order:
            if name != "eager":
                _emit({**_run_worker(name, device, 2, 50257, args, cold=True), "cache": "cold"})
        shapes = (
            SHAPES_GPU if device == "cuda" else (SHAPES_CPU_FULL if args.cpu_full else SHAPES_CPU)
        )
        for n, v in shapes:
            rows = {}
            for name in order:
                rows[name] = _run_worker(name, device, n, v, args)
                _emit(rows[name])
                print(f"bench_ce_hvp: {device} N={n} V={v} {name}: {rows[name]}", file=sys.stderr)
            base = rows.get("eager", {})
            summary: dict[str, Any] = {"bench": "ce_hvp", "summary": True, "device": device,
                                       "N": n, "V": v, "dtype": args.dtype,
                                       "threads": args.threads}  # fmt: skip
            for name, row in rows.items():
                if "time_s_median" not in row or "time_s_median" not in base:
                    continue
                summary[name] = {
                    "time_s": row["time_s_median"],
                    "speedup_vs_eager": round(base["time_s_median"] / row["time_s_median"], 2),
                    "extra_peak_buffers": row["extra_peak_buffers"],
                }
                if device == "cpu":
                    ratio = base["cpu_s_median"] / row["cpu_s_median"]
                    summary[name]["cpu_time_speedup_vs_eager"] = round(ratio, 2)
            _emit(summary)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--cpu-full", action="store_true", help="also N=4096 on CPU (~7 GB of RAM)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--first-call-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=512, help=argparse.SUPPRESS)
    p.add_argument("--v", type=int, default=50257, help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        _emit(worker(arguments))
    else:
        main(arguments)
