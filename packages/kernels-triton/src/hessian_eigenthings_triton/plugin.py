"""Entry point of hessian-eigenthings-triton for the ``hessian_eigenthings`` plugin manager.

Declared in this package's pyproject.toml under ``[project.entry-points.hessian_eigenthings]``.
It registers the ``triton`` cross-entropy HVP backend (priority 20, above ``compile`` and
``eager``), so ``fused="auto"`` uses the Triton kernel for CUDA tensors.

Nothing here imports triton: loading the plugin and asking whether the backend can serve some
tensors stay cheap and work on machines without CUDA. Triton and the kernel are imported on the
first product computed with this backend.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

import torch

from hessian_eigenthings.loss_fns.ce_hvp import traced_reason
from hessian_eigenthings.plugins import CEHvpBackend, Register, hookimpl

__all__ = ["PRIORITY", "interpret_requested", "register_ce_hvp_backends", "supports", "triton_fn"]

PRIORITY = 20
"""The ``triton`` backend's priority: above the core's ``compile`` (10) and ``eager`` (0), so
``fused="auto"`` picks the kernel wherever :func:`supports` accepts the tensors.

Example:
    >>> from hessian_eigenthings.plugins import get_registries
    >>> from hessian_eigenthings_triton import PRIORITY
    >>> backends = get_registries().ce_hvp_backends
    >>> backends.get("triton").priority == PRIORITY
    True
    >>> PRIORITY > backends.get("compile").priority > backends.get("eager").priority
    True
"""
_KERNEL_MODULE = "hessian_eigenthings_triton.kernel"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpret_requested() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for triton's CPU interpreter (as triton parses it).

    Triton reads the variable when it decorates the kernel, so it must be set before the
    backend's first product in the process.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> from hessian_eigenthings_triton import interpret_requested
        >>> with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1"}):
        ...     interpret_requested()
        True
        >>> with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "0"}):
        ...     interpret_requested()
        False
    """
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in {"1", "true", "on"}


def supports(logits: torch.Tensor, u: torch.Tensor) -> str | None:
    """``None`` when the kernel can serve these tensors, else why not.

    It can for float32/bfloat16/float16 tensors on one device that are either CUDA tensors with
    CUDA available, or CPU tensors with ``TRITON_INTERPRET=1`` (the interpreter, for tests).
    The reason is what :func:`~hessian_eigenthings.loss_fns.ce_hvp` reports when this backend
    was asked for by name; ``fused="auto"`` moves on to the next backend instead.

    Example:
        >>> import torch
        >>> from hessian_eigenthings_triton import supports
        >>> logits = torch.zeros(2, 5, dtype=torch.float64)
        >>> print(supports(logits, torch.zeros_like(logits)))
        the Triton kernel takes float32, bfloat16 or float16 logits, not torch.float64
        (use 'compile' or 'eager', which compute in float64)
    """
    if logits.device != u.device:
        return f"logits are on {logits.device} but u is on {u.device}"
    for name, tensor in (("logits", logits), ("u", u)):
        if tensor.dtype not in _DTYPES:
            hint = " (use 'compile' or 'eager', which compute in float64)"
            return (
                f"the Triton kernel takes float32, bfloat16 or float16 {name}, not "
                f"{tensor.dtype}{hint if tensor.dtype == torch.float64 else ''}"
            )
    reason = traced_reason(logits, u)
    if reason is not None:
        return reason
    if not _triton_installed():
        return "triton is not installed (pip install triton)"
    device = logits.device.type
    if device == "cuda":
        if not torch.cuda.is_available():
            return "CUDA tensors but CUDA is not available"
        return None
    if device == "cpu":
        if not interpret_requested():
            return (
                "the Triton kernel runs on CUDA tensors; CPU tensors only in triton's "
                "interpreter (set TRITON_INTERPRET=1 before triton is imported, for testing)"
            )
        kernel = sys.modules.get(_KERNEL_MODULE)
        if kernel is not None and not kernel.INTERPRETED:
            return (
                "TRITON_INTERPRET=1 was set after the kernel had been compiled for the GPU; "
                "set it before the first use of the backend"
            )
        return None
    return f"the Triton kernel runs on CUDA tensors, not {device}"


def triton_fn(
    logits: torch.Tensor, u: torch.Tensor, labels: torch.Tensor, ignore_index: int, scale: float
) -> torch.Tensor:
    """The backend's product; imports triton and compiles the kernel on first use.

    Computes ``scale · (p ⊙ u − p ⟨p, u⟩)`` for each row of the (N, V) ``logits``, with
    p = softmax(row), and zeros for rows whose label is ``ignore_index``
    (:func:`hessian_eigenthings_triton.kernel.ce_hvp_triton`; one read of the logits and of
    ``u`` per pass, two passes, the output as the only (N, V) buffer). It runs on CUDA tensors
    (CPU tensors in triton's interpreter); call it through
    :func:`~hessian_eigenthings.loss_fns.ce_hvp` with ``fused="triton"`` or ``"auto"``.

    Example:
        >>> from hessian_eigenthings.plugins import get_registries
        >>> from hessian_eigenthings_triton import triton_fn
        >>> get_registries().ce_hvp_backends.get("triton").fn is triton_fn
        True
    """
    from hessian_eigenthings_triton.kernel import ce_hvp_triton

    return ce_hvp_triton(logits, u, labels, ignore_index, scale)


@hookimpl
def register_ce_hvp_backends(register: Register[CEHvpBackend]) -> None:
    register(
        "triton",
        CEHvpBackend(fn=triton_fn, priority=PRIORITY, supports=supports),
        description="hand-written Triton kernel, one program per row; output is the only "
        "(N, V) buffer (CUDA; CPU under TRITON_INTERPRET=1)",
    )
