"""The CLI loaders: local checkpoints and configs (nothing downloaded), token data files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import grad, jvp

import hessian_eigenthings_hf as hf
from hessian_eigenthings import HessianOperator
from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.plugins import LoaderSpec, get_registries
from hessian_eigenthings_hf import loaders
from tests.hf.models import build
from tests.hf.oracles import Problem, rel_err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A tiny GPT-2 saved with save_pretrained (float32 on disk)."""
    model = build("gpt2").float()
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    return path, model


def _ns(**kwargs: object) -> argparse.Namespace:
    return argparse.Namespace(**kwargs)


def test_loaders_are_registered_by_the_plugin() -> None:
    registry = get_registries().loaders
    for name, option in (("hf", "hf"), ("hf-tokens", "hf-tokens")):
        entry = registry.entry(name)
        assert entry.plugin == "hessian-eigenthings-hf"
        assert isinstance(entry.obj, LoaderSpec)
        assert entry.obj.option == option
    assert registry.get("hf").load_model is not None
    assert registry.get("hf").loss is not None
    assert registry.get("hf-tokens").load_data is not None


def test_save_pretrained_directory_loads_its_weights(
    checkpoint: tuple[Path, torch.nn.Module],
) -> None:
    path, original = checkpoint
    spec = get_registries().loaders.get("hf")
    assert spec.load_model is not None
    model = spec.load_model(str(path), _ns(dtype="float64", seed=5))
    assert type(model) is type(original)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float64
    for (name, p), (name0, p0) in zip(
        model.state_dict().items(), original.state_dict().items(), strict=True
    ):
        assert name == name0
        assert torch.equal(p, p0.double()), name


def test_config_json_builds_a_seeded_random_model(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    config = checkpoint[0] / "config.json"
    a = loaders.load_model(config, seed=1)
    b = loaders.load_model(config, seed=1)
    c = loaders.load_model(config, seed=2)
    assert type(a).__name__ == "GPT2LMHeadModel"
    assert a.config.vocab_size == 11
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    assert not a.training


def test_directory_with_only_a_config_is_randomly_initialised(tmp_path: Path) -> None:
    t5 = build("t5")
    t5.config.save_pretrained(tmp_path)
    model = loaders.load_model(tmp_path)
    assert type(model).__name__ == "T5ForConditionalGeneration"
    loss_fn, forward_fn, loss_of_output_fn = loaders.hf_loss_helpers(tmp_path)
    assert isinstance(loss_fn, hf.ModelLoss)
    assert loss_fn.forward.encoder_decoder
    assert forward_fn.encoder_decoder
    assert isinstance(loss_of_output_fn, hf.TokenCrossEntropy)


def test_loss_spec_gives_the_causal_helpers(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    spec = get_registries().loaders.get("hf")
    assert spec.loss is not None
    loss_fn, forward_fn, loss_of_output_fn = spec.loss(_ns(loader_hf=str(checkpoint[0])))
    assert isinstance(loss_fn, hf.ModelLoss)
    assert not forward_fn.encoder_decoder
    assert isinstance(loss_of_output_fn, hf.TokenCrossEntropy)
    with pytest.raises(InvalidArgumentError, match="--hf PATH"):
        spec.loss(_ns())


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing", "not a save_pretrained directory"),
        (lambda p: p, "no config.json"),
        (lambda p: p / "weights.bin", "not a save_pretrained directory"),
    ],
)
def test_bad_model_paths_are_named(tmp_path: Path, make: object, match: str) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(InvalidArgumentError, match=match):
        loaders.load_model(make(tmp_path))  # type: ignore[operator]


def test_config_without_model_type_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"vocab_size": 3}))
    with pytest.raises(InvalidArgumentError, match="model_type"):
        loaders.load_model(tmp_path / "c.json")


def test_token_stream_is_cut_into_padded_windows_and_batches(tmp_path: Path) -> None:
    ids = torch.arange(11) % 7
    torch.save(ids, tmp_path / "ids.pt")
    spec = get_registries().loaders.get("hf-tokens")
    assert spec.load_data is not None
    data = spec.load_data(str(tmp_path / "ids.pt"), _ns(seq_len=4, batch_size=2))
    assert [b["input_ids"].shape for b in data] == [(2, 4), (1, 4)]
    assert torch.equal(torch.cat([b["input_ids"] for b in data]).reshape(-1)[:11], ids)
    assert data[1]["attention_mask"].tolist() == [[1, 1, 1, 0]]
    assert sum(hf.hf_lm_loss().batch_weight(b) for b in data) == 3 + 3 + 2


