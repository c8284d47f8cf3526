"""Cross-entropy loss-Hessian-vector products and the backend dispatcher.

For logits z ∈ R^V at one position with p = softmax(z), the Hessian of −log p_y with respect
to z is diag(p) − p pᵀ, so for a direction u

    H u = p ⊙ u − p ⟨p, u⟩,

independent of the label y. Over N positions with mean reduction each row is divided by the
number of positions whose label is not ``ignore_index``; ignored rows are zero. Cost: O(N·V)
time, a few exponentials per element; the only (N, V) memory a fused backend needs is its
output.

Backends (name, priority, where it runs, extra (N, V) memory):

* ``eager`` (0): plain torch on any device, about five temporaries;
* ``compile`` (10, :mod:`~hessian_eigenthings.loss_fns.ce_hvp_compiled`): torch.compile
  fuses the row formula into one kernel, the output only;
* ``triton`` (20, from the ``hessian-eigenthings-triton`` plugin): a hand-written kernel for
  CUDA tensors, the output only.

``fused="auto"`` asks the registered backends from the highest priority down whether they can
serve the tensors (``CEHvpBackend.supports``) and takes the first that can: ``triton`` for CUDA
tensors where the plugin is installed, else ``compile`` where torch.compile can run and the
logits are large enough to repay compiling (``CEHvpBackend.min_auto_elements``: 4M logits),
else ``eager``. A backend named explicitly must be able to serve them, otherwise the call raises
with that backend's reason; there is no silent fallback.
"""

from __future__ import annotations

from typing import Literal

import torch

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.plugins.manager import get_registries
from hessian_eigenthings.plugins.types import CEHvpBackend

__all__ = [
    "accumulation_dtype",
    "ce_hvp",
    "ce_hvp_eager",
    "resolve_ce_hvp_backend",
    "row_weights",
    "traced_reason",
]

Reduction = Literal["mean", "sum"]


