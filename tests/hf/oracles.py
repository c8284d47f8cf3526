"""Dense float64 oracles for the HF tests, independent of the code under test.

The loss is re-implemented here from its definition, one scored position at a time: for a
causal LM, position t of row b predicts ``labels[b, t+1]`` (labels default to input_ids) when
that label is not -100 and both positions have attention_mask 1; for T5, decoder position t
predicts ``labels[b, t]`` (not -100) from the decoder input ``[start] + labels[:-1]``. The
dataset loss is the sum over every scored position of every batch divided by their count.

Hessians are ``jacrev(grad(f))`` over a flat parameter vector through ``functional_call``,
with SDPA restricted to torch's math backend (the only CPU backend with the derivatives
``jacrev`` needs; HF's eager attention in Llama softmaxes in float32, so it would cap the
oracle's accuracy), guarded by the symmetry and finite-difference checks of
``tests.core.oracles``. The GGN is Jᵀ H_ℓ J with J the Jacobian of all logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev
from torch.nn.attention import SDPBackend, sdpa_kernel

from tests.core.oracles import _check_hessian
from tests.hf.models import Batch


def scored_positions(batch: Batch, kind: str) -> list[tuple[int, int, int]]:
    """(row, logit position, target token) of every scored prediction, by plain iteration."""
    ids = batch["input_ids"].tolist()
    labels = batch.get("labels", batch["input_ids"]).tolist()
    out = []
    if kind == "causal":
        mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).tolist()
        for b, row in enumerate(ids):
            for t in range(len(row) - 1):
                if mask[b][t] and mask[b][t + 1] and labels[b][t + 1] != -100:
                    out.append((b, t, labels[b][t + 1]))
    else:
        for b, row in enumerate(labels):
            out.extend((b, t, y) for t, y in enumerate(row) if y != -100)
    return out


def count_scored(batches: Sequence[Batch], kind: str) -> int:
    return sum(len(scored_positions(b, kind)) for b in batches)


def _model_kwargs(model: nn.Module, batch: Batch, kind: str) -> dict[str, torch.Tensor]:
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if kind == "seq2seq":
        labels = batch["labels"]
        start = model.config.decoder_start_token_id
        pad = model.config.pad_token_id
        dec = torch.full_like(labels, start)
        dec[:, 1:] = labels[:, :-1]
        kwargs["decoder_input_ids"] = dec.masked_fill(dec == -100, pad)
    return kwargs


def _nll(logits: torch.Tensor, positions: list[tuple[int, int, int]]) -> torch.Tensor:
    b, t, y = (torch.tensor(c, dtype=torch.long) for c in zip(*positions, strict=True))
    return -torch.log_softmax(logits[b, t], dim=-1)[torch.arange(len(y)), y].sum()


class Problem:
    """A model, its batches and the token-mean loss as functions of flat parameter vectors."""

    def __init__(self, model: nn.Module, batches: Sequence[Batch], kind: str) -> None:
        self.model = model
        self.batches = list(batches)
        self.kind = kind
        self.positions = [scored_positions(b, kind) for b in self.batches]
        self.count = sum(len(p) for p in self.positions)
        named = dict(self.model.named_parameters())
        self.names = list(named)
        self.shapes = [named[n].shape for n in self.names]
        self.theta = torch.cat([named[n].detach().reshape(-1) for n in self.names])
        self.kwargs = [_model_kwargs(self.model, b, kind) for b in self.batches]

    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(flat, [s.numel() for s in self.shapes])
        return {n: p.view(s) for n, p, s in zip(self.names, pieces, self.shapes, strict=True)}

    def logits(self, flat: torch.Tensor) -> list[torch.Tensor]:
        params = self._params(flat)
        with sdpa_kernel(SDPBackend.MATH):
            return [
                functional_call(self.model, params, (), {**kw, "use_cache": False}).logits
                for kw in self.kwargs
            ]

    def loss_of_logits(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        total = sum(_nll(z, p) for z, p in zip(logits, self.positions, strict=True) if p)
        return total / self.count

    def loss(self, flat: torch.Tensor) -> torch.Tensor:
        return self.loss_of_logits(self.logits(flat))

    def hessian(self) -> torch.Tensor:
        H = jacrev(grad(self.loss))(self.theta)
        _check_hessian(self.loss, self.theta, H)
        return H

    def ggn(self) -> torch.Tensor:
        shapes = [z.shape for z in self.logits(self.theta)]
        numels = [s.numel() for s in shapes]

        def flat_logits(flat: torch.Tensor) -> torch.Tensor:
            return torch.cat([z.reshape(-1) for z in self.logits(flat)])

        def loss_of_flat(out: torch.Tensor) -> torch.Tensor:
            pieces = torch.split(out, numels)
            return self.loss_of_logits([p.view(s) for p, s in zip(pieces, shapes, strict=True)])

        J = jacrev(flat_logits)(self.theta)
        out = flat_logits(self.theta).detach()
        H_loss = jacrev(grad(loss_of_flat))(out)
        _check_hessian(loss_of_flat, out, H_loss)
        G = J.T @ H_loss @ J
        return (G + G.T) / 2


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def random_directions(n: int, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, generator=g, dtype=torch.float64)


Fn = Callable[[torch.Tensor], torch.Tensor]
