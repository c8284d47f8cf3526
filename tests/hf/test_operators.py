"""Hessian and GGN operators through the HF helpers against dense float64 oracles.

The models use HF's default attention (``sdpa``), whose CPU kernel has neither a double backward
nor forward-mode AD; every product here goes through it. Data come in batches of different
shapes with right padding and ``-100`` labels, so every comparison also checks that the
operators weight batches by valid tokens: the oracle is the curvature of the token-mean loss
over all the data at once.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from hessian_eigenthings import FisherOperator, GGNOperator, HessianOperator
from tests.hf.models import ARCHS, VOCAB, Batch, batches, build, helpers
from tests.hf.oracles import Problem, random_directions, rel_err

TOL = 1e-10  # float64 throughout; the oracles are exact up to rounding
M = 3  # directions per comparison


@functools.cache
def reference(arch: str) -> tuple[torch.nn.Module, list[Batch], torch.Tensor, torch.Tensor]:
    """(model, batches, dense Hessian, dense GGN) of ``arch``, computed once per session."""
    model = build(arch)
    assert model.config._attn_implementation == "sdpa"  # HF's default
    data = batches(arch)
    P = Problem(model, data, ARCHS[arch].kind)
    return model, data, P.hessian(), P.ggn()


def _hessian(model: torch.nn.Module, data: Any, arch: str, **kw: Any) -> HessianOperator:
    return HessianOperator(model, data, helpers(arch)["loss"], **kw)


def _ggn(model: torch.nn.Module, data: Any, arch: str, loss_hvp: str, **kw: Any) -> GGNOperator:
    h = helpers(arch)
    return GGNOperator(model, data, h["forward"], h["loss_of_output"], loss_hvp=loss_hvp, **kw)


def _state(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_hessian_matches_dense_oracle(arch: str) -> None:
    model, data, H, _ = reference(arch)
    before = _state(model)
    V = random_directions(H.shape[0], M)
    out = _hessian(model, data, arch).matmat(V)
    assert out.dtype == torch.float64
    assert rel_err(out, H @ V) < TOL
    assert all(torch.equal(a, b) for a, b in zip(before, _state(model), strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


@pytest.mark.parametrize("loss_hvp", ["analytical", "autograd"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_ggn_matches_dense_oracle(arch: str, loss_hvp: str) -> None:
    model, data, _, G = reference(arch)
    V = random_directions(G.shape[0], M, seed=1)
    out = _ggn(model, data, arch, loss_hvp).matmat(V)
    assert out.dtype == torch.float64
    assert rel_err(out, G @ V) < TOL


@pytest.mark.parametrize("arch", list(ARCHS))
def test_analytical_and_autograd_ggn_agree(arch: str) -> None:
    model, data, _, G = reference(arch)
    v = random_directions(G.shape[0], 1, seed=2)[:, 0]
    a = _ggn(model, data, arch, "analytical") @ v
    b = _ggn(model, data, arch, "autograd") @ v
    assert rel_err(a, b) < TOL


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_type2_fisher_through_the_helpers_is_the_ggn(arch: str) -> None:
    """The helpers carry the whole loss-of-output protocol: the Fisher's loss-Hessian square
    root with HF targets gives the GGN oracle (Jᵀ S Sᵀ J = Jᵀ H_ℓ J for cross-entropy)."""
    model, data, _, G = reference(arch)
    h = helpers(arch)
    V = random_directions(G.shape[0], 2, seed=3)
    out = FisherOperator(model, data, h["forward"], h["loss_of_output"]).matmat(V)
    assert rel_err(out, G @ V) < TOL


def _extended(data: list[Batch]) -> list[Batch]:
    """The same rows, each followed by one attended position labelled -100 and then padding
    (attention_mask 0) to 3 positions longer than before; the ids there are random."""
    g = torch.Generator().manual_seed(9)
    out = []
    for batch in data:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = batch.get("labels", ids)
        n, t = ids.shape
        new_ids = torch.randint(0, VOCAB, (n, t + 3), generator=g)
        new_mask = torch.zeros(n, t + 3, dtype=mask.dtype)
        new_labels = torch.full((n, t + 3), -100)
        for row in range(n):
            length = int(mask[row].sum())
            assert mask[row, :length].all()  # right padding only
            new_ids[row, :length] = ids[row, :length]
            new_labels[row, :length] = labels[row, :length]
            new_mask[row, : length + 1] = 1
        out.append({"input_ids": new_ids, "attention_mask": new_mask, "labels": new_labels})
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_padding_and_ignored_positions_change_nothing(arch: str) -> None:
    model, data, H, G = reference(arch)
    wider = _extended(data)
    assert [b["input_ids"].shape[1] for b in wider] == [b["input_ids"].shape[1] + 3 for b in data]
    V = random_directions(H.shape[0], 2, seed=4)
    assert rel_err(_hessian(model, wider, arch).matmat(V), H @ V) < TOL
    assert rel_err(_ggn(model, wider, arch, "analytical").matmat(V), G @ V) < TOL


def _padded(batch: Batch, length: int) -> Batch:
    """``batch`` right-padded to ``length`` positions (attention_mask 0, labels -100)."""
    n, t = batch["input_ids"].shape
    pad = torch.zeros(n, length - t, dtype=torch.long)
    return {
        "input_ids": torch.cat([batch["input_ids"], pad], 1),
        "attention_mask": torch.cat([batch["attention_mask"], pad], 1),
        "labels": torch.cat([batch.get("labels", batch["input_ids"]), pad - 100], 1),
    }


@pytest.mark.parametrize("microbatch_size", [None, 1, 4])
def test_all_data_in_one_batch_or_microbatches_give_the_same_operator(
    microbatch_size: int | None,
) -> None:
    """Token weighting: the three uneven batches joined into one padded batch (one token mean
    over 6 rows), whole or in microbatches of rows with different token counts, give the
    reference operator of the separate batches."""
    model, data, H, G = reference("gpt2")
    length = max(b["input_ids"].shape[1] for b in data)
    padded = [_padded(b, length) for b in data]
    joined = [{k: torch.cat([b[k] for b in padded]) for k in padded[0]}]
    V = random_directions(H.shape[0], 2, seed=6)
    kw = {"microbatch_size": microbatch_size}
    assert rel_err(_hessian(model, joined, "gpt2", **kw).matmat(V), H @ V) < TOL
    assert rel_err(_ggn(model, joined, "gpt2", "analytical", **kw).matmat(V), G @ V) < TOL


def test_eager_attention_model_gives_the_same_products() -> None:
    """GPT-2's eager attention is exact float64: the same operator as the sdpa model."""
    model, data, H, _ = reference("gpt2")
    eager = build("gpt2", attn="eager")
    eager.load_state_dict(model.state_dict())
    assert eager.config._attn_implementation == "eager"
    V = random_directions(H.shape[0], 2, seed=7)
    assert rel_err(_hessian(eager, data, "gpt2").matmat(V), H @ V) < TOL
