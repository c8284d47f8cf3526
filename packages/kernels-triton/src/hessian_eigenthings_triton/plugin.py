"""Entry point of hessian-eigenthings-triton for the ``hessian_eigenthings`` plugin manager.

Declared in this package's pyproject.toml under ``[project.entry-points.hessian_eigenthings]``.
Hook implementations are added here as the package's features land.
"""
