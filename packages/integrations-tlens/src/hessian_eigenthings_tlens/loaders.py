"""CLI loaders: a config-built TransformerLens model and token data from local files.

``--tlens CONFIG`` builds a randomly initialised model (:func:`build_tlens_model`) from a
``.json``, ``.yaml`` or ``.yml`` file holding the config fields, e.g.::

    {"n_layers": 2, "d_model": 64, "d_head": 16, "n_ctx": 64, "d_vocab": 512,
     "act_fn": "gelu", "normalization_type": "LN", "dtype": "float64"}

Nothing is downloaded. The CLI's ``--seed`` seeds the initialisation unless the file sets
``"seed"``; ``--dtype`` overrides the file's ``"dtype"``.

``--tlens-tokens FILE`` reads token ids:

* ``.pt``/``.pth`` (``torch.save``): an integer tensor, or a dict with ``"tokens"`` (or
  ``"input_ids"``) and optionally ``"attention_mask"``/``"loss_mask"`` of shape (n, T);
* ``.npy``: an integer array;
* anything else: text holding whitespace-separated integers.

A 1-D sequence is cut into consecutive windows of ``--seq-len`` tokens (default: the model's
``n_ctx`` when ``--tlens`` is given, else 128; the last window is padded and masked out); 2-D
ids are rows as they are. Rows are grouped into batches of ``--batch-size`` (default 8) as
dicts ``{"tokens": ..., "attention_mask": ...}`` (the mask only when something is padded).

Both loaders supply the matching loss helpers (:func:`tlens_loss`, :func:`tlens_forward`,
:func:`tlens_loss_of_output`). They read the CLI namespace's ``seq_len``, ``batch_size``,
``dtype``, ``seed`` and ``device`` when present.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.plugins.types import LoaderSpec
from hessian_eigenthings_tlens.losses import tlens_forward, tlens_loss, tlens_loss_of_output
from hessian_eigenthings_tlens.models import build_tlens_model

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_SEQ_LEN",
    "LOADERS",
    "load_tlens_model",
    "load_token_batches",
    "read_tlens_config",
    "read_token_ids",
    "tlens_loss_helpers",
]

DEFAULT_SEQ_LEN = 128
DEFAULT_BATCH_SIZE = 8
_INTEGERS = re.compile(r"\s*-?\d+(?:\s+-?\d+)*\s*")
_TOKEN_KEYS = ("tokens", "input_ids")
_MASK_KEYS = ("attention_mask", "loss_mask")


# -- models ----------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    try:
        # Through importlib: PyYAML ships no type information (types-PyYAML is not required).
        return importlib.import_module("yaml")
    except ImportError:
        raise InvalidArgumentError(
            f"--tlens {path}: reading YAML needs PyYAML (pip install pyyaml), or write the "
            "config as JSON"
        ) from None


def read_tlens_config(path: str | Path) -> dict[str, Any]:
    """The config fields in a ``.json``/``.yaml``/``.yml`` file.

    YAML needs PyYAML; JSON does not. A missing file, another suffix, a parse error or a
    top level that is not a mapping of names raises an error naming the file.

    Example:
        >>> import json, pathlib, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(tmp.name) / "tiny.json"
        >>> _ = path.write_text(json.dumps({"n_layers": 1, "d_model": 8, "d_head": 4,
        ...     "n_heads": 2, "n_ctx": 8, "d_vocab": 13, "act_fn": "gelu",
        ...     "normalization_type": "LN", "dtype": "float64"}))
        >>> from hessian_eigenthings_tlens import read_tlens_config
        >>> config = read_tlens_config(path)
        >>> config["d_model"], config["dtype"]
        (8, 'float64')
        >>> tmp.cleanup()
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidArgumentError(f"--tlens {path}: no such config file")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise InvalidArgumentError(
            f"--tlens {path}: the config must be a .json, .yaml or .yml file"
        )
    parse_errors: tuple[type[Exception], ...] = (ValueError, OSError)  # JSONDecodeError: ValueError
    if suffix == ".json":
        parse: Any = json.loads
    else:
        yaml = _yaml(path)
        parse, parse_errors = yaml.safe_load, (*parse_errors, yaml.YAMLError)
    try:
        data = parse(path.read_text(encoding="utf-8"))
    except parse_errors as err:
        raise InvalidArgumentError(f"--tlens {path}: cannot parse the config: {err}") from err
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise InvalidArgumentError(
            f"--tlens {path}: the config must be a mapping of field names to values, got "
            f"{type(data).__name__}"
        )
    return data


