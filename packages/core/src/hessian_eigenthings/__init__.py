"""hessian-eigenthings: matrix-free curvature analysis for PyTorch models.

Operators (:class:`HessianOperator`, :class:`GGNOperator`, Fisher operators, or any
:class:`CurvatureOperator`) compute products with a curvature matrix; algorithms
(:func:`lanczos`, :func:`trace`, :func:`spectral_density`, ...) turn products into answers.

Importing this package loads no plugin; plugins are discovered on first use of a registry.
"""

from __future__ import annotations

from typing import Any

from hessian_eigenthings import algorithms, errors, operators, param_utils
from hessian_eigenthings.algorithms import *  # noqa: F403
from hessian_eigenthings.errors import *  # noqa: F403
from hessian_eigenthings.linalg import LinAlgBackend, SingleDeviceBackend, make_generator
from hessian_eigenthings.operators import *  # noqa: F403
from hessian_eigenthings.param_utils import *  # noqa: F403
from hessian_eigenthings.plugins import get_plugin_manager, get_registries, hookimpl
from hessian_eigenthings.plugins.provided import PLUGIN_PROVIDED_NAMES, resolve_provided_name

__version__ = "0.1.0"

__all__ = [
    "LinAlgBackend",
    "SingleDeviceBackend",
    "__version__",
    "get_plugin_manager",
    "get_registries",
    "hookimpl",
    "make_generator",
]
__all__ += algorithms.__all__
__all__ += errors.__all__
__all__ += operators.__all__
__all__ += param_utils.__all__


def __getattr__(name: str) -> Any:
    # Reference-API names that plugins provide (hf_lm_loss, tlens_loss, ...).
    if name in PLUGIN_PROVIDED_NAMES:
        return resolve_provided_name(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