def test_npy_rows_and_integer_text_and_saved_dicts(tmp_path: Path) -> None:
    rows = np.arange(12, dtype=np.int32).reshape(3, 4) % 5
    np.save(tmp_path / "rows.npy", rows)
    data = loaders.load_token_batches(tmp_path / "rows.npy", seq_len=2, batch_size=2)
    assert [b["input_ids"].tolist() for b in data] == [rows[:2].tolist(), rows[2:].tolist()]
    assert data[0]["input_ids"].dtype == torch.long

    (tmp_path / "ids.txt").write_text("1 2 3\n4 5\n")
    data = loaders.load_token_batches(tmp_path / "ids.txt", seq_len=5)
    assert data[0]["input_ids"].tolist() == [[1, 2, 3, 4, 5]]

    labels = torch.tensor([[1, -100, 3]])
    torch.save({"input_ids": torch.tensor([[1, 2, 3]]), "labels": labels}, tmp_path / "d.pt")
    data = loaders.load_token_batches(tmp_path / "d.pt")
    assert torch.equal(data[0]["labels"], labels)


def test_text_is_tokenised_to_bytes_without_downloads(tmp_path: Path) -> None:
    (tmp_path / "text.txt").write_text("hi!", encoding="utf-8")
    data = loaders.load_token_batches(tmp_path / "text.txt", seq_len=8)
    assert data[0]["input_ids"][0, :3].tolist() == [ord("h") + 3, ord("i") + 3, ord("!") + 3]


def test_ids_beyond_the_models_vocabulary_are_rejected(
    tmp_path: Path, checkpoint: tuple[Path, torch.nn.Module]
) -> None:
    torch.save(torch.tensor([1, 2, 11]), tmp_path / "ids.pt")
    with pytest.raises(InvalidArgumentError, match="vocab_size=11"):
        loaders._data_from_args(str(tmp_path / "ids.pt"), _ns(loader_hf=str(checkpoint[0])))
    torch.save(torch.tensor([[0.5, 1.0]]), tmp_path / "floats.pt")
    with pytest.raises(InvalidArgumentError, match="integers"):
        loaders.load_token_batches(tmp_path / "floats.pt")
    with pytest.raises(InvalidArgumentError, match="seq_len"):
        loaders.load_token_batches(tmp_path / "ids.pt", seq_len=0)


def test_windows_fit_the_models_positions(
    tmp_path: Path, checkpoint: tuple[Path, torch.nn.Module]
) -> None:
    """The tiny GPT-2 takes 10 positions: the default window shrinks to 10, a longer explicit
    one is refused with the option that fixes it."""
    torch.save(torch.arange(25) % 11, tmp_path / "ids.pt")
    spec = get_registries().loaders.get("hf-tokens")
    assert spec.load_data is not None
    data = spec.load_data(str(tmp_path / "ids.pt"), _ns(loader_hf=str(checkpoint[0])))
    assert [b["input_ids"].shape for b in data] == [(3, 10)]
    with pytest.raises(InvalidArgumentError, match="--seq-len 10"):
        spec.load_data(str(tmp_path / "ids.pt"), _ns(loader_hf=str(checkpoint[0]), seq_len=12))


def test_loaded_model_data_and_loss_give_a_hessian_product(
    tmp_path: Path, checkpoint: tuple[Path, torch.nn.Module]
) -> None:
    """End to end as the CLI wires it: the loaders' model, batches and loss_fn give the Hessian
    of the token-mean loss over the file (checked against forward-over-reverse on the oracle)."""
    torch.save(torch.arange(9) % 11, tmp_path / "ids.pt")
    args = _ns(loader_hf=str(checkpoint[0]), dtype="float64", seq_len=4, batch_size=2)
    registry = get_registries().loaders
    model = registry.get("hf").load_model(str(checkpoint[0]), args)  # type: ignore[misc]
    data = registry.get("hf-tokens").load_data(str(tmp_path / "ids.pt"), args)  # type: ignore[misc]
    loss_fn = registry.get("hf").loss(args)[0]  # type: ignore[misc]
    op = HessianOperator(model, data, loss_fn)
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Hv = op @ v
    P = Problem(model, data, "causal")
    expected = jvp(grad(P.loss), (P.theta,), (v,))[1]
    assert Hv.dtype == torch.float64
    assert rel_err(Hv, expected) < 1e-10
