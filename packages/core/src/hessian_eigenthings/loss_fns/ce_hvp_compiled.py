"""The ``compile`` cross-entropy HVP backend: the row formula fused by torch.compile (Inductor).

Per row, with z the logits, u the direction and w the row weight (``scale``, or 0 when the
label is ``ignore_index``)::

    m = max z,   e = exp(z − m),   s = Σ e,   t = Σ e ⊙ u,   out = w · (e / s) ⊙ (u − t / s)

which equals ``w · (p ⊙ u − p ⟨p, u⟩)`` with p = e / s. Written this way every (N, V) value is
either an input read or the output write, so Inductor emits one kernel with (N, 1) scratch
(m, s, t) and the output as its only (N, V) buffer; on CPU the kernel makes three passes over a
row (max; the two sums together; the output), on a GPU Inductor may merge the first two
(online softmax). Eager, by contrast, holds about five (N, V) temporaries at its peak.
Arithmetic is float32 (float64 for float64 logits); the result has ``u``'s dtype; ignored
rows are exactly zero even when their logits are not finite.

Compilation happens on the first call per (device type, logits dtype, u dtype), with dynamic
shapes so that new N or V reuse the compiled code. Inductor still specialises a few size ranges,
each compiled once: N = 1 versus N ≥ 2, V = 1, and on CPU V ≤ 4096 versus V > 4096 (above it
the reduction uses cascade summation). ``scale`` and ``ignore_index`` never enter the graph. The
first call in a process costs seconds (see docs/fused_ce_hvp.md for measured figures), later
calls nothing extra.

:func:`compiled_ce_hvp_supports` refuses, with the reason, when torch.compile cannot run here:
dtypes other than float16/bfloat16/float32/float64, torch.compile disabled
(``TORCH_COMPILE_DISABLE=1``/``TORCHDYNAMO_DISABLE=1`` or ``torch._dynamo.config.disable``), a
caller being traced by TorchDynamo or inside a ``torch.func`` transform (the eager formula is
then traced or transformed instead), no C++ compiler for CPU tensors, no triton for GPU
tensors, or an earlier compilation failure for the same device type and dtypes. It is cheap:
environment and ``sys.modules`` look-ups, and a cached ``shutil.which`` for the compiler. If
compilation fails anyway, the product is computed by the eager formula with a warning, and the
failure is remembered so ``fused="auto"`` moves on to ``eager``.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import threading
import warnings
from typing import Any

import torch

from hessian_eigenthings.loss_fns.ce_hvp import ce_hvp_eager, row_weights, traced_reason

__all__ = [
    "COMPILE_MIN_AUTO_ELEMENTS",
    "COMPILE_PRIORITY",
    "compiled_ce_hvp",
    "compiled_ce_hvp_supports",
]

#: Above ``eager`` (0), below plugin kernels such as ``triton`` (20).
COMPILE_PRIORITY = 10

#: ``fused="auto"`` uses ``compile`` only from this many logits (N·V) up: compiling costs
#: seconds once per process (8–16 s measured on a 2-core CPU), while below ~4M logits the
#: eager formula's five (N, V) temporaries take at most ~80 MiB in float32 and a few tens of
#: milliseconds per product. ``fused="compile"`` uses it at any size.
COMPILE_MIN_AUTO_ELEMENTS = 1 << 22

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_Key = tuple[str, torch.dtype, torch.dtype]
_lock = threading.Lock()
_compiled: dict[_Key, Any] = {}
_failures: dict[_Key, str] = {}


def _fused_rows(logits: torch.Tensor, u: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    z = logits.to(weight.dtype)
    x = u.to(weight.dtype)
    w = weight.unsqueeze(-1)
    e = torch.exp(z - z.amax(dim=-1, keepdim=True))
    s = e.sum(dim=-1, keepdim=True)
    t = (e * x).sum(dim=-1, keepdim=True)
    out = e * (w / s) * (x - t / s)
    return torch.where(w != 0, out, 0.0).to(u.dtype)


def _key(logits: torch.Tensor, u: torch.Tensor) -> _Key:
    return (logits.device.type, logits.dtype, u.dtype)


def _compiled_for(key: _Key) -> Any:
    with _lock:
        fn = _compiled.get(key)
        if fn is None:
            options: dict[str, Any] = {"dynamic": True, "fullgraph": True}
            # One cache of compiled graphs per key where torch supports it, so the dtype
            # variants do not share dynamo's per-function recompile limit.
            if "isolate_recompiles" in _compile_parameters():
                options["isolate_recompiles"] = True
            fn = _compiled[key] = torch.compile(_fused_rows, **options)
        return fn


@functools.cache
def _compile_parameters() -> frozenset[str]:
    import inspect

    return frozenset(inspect.signature(torch.compile).parameters)


def _compile_disabled() -> bool:
    if any(
        os.environ.get(var, "") == "1" for var in ("TORCH_COMPILE_DISABLE", "TORCHDYNAMO_DISABLE")
    ):
        return True
    dynamo = sys.modules.get("torch._dynamo")
    return bool(dynamo is not None and dynamo.config.disable)


def _cpp_compilers() -> tuple[str, ...]:
    """The C++ compilers Inductor would try for CPU kernels, in its order."""
    config = sys.modules.get("torch._inductor.config")
    cxx = getattr(getattr(config, "cpp", None), "cxx", None)
    if cxx:
        candidates = cxx if isinstance(cxx, (list, tuple)) else (cxx,)
        return tuple(c for c in candidates if c)
    if sys.platform == "win32":
        return (os.environ.get("CXX", "cl"),)
    return (os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++"),)


@functools.cache
def _device_reason(device: str, cpp_compilers: tuple[str, ...]) -> str | None:
    if device == "cpu":
        if not any(shutil.which(c.split()[0]) for c in cpp_compilers):
            return (
                f"torch.compile needs a C++ compiler for CPU tensors and found none of "
                f"{list(cpp_compilers)} (install one or point the CXX variable at it)"
            )
        return None
    if device in ("cuda", "xpu"):
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return f"torch.compile needs triton for {device} tensors (pip install triton)"
        return None
    if device == "mps":
        return None
    return f"torch.compile (Inductor) generates code for cpu, cuda, xpu and mps, not {device}"


def compiled_ce_hvp_supports(logits: torch.Tensor, u: torch.Tensor) -> str | None:
    """``None`` when the compiled backend can serve these tensors, else the reason."""
    if logits.device != u.device:
        return f"logits are on {logits.device} but u is on {u.device}"
    for name, tensor in (("logits", logits), ("u", u)):
        if tensor.dtype not in _DTYPES:
            return (
                f"{name} must be a floating-point tensor (float16 to float64), got {tensor.dtype}"
            )
    reason = traced_reason(logits, u)
    if reason is not None:
        return reason
    if _compile_disabled():
        return (
            "torch.compile is disabled (TORCH_COMPILE_DISABLE/TORCHDYNAMO_DISABLE or "
            "torch._dynamo.config.disable)"
        )
    device = logits.device.type
    reason = _device_reason(device, _cpp_compilers() if device == "cpu" else ())
    if reason is not None:
        return reason
    return _failures.get(_key(logits, u))


def compiled_ce_hvp(
    logits: torch.Tensor, u: torch.Tensor, labels: torch.Tensor, ignore_index: int, scale: float
) -> torch.Tensor:
    """``scale · (p ⊙ u − p ⟨p, u⟩)`` row-wise via torch.compile; ignored rows zero.

    Same contract as :func:`~hessian_eigenthings.loss_fns.ce_hvp.ce_hvp_eager`. The inputs are
    made contiguous (a copy only if they are not) so that one compiled graph serves all shapes.
    """
    key = _key(logits, u)
    # The weights are computed outside the graph so that no Python number enters it (older
    # torch versions would specialise on ``scale`` and recompile for every batch size).
    weight = row_weights(labels, ignore_index, scale, logits)
    try:
        compiled = _compiled_for(key)
        out: torch.Tensor = compiled(logits.contiguous(), u.contiguous(), weight)
        return out
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except Exception as err:
        # Compute the product first: if the inputs themselves are bad this raises their error
        # and the compiled path is not blamed.
        result = ce_hvp_eager(logits, u, labels, ignore_index, scale)
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        _failures[key] = f"torch.compile failed earlier: {type(err).__name__}: {first_line}"
        warnings.warn(
            f"fused='compile' could not compile the cross-entropy HVP for {key[1]} logits on "
            f"{key[0]} ({type(err).__name__}: {first_line}); computed it with the eager "
            "formula, and fused='auto' will use 'eager' for these tensors from now on.",
            RuntimeWarning,
            stacklevel=2,
        )
        return result
