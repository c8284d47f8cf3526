"""Entry point of hessian-eigenthings-hf for the ``hessian_eigenthings`` plugin manager.

Declared in this package's pyproject.toml under ``[project.entry-points.hessian_eigenthings]``.
It registers the HF loss helpers (so ``hessian_eigenthings.hf_lm_loss`` and
``hessian_eigenthings.loss_fns.hf_lm_shifted_ce`` resolve) and the CLI loaders for local HF
checkpoints, configs and token files. Importing it does not import transformers.
"""

from __future__ import annotations

from typing import Any

from hessian_eigenthings.plugins import LoaderSpec, Register, hookimpl

__all__ = ["register_loaders", "register_loss_fns"]


@hookimpl
def register_loss_fns(register: Register[Any]) -> None:
    from hessian_eigenthings_hf import losses

    for name in (
        "hf_lm_loss",
        "hf_lm_forward",
        "hf_lm_loss_of_output",
        "hf_lm_shifted_ce",
        "hf_seq2seq_loss",
        "hf_seq2seq_forward",
        "hf_seq2seq_loss_of_output",
    ):
        fn = getattr(losses, name)
        register(name, fn, description=(fn.__doc__ or "").strip().split("\n")[0])


@hookimpl
def register_loaders(register: Register[LoaderSpec]) -> None:
    from hessian_eigenthings_hf.loaders import LOADERS

    for name, spec in LOADERS.items():
        register(name, spec, description=spec.help.split(".")[0])
