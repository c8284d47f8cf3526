"""The CLI's error types: each carries the process exit status it maps to."""

from __future__ import annotations

from hessian_eigenthings.errors import EigenthingsError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_USAGE", "CLIError", "UsageError"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CLIError(EigenthingsError):
    """A failure reported to the user as one line on stderr (no traceback unless ``--debug``)."""

    exit_code = EXIT_ERROR


class UsageError(CLIError):
    """The command line itself is wrong: an unknown option, a malformed value."""

    exit_code = EXIT_USAGE
