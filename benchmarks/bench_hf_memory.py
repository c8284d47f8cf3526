"""Peak CPU memory of a GGN product on a GPT-2-small-sized model, against one training step.

Model: ``GPT2LMHeadModel(GPT2Config())`` — GPT-2 small's shape (124M parameters, vocabulary
50257), randomly initialised, float32, eval mode; nothing is downloaded. Batch: 2 × 128 random
tokens. Measured, each in a fresh subprocess:

* ``train_step``: ``model(**batch, labels=ids).loss.backward()`` with HF's default attention,
  gradients allocated by the step (the baseline);
* ``ggn_analytical``: one ``GGNOperator(..., loss_hvp="analytical")`` matvec with
  ``hf_lm_forward()`` / ``hf_lm_loss_of_output()`` (``fused="auto"``; on a CPU that is the
  torch.compile backend), and ``ggn_analytical_eager`` with ``fused="eager"``;
* ``ggn_autograd``: the same with ``loss_hvp="autograd"``.

Method: each worker builds the model, the batch and (for the GGN) the input vector, reads its
resident set size (``base``), builds the operator, runs the measured computation once as a
warm-up (one-time allocations, torch.compile), drops gradients and trims the C heap, resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``), runs the computation again and reads the
peak (``VmHWM``; ``ru_maxrss`` agrees after the reset). ``extra = peak − base`` is the memory
the computation needs above the model and its inputs, including whatever stays resident after
the first run (``retained``: the operator's state, torch.compile's compiled code and runtime,
thread pools); ``steady_extra = peak − RSS after the warm-up`` leaves those out. glibc is told to
serve every allocation ≥ 128 KiB with mmap (``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave
the resident set at once. Ratios are ``extra(mode) / extra(train_step)`` (and the same for
``steady_extra``); the target for ``ggn_analytical`` is ``ratio_to_train_step`` ≤ 1.3.

``--profile MODE`` instead prints torch.profiler's per-operator allocation table for one
product (where the memory goes).

Run: ``uv run python benchmarks/bench_hf_memory.py`` (JSON lines on stdout; ~2 min on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

MODES = ("train_step", "ggn_analytical", "ggn_analytical_eager", "ggn_autograd")
TARGET = 1.3


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), flags=re.M)
    assert match is not None, field
    return int(match.group(1))


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _setup(
    mode: str, batch_size: int, seq_len: int
) -> tuple[Any, Callable[[], Any], dict[str, Any]]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    ids = torch.randint(0, model.config.vocab_size, (batch_size, seq_len))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    n = sum(p.numel() for p in model.parameters())
    info = {"params": n, "tokens": batch_size * seq_len, "vocab": model.config.vocab_size}
    v = torch.randn(n) if mode.startswith("ggn") else None
    _trim()
    info["base_mib"] = _status_kib("VmRSS") / 1024

    if mode == "train_step":

        def run() -> Any:
            model(**batch, labels=ids).loss.backward()

        return model, run, info

    from hessian_eigenthings import GGNOperator
    from hessian_eigenthings_hf import hf_lm_forward, hf_lm_loss_of_output

    fused = "eager" if mode.endswith("_eager") else "auto"
    loss_hvp = "autograd" if mode == "ggn_autograd" else "analytical"
    op = GGNOperator(
        model, [batch], hf_lm_forward(), hf_lm_loss_of_output(fused=fused), loss_hvp=loss_hvp
    )
    info.update(fused=fused, loss_hvp=loss_hvp)

    def product() -> Any:
        return op.matvec(v)

    return model, product, info


def worker(mode: str, batch_size: int, seq_len: int) -> dict[str, Any]:
    model, run, info = _setup(mode, batch_size, seq_len)
    t0 = time.perf_counter()
    out = run()
    info["warmup_s"] = round(time.perf_counter() - t0, 2)
    del out
    model.zero_grad(set_to_none=True)
    _trim()
    warm = _status_kib("VmRSS") / 1024
    info["retained_mib"] = warm - info["base_mib"]
    _reset_peak()
    t0 = time.perf_counter()
    run()
    info["seconds"] = round(time.perf_counter() - t0, 2)
    info["peak_mib"] = _status_kib("VmHWM") / 1024
    info["extra_mib"] = info["peak_mib"] - info["base_mib"]
    info["steady_extra_mib"] = info["peak_mib"] - warm
    for key in ("base_mib", "peak_mib", "extra_mib", "retained_mib", "steady_extra_mib"):
        info[key] = round(info[key], 1)
    return {"mode": mode, **info}


def profile(mode: str, batch_size: int, seq_len: int, rows: int) -> None:
    """torch.profiler's allocation table for one (warmed-up) computation of ``mode``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    _, run, _ = _setup(mode, batch_size, seq_len)
    run()
    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    table = prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=rows)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--profile", choices=MODES, help="print the allocation table of a mode")
    parser.add_argument("--rows", type=int, default=25, help="rows of the --profile table")
    args = parser.parse_args()

    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.batch_size, args.seq_len)))
        return
    if args.profile is not None:
        profile(args.profile, args.batch_size, args.seq_len, args.rows)
        return

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "HF_HUB_OFFLINE": "1"}
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    modes = ["train_step", *(m for m in args.modes if m != "train_step")]
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        cmd = [sys.executable, __file__, "--worker", mode]
        cmd += ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            line = {"mode": mode, "error": proc.stderr.strip().splitlines()[-1:]}
            print(json.dumps(line), flush=True)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results[mode] = result
        if mode != "train_step" and "train_step" in results:
            base = results["train_step"]
            result["ratio_to_train_step"] = round(result["extra_mib"] / base["extra_mib"], 3)
            result["steady_ratio_to_train_step"] = round(
                result["steady_extra_mib"] / base["steady_extra_mib"], 3
            )
        print(json.dumps(result), flush=True)
    if "ggn_analytical" in results and "ratio_to_train_step" in results["ggn_analytical"]:
        ratio = results["ggn_analytical"]["ratio_to_train_step"]
        print(
            json.dumps(
                {
                    "summary": "ggn_analytical",
                    "ratio": ratio,
                    "target": TARGET,
                    "meets_target": ratio <= TARGET,
                }
            )
        )


if __name__ == "__main__":
    main()
