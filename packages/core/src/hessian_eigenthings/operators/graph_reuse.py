"""Reusing a batch's linearisation across products while the model and the data stay the same.

Every product of a model operator on a batch starts with work that does not depend on the
directions: a forward pass, and for the Hessian a backward with graph (∇L and its graph); for
the GGN and Fisher operators the output z and the graph of Jᵀw. An operator that can split that
work off (:meth:`~hessian_eigenthings.operators.ModelCurvatureOperator.batch_linearize`) lets
the engine keep it (``reuse_graph=True``) and, on later products, run only what depends on the
directions — the second backward of a Hessian product, the J v and Jᵀ u backwards of a GGN
product. On the benchmark models that is 1.2–2.2 gradients per product instead of 2.2–3.4.

The price is memory, which is why it is not the default: what is kept — the saved activations
of the forward and of the first backward, plus its n-sized roots (∇L, or Jᵀw) — is held
between products until the operator is garbage-collected or
:meth:`~hessian_eigenthings.operators.ModelCurvatureOperator.clear_graph_cache` is called, one
linearisation per (micro)batch, and a product can no longer free the graph as its backward
goes. Measured peaks: 2.3–3.3 gradients' (1.6–1.8 of them held between products), against
0.9–2.9 when recomputing.

A kept linearisation is used only while everything it was built from is unchanged, checked
before every product by :class:`ModelFingerprint` and :func:`batch_key`:

* every parameter and buffer of the model: the same tensor object, storage and version counter
  (in-place updates under ``torch.no_grad``, optimizer steps and ``load_state_dict`` bump it)
  and — for writes through ``.data``, which bypass the counter — the same 2-norm of its
  values (one fused pass over the parameters, negligible next to a forward pass);
* every module's ``training`` flag;
* the batch: the same tensor objects with the same version counters (and equal non-tensor
  leaves), so replacing a batch in the list or changing it in place rebuilds.

Anything else the loss reads (a global, a tensor captured in a closure and changed through
``.data``) is invisible to these checks; call ``clear_graph_cache()`` after changing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["GraphCache", "ModelFingerprint", "batch_key"]


def _leaves(batch: Any) -> list[Any]:
    if isinstance(batch, Mapping):
        return list(batch) + [leaf for v in batch.values() for leaf in _leaves(v)]
    if isinstance(batch, list | tuple):
        return [leaf for v in batch for leaf in _leaves(v)]
    return [batch]


def batch_key(batch: Any) -> tuple[Any, ...]:
    """What identifies a batch's contents: its tensors (object, version) and other leaves.

    The cache keeps the batch itself alive, so a tensor's identity cannot be reused by
    another while the key is held.
    """
    key: list[Any] = []
    for leaf in _leaves(batch):
        if isinstance(leaf, torch.Tensor):
            key.append((id(leaf), leaf._version))
        elif leaf is None or isinstance(leaf, bool | int | float | str | bytes):
            key.append((type(leaf), leaf))
        else:  # arrays and other objects: by identity (the cache keeps them alive)
            key.append((type(leaf), id(leaf)))
    return tuple(key)


@dataclass
class ModelFingerprint:
    """The state of a model that a kept linearisation depends on (see the module docstring)."""

    tensors: tuple[tuple[int, int, int], ...]
    norms: torch.Tensor | None
    modes: tuple[bool, ...]

    @classmethod
    def of(cls, model: nn.Module) -> ModelFingerprint:
        tensors = [*model.parameters(), *model.buffers()]
        floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel() > 0]
        with torch.no_grad():
            norms = torch.stack(torch._foreach_norm(floats)) if floats else None
        return cls(
            tensors=tuple((id(t), t.data_ptr(), t._version) for t in tensors),
            norms=norms,
            modes=tuple(m.training for m in model.modules()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelFingerprint):
            return NotImplemented
        if self.tensors != other.tensors or self.modes != other.modes:
            return False
        if self.norms is None or other.norms is None:
            return self.norms is None and other.norms is None
        return bool(torch.equal(self.norms, other.norms))

    __hash__ = None  # type: ignore[assignment]


@dataclass
class GraphCache:
    """Linearisations kept per (batch position, chunk position), valid for one fingerprint."""

    fingerprint: ModelFingerprint | None = None
    entries: dict[tuple[int, int], tuple[tuple[Any, ...], Any, Any]] = field(default_factory=dict)

    def clear(self) -> None:
        self.fingerprint = None
        self.entries.clear()

    def validate(self, model: nn.Module) -> bool:
        """Drop everything if the model changed since the linearisations were built; return
        whether something is kept for the model exactly as it is (a product succeeded on it:
        a failing one clears the cache)."""
        now = ModelFingerprint.of(model)
        unchanged = self.fingerprint is not None and self.fingerprint == now
        if not unchanged:
            self.entries.clear()
        self.fingerprint = now
        return unchanged and bool(self.entries)

    def get(self, position: tuple[int, int], key: tuple[Any, ...]) -> Any:
        """The linearisation kept at ``position`` if it was built from the batch ``key`` names."""
        entry = self.entries.get(position)
        if entry is None or entry[0] != key:
            self.entries.pop(position, None)  # free it before a new one is built
            return None
        return entry[2]

    def put(self, position: tuple[int, int], key: tuple[Any, ...], batch: Any, lin: Any) -> None:
        self.entries[position] = (key, batch, lin)

    def trim(self, positions: int) -> None:
        """Forget entries beyond the first ``positions`` batches (the data got shorter)."""
        for pos in [p for p in self.entries if p[0] >= positions]:
            del self.entries[pos]
