"""Shared measurement helpers for the benchmarks: wall time, peak tensor memory, JSON lines.

* Time: :func:`interleaved_medians` runs every candidate once per round, round after round,
  and reports each one's median — on a shared machine, load drifts hit all candidates alike,
  so ratios between them measured in the same run stay meaningful.
* Memory: :func:`peak_tensor_bytes` runs the function once under ``torch.profiler`` with
  ``profile_memory=True`` and reads the allocator's running total from every allocation and
  free it records; the peak of that total is the most tensor memory alive at once during the
  call beyond what was allocated before it (its result included). It counts tensor bytes
  exactly, on CPU as on CUDA, unlike process RSS, which glibc's allocator and library loading
  blur. Profiling slows the call down, so it is never timed.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["emit", "interleaved_medians", "peak_tensor_bytes", "tensor_bytes"]


def interleaved_medians(
    candidates: Mapping[str, Callable[[], Any]], *, repeats: int = 7, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each candidate over ``repeats`` interleaved rounds (after warm-up)."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Most tensor bytes alive at once during ``fn()`` beyond those alive before it."""
    return tensor_bytes(fn)[0]


def tensor_bytes(fn: Callable[[], Any]) -> tuple[int, int]:
    """(peak, held): the most tensor bytes alive at once during ``fn()`` beyond those alive
    before it, and the bytes it left allocated after returning (e.g. a cache it filled)."""
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, profile_memory=True) as prof:
        result = fn()
        del result
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    memory = [
        e["args"]
        for e in events
        if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})
    ]
    if not memory:
        return 0, 0
    # The profiler's running total is not reset between profiles (it can carry what an earlier
    # workload in this process left allocated), so measure from the total before fn's first
    # allocation.
    start = int(memory[0]["Total Allocated"]) - int(memory[0]["Bytes"])
    peak = max(0, *(int(m["Total Allocated"]) - start for m in memory))
    return peak, max(0, int(memory[-1]["Total Allocated"]) - start)


def emit(record: Mapping[str, Any]) -> None:
    """One JSON object per line on stdout."""
    sys.stdout.write(json.dumps(record, sort_keys=False) + "\n")
    sys.stdout.flush()