def accumulation_dtype(logits: torch.Tensor) -> torch.dtype:
    """float64 for float64 logits, else float32: the precision every backend computes in."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def traced_reason(logits: torch.Tensor, u: torch.Tensor) -> str | None:
    """Why a compiled kernel must not be called here, or ``None``.

    Under torch.compile tracing or a ``torch.func`` transform (``jvp``, ``vmap``, ``grad``)
    the tensors are proxies or wrappers that a hand-compiled kernel cannot take; the plain
    torch formula (``eager``) is traced or transformed correctly instead.
    """
    if torch.compiler.is_compiling():
        return "called while torch.compile traces the caller; the eager formula is traced instead"
    functorch = getattr(torch._C, "_functorch", None)
    if functorch is not None and (
        functorch.peek_interpreter_stack() is not None
        or functorch.is_functorch_wrapped_tensor(logits)
        or functorch.is_functorch_wrapped_tensor(u)
    ):
        return "called inside a torch.func transform (jvp, vmap, grad); use the eager formula"
    return None


def row_weights(
    labels: torch.Tensor, ignore_index: int, scale: float, logits: torch.Tensor
) -> torch.Tensor:
    """(N,) weights of the rows: ``scale``, or 0 where ``labels == ignore_index``.

    In the accumulation dtype on the logits' device. Backends zero the rows of weight 0 with a
    select rather than a product, so an ignored row is zero even if its logits are not finite
    (as its gradient is in ``F.cross_entropy``).
    """
    keep = labels.to(logits.device) != ignore_index
    return keep.to(accumulation_dtype(logits)) * scale


def ce_hvp_eager(
    logits: torch.Tensor, u: torch.Tensor, labels: torch.Tensor, ignore_index: int, scale: float
) -> torch.Tensor:
    """Reference implementation: ``scale · (p ⊙ u − p ⟨p, u⟩)`` row-wise, ignored rows zero.

    Plain torch ops; at its peak it holds five (N, V) float32 buffers besides its inputs
    (measured by benchmarks/bench_ce_hvp.py): p, p ⊙ u, the difference, the weighted rows and
    the selected output. Accumulates in float32 (float64 for float64 logits); returns ``u``'s
    dtype. This is the ``eager`` backend's function (the signature every
    :class:`~hessian_eigenthings.plugins.types.CEHvpBackend` ``fn`` has); most callers want
    :func:`ce_hvp`, which computes ``scale`` from the reduction.

    Args:
        logits: (N, V) logits.
        u: (N, V) directions.
        labels: (N,) labels; rows equal to ``ignore_index`` give zero.
        ignore_index: the label of ignored rows.
        scale: the factor of every kept row (1/valid rows for a mean, 1 for a sum).

    Example:
        >>> import torch
        >>> from hessian_eigenthings.loss_fns import ce_hvp_eager
        >>> logits = torch.zeros(2, 4)  # uniform p = 1/4
        >>> u = torch.tensor([[4.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
        >>> ce_hvp_eager(logits, u, torch.tensor([0, -100]), -100, 1.0)  # p ⊙ u − p ⟨p, u⟩
        tensor([[ 0.7500, -0.2500, -0.2500, -0.2500],
                [ 0.0000,  0.0000,  0.0000,  0.0000]])
    """
    acc = accumulation_dtype(logits)
    p = torch.softmax(logits.to(acc), dim=-1)
    pu = p * u.to(acc)
    out = pu - p * pu.sum(dim=-1, keepdim=True)
    weight = row_weights(labels, ignore_index, scale, logits).unsqueeze(-1)
    return torch.where(weight != 0, out * weight, 0.0).to(u.dtype)


def resolve_ce_hvp_backend(
    fused: str, logits: torch.Tensor, u: torch.Tensor
) -> tuple[str, CEHvpBackend]:
    """``(name, backend)``: the one ``fused`` names, or for ``"auto"`` the best that can serve.

    "Best" is the highest priority among the registered backends whose ``supports(logits, u)``
    returns ``None``. An explicitly named backend that cannot serve the tensors raises
    :class:`~hessian_eigenthings.errors.InvalidArgumentError` with its reason. Cost: one
    ``supports`` check per backend asked (environment look-ups; nothing is compiled here).

    Args:
        fused: ``"auto"`` or a registered backend name (``"eager"``, ``"compile"``, or one a
            plugin adds, e.g. ``"triton"``).
        logits: the (N, V) logits the backend will get.
        u: the (N, V) directions.

    Returns:
        ``(name, backend)``; call ``backend.fn(logits, u, labels, ignore_index, scale)``.

    Example:
        >>> import torch
        >>> from hessian_eigenthings.errors import InvalidArgumentError
        >>> from hessian_eigenthings.loss_fns import ce_hvp_eager, resolve_ce_hvp_backend
        >>> logits, u = torch.randn(3, 5), torch.randn(3, 5)
        >>> name, backend = resolve_ce_hvp_backend("eager", logits, u)
        >>> name, backend.priority, backend.fn is ce_hvp_eager
        ('eager', 0, True)
        >>> name, backend = resolve_ce_hvp_backend("auto", logits, u)  # depends on the machine
        >>> backend.supports(logits, u) is None  # whichever it is, it can serve these tensors
        True
        >>> try:
        ...     resolve_ce_hvp_backend("no-such-backend", logits, u)
        ... except InvalidArgumentError as err:
        ...     print(str(err)[:62])
        fused='no-such-backend' is not a registered cross-entropy HVP
    """
    registry = get_registries().ce_hvp_backends
    if fused == "auto":
        ranked = sorted(registry, key=lambda e: -e.obj.priority)
        reasons = []
        for entry in ranked:
            if logits.numel() < entry.obj.min_auto_elements:
                reasons.append(
                    f"{entry.name}: not worth it below {entry.obj.min_auto_elements} logits"
                )
                continue
            reason = entry.obj.supports(logits, u)
            if reason is None:
                return entry.name, entry.obj
            reasons.append(f"{entry.name}: {reason}")
        raise InvalidArgumentError(
            f"no cross-entropy HVP backend can serve {logits.dtype} logits on {logits.device} "
            f"({'; '.join(reasons) or 'none registered'})"
        )
    if fused not in registry:
        raise InvalidArgumentError(
            f"fused={fused!r} is not a registered cross-entropy HVP backend; choose 'auto' or one "
            f"of {registry.names()} (plugins such as hessian-eigenthings[triton] add more)"
        )
    backend = registry.get(fused)
    reason = backend.supports(logits, u)
    if reason is not None:
        raise InvalidArgumentError(
            f"fused={fused!r} cannot serve {logits.dtype} logits on {logits.device}: {reason}. "
            "Use fused='auto' to pick an available backend, or fused='eager'."
        )
    return fused, backend


def ce_hvp(
    logits: torch.Tensor,
    u: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    fused: str = "auto",
) -> torch.Tensor:
    """Hessian of ``F.cross_entropy(logits, labels)`` with respect to the logits, times ``u``.

    ``logits`` and ``u`` have shape (..., V), e.g. (N, V) or (B, T, V); ``labels`` has the
    logits' shape without the last dimension. Positions labelled ``ignore_index`` contribute
    nothing. ``reduction="mean"`` divides by the number of non-ignored positions (the result is
    zero when there are none), ``"sum"`` does not. ``fused`` picks the backend (see the module
    docstring): ``"auto"``, ``"eager"``, ``"compile"`` or one a plugin registers. The result
    has ``u``'s shape and dtype; it is computed in float32, or float64 for float64 logits.

    Per position, with p = softmax(z): H u = c (p ⊙ u − p ⟨p, u⟩), c = 1/(non-ignored
    positions) for ``"mean"`` and 1 for ``"sum"``. Cost: O(N·V) time; memory the output plus
    the backend's temporaries (about five (N, V) buffers for ``"eager"``, none for the fused
    ones). With ``fused="auto"`` the first call in a process may compile a kernel (seconds).

    Example:
        Against the Hessian of ``F.cross_entropy`` by autograd (the second label is ignored,
        so the mean is over one position):

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from hessian_eigenthings.loss_fns import ce_hvp
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(2, 4, dtype=torch.float64)
        >>> labels = torch.tensor([3, -100])
        >>> u = torch.randn(2, 4, dtype=torch.float64)
        >>> Hu = ce_hvp(logits, u, labels, fused="eager")
        >>> _, reference = torch.autograd.functional.hvp(
        ...     lambda z: F.cross_entropy(z, labels), logits, u)
        >>> torch.allclose(Hu, reference)
        True
        >>> Hu[1]  # the ignored position
        tensor([0., 0., 0., 0.], dtype=torch.float64)
    """
    if logits.shape != u.shape:
        raise InvalidArgumentError(
            f"u must have the logits' shape {tuple(logits.shape)}, got {tuple(u.shape)}"
        )
    if labels.shape != logits.shape[:-1]:
        raise InvalidArgumentError(
            f"labels must have shape {tuple(logits.shape[:-1])} (logits without the class "
            f"dimension), got {tuple(labels.shape)}"
        )
    if reduction not in ("mean", "sum"):
        raise InvalidArgumentError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_u = u.reshape(-1, vocab)
    flat_labels = labels.reshape(-1)
    if reduction == "mean":
        n_valid = int((flat_labels != ignore_index).sum())
        scale = 1.0 / n_valid if n_valid else 0.0
    else:
        scale = 1.0
    _, backend = resolve_ce_hvp_backend(fused, flat_logits, flat_u)
    return backend.fn(flat_logits, flat_u, flat_labels, ignore_index, scale).reshape(u.shape)
