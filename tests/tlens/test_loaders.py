"""The CLI loaders: config files to models, token files to batches, and their loss helpers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.operators.hessian import HessianOperator
from hessian_eigenthings.plugins import get_registries
from hessian_eigenthings_tlens import (
    TLensCrossEntropy,
    TLensForward,
    TLensLoss,
    build_tlens_model,
    load_tlens_model,
    load_token_batches,
)
from tests.tlens.models import MODEL_KINDS, TINY

CONFIG = {**TINY, "n_layers": 1, "dtype": "float64"}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(CONFIG))
    return path


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in model.parameters()]


def test_json_and_yaml_configs_build_the_same_seeded_model(
    config_file: Path, tmp_path: Path
) -> None:
    yaml_file = tmp_path / "tiny.yaml"
    yaml_file.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in CONFIG.items()))
    from_json = load_tlens_model(config_file, seed=3)
    from_yaml = load_tlens_model(yaml_file, seed=3)
    assert not from_json.training
    assert all(p.dtype == torch.float64 for p in from_json.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params(from_json), params(from_yaml), strict=True))
    other_seed = load_tlens_model(config_file, seed=4)
    assert not all(
        torch.equal(a, b) for a, b in zip(params(from_json), params(other_seed), strict=True)
    )
    assert load_tlens_model(config_file, dtype="float32").cfg.d_vocab == TINY["d_vocab"]
    assert next(load_tlens_model(config_file, dtype="float32").parameters()).dtype == torch.float32


def test_seeded_builds_leave_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    build_tlens_model(CONFIG, seed=5, kind=MODEL_KINDS[0])
    build_tlens_model({**CONFIG, "seed": 6}, seed=None, kind=MODEL_KINDS[0])
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(0)
    first = params(build_tlens_model(CONFIG, seed=None, kind=MODEL_KINDS[0]))
    second = params(build_tlens_model(CONFIG, seed=None, kind=MODEL_KINDS[0]))
    assert not torch.equal(first[0], second[0])  # unseeded: fresh draws from the global RNG


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.json", None, "no such config file"),
        ("tiny.toml", "n_layers = 1", r"\.json, \.yaml or \.yml"),
        ("broken.json", "{not json", "cannot parse"),
        ("list.json", "[1, 2]", "mapping of field names"),
        ("typo.json", json.dumps({**CONFIG, "n_layer": 3}), "n_layer"),
        ("nodtype.json", json.dumps({**CONFIG, "dtype": "int8"}), "floating torch dtype"),
    ],
)
def test_bad_config_files_name_the_file_and_the_problem(
    tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(InvalidArgumentError, match=message) as err:
        load_tlens_model(path)
    assert name in str(err.value)


def test_a_1d_token_file_is_cut_into_padded_windows(tmp_path: Path) -> None:
    path = tmp_path / "ids.pt"
    torch.save(torch.arange(11) % 13, path)
    batches = load_token_batches(path, seq_len=4, batch_size=2)
    assert [b["tokens"].shape for b in batches] == [(2, 4), (1, 4)]
    assert torch.equal(torch.cat([b["tokens"] for b in batches]).reshape(-1)[:11], torch.arange(11))
    mask = torch.cat([b["attention_mask"] for b in batches]).reshape(-1)
    assert mask.tolist() == [1] * 11 + [0]


@pytest.mark.parametrize("suffix", [".npy", ".txt", ".pt-dict"])
def test_other_token_formats(tmp_path: Path, suffix: str) -> None:
    ids = torch.randint(0, 13, (5, 6), generator=torch.Generator().manual_seed(0))
    if suffix == ".npy":
        path = tmp_path / "ids.npy"
        np.save(path, ids.numpy())
        expected: dict[str, Any] = {"tokens": ids}
    elif suffix == ".txt":
        path = tmp_path / "ids.txt"
        path.write_text(" ".join(map(str, ids[0].tolist())) + "\n")
        expected = {"tokens": ids[:1]}
    else:
        path = tmp_path / "ids.pt"
        loss_mask = torch.ones_like(ids)
        loss_mask[:, :2] = 0
        torch.save({"input_ids": ids, "loss_mask": loss_mask}, path)
        expected = {"tokens": ids, "loss_mask": loss_mask}
    batches = load_token_batches(path, seq_len=6, batch_size=4, n_ctx=8, d_vocab=13)
    for key, value in expected.items():
        assert torch.equal(torch.cat([b[key] for b in batches]), value)
    assert all(set(b) == set(expected) for b in batches)


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (torch.rand(4), {}, "must hold integers"),
        (torch.full((2, 4), 13), {"d_vocab": 13}, r"\[0, 13\)"),
        (torch.zeros(2, 9, dtype=torch.long), {"n_ctx": 8}, "exceed the model's n_ctx=8"),
        ({"tokens": torch.zeros(2, 3, dtype=torch.long), "labels": torch.zeros(2, 3)}, {}, "keys"),
        (torch.zeros(0, dtype=torch.long), {}, "no tokens"),
    ],
)
def test_bad_token_files(tmp_path: Path, data: Any, kwargs: dict[str, Any], message: str) -> None:
    path = tmp_path / "ids.pt"
    torch.save(data, path)
    with pytest.raises(InvalidArgumentError, match=message):
        load_token_batches(path, **kwargs)


def test_registered_loader_specs_drive_an_analysis(config_file: Path, tmp_path: Path) -> None:
    loaders = get_registries().loaders
    model_spec, data_spec = loaders.get("tlens"), loaders.get("tlens-tokens")
    assert loaders.entry("tlens").plugin == "hessian-eigenthings-tlens"
    assert (model_spec.option, data_spec.option) == ("tlens", "tlens-tokens")
    tokens = tmp_path / "ids.npy"
    np.save(tokens, np.arange(40) % 13)
    args = argparse.Namespace(
        loader_tlens=str(config_file), loader_tlens_tokens=str(tokens), seed=0, dtype=None,
        device="cpu", seq_len=None, batch_size=3,
    )  # fmt: skip
    assert model_spec.load_model is not None
    assert data_spec.load_data is not None
    model = model_spec.load_model(str(config_file), args)
    data = data_spec.load_data(str(tokens), args)
    # --seq-len defaults to the config's n_ctx (8): 40 tokens make 5 full rows, in batches of 3
    assert [b["tokens"].shape for b in data] == [(3, 8), (2, 8)]
    for spec in (model_spec, data_spec):
        assert spec.loss is not None
        loss_fn, forward_fn, loss_of_output_fn = spec.loss(args)
        assert isinstance(loss_fn, TLensLoss)
        assert isinstance(forward_fn, TLensForward)
        assert isinstance(loss_of_output_fn, TLensCrossEntropy)
    op = HessianOperator(model, data, loss_fn)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0), dtype=op.dtype)
    w = torch.randn(op.size, generator=torch.Generator().manual_seed(1), dtype=op.dtype)
    assert torch.isclose(w @ op.matvec(v), v @ op.matvec(w), rtol=1e-10)  # a symmetric operator
