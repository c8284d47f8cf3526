"""The ``eigenthings`` command line of hessian-eigenthings.

Commands are registered through the ``register_commands`` hook (this package's own included),
and model/data loaders through ``register_loaders``. Plugin commands can reuse the built-in
option groups and output: :mod:`hessian_eigenthings_cli.analysis` (``add_analysis_options``,
``prepare``) and :mod:`hessian_eigenthings_cli.output` (``add_output_options``, ``emit``).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