def load_tlens_model(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    seed: int | None = 0,
) -> nn.Module:
    """The model a config file describes (see the module docstring), in eval mode.

    :func:`read_tlens_config` then :func:`build_tlens_model`; ``dtype`` overrides the file's
    ``"dtype"`` and ``seed`` seeds the initialisation unless the file sets ``"seed"``. Nothing
    is downloaded.

    Example:
        >>> import json, pathlib, tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(tmp.name) / "tiny.json"
        >>> _ = path.write_text(json.dumps({"n_layers": 1, "d_model": 8, "d_head": 4,
        ...     "n_heads": 2, "n_ctx": 8, "d_vocab": 13, "act_fn": "gelu",
        ...     "normalization_type": "LN", "dtype": "float64"}))
        >>> from hessian_eigenthings_tlens import load_tlens_model
        >>> model = load_tlens_model(path)
        >>> next(model.parameters()).dtype, model.training
        (torch.float64, False)
        >>> tmp.cleanup()
    """
    config = read_tlens_config(path)
    try:
        return build_tlens_model(config, dtype=dtype, device=device, seed=seed)
    except InvalidArgumentError as err:
        raise InvalidArgumentError(f"--tlens {path}: {err}") from err


def tlens_loss_helpers() -> tuple[Any, Any, Any]:
    """``(loss_fn, forward_fn, loss_of_output_fn)`` for TransformerLens token batches."""
    return tlens_loss(), tlens_forward(), tlens_loss_of_output()


# -- data ------------------------------------------------------------------------------------


