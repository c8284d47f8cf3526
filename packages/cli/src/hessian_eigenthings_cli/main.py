"""The ``eigenthings`` entry point: one sub-command per registered :class:`CommandSpec`.

The CLI's own commands are registered by :mod:`hessian_eigenthings_cli.plugin` through the
``register_commands`` hook like any plugin's, so ``main`` only builds the parser from the
registry, dispatches, and turns failures into one line on stderr (a traceback with
``--debug``). Exit status: 0 success, 1 failure, 2 bad command line, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from hessian_eigenthings.errors import EigenthingsError, PluginLoadWarning
from hessian_eigenthings.plugins import (
    CommandSpec,
    Registries,
    get_plugin_manager,
    get_registries,
    refresh_registries,
)
from hessian_eigenthings_cli import __version__
from hessian_eigenthings_cli import plugin as own_plugin
from hessian_eigenthings_cli.errors import EXIT_ERROR, EXIT_INTERRUPTED, CLIError, UsageError
from hessian_eigenthings_cli.plugin_options import missing_plugin_message

__all__ = ["build_parser", "main"]

PROG = "eigenthings"
OWN_PLUGIN_NAME = "hessian-eigenthings-cli"


class _Parser(argparse.ArgumentParser):
    """Raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _registries() -> tuple[Registries, list[str]]:
    """The registries, with this package's commands even when plugin autoloading is off, and
    the messages of the plugins that failed to load (also shown on stderr)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginLoadWarning)
        pm = get_plugin_manager()
        if not pm.is_registered(own_plugin):
            pm.register(own_plugin, name=OWN_PLUGIN_NAME)
            registries = refresh_registries()
        else:
            registries = get_registries()
    failures = []
    for record in caught:
        if issubclass(record.category, PluginLoadWarning):
            failures.append(" ".join(str(record.message).split()))
        warnings.showwarning(
            record.message, record.category, record.filename, record.lineno, record.file
        )
    return registries, failures


def build_parser(registries: Registries) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Curvature analysis of PyTorch models: Hessian/GGN/Fisher eigenvalues, "
        "traces and spectral densities from matrix-vector products.",
        epilog=f"Run `{PROG} demo` for a one-minute tour; `{PROG} COMMAND --help` for a "
        "command's options.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for entry in registries.commands:
        spec: CommandSpec = entry.obj
        cmd = sub.add_parser(
            entry.name,
            help=spec.help,
            description=spec.help,
            allow_abbrev=False,
        )
        cmd.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
        try:
            spec.configure(cmd)
        except Exception as err:
            raise CLIError(
                f"plugin {entry.plugin!r} failed to set up the command {entry.name!r}: "
                f"{type(err).__name__}: {err}"
            ) from err
        cmd.set_defaults(_spec=spec, _plugin=entry.plugin)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args, extras = parser.parse_known_args(argv)
    for token in extras:
        message = missing_plugin_message(token.split("=", 1)[0])
        if message is not None:
            raise UsageError(message)
    if extras:
        command = getattr(args, "command", None)
        where = f"{PROG} {command}" if command else PROG
        raise UsageError(f"unrecognized arguments: {' '.join(extras)} (see `{where} --help`)")
    return args


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, EigenthingsError):
        return text
    name = type(err).__name__
    return f"{name}: {text}" if text else name


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    label = "plugin warning" if issubclass(category, PluginLoadWarning) else "warning"
    print(f"{PROG}: {label}: {' '.join(str(message).split())}", file=sys.stderr)


@contextmanager
def _quiet_third_party_noise(debug: bool) -> Iterator[None]:
    """Hide other libraries' deprecation notices and torch's log warnings unless ``--debug``;
    this library's own warnings always show. Restores the warning filters and log level."""
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        if not debug:
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category)
                warnings.filterwarnings("default", category=category, module="hessian_eigenthings")
            if not os.environ.get("TORCH_LOGS"):
                torch_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            torch_logger.setLevel(level)


def _run(argv: list[str]) -> int:
    registries, plugin_failures = _registries()
    parser = build_parser(registries)
    if not argv:
        parser.print_help()
        return 0
    args = _parse(parser, argv)
    args.plugin_failures = plugin_failures
    spec: CommandSpec | None = getattr(args, "_spec", None)
    if spec is None:
        raise UsageError(f"choose a command (see `{PROG} --help`)")
    return int(spec.run(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit status.

    Errors are printed as one line on stderr (a traceback with ``--debug``) and turned into
    the status: 0 success, 1 failure, 2 bad command line, 130 interrupted.

    Example:
        >>> import contextlib, io, json
        >>> from hessian_eigenthings_cli.main import main
        >>> out = io.StringIO()
        >>> with contextlib.redirect_stdout(out):
        ...     status = main(["plugins", "--json"])
        >>> status, json.loads(out.getvalue())["plugins"][0]["name"]
        (0, 'core:builtin')
        >>> main(["no-such-command"])  # the message goes to stderr
        2
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    options = arguments[: arguments.index("--")] if "--" in arguments else arguments
    debug = "--debug" in options
    with _quiet_third_party_noise(debug):
        try:
            return _run(arguments)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except SystemExit as done:  # argparse's --help and --version
            code = done.code
            if code is None or isinstance(code, int):
                return code or 0
            print(code, file=sys.stderr)
            return EXIT_ERROR
        except BrokenPipeError:
            # The reader went away (`eigenthings ... | head`): stop quietly, and keep Python
            # from complaining again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_ERROR
        except Exception as err:
            if debug:
                traceback.print_exc()
            print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
            return err.exit_code if isinstance(err, CLIError) else EXIT_ERROR
