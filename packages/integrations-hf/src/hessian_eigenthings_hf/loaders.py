"""Loaders for the CLI: local HF models and token data, nothing downloaded.

``--hf PATH`` loads a model from a ``save_pretrained`` directory (its weights), or builds a
randomly initialised one from a directory holding only ``config.json`` or from a config
``.json`` file. Encoder-decoder configs give ``AutoModelForSeq2SeqLM``, others
``AutoModelForCausalLM``; the matching loss helpers come with it.

``--hf-tokens FILE`` turns a local file into batches ``{"input_ids", "attention_mask"}``:

* ``.pt``/``.pth`` (``torch.save``): a tensor of token ids, or a dict with ``input_ids`` and
  optionally ``attention_mask``/``labels`` of shape (n, T);
* ``.npy``: an integer array of token ids;
* any other file: text. If it holds only whitespace-separated integers they are the token ids;
  otherwise the text is tokenised with the tokenizer saved in the ``--hf`` directory if it has
  one, else with a byte-level tokenizer that ships inside ``transformers`` (ByT5: UTF-8 bytes
  b → id b + 3; needs a vocabulary of at least 259).

A 1-D id sequence is cut into consecutive windows of ``--seq-len`` tokens (default 128, or the
``--hf`` model's number of positions if smaller; the last window padded, with
``attention_mask`` 0 on the padding); 2-D ids are taken as rows as they are. Ids outside the
model's vocabulary and rows longer than its positions are reported before anything runs. Rows are
grouped into batches of ``--batch-size`` (the last may be shorter; operators weight batches by
valid tokens, so that does not bias anything).

The loaders read these attributes of the CLI's namespace when present: the ``--hf`` value
(``loader_hf``, the CLI's destination for the loader registered as ``"hf"``), ``seq_len``
(default as above), ``batch_size`` (default 8), ``dtype`` (e.g. ``"float64"``) and ``seed``
(random initialisation, default 0).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.plugins.types import LoaderSpec
from hessian_eigenthings_hf.losses import (
    hf_lm_forward,
    hf_lm_loss,
    hf_lm_loss_of_output,
    hf_seq2seq_forward,
    hf_seq2seq_loss,
    hf_seq2seq_loss_of_output,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SEQ_LEN",
    "LOADERS",
    "hf_loss_helpers",
    "load_model",
    "load_token_batches",
    "read_token_ids",
]

DEFAULT_SEQ_LEN = 128
DEFAULT_BATCH_SIZE = 8
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_INTEGERS = re.compile(r"\s*-?\d+(\s+-?\d+)*\s*")


# -- models ----------------------------------------------------------------------------------


def _dtype(value: Any) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value), None)
    if not isinstance(dtype, torch.dtype):
        raise InvalidArgumentError(f"dtype {value!r} is not a torch dtype (e.g. 'float64')")
    return dtype


def _config_path(path: Path) -> Path:
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise InvalidArgumentError(
                f"--hf {path}: the directory has no config.json; pass a save_pretrained "
                "directory or a config .json file"
            )
        return config
    if path.is_file() and path.suffix == ".json":
        return path
    raise InvalidArgumentError(
        f"--hf {path}: not a save_pretrained directory or a config .json file (nothing is "
        "downloaded: save hub models locally with save_pretrained first)"
    )


def _load_config(path: Path) -> Any:
    from transformers import AutoConfig

    config_file = _config_path(path)
    try:
        raw = json.loads(config_file.read_text())
        model_type = raw.pop("model_type")
    except (OSError, ValueError, KeyError) as err:
        raise InvalidArgumentError(
            f"--hf {path}: {config_file} is not an HF config with a 'model_type' ({err})"
        ) from err
    try:
        return AutoConfig.for_model(model_type, **raw)
    except ValueError as err:
        raise InvalidArgumentError(f"--hf {path}: {err}") from err


def _is_encoder_decoder(config: Any) -> bool:
    return bool(getattr(config, "is_encoder_decoder", False))


def load_model(
    path: str | Path, *, dtype: torch.dtype | str | None = None, seed: int | None = 0
) -> nn.Module:
    """An HF language model from a local directory or config file, in eval mode.

    Weights are loaded when ``path`` is a ``save_pretrained`` directory that has them; otherwise
    the model is randomly initialised from the config with ``seed`` (``None``: the global RNG).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    path = Path(path).expanduser()
    config = _load_config(path)
    auto: Any = AutoModelForSeq2SeqLM if _is_encoder_decoder(config) else AutoModelForCausalLM
    target = _dtype(dtype)
    try:
        if path.is_dir() and any((path / f).is_file() for f in _WEIGHT_FILES):
            model = auto.from_pretrained(str(path), local_files_only=True)
        else:
            with torch.random.fork_rng(devices=[]):
                if seed is not None:
                    torch.manual_seed(seed)
                model = auto.from_config(config)
    except (ValueError, OSError) as err:
        kind = "seq2seq" if auto is AutoModelForSeq2SeqLM else "causal"
        raise InvalidArgumentError(
            f"--hf {path}: cannot build a {kind} language model from it: {err}"
        ) from err
    if target is not None:
        model = model.to(target)
    model.eval()
    return model  # type: ignore[no-any-return]


