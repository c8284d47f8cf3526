"""The Triton kernel compiles for real GPUs, checked without one.

The interpreter (``_interpreted_cases.py``) runs the kernel's Python semantics but not triton's
compiler, which is stricter (loop-carried types, constexpr rules, scalar shapes). Here the kernel
is compiled ahead of time for NVIDIA targets with the ptxas that ships with triton, which needs no
GPU, and its IR is checked for 64-bit row offsets. ``tests/triton/test_kernel.py`` runs this file
in a fresh process without ``TRITON_INTERPRET`` (under the interpreter there is nothing to
compile).
"""

from __future__ import annotations

import os
import re

import pytest

if os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on"}:
    pytest.skip(
        "the kernel is interpreted, not compiled, under TRITON_INTERPRET", allow_module_level=True
    )

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from hessian_eigenthings_triton import kernel


def compile_for(
    arch: int, dtype: str, block_v: int, num_warps: int
) -> triton.compiler.CompiledKernel:
    pointer = f"*{dtype}"
    signature = {
        "logits_ptr": pointer,
        "u_ptr": pointer,
        "labels_ptr": "*i64",
        "out_ptr": pointer,
        "V": "i32",
        "stride_logits": "i32",
        "stride_u": "i32",
        "stride_out": "i32",
        "ignore_index": "i32",
        "scale": "fp32",
        "BLOCK_V": "constexpr",
    }
    source = ASTSource(kernel._ce_hvp_rows, signature, constexprs={"BLOCK_V": block_v})
    return triton.compile(
        source,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps, "enable_fp_fusion": True},
    )


def test_kernel_is_compiled_not_interpreted() -> None:
    assert not kernel.INTERPRETED


@pytest.mark.parametrize(
    ("arch", "dtype"), [(80, "fp32"), (80, "bf16"), (80, "fp16"), (90, "bf16")]
)
def test_compiles_to_cubin(arch: int, dtype: str) -> None:
    block_v, num_warps = kernel.launch_config(50257)
    compiled = compile_for(arch, dtype, block_v, num_warps)
    assert compiled.asm["cubin"]
    assert f".target sm_{arch}" in compiled.asm["ptx"]


def test_small_block_config_compiles() -> None:
    block_v, num_warps = kernel.launch_config(7)
    assert compile_for(80, "fp32", block_v, num_warps).asm["cubin"]


def test_row_offsets_are_64_bit() -> None:
    # With i32 strides, row · stride must still be computed in i64: N·V may exceed 2**31.
    ttir = compile_for(80, "bf16", 4096, 8).asm["ttir"]
    pid = re.search(r"(%\w+) = tt\.get_program_id x : i32", ttir)
    assert pid is not None, ttir
    widened = re.search(rf"(%\w+) = arith\.extsi {pid.group(1)} : i32 to i64", ttir)
    assert widened is not None, ttir
    products = re.findall(rf"arith\.muli {widened.group(1)}, %\w+ : i64", ttir)
    assert len(products) == 3, ttir  # logits, u and out rows
