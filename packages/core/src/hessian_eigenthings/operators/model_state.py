"""Leave the model exactly as it was found: values, ``.grad`` and ``training`` flags."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError, StochasticOperatorWarning

__all__ = ["check_model_modes", "preserved_model_state"]

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@contextmanager
def preserved_model_state(model: nn.Module, *, restore_values: bool) -> Iterator[None]:
    """Restore ``training`` flags and ``.grad`` of every parameter on exit, also on exceptions.

    ``restore_values=True`` (operators that perturb parameters, e.g. finite differences) also
    snapshots every parameter and buffer and copies them back bit for bit.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    grads = [p.grad for p in params]
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    if restore_values:
        with torch.no_grad():
            saved = [(t, t.detach().clone()) for t in (*params, *model.buffers())]
    try:
        with torch.enable_grad():
            yield
    finally:
        if saved:
            with torch.no_grad():
                for t, copy in saved:
                    t.copy_(copy)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        for m, mode in modes:
            m.training = mode


def check_model_modes(model: nn.Module, *, warned: list[bool]) -> None:
    """Refuse train-mode BatchNorm; warn once (``warned`` flag) for train-mode dropout."""
    for name, m in model.named_modules():
        batch_stats = m.training or getattr(m, "running_mean", 0) is None
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and batch_stats:
            raise InvalidArgumentError(
                f"module {name or type(m).__name__!r} is BatchNorm using batch statistics "
                "(training mode, or track_running_stats=False): products would depend on how "
                "the data is batched and would update its running statistics. Call model.eval() "
                "(with running statistics) before computing curvature."
            )
    stochastic = any(isinstance(m, _DROPOUT) and m.training and m.p > 0 for m in model.modules())
    if stochastic and not warned[0]:
        warned[0] = True
        warnings.warn(
            "dropout is active (model in training mode): every product draws new masks, so the "
            "operator is random and algorithms may not converge. Call model.eval() for a "
            "deterministic curvature.",
            StochasticOperatorWarning,
            stacklevel=4,
        )