def hf_loss_helpers(path: str | Path) -> tuple[Any, Any, Any]:
    """``(loss_fn, forward_fn, loss_of_output_fn)`` for the model at ``path``."""
    if _is_encoder_decoder(_load_config(Path(path).expanduser())):
        return hf_seq2seq_loss(), hf_seq2seq_forward(), hf_seq2seq_loss_of_output()
    return hf_lm_loss(), hf_lm_forward(), hf_lm_loss_of_output()


# -- data ------------------------------------------------------------------------------------


def _tokenizer_for(model_path: str | None) -> Any:
    if model_path is not None:
        folder = Path(model_path).expanduser()
        if folder.is_dir() and any((folder / f).is_file() for f in _TOKENIZER_FILES):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def read_token_ids(path: str | Path, *, model_path: str | None = None) -> Any:
    """The token ids in ``path``: a 1-D/2-D integer tensor, or a dict of (n, T) tensors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidArgumentError(f"--hf-tokens {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        data = torch.load(path, map_location="cpu", weights_only=True)
    elif suffix == ".npy":
        import numpy as np

        data = torch.from_numpy(np.load(path, allow_pickle=False))
    else:
        text = path.read_text(encoding="utf-8")
        if _INTEGERS.fullmatch(text):
            data = torch.tensor([int(t) for t in text.split()])
        else:
            tokenizer = _tokenizer_for(model_path)
            data = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    if isinstance(data, Mapping):
        if "input_ids" not in data:
            raise InvalidArgumentError(
                f"--hf-tokens {path}: the saved dict has no 'input_ids' (keys: {sorted(data)})"
            )
        return {k: _ids(v, path, k, ndim=(2,)) for k, v in data.items()}
    return _ids(data, path, "token ids", ndim=(1, 2))


def _ids(value: Any, path: Path, what: str, *, ndim: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in ndim:
        raise InvalidArgumentError(
            f"--hf-tokens {path}: {what} must be a {' or '.join(f'{n}-D' for n in ndim)} "
            f"integer tensor, got {getattr(value, 'shape', type(value).__name__)}"
        )
    if value.is_floating_point() or value.is_complex():
        raise InvalidArgumentError(
            f"--hf-tokens {path}: {what} must be integers, got {value.dtype}"
        )
    return value.long()


def _rows(data: Any, seq_len: int) -> dict[str, torch.Tensor]:
    if isinstance(data, dict):
        return data
    if data.ndim == 2:
        return {"input_ids": data, "attention_mask": torch.ones_like(data)}
    n = data.numel()
    rows = -(-n // seq_len)
    ids = torch.zeros(rows * seq_len, dtype=torch.long)
    ids[:n] = data
    mask = torch.zeros_like(ids)
    mask[:n] = 1
    return {"input_ids": ids.view(rows, seq_len), "attention_mask": mask.view(rows, seq_len)}


def load_token_batches(
    path: str | Path,
    *,
    seq_len: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    model_path: str | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Batches of token ids from a local file (formats in the module docstring).

    ``model_path`` (the ``--hf`` model) supplies the tokenizer for text files, when its
    directory has one, and the limits every sequence is checked against: its vocabulary size
    and its number of positions. ``seq_len=None`` means :data:`DEFAULT_SEQ_LEN`, or the model's
    number of positions if that is smaller.
    """
    config = None if model_path is None else _load_config(Path(model_path).expanduser())
    positions = _max_positions(config)
    if seq_len is None:
        seq_len = DEFAULT_SEQ_LEN if positions is None else min(DEFAULT_SEQ_LEN, positions)
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    data = _rows(read_token_ids(path, model_path=model_path), seq_len)
    ids = data["input_ids"]
    if ids.numel() == 0:
        raise InvalidArgumentError(f"--hf-tokens {path}: the file holds no tokens")
    _check_limits(ids, path, config, positions)
    return [
        {k: v[start : start + batch_size] for k, v in data.items()}
        for start in range(0, ids.shape[0], batch_size)
    ]


