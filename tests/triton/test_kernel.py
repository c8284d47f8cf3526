"""The Triton kernel, checked without a GPU in fresh processes, and on a GPU where there is one.

``TRITON_INTERPRET`` is read when ``triton.jit`` decorates the kernel, and this process may have
imported triton already (torch._dynamo imports it), so each case file runs in its own
``python -m pytest``: ``_interpreted_cases.py`` with ``TRITON_INTERPRET=1`` (the kernel on CPU
tensors in triton's interpreter, against the eager reference) and ``_aot_cases.py`` without it
(the kernel compiled ahead of time for sm_80/sm_90, which needs no GPU). The parent asserts the
child's exit status and that it ran tests, and shows the child's report when it fails.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from tests.core.test_ce_hvp import IGNORE, TOL, hvp_err, make_inputs

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def run_case_file(name: str, *, interpret: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                str(HERE / name),
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={report}",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        output = f"--- stdout ---\n{proc.stdout[-20000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"
        assert proc.returncode == 0, f"{name} failed (exit {proc.returncode}):\n{output}"
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    ran = counts["tests"] - counts["skipped"]
    assert counts["failures"] == counts["errors"] == 0, f"{counts}\n{output}"
    assert ran > 0, f"{name} ran no tests: {counts}\n{output}"


@needs_triton
def test_kernel_matches_eager_in_the_interpreter() -> None:
    run_case_file("_interpreted_cases.py", interpret=True)


@needs_triton
def test_kernel_compiles_for_nvidia_gpus() -> None:
    run_case_file("_aot_cases.py", interpret=False)


# -- on a GPU ---------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 7), (5, 1000), (33, 5003), (256, 50257)])
def test_cuda_kernel_matches_eager(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    from hessian_eigenthings.loss_fns import ce_hvp_eager
    from hessian_eigenthings_triton.kernel import ce_hvp_triton

    logits, u, labels = make_inputs(shape, dtype=dtype, seed=shape[1], ignore=(0,))
    logits, u, labels = logits.cuda(), u.cuda(), labels.cuda()
    out = ce_hvp_triton(logits, u, labels, IGNORE, 0.5)
    ref = ce_hvp_eager(logits, u, labels, IGNORE, 0.5)
    assert out.dtype == dtype
    # tl.exp lowers to the approximate ex2 instruction (~2 ulp): float32 gets 4x the CPU budget.
    tol = 4 * TOL[dtype] if dtype == torch.float32 else TOL[dtype]
    assert hvp_err(out, ref, logits, u, 0.5) <= tol
    assert torch.equal(out[0], torch.zeros_like(out[0]))


@pytest.mark.gpu
@needs_cuda
def test_cuda_auto_picks_triton_and_compile_matches() -> None:
    from hessian_eigenthings.loss_fns import ce_hvp, resolve_ce_hvp_backend

    logits, u, labels = make_inputs((4, 16, 3000), dtype=torch.float32, seed=1, ignore=(3,))
    logits, u, labels = logits.cuda(), u.cuda(), labels.cuda()
    assert resolve_ce_hvp_backend("auto", logits, u)[0] == "triton"
    ref = ce_hvp(logits, u, labels, fused="eager")
    for fused in ("triton", "compile"):
        out = ce_hvp(logits, u, labels, fused=fused)
        assert hvp_err(out, ref, logits, u, 1 / 63) <= 4 * TOL[torch.float32]


@pytest.mark.gpu
@needs_cuda
def test_cuda_more_than_2_to_the_31_elements() -> None:
    from hessian_eigenthings.loss_fns import ce_hvp_eager
    from hessian_eigenthings_triton.kernel import ce_hvp_triton

    vocab = 50257
    rows = 2**31 // vocab + 3
    need = 3 * rows * vocab * 2  # logits, u and output in bfloat16
    free, _ = torch.cuda.mem_get_info()
    if free < need + 2**30:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} free")
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(rows, vocab, device="cuda", dtype=torch.bfloat16, generator=g)
    u = torch.randn(rows, vocab, device="cuda", dtype=torch.bfloat16, generator=g)
    labels = torch.zeros(rows, dtype=torch.long, device="cuda")
    out = ce_hvp_triton(logits, u, labels, IGNORE, 1.0)
    tail = slice(rows - 4, rows)  # rows whose offsets exceed 2**31
    ref = ce_hvp_eager(logits[tail], u[tail], labels[tail], IGNORE, 1.0)
    assert hvp_err(out[tail], ref, logits[tail], u[tail]) <= TOL[torch.bfloat16]
