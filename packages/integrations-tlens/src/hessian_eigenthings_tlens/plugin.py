"""Entry point of hessian-eigenthings-tlens for the ``hessian_eigenthings`` plugin manager.

Declared in this package's pyproject.toml under ``[project.entry-points.hessian_eigenthings]``.
It registers the TransformerLens loss helpers (so ``hessian_eigenthings.tlens_loss`` and
``hessian_eigenthings.loss_fns.tlens_loss_of_output`` resolve), the CLI loaders
``--tlens CONFIG`` and ``--tlens-tokens FILE``, and the parameter namer ``"transformer_lens"``
(:func:`~hessian_eigenthings_tlens.tlens_param_namer`), through which the core's
``param_filter``s see TransformerLens names. Importing it does not import transformer_lens.
"""

from __future__ import annotations

from typing import Any

from hessian_eigenthings.plugins import LoaderSpec, ParamNamer, Register, hookimpl

__all__ = ["LOSS_FN_NAMES", "register_loaders", "register_loss_fns", "register_param_namers"]

#: The loss-function factories this plugin registers (the names the core resolves).
LOSS_FN_NAMES = ("tlens_loss", "tlens_forward", "tlens_loss_of_output")


@hookimpl
def register_loss_fns(register: Register[Any]) -> None:
    from hessian_eigenthings_tlens import losses

    for name in LOSS_FN_NAMES:
        fn = getattr(losses, name)
        register(name, fn, description=(fn.__doc__ or "").strip().split("\n")[0])


@hookimpl
def register_loaders(register: Register[LoaderSpec]) -> None:
    from hessian_eigenthings_tlens.loaders import LOADERS

    for name, spec in LOADERS.items():
        register(name, spec, description=spec.help.split(";")[0])


@hookimpl
def register_param_namers(register: Register[ParamNamer]) -> None:
    from hessian_eigenthings_tlens.names import tlens_param_namer

    register(
        "transformer_lens",
        tlens_param_namer,
        description="TransformerLens names (blocks.0.attn.W_Q, ...) for TransformerLens models",
    )
