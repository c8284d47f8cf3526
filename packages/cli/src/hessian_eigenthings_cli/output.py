"""Writing a command's result: a rich table for people, versioned JSON for programs.

Every JSON document has ``"schema_version"`` and ``"command"`` keys and validates against the
JSON Schema shipped in ``hessian_eigenthings_cli/schemas/`` (see :func:`schema_path`). Nothing
time-dependent is written to the result, so a seeded run prints the same bytes every time.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from hessian_eigenthings_cli.errors import CLIError

__all__ = [
    "SCHEMA_VERSION",
    "add_output_options",
    "emit",
    "floats",
    "number",
    "payload",
    "schema_path",
    "schema_text",
]

SCHEMA_VERSION = 1
"""Bumped on any incompatible change of the JSON output (a removed or retyped key)."""
_SCHEMA_FILE = f"output-v{SCHEMA_VERSION}.json"

Render = Callable[[Console], None]


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--json`` and ``--out FILE``, the options :func:`emit` reads.

    Example:
        >>> import argparse
        >>> from hessian_eigenthings_cli.output import add_output_options
        >>> parser = argparse.ArgumentParser()
        >>> add_output_options(parser)
        >>> args = parser.parse_args(["--json", "--out", "result.json"])
        >>> args.json, args.out.name
        (True, 'result.json')
    """
    parser.add_argument(
        "--json",
        action="store_true",
        help=f"print JSON (schema version {SCHEMA_VERSION}, see `eigenthings schema`) "
        "instead of a table",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        type=Path,
        help="write the result (table or JSON) to FILE instead of stdout",
    )


def schema_path() -> Path:
    """The JSON Schema file that describes the ``--json`` output of every command."""
    return Path(str(resources.files("hessian_eigenthings_cli") / "schemas" / _SCHEMA_FILE))


def schema_text() -> str:
    return schema_path().read_text(encoding="utf-8")


def payload(command: str, **fields: Any) -> dict[str, Any]:
    """The JSON document of a command: version and command name first."""
    return {"schema_version": SCHEMA_VERSION, "command": command, **fields}


def number(x: float | torch.Tensor) -> float | None:
    """A JSON-safe float: ``None`` for NaN or infinity (JSON has neither)."""
    value = float(x.item() if isinstance(x, torch.Tensor) else x)
    return value if math.isfinite(value) else None


def floats(values: torch.Tensor | Sequence[float]) -> list[float | None]:
    """A 1-D tensor or sequence as a list of JSON-safe floats."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).reshape(-1).tolist()
    return [number(v) for v in values]


def emit(args: argparse.Namespace, document: dict[str, Any], render: Render) -> None:
    """Write ``document`` as JSON (``--json``) or call ``render`` on a console; to ``--out`` or
    stdout.

    Example:
        >>> import argparse
        >>> from hessian_eigenthings_cli.output import add_output_options, emit, payload
        >>> parser = argparse.ArgumentParser()
        >>> add_output_options(parser)
        >>> args = parser.parse_args(["--json"])
        >>> emit(args, payload("hello", answer=42), lambda console: console.print("42"))
        {
          "schema_version": 1,
          "command": "hello",
          "answer": 42
        }
    """
    out: Path | None = getattr(args, "out", None)
    if getattr(args, "json", False):
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    elif out is not None:
        buffer = io.StringIO()
        render(Console(file=buffer, width=100, color_system=None, soft_wrap=False))
        text = buffer.getvalue()
    else:
        render(Console(file=sys.stdout))
        return
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as err:
        raise CLIError(f"--out: cannot write {out}: {err.strerror or err}") from err
