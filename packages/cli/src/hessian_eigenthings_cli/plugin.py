"""Entry point of hessian-eigenthings-cli for the ``hessian_eigenthings`` plugin manager.

Declared in this package's pyproject.toml under ``[project.entry-points.hessian_eigenthings]``.
The CLI's own sub-commands are ordinary registrations of the ``register_commands`` hook, the
same way another plugin adds one.
"""

from __future__ import annotations

from hessian_eigenthings.plugins import CommandSpec, Register, hookimpl

__all__ = ["register_commands"]


@hookimpl
def register_commands(register: Register[CommandSpec]) -> None:
    from hessian_eigenthings_cli.commands import demo, density, eig, plugins, schema, trace

    register("demo", demo.SPEC, description="offline tour: an MLP on digits, analysed")
    register("eig", eig.SPEC, description="top-k eigenvalues by Lanczos")
    register("trace", trace.SPEC, description="stochastic trace with standard error")
    register("density", density.SPEC, description="spectral density by SLQ, with a plot")
    register("plugins", plugins.SPEC, description="list plugins and their registrations")
    register("schema", schema.SPEC, description="print the JSON Schema of --json output")
