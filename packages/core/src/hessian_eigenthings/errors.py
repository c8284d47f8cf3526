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
    """Base class of every exception raised by hessian-eigenthings.

    Example:
        One ``except`` clause catches whatever the library raises on purpose:

        >>> import torch
        >>> from hessian_eigenthings import EigenthingsError, LambdaOperator
        >>> op = LambdaOperator(3, lambda v: 2 * v)
        >>> try:
        ...     op.matvec(torch.ones(4))
        ... except EigenthingsError as err:
        ...     print(type(err).__name__)
        InvalidArgumentError
    """


class InvalidArgumentError(EigenthingsError, ValueError):
    """An argument has the wrong value, shape, dtype or device; the message names it and the fix.

    Example:
        It is a ``ValueError`` too, so code written without this library's types still
        catches it:

        >>> from hessian_eigenthings.linalg import make_generator
        >>> try:
        ...     make_generator("zero")
        ... except ValueError as err:
        ...     print(err)
        seed must be an int, a torch.Generator or None, got str
    """


class OperatorTooLargeError(InvalidArgumentError):
    """An explicit (dense) matrix was requested for an operator too large to hold in memory.

    Example:
        >>> from hessian_eigenthings import LambdaOperator, OperatorTooLargeError
        >>> op = LambdaOperator(100_000, lambda v: v)  # float32: 4 bytes per entry
        >>> try:
        ...     op.to_dense()
        ... except OperatorTooLargeError as err:
        ...     print(str(err).split(";")[0])
        to_dense() would build a 100000×100000 matrix (37.3 GiB, 100000 matvecs), above
        max_size=16384
    """


class NonFiniteError(EigenthingsError, ArithmeticError):
    """A product or loss contains NaN or infinity; the message names the batch it came from.

    Example:
        Algorithms stop at the first non-finite product instead of returning NaN eigenvalues:

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, NonFiniteError, lanczos
        >>> op = LambdaOperator(3, lambda v: v * float("nan"), dtype=torch.float64)
        >>> try:
        ...     lanczos(op, k=1, seed=0)
        ... except NonFiniteError as err:
        ...     print(str(err).split(".")[0])
        lanczos: operator product number 1 contains NaN or inf
    """


class PluginError(EigenthingsError):
    """A plugin registered something invalid (for example a name already taken).

    Example:
        >>> from hessian_eigenthings import PluginError
        >>> from hessian_eigenthings.plugins import Registry
        >>> widgets = Registry("widget")
        >>> widgets.add("round", object(), plugin="plugin-a")
        >>> try:
        ...     widgets.add("round", object(), plugin="plugin-b")
        ... except PluginError as err:
        ...     print(str(err).split(";")[0])
        widget 'round' is registered by both 'plugin-a' and 'plugin-b'
    """


class PluginNotInstalledError(EigenthingsError, ImportError):
    """A name provided by a plugin package was requested but that package is not installed.

    Its message says which package to install. It is an ``ImportError``, so optional features
    can be probed the usual way.

    Example:
        ``hessian_eigenthings.tlens_loss`` exists only with ``hessian-eigenthings-tlens``:

        >>> import hessian_eigenthings
        >>> from hessian_eigenthings import PluginNotInstalledError
        >>> try:
        ...     tlens_loss = hessian_eigenthings.tlens_loss
        ... except PluginNotInstalledError:
        ...     tlens_loss = None  # pip install 'hessian-eigenthings[tlens]' to get it
        >>> tlens_loss is None or callable(tlens_loss)
        True
        >>> issubclass(PluginNotInstalledError, ImportError)
        True
    """


class PluginLoadWarning(UserWarning):
    """An installed plugin failed to import or to register; the rest of the library still works.

    Example:
        An in-process plugin whose hook raises is reported and skipped:

        >>> import warnings
        >>> from hessian_eigenthings import PluginLoadWarning
        >>> from hessian_eigenthings.plugins import (
        ...     get_plugin_manager, hookimpl, refresh_registries)
        >>> class Broken:
        ...     @hookimpl
        ...     def register_loss_fns(self, register):
        ...         raise RuntimeError("boom")
        >>> manager = get_plugin_manager()
        >>> _ = manager.register(Broken(), name="broken-example")
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     registries = refresh_registries()
        >>> [w.category is PluginLoadWarning for w in caught]
        [True]
        >>> print(str(caught[0].message).split(":")[0])
        hessian_eigenthings plugin 'broken-example' failed in register_loss_fns
        >>> "supervised_loss" in registries.loss_fns  # the other plugins still work
        True
        >>> _ = manager.unregister(name="broken-example")
        >>> _ = refresh_registries()
    """


class StochasticOperatorWarning(UserWarning):
    """The operator is random (e.g. dropout in train mode), so repeated products differ.

    Example:
        >>> import warnings
        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings import HessianOperator, StochasticOperatorWarning
        >>> from hessian_eigenthings.loss_fns import supervised_loss
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))
        >>> data = [(torch.randn(8, 3), torch.randn(8, 1))]
        >>> op = HessianOperator(model, data, supervised_loss(nn.MSELoss()))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = op.matvec(torch.ones(op.size))
        >>> [w.category is StochasticOperatorWarning for w in caught]
        [True]
        >>> _ = model.eval()  # deterministic again
    """


class ConvergenceWarning(UserWarning):
    """An iterative algorithm stopped at its iteration budget before reaching its tolerance.

    Example:
        Power iteration needs many steps when the top two eigenvalues are close (1 and 0.99):

        >>> import warnings
        >>> import torch
        >>> from hessian_eigenthings import (
        ...     ConvergenceWarning, LambdaOperator, power_iteration_one)
        >>> d = torch.tensor([1.0, 0.99, 0.5], dtype=torch.float64)
        >>> op = LambdaOperator(3, lambda v: d * v, dtype=torch.float64)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     value, vector = power_iteration_one(op, max_iter=5, seed=0)
        >>> [w.category is ConvergenceWarning for w in caught]
        [True]
    """
