"""Hook specifications: what a plugin may register.

Each hook receives a ``register`` callable and calls it once per thing it provides::

    from hessian_eigenthings.plugins import hookimpl

    @hookimpl
    def register_operators(register):
        register("my-curvature", MyCurvatureOperator, description="what it is")

The registry records which plugin registered each name; two plugins registering the same name
in one registry is an error naming both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hessian_eigenthings.plugins.markers import hookspec

if TYPE_CHECKING:
    from hessian_eigenthings.plugins.registry import Register
    from hessian_eigenthings.plugins.types import (
        CEHvpBackend,
        CommandSpec,
        LoaderSpec,
        ParamNamer,
    )

__all__ = [
    "register_ce_hvp_backends",
    "register_commands",
    "register_loaders",
    "register_loss_fns",
    "register_operators",
    "register_param_namers",
]


@hookspec
def register_loss_fns(register: Register[Any]) -> None:
    """Register named loss-function factories: ``register("hf_lm_loss", hf_lm_loss)``.

    A name registered here resolves as ``hessian_eigenthings.<name>`` and
    ``hessian_eigenthings.loss_fns.<name>``.
    """


@hookspec
def register_ce_hvp_backends(register: Register[CEHvpBackend]) -> None:
    """Register fused cross-entropy HVP backends: ``register("triton", CEHvpBackend(...))``."""


@hookspec
def register_operators(register: Register[Any]) -> None:
    """Register curvature operators by name: ``register("kfac", KFACOperator)``.

    The object is a :class:`~hessian_eigenthings.CurvatureOperator` subclass or a factory
    returning one.
    """


@hookspec
def register_commands(register: Register[CommandSpec]) -> None:
    """Register ``eigenthings`` sub-commands: ``register("demo", CommandSpec(...))``."""


@hookspec
def register_loaders(register: Register[LoaderSpec]) -> None:
    """Register model/data loaders the CLI offers: ``register("hf", LoaderSpec(...))``."""


@hookspec
def register_param_namers(register: Register[ParamNamer]) -> None:
    """Register parameter namers: ``register("transformer_lens", namer)``.

    A namer maps a model it knows to ``{raw parameter name: [other names]}`` and returns
    ``None`` for any other model (see :data:`~hessian_eigenthings.plugins.ParamNamer`).
    When a ``param_filter`` accepts none of the raw names,
    :func:`~hessian_eigenthings.select_parameters` offers it those names, so a filter written
    against the names users know selects the parameters whatever ``named_parameters()``
    calls them. The first namer, in registration order, that returns a
    mapping for a model is the one used.
    """