def _ids(value: Any, path: Path, what: str, ndims: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim not in ndims:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidArgumentError(
            f"--tlens-tokens {path}: {what} must be a "
            f"{' or '.join(f'{n}-D' for n in ndims)} integer tensor, got {shape}"
        )
    if value.is_floating_point() or value.is_complex():
        raise InvalidArgumentError(
            f"--tlens-tokens {path}: {what} must hold integers, got {value.dtype}"
        )
    return value.long()


def read_token_ids(path: str | Path) -> torch.Tensor | dict[str, torch.Tensor]:
    """The token ids in a file: a 1-D/2-D tensor, or a dict with ``"tokens"`` and masks."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidArgumentError(f"--tlens-tokens {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        data = torch.load(path, map_location="cpu", weights_only=True)
    elif suffix == ".npy":
        import numpy as np

        data = torch.from_numpy(np.load(path, allow_pickle=False))
    else:
        text = path.read_text(encoding="utf-8")
        if not _INTEGERS.fullmatch(text):
            raise InvalidArgumentError(
                f"--tlens-tokens {path}: expected a .pt/.npy file or text of whitespace-separated "
                "token ids"
            )
        data = torch.tensor([int(t) for t in text.split()])
    if isinstance(data, Mapping):
        keys = [k for k in _TOKEN_KEYS if k in data]
        unknown = sorted(set(data) - {*_TOKEN_KEYS, *_MASK_KEYS}, key=str)
        if len(keys) != 1 or unknown:
            raise InvalidArgumentError(
                f"--tlens-tokens {path}: the saved dict needs exactly one of {_TOKEN_KEYS} and "
                f"optionally {_MASK_KEYS}; got keys {sorted(data, key=str)}"
            )
        out = {"tokens": _ids(data[keys[0]], path, keys[0], (2,))}
        for key in _MASK_KEYS:
            if key in data:
                out[key] = _ids(data[key], path, key, (2,))
                if out[key].shape != out["tokens"].shape:
                    raise InvalidArgumentError(
                        f"--tlens-tokens {path}: {key} has shape {tuple(out[key].shape)}, the "
                        f"tokens {tuple(out['tokens'].shape)}"
                    )
        return out
    return _ids(data, path, "token ids", (1, 2))


def _rows(data: torch.Tensor | dict[str, torch.Tensor], seq_len: int) -> dict[str, torch.Tensor]:
    if isinstance(data, dict):
        return data
    if data.ndim == 2:
        return {"tokens": data}
    n = data.numel()
    rows = -(-n // seq_len)
    tokens = torch.zeros(rows * seq_len, dtype=torch.long)
    tokens[:n] = data
    if n == rows * seq_len:
        return {"tokens": tokens.view(rows, seq_len)}
    mask = torch.zeros_like(tokens)
    mask[:n] = 1
    return {"tokens": tokens.view(rows, seq_len), "attention_mask": mask.view(rows, seq_len)}


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}")
    return value


def load_token_batches(
    path: str | Path,
    *,
    seq_len: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    n_ctx: int | None = None,
    d_vocab: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Batches of token ids from a local file (formats in the module docstring).

    ``n_ctx`` and ``d_vocab`` (the model's) are checked when given: rows must fit the context
    and every id must be below the vocabulary size. ``seq_len`` defaults to ``n_ctx`` or 128.
    Memory: the whole file's ids, once (the batches are views of them).

    Example:
        Ten ids cut into windows of 4: the third window is padded and masked out.

        >>> import pathlib, tempfile
        >>> from hessian_eigenthings_tlens import load_token_batches
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(tmp.name) / "ids.txt"
        >>> _ = path.write_text("1 2 3 4 5 6 7 8 9 10")
        >>> batches = load_token_batches(path, seq_len=4, batch_size=2)
        >>> len(batches), batches[0]["tokens"].tolist()
        (2, [[1, 2, 3, 4], [5, 6, 7, 8]])
        >>> batches[1]["tokens"].tolist(), batches[1]["attention_mask"].tolist()
        ([[9, 10, 0, 0]], [[1, 1, 0, 0]])
        >>> tmp.cleanup()
    """
    seq_len = _positive("seq_len", seq_len or n_ctx or DEFAULT_SEQ_LEN)
    batch_size = _positive("batch_size", batch_size)
    data = _rows(read_token_ids(path), seq_len)
    tokens = data["tokens"]
    if tokens.numel() == 0:
        raise InvalidArgumentError(f"--tlens-tokens {path}: the file holds no tokens")
    if n_ctx is not None and tokens.shape[1] > n_ctx:
        raise InvalidArgumentError(
            f"--tlens-tokens {path}: rows of {tokens.shape[1]} tokens exceed the model's "
            f"n_ctx={n_ctx}; pass --seq-len {n_ctx} or less for 1-D data, or shorter rows"
        )
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or (d_vocab is not None and high >= d_vocab):
        bound = f"[0, {d_vocab})" if d_vocab is not None else "≥ 0"
        raise InvalidArgumentError(
            f"--tlens-tokens {path}: token ids must be {bound}, found ids in [{low}, {high}]"
        )
    return [
        {key: value[start : start + batch_size] for key, value in data.items()}
        for start in range(0, tokens.shape[0], batch_size)
    ]


# -- the CLI's loader specs ------------------------------------------------------------------


def _arg(args: argparse.Namespace, name: str) -> Any:
    # The CLI stores a loader's value under "loader_<name>"; accept the plain name too.
    key = name.replace("-", "_")
    value = getattr(args, "loader_" + key, None)
    return value if value is not None else getattr(args, key, None)


def _model_from_args(value: str, args: argparse.Namespace) -> nn.Module:
    seed = _arg(args, "seed")
    return load_tlens_model(
        value,
        dtype=_arg(args, "dtype"),
        device=_arg(args, "device"),
        seed=0 if seed is None else seed,
    )


def _data_from_args(value: str, args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    n_ctx = d_vocab = None
    config_path = _arg(args, "tlens")
    if config_path is not None:
        config = read_tlens_config(config_path)
        n_ctx, d_vocab = config.get("n_ctx"), config.get("d_vocab")
    return load_token_batches(
        value,
        seq_len=_arg(args, "seq_len"),
        batch_size=_arg(args, "batch_size") or DEFAULT_BATCH_SIZE,
        n_ctx=n_ctx if isinstance(n_ctx, int) else None,
        d_vocab=d_vocab if isinstance(d_vocab, int) and d_vocab > 0 else None,
    )


def _loss_from_args(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    return tlens_loss_helpers()


#: name → spec, registered through ``register_loaders``.
LOADERS: dict[str, LoaderSpec] = {
    "tlens": LoaderSpec(
        option="tlens",
        help=(
            "TransformerLens model built from a local .json/.yaml config file (random "
            "initialisation seeded by --seed; a TransformerBridge on TransformerLens 4, a "
            "HookedTransformer before); loss: next-token cross-entropy (tlens_loss / "
            "tlens_forward / tlens_loss_of_output)"
        ),
        load_model=_model_from_args,
        loss=_loss_from_args,
    ),
    "tlens-tokens": LoaderSpec(
        option="tlens-tokens",
        help=(
            "token data for TransformerLens models from a local .pt/.npy file (or text of "
            "integers), cut into --seq-len windows and --batch-size batches; loss: next-token "
            "cross-entropy"
        ),
        load_data=_data_from_args,
        loss=_loss_from_args,
    ),
}
