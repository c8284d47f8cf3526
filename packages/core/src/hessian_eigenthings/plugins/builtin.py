"""The core's own features, registered through the same hooks as any third-party plugin."""

from __future__ import annotations

from hessian_eigenthings.plugins.markers import hookimpl
from hessian_eigenthings.plugins.registry import Register
from hessian_eigenthings.plugins.types import CEHvpBackend

__all__ = ["register_ce_hvp_backends", "register_loss_fns", "register_operators"]


@hookimpl
def register_operators(register: Register[object]) -> None:
    from hessian_eigenthings.operators import BUILTIN_OPERATORS

    for name, (cls, description) in BUILTIN_OPERATORS.items():
        register(name, cls, description=description)


@hookimpl
def register_loss_fns(register: Register[object]) -> None:
    from hessian_eigenthings.loss_fns import BUILTIN_LOSS_FNS

    for name, fn in BUILTIN_LOSS_FNS.items():
        register(name, fn, description=(fn.__doc__ or "").strip().split("\n")[0])


@hookimpl
def register_ce_hvp_backends(register: Register[CEHvpBackend]) -> None:
    from hessian_eigenthings.loss_fns import BUILTIN_CE_HVP_BACKENDS

    for name, (backend, description) in BUILTIN_CE_HVP_BACKENDS.items():
        register(name, backend, description=description)
