"""Exception and warning types raised by hessian-eigenthings.

Every error the library raises on bad input derives from :class:`EigenthingsError` and from the
matching built-in type (``ValueError``, ``ImportError``, ...), so ``except ValueError`` keeps
working for callers who do not know this library's types.
"""

from __future__ import annotations

__all__ = [
    "ConvergenceWarning",
    "EigenthingsError",
    "InvalidArgumentError",
    "NonFiniteError",
    "OperatorTooLargeError",
    "PluginError",
    "PluginLoadWarning",
    "PluginNotInstalledError",
    "StochasticOperatorWarning",
]


class EigenthingsError(Exception):
    """Base class of every exception raised by hessian-eigenthings."""


class InvalidArgumentError(EigenthingsError, ValueError):
    """An argument has the wrong value, shape, dtype or device; the message names it and the fix."""


class OperatorTooLargeError(InvalidArgumentError):
    """An explicit (dense) matrix was requested for an operator too large to hold in memory."""


class NonFiniteError(EigenthingsError, ArithmeticError):
    """A product or loss contains NaN or infinity; the message names the batch it came from."""


class PluginError(EigenthingsError):
    """A plugin registered something invalid (for example a name already taken)."""


class PluginNotInstalledError(EigenthingsError, ImportError):
    """A name provided by a plugin package was requested but that package is not installed."""


class PluginLoadWarning(UserWarning):
    """An installed plugin failed to import or to register; the rest of the library still works."""


class StochasticOperatorWarning(UserWarning):
    """The operator is random (e.g. dropout in train mode), so repeated products differ."""


class ConvergenceWarning(UserWarning):
    """An iterative algorithm stopped at its iteration budget before reaching its tolerance."""
