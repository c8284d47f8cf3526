"""``eigenthings schema``: the JSON Schema of the ``--json`` output."""

from __future__ import annotations

import argparse
import sys

from hessian_eigenthings.plugins import CommandSpec
from hessian_eigenthings_cli.output import SCHEMA_VERSION, schema_path, schema_text

__all__ = ["SPEC"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--path", action="store_true", help="print the schema file's location instead"
    )


def _run(args: argparse.Namespace) -> int:
    sys.stdout.write(f"{schema_path()}\n" if args.path else schema_text())
    return 0


SPEC = CommandSpec(
    help=f"print the JSON Schema (version {SCHEMA_VERSION}) of every command's --json output",
    configure=_configure,
    run=_run,
)
