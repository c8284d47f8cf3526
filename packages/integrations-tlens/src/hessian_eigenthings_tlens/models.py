"""Building small TransformerLens models from a config, on either TransformerLens API.

TransformerLens 4 removed ``HookedTransformer``; a model built from a config is a
``TransformerBridge`` made by ``TransformerBridge.boot_native(TransformerBridgeConfig(...))``
(no download, no HF model). Older releases build ``HookedTransformer(HookedTransformerConfig)``.
Both configs take the same core fields (``n_layers``, ``d_model``, ``d_head``, ``n_heads``,
``n_ctx``, ``d_vocab``, ``act_fn``, ``normalization_type``, ``attn_only``, ...).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError, PluginNotInstalledError

__all__ = ["ModelKind", "build_tlens_model", "has_native_bridge", "resolve_dtype", "tlens_version"]

ModelKind = Literal["auto", "bridge", "hooked"]


def tlens_version() -> tuple[int, ...]:
    """The installed transformer-lens version as integers, e.g. ``(4, 3, 0)``.

    Read from the package metadata without importing transformer_lens (cheap). A
    pre-release suffix ends the tuple (``"4.0.0rc1"`` gives ``(4, 0, 0)``).

    Example:
        >>> from importlib.metadata import version
        >>> from hessian_eigenthings_tlens import tlens_version
        >>> installed = tlens_version()
        >>> all(isinstance(part, int) for part in installed)
        True
        >>> version("transformer-lens").startswith(".".join(map(str, installed)))
        True
    """
    try:
        text = version("transformer-lens")
    except PackageNotFoundError:
        raise PluginNotInstalledError(
            "transformer-lens is not installed; install it with: pip install transformer-lens"
        ) from None
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break
    return tuple(parts)


def resolve_dtype(value: Any) -> torch.dtype | None:
    """``None``, a ``torch.dtype`` or its name (``"float64"``) as a ``torch.dtype``."""
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgumentError(
            f"dtype {value!r} is not a floating torch dtype (e.g. 'float32', 'float64')"
        )
    return dtype


def has_native_bridge() -> bool:
    """Whether the installed TransformerLens builds bridges from configs (``boot_native``)."""
    try:
        bridge = importlib.import_module("transformer_lens.model_bridge").TransformerBridge
        # boot_native is attached to the class when its source module is imported.
        importlib.import_module("transformer_lens.model_bridge.sources")
    except (ImportError, AttributeError):  # releases before the bridge
        return False
    return hasattr(bridge, "boot_native")


def _build_bridge(fields: dict[str, Any], dtype: torch.dtype | None, device: Any) -> nn.Module:
    tl = importlib.import_module("transformer_lens")
    config = tl.TransformerBridgeConfig(**fields)
    model: nn.Module = tl.TransformerBridge.boot_native(config, dtype=dtype, device=device)
    return model


def _build_hooked(fields: dict[str, Any], dtype: torch.dtype | None, device: Any) -> nn.Module:
    tl = importlib.import_module("transformer_lens")
    if dtype is not None:
        fields["dtype"] = dtype
    if device is not None:
        fields["device"] = str(device)
    config = tl.HookedTransformerConfig(**fields)
    model: nn.Module = tl.HookedTransformer(config)
    return model


def build_tlens_model(
    config: Mapping[str, Any],
    *,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    seed: int | None = 0,
    kind: ModelKind = "auto",
) -> nn.Module:
    """A randomly initialised TransformerLens model from config fields, in eval mode.

    Args:
        config: the config's fields, e.g. ``{"n_layers": 2, "d_model": 64, "d_head": 16,
            "n_ctx": 32, "d_vocab": 100, "act_fn": "gelu", "normalization_type": "LN"}``;
            a ``"dtype"`` entry may name the dtype (``"float64"``).
        dtype: the parameters' dtype (overrides the config's ``"dtype"``).
        device: where to build the model.
        seed: the initialisation seed, used unless the config sets ``"seed"``; a seeded build
            leaves the caller's torch RNG untouched. ``None`` (and no ``"seed"`` in the config)
            draws from the global torch RNG.
        kind: ``"bridge"`` (``TransformerBridge.boot_native``, TransformerLens ≥ 4),
            ``"hooked"`` (``HookedTransformer``, TransformerLens < 4) or ``"auto"`` (the bridge
            where ``boot_native`` exists, else ``HookedTransformer``).

    Returns:
        The model, in eval mode. Nothing is downloaded; the cost is allocating and
        initialising the parameters.

    Example:
        A seeded build is reproducible and leaves the caller's random state alone:

        >>> import torch
        >>> from hessian_eigenthings_tlens import build_tlens_model
        >>> config = {"n_layers": 1, "d_model": 8, "d_head": 4, "n_heads": 2, "n_ctx": 8,
        ...           "d_vocab": 13, "act_fn": "gelu", "normalization_type": "LN"}
        >>> state = torch.random.get_rng_state()
        >>> a = build_tlens_model(config, dtype="float64", seed=0)
        >>> b = build_tlens_model(config, dtype="float64", seed=0)
        >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        True
        >>> torch.equal(torch.random.get_rng_state(), state), a.training
        (True, False)
        >>> a(torch.tensor([[1, 2, 3]])).shape  # (batch, positions, d_vocab) logits
        torch.Size([1, 3, 13])
    """
    if not isinstance(config, Mapping):
        raise InvalidArgumentError(
            "config must be a mapping of TransformerLens config fields, got "
            f"{type(config).__name__}"
        )
    if kind not in ("auto", "bridge", "hooked"):
        raise InvalidArgumentError(f"kind must be 'auto', 'bridge' or 'hooked', got {kind!r}")
    fields = dict(config)
    target = resolve_dtype(dtype if dtype is not None else fields.pop("dtype", None))
    fields.pop("dtype", None)
    if seed is not None:
        fields.setdefault("seed", seed)
    tlens_version()  # a clear error when transformer-lens is missing
    if kind == "auto":
        kind = "bridge" if has_native_bridge() else "hooked"
    build = _build_bridge if kind == "bridge" else _build_hooked
    seeded = fields.get("seed") is not None
    try:
        # A seeded build must not move the caller's RNG (HookedTransformerConfig reseeds it).
        with torch.random.fork_rng(devices=[], enabled=seeded):
            model = build(fields, target, device)
    except (TypeError, ValueError, AssertionError) as err:
        raise InvalidArgumentError(
            f"cannot build a TransformerLens model ({kind}) from config fields {sorted(fields)}: "
            f"{type(err).__name__}: {err}"
        ) from err
    except ImportError as err:
        raise InvalidArgumentError(
            f"the installed transformer-lens {'.'.join(map(str, tlens_version()))} cannot build a "
            f"{kind!r} model: {err}"
        ) from err
    model.eval()
    return model