def _max_positions(config: Any) -> int | None:
    """The longest sequence the model takes (absolute position embeddings), if it says."""
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_limits(ids: torch.Tensor, path: str | Path, config: Any, positions: int | None) -> None:
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        raise InvalidArgumentError(f"--hf-tokens {path}: token ids must be ≥ 0, found {low}")
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and high >= vocab:
        raise InvalidArgumentError(
            f"--hf-tokens {path}: token id {high} is outside the vocabulary of the --hf model "
            f"(vocab_size={vocab}); use a model whose vocab_size exceeds {high}, or token ids "
            "below its vocab_size"
        )
    if positions is not None and ids.shape[1] > positions:
        raise InvalidArgumentError(
            f"--hf-tokens {path}: sequences of {ids.shape[1]} tokens are longer than the --hf "
            f"model takes ({positions} positions); use --seq-len {positions} or less"
        )


# -- the CLI's loader specs ------------------------------------------------------------------


def _model_path(args: argparse.Namespace) -> str | None:
    path = getattr(args, "loader_hf", None) or getattr(args, "hf", None)
    return None if path is None else str(path)


def _model_from_args(value: str, args: argparse.Namespace) -> nn.Module:
    return load_model(value, dtype=getattr(args, "dtype", None), seed=getattr(args, "seed", 0))


def _data_from_args(value: str, args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    return load_token_batches(
        value,
        seq_len=getattr(args, "seq_len", None),
        batch_size=getattr(args, "batch_size", None) or DEFAULT_BATCH_SIZE,
        model_path=_model_path(args),
    )


def _loss_from_args(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    path = _model_path(args)
    if path is None:
        raise InvalidArgumentError("the HF loss helpers need the model: pass --hf PATH")
    return hf_loss_helpers(path)


#: name → spec, registered through ``register_loaders``.
LOADERS: dict[str, LoaderSpec] = {
    "hf": LoaderSpec(
        option="hf",
        help=(
            "HF language model from a local save_pretrained directory (weights loaded) or a "
            "config.json (random initialisation, --seed); loss: next-token cross-entropy "
            "(hf_lm_loss / hf_lm_forward / hf_lm_loss_of_output, seq2seq variants for "
            "encoder-decoder models)"
        ),
        load_model=_model_from_args,
        loss=_loss_from_args,
    ),
    "hf-tokens": LoaderSpec(
        option="hf-tokens",
        help=(
            "token data for HF models from a local .pt/.npy file of token ids or a text file, "
            "cut into --seq-len windows and --batch-size batches"
        ),
        load_data=_data_from_args,
    ),
}
