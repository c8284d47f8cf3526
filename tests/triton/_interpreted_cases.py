"""The Triton kernel on CPU tensors in triton's interpreter, against the eager reference.

Not collected by a normal test run (the file name does not start with ``test_``):
``tests/triton/test_kernel.py`` runs it in a fresh process with ``TRITON_INTERPRET=1``, which
must be set before ``triton.jit`` decorates the kernel. Run by hand with
``TRITON_INTERPRET=1 uv run pytest tests/triton/_interpreted_cases.py``.

Tolerances are those of tests/core/test_ce_hvp.py (:func:`hvp_err`): 1e-6 in float32, 2e-3 in
float16 and 1e-2 in bfloat16.
"""

from __future__ import annotations

import os

import pytest
import torch

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.loss_fns import ce_hvp, ce_hvp_eager, resolve_ce_hvp_backend
from tests.core.test_ce_hvp import IGNORE, TOL, hvp_err, make_inputs

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported", allow_module_level=True)

from hessian_eigenthings_triton import kernel, plugin

F32 = torch.float32


def test_kernel_runs_in_the_interpreter() -> None:
    assert kernel.INTERPRETED


@pytest.mark.parametrize(
    ("shape", "ignore"),
    [
        ((1, 1), ()),
        ((1, 7), ()),
        ((3, 7), (1,)),
        ((4, 1000), (0, 3)),
        ((2, 5003), (1,)),
        ((3, 4097), ()),
        ((6, 50), (0, 2, 5)),
    ],
    ids=["N1-V1", "N1-V7", "N3-V7", "N4-V1000", "N2-V5003", "N3-V4097", "N6-V50"],
)
def test_float32_matches_eager(shape: tuple[int, int], ignore: tuple[int, ...]) -> None:
    logits, u, labels = make_inputs(shape, dtype=F32, seed=sum(shape), ignore=ignore)
    out = kernel.ce_hvp_triton(logits, u, labels, IGNORE, 0.3)
    ref = ce_hvp_eager(logits, u, labels, IGNORE, 0.3)
    assert out.dtype == F32
    assert hvp_err(out, ref, logits, u, 0.3) <= TOL[F32]
    for row in ignore:
        assert torch.equal(out[row], torch.zeros(shape[1]))


@pytest.mark.parametrize(
    ("vocab", "block_v"), [(7, 16), (1000, 16), (1000, 64), (5003, 256), (5003, 1024)]
)
def test_many_chunks_and_a_ragged_last_chunk(block_v: int, vocab: int) -> None:
    logits, u, labels = make_inputs((3, vocab), dtype=F32, seed=vocab + block_v, ignore=(1,))
    out = kernel.ce_hvp_triton(logits, u, labels, IGNORE, 1.0, block_v=block_v)
    ref = ce_hvp_eager(logits, u, labels, IGNORE, 1.0)
    assert hvp_err(out, ref, logits, u) <= TOL[F32]


def test_leading_chunks_of_negative_infinity() -> None:
    # Rows whose first chunks are all -inf (masked tokens): the running maximum stays -inf
    # until a finite logit arrives, which must not turn the sums into nan.
    logits, u, labels = make_inputs((3, 300), dtype=F32, seed=3)
    logits[:, :200] = float("-inf")
    logits[1, :299] = float("-inf")
    out = kernel.ce_hvp_triton(logits, u, labels, IGNORE, 1.0, block_v=64)
    ref = ce_hvp_eager(logits, u, labels, IGNORE, 1.0)
    assert torch.isfinite(out).all()
    assert hvp_err(out, ref, logits, u) <= TOL[F32]
    assert torch.equal(out[1], torch.zeros(300))  # a one-hot softmax has zero curvature


