"""Resolving ``MODULE:NAME`` references and calling the factories they name.

``MODULE`` is a dotted module name importable from the current directory or the environment
(``mypkg.models``), or the path of a Python file (``./models.py``, ``~/exp/models.py``).
``NAME`` is an attribute of that module, dotted for nested attributes (``Zoo.make_mlp``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from hessian_eigenthings_cli.errors import CLIError, UsageError

__all__ = ["call_factory", "load_data", "load_model", "resolve_reference"]

_FORMAT_HINT = "e.g. mypkg.models:make_model or ./models.py:make_model"


def _looks_like_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or os.sep in module


def _import_file(path_text: str, option: str) -> ModuleType:
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise CLIError(f"{option}: no such Python file: {path_text}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"_eigenthings_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CLIError(f"{option}: cannot import {path_text} as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Let the file import its neighbours, and let pickling/dataclasses find the module.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise CLIError(
            f"{option}: importing {path_text} failed: {type(err).__name__}: {err}"
        ) from err
    return module


def _import_dotted(name: str, option: str) -> ModuleType:
    # A console script's sys.path does not hold the working directory; `python -m` would.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise CLIError(
                f"{option}: cannot import module {name!r} (no module named {missing!r}); "
                "check the spelling and that it is importable from the current directory, "
                "or pass the path of a .py file"
            ) from err
        raise CLIError(
            f"{option}: importing module {name!r} failed: {type(err).__name__}: {err}"
        ) from err
    except Exception as err:
        raise CLIError(
            f"{option}: importing module {name!r} failed: {type(err).__name__}: {err}"
        ) from err


def resolve_reference(reference: str, option: str) -> Any:
    """The object ``MODULE:NAME`` refers to; ``option`` (e.g. ``"--model"``) names the source."""
    module_name, sep, attr = reference.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{option} must look like MODULE:NAME ({_FORMAT_HINT}), got {reference!r}")
    if _looks_like_path(module_name):
        module = _import_file(module_name, option)
    else:
        module = _import_dotted(module_name, option)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            public = sorted(n for n in vars(module) if not n.startswith("_"))[:12]
            raise CLIError(
                f"{option}: {module_name!r} has no attribute {attr!r} "
                f"(it defines: {', '.join(public) or 'nothing public'})"
            ) from None
    return obj


def call_factory(factory: Callable[[], Any], reference: str, option: str) -> Any:
    """``factory()``, with any exception it raises turned into a one-line :class:`CLIError`."""
    try:
        return factory()
    except Exception as err:
        raise CLIError(
            f"{option}: the factory {reference} raised {type(err).__name__}: {err}"
        ) from err


def load_model(reference: str, option: str = "--model") -> nn.Module:
    """The model named by ``MODULE:FACTORY``: a zero-argument callable returning an ``nn.Module``
    (a module-level ``nn.Module`` instance is accepted too)."""
    obj = resolve_reference(reference, option)
    model = obj if isinstance(obj, nn.Module) else _call_if_callable(obj, reference, option)
    if not isinstance(model, nn.Module):
        raise CLIError(
            f"{option}: {reference} must return a torch.nn.Module, got {type(model).__name__}"
        )
    return model


def load_data(reference: str, option: str = "--data") -> Iterable[Any]:
    """The batches named by ``MODULE:FACTORY``: a zero-argument callable returning an iterable
    of batches (a module-level list or DataLoader is accepted too)."""
    obj = resolve_reference(reference, option)
    data = obj if isinstance(obj, Iterable) else _call_if_callable(obj, reference, option)
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise CLIError(
            f"{option}: {reference} must return an iterable of batches (a list, a DataLoader, "
            f"...), got {type(data).__name__}"
        )
    return data


def _call_if_callable(obj: Any, reference: str, option: str) -> Any:
    if not callable(obj):
        raise CLIError(
            f"{option}: {reference} is a {type(obj).__name__}, not a callable; name a function "
            "that takes no arguments"
        )
    return call_factory(obj, reference, option)
