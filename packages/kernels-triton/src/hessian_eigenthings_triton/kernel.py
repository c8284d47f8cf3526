"""Triton kernel for the cross-entropy loss-Hessian-vector product, one program per row.

For one row z ∈ R^V of logits, a direction u and the row's weight w (``scale``, or 0 for a row
labelled ``ignore_index``) the kernel writes

    out = w · p ⊙ (u − ⟨p, u⟩),    p = softmax(z),

which is ``w · (diag(p) − p pᵀ) u``. It reads the row in ``BLOCK_V`` chunks twice and keeps only
scalars between the passes:

* pass 1 keeps a running maximum m, the normaliser s = Σ e^{z−m} and t = Σ e^{z−m} u; when a
  chunk raises the maximum from m to m' both sums are rescaled by e^{m−m'} (online softmax);
* pass 2 recomputes p = e^{z−m}/s chunk by chunk and writes w · p · (u − t/s).

Cost per row: 2 reads of the logits and of u, 1 write of the output, 2 exponentials per
element; memory: the output only (no (N, V) temporaries). Arithmetic is float32 whatever the
input dtype (float32, bfloat16 or float16); the output takes the dtype of ``out``. A row labelled
``ignore_index`` is written as zeros without reading its logits, so it is exactly zero even when
its logits are not finite.

Importing this module imports triton. The plugin imports it lazily, on first use. Under
``TRITON_INTERPRET=1`` (read by ``triton.jit`` when this module is imported) the kernel runs on
CPU tensors in triton's interpreter; that is how the test suite checks it without a GPU. The
kernel therefore uses only ``tl`` primitives (no libdevice) and one fixed configuration chosen by
:func:`launch_config` (no autotuning).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from hessian_eigenthings.errors import InvalidArgumentError

__all__ = ["INTERPRETED", "ce_hvp_triton", "launch_config"]

MAX_BLOCK_V = 4096
"""Largest chunk of a row one program holds at a time (elements)."""


# Triton reads the kernel's parameters from its source; they carry no Python annotations.
@triton.jit  # type: ignore[untyped-decorator]
def _ce_hvp_rows(  # type: ignore[no-untyped-def]
    logits_ptr,
    u_ptr,
    labels_ptr,
    out_ptr,
    V,
    stride_logits,
    stride_u,
    stride_out,
    ignore_index,
    scale,
    BLOCK_V: tl.constexpr,
):
    # int64 before multiplying by the row stride: N·V may exceed 2**31.
    row = tl.program_id(0).to(tl.int64)
    logits_row = logits_ptr + row * stride_logits
    u_row = u_ptr + row * stride_u
    out_row = out_ptr + row * stride_out
    cols = tl.arange(0, BLOCK_V)
    label = tl.load(labels_ptr + row)
    if label == ignore_index:
        zeros = tl.zeros([BLOCK_V], dtype=out_ptr.dtype.element_ty)
        for start in range(0, V, BLOCK_V):
            idx = start + cols
            tl.store(out_row + idx, zeros, mask=idx < V)
    else:
        neg_inf = float("-inf")
        m = tl.full([], neg_inf, tl.float32)
        s = tl.zeros([], tl.float32)
        t = tl.zeros([], tl.float32)
        for start in range(0, V, BLOCK_V):
            idx = start + cols
            mask = idx < V
            z = tl.load(logits_row + idx, mask=mask, other=neg_inf).to(tl.float32)
            x = tl.load(u_row + idx, mask=mask, other=0.0).to(tl.float32)
            m_new = tl.maximum(m, tl.max(z, axis=0))
            # A chunk of -inf logits (e.g. masked tokens) before any finite one leaves the
            # maximum at -inf; shift by 0 then so that e^{z-shift} is 0, not nan.
            shift = tl.where(m_new == neg_inf, 0.0, m_new)
            alpha = tl.exp(m - shift)
            e = tl.exp(z - shift)
            s = s * alpha + tl.sum(e, axis=0)
            t = t * alpha + tl.sum(e * x, axis=0)
            m = m_new
        shift = tl.where(m == neg_inf, 0.0, m)
        p_dot_u = t / s
        coef = scale / s
        for start in range(0, V, BLOCK_V):
            idx = start + cols
            mask = idx < V
            z = tl.load(logits_row + idx, mask=mask, other=neg_inf).to(tl.float32)
            x = tl.load(u_row + idx, mask=mask, other=0.0).to(tl.float32)
            out = tl.exp(z - shift) * coef * (x - p_dot_u)
            tl.store(out_row + idx, out.to(out_ptr.dtype.element_ty), mask=mask)


INTERPRETED: bool = not isinstance(_ce_hvp_rows, triton.runtime.JITFunction)
"""Whether ``triton.jit`` saw ``TRITON_INTERPRET`` set when this module was imported, i.e.
whether the kernel runs in the interpreter (CPU tensors) rather than compiled for a GPU."""


def launch_config(vocab: int, block_v: int | None = None) -> tuple[int, int]:
    """``(BLOCK_V, num_warps)`` for rows of ``vocab`` elements.

    ``BLOCK_V`` is ``block_v`` if given, else the whole row in one chunk when it fits (a power
    of two ≥ 16, as ``tl.arange`` needs) and chunks of :data:`MAX_BLOCK_V` otherwise. 4 warps
    up to 1024 elements per chunk, 8 above: about 16 elements of each operand per thread, which
    keeps the loop memory-bound without spilling registers.
    """
    if block_v is None:
        block_v = max(16, min(triton.next_power_of_2(max(vocab, 1)), MAX_BLOCK_V))
    elif block_v < 16 or block_v & (block_v - 1):
        raise InvalidArgumentError(f"block_v must be a power of two >= 16, got {block_v}")
    return block_v, (4 if block_v <= 1024 else 8)


def ce_hvp_triton(
    logits: torch.Tensor,
    u: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    scale: float,
    *,
    block_v: int | None = None,
) -> torch.Tensor:
    """``scale · (p ⊙ u − p ⟨p, u⟩)`` for each row of (N, V) ``logits``; ignored rows zero.

    ``logits`` and ``u`` are float32, bfloat16 or float16 (need not match) on one device; the
    result has ``u``'s dtype. A tensor whose last dimension is not contiguous is copied first.
    ``block_v`` (a power of two ≥ 16) overrides the chunk size :func:`launch_config` picks,
    so tests can exercise many chunks and a ragged last chunk on small rows.
    """
    n_rows, vocab = logits.shape
    out = torch.empty((n_rows, vocab), dtype=u.dtype, device=u.device)
    if out.numel() == 0:
        return out
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if u.stride(-1) != 1:
        u = u.contiguous()
    labels = labels.to(device=logits.device).contiguous()
    block, num_warps = launch_config(vocab, block_v)
    # Triton launches on the current CUDA device; make it the tensors' device.
    on_device = torch.cuda.device(out.device) if out.is_cuda else contextlib.nullcontext()
    with on_device:
        _ce_hvp_rows[(n_rows,)](
            logits,
            u,
            labels,
            out,
            vocab,
            logits.stride(0),
            u.stride(0),
            out.stride(0),
            int(ignore_index),
            float(scale),
            BLOCK_V=block,
            num_warps=num_warps,
            enable_fp_fusion=True,  # fused multiply-adds, triton's long-standing default
        )
    return out
