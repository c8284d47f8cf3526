"""Alias of :mod:`hessian_eigenthings.param_utils` (the reference library's import path)."""

from hessian_eigenthings.param_utils import *  # noqa: F403
from hessian_eigenthings.param_utils import __all__ as __all__