def test_ignored_rows_are_exact_zeros_even_with_nonfinite_logits() -> None:
    logits, u, labels = make_inputs((4, 40), dtype=F32, seed=5, ignore=(0, 1, 2, 3))
    logits[2, 3] = float("nan")
    assert torch.equal(kernel.ce_hvp_triton(logits, u, labels, IGNORE, 1.0), torch.zeros(4, 40))
    labels[0] = 4
    out = kernel.ce_hvp_triton(logits, u, labels, IGNORE, 1.0)
    assert torch.equal(out[1:], torch.zeros(3, 40))
    assert out[0].abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 1000), (2, 5003)], ids=["V1000", "V5003"])
def test_half_precision_matches_eager(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    logits, u, labels = make_inputs(shape, dtype=dtype, seed=11, ignore=(1,))
    out = kernel.ce_hvp_triton(logits, u, labels, IGNORE, 1.0)
    ref = ce_hvp_eager(logits, u, labels, IGNORE, 1.0)
    assert out.dtype == dtype
    assert hvp_err(out, ref, logits, u) <= TOL[dtype]


def test_mixed_dtypes_give_u_dtype() -> None:
    logits, u, labels = make_inputs((3, 300), dtype=F32, seed=13)
    out = kernel.ce_hvp_triton(logits.bfloat16(), u, labels, IGNORE, 0.5)
    ref = ce_hvp_eager(logits.bfloat16(), u, labels, IGNORE, 0.5)
    assert out.dtype == F32
    assert hvp_err(out, ref, logits.bfloat16(), u, 0.5) <= TOL[F32]


def test_row_strides_and_non_contiguous_columns() -> None:
    logits, u, labels = make_inputs((4, 600), dtype=F32, seed=17)
    # Row stride 600 with 250 used columns (no copy), and a column-strided u (copied).
    z, x = logits[:, 100:350], u[:, ::2][:, :250]
    out = kernel.ce_hvp_triton(z, x, labels, IGNORE, 1.0, block_v=64)
    assert hvp_err(out, ce_hvp_eager(z, x, labels, IGNORE, 1.0), z, x) <= TOL[F32]


def test_empty_input() -> None:
    out = kernel.ce_hvp_triton(torch.zeros(0, 5), torch.zeros(0, 5), torch.zeros(0), IGNORE, 1.0)
    assert out.shape == (0, 5)


def test_launch_config() -> None:
    for vocab in (1, 7, 16, 1000, 4096, 4097, 50257):
        block, warps = kernel.launch_config(vocab)
        assert block >= 16
        assert block & (block - 1) == 0
        assert block == min(max(16, 1 << (vocab - 1).bit_length()), kernel.MAX_BLOCK_V)
        assert warps in (4, 8)
    assert kernel.launch_config(50257, 128) == (128, 4)
    for bad in (8, 100):
        with pytest.raises(InvalidArgumentError, match="block_v"):
            kernel.launch_config(1000, bad)


def test_dispatcher_auto_picks_triton_for_cpu_tensors_when_interpreting() -> None:
    logits, u, labels = make_inputs((2, 5, 70), dtype=F32, seed=19, ignore=(0, 7))
    assert resolve_ce_hvp_backend("auto", logits, u)[0] == "triton"
    for reduction in ("mean", "sum"):
        out = ce_hvp(logits, u, labels, reduction=reduction, fused="triton")  # type: ignore[arg-type]
        ref = ce_hvp(logits, u, labels, reduction=reduction, fused="eager")  # type: ignore[arg-type]
        assert out.shape == (2, 5, 70)
        assert hvp_err(out, ref, logits, u) <= TOL[F32]


def test_float64_is_refused_with_a_reason() -> None:
    x = torch.zeros(2, 3, dtype=torch.float64)
    reason = plugin.supports(x, x)
    assert reason is not None
    assert "float64" in reason
    # auto passes triton over; compile next, for inputs large enough to repay compiling
    large = torch.zeros(1, 1 << 22, dtype=torch.float64)
    assert resolve_ce_hvp_backend("auto", large, large)[0] == "compile"
    assert resolve_ce_hvp_backend("auto", x, x)[0] == "eager"
    with pytest.raises(InvalidArgumentError, match=r"fused='triton' cannot serve.*float64"):
        resolve_ce_hvp_backend("triton", x, x)
