"""The typed things plugins register besides plain callables."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CEHvpBackend", "CEHvpFn", "CommandSpec", "LoaderSpec"]

#: ``fn(logits (N, V), u (N, V), labels (N,), ignore_index, scale) -> (N, V)`` computing
#: ``scale · (p ⊙ u − p ⟨p, u⟩)`` per row, p = softmax(logits), rows with
#: ``labels == ignore_index`` zero. Accumulates in float32 at least; returns ``u``'s dtype.
CEHvpFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]


@dataclass(frozen=True)
class CEHvpBackend:
    """A cross-entropy loss-Hessian-vector-product implementation.

    ``supports(logits, u)`` returns ``None`` when the backend can serve these tensors, else a
    short reason (shown when the user named this backend explicitly). ``fused="auto"`` picks
    the available backend with the highest ``priority``.
    """

    fn: CEHvpFn
    priority: int
    supports: Callable[[torch.Tensor, torch.Tensor], str | None]


@dataclass(frozen=True)
class CommandSpec:
    """An ``eigenthings`` sub-command: ``configure`` adds its options, ``run`` executes it."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class LoaderSpec:
    """A model and/or data loader the CLI offers as ``--<option> VALUE``.

    ``load_model(value, args)`` returns an ``nn.Module``; ``load_data(value, args)`` an iterable
    of batches; ``loss(args)`` the matching ``(loss_fn, forward_fn, loss_of_output_fn)`` helpers.
    """

    option: str
    help: str
    load_model: Callable[[str, argparse.Namespace], Any] | None = None
    load_data: Callable[[str, argparse.Namespace], Any] | None = None
    loss: Callable[[argparse.Namespace], Any] | None = None
