"""The typed things plugins register besides plain callables."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["CEHvpBackend", "CEHvpFn", "CommandSpec", "LoaderSpec", "ParamNamer"]

CEHvpFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]
"""``fn(logits (N, V), u (N, V), labels (N,), ignore_index, scale) -> (N, V)`` computing
``scale · (p ⊙ u − p ⟨p, u⟩)`` per row, p = softmax(logits), rows with
``labels == ignore_index`` zero. Accumulates in float32 at least; returns ``u``'s dtype.

Example:
    A plain PyTorch function of this shape agrees with the core's eager backend:

    >>> import torch
    >>> from hessian_eigenthings.loss_fns import ce_hvp_eager
    >>> def my_ce_hvp(logits, u, labels, ignore_index, scale):
    ...     p = torch.softmax(logits.float(), dim=-1)
    ...     out = p * u - p * (p * u).sum(-1, keepdim=True)
    ...     out[labels == ignore_index] = 0
    ...     return (scale * out).to(u.dtype)
    >>> _ = torch.manual_seed(0)
    >>> logits, u = torch.randn(4, 5), torch.randn(4, 5)
    >>> labels = torch.tensor([0, -100, 2, 3])
    >>> ours = my_ce_hvp(logits, u, labels, -100, 0.5)
    >>> torch.allclose(ours, ce_hvp_eager(logits, u, labels, -100, 0.5), atol=1e-6)
    True
    >>> ours[1].abs().max().item()  # the ignored row
    0.0
"""


@dataclass(frozen=True)
class CEHvpBackend:
    """A cross-entropy loss-Hessian-vector-product implementation.

    ``supports(logits, u)`` returns ``None`` when the backend can serve these tensors, else a
    short reason (shown when the user named this backend explicitly). ``fused="auto"`` picks
    the available backend with the highest ``priority`` among those whose
    ``min_auto_elements`` the logits reach.

    Example:
        A plugin backend (here the eager reference again) that serves CPU tensors only:

        >>> import torch
        >>> from hessian_eigenthings.loss_fns import ce_hvp_eager, resolve_ce_hvp_backend
        >>> from hessian_eigenthings.plugins import (
        ...     CEHvpBackend, get_plugin_manager, hookimpl, refresh_registries)
        >>> def cpu_only(logits, u):
        ...     return None if logits.device.type == "cpu" else "CPU tensors only"
        >>> backend = CEHvpBackend(fn=ce_hvp_eager, priority=5, supports=cpu_only)
        >>> class MyBackends:
        ...     @hookimpl
        ...     def register_ce_hvp_backends(self, register):
        ...         register("my-eager", backend, description="eager, CPU only")
        >>> _ = get_plugin_manager().register(MyBackends(), name="my-backends")
        >>> _ = refresh_registries()
        >>> x = torch.zeros(2, 3)
        >>> name, found = resolve_ce_hvp_backend("my-eager", x, x)
        >>> name, found is backend
        ('my-eager', True)
        >>> _ = get_plugin_manager().unregister(name="my-backends")
        >>> _ = refresh_registries()
    """

    fn: CEHvpFn
    priority: int
    supports: Callable[[torch.Tensor, torch.Tensor], str | None]
    #: ``fused="auto"`` passes this backend over for logits with fewer elements (a backend
    #: with a one-time cost, e.g. compilation, that only pays off on large inputs); naming
    #: it explicitly still uses it.
    min_auto_elements: int = 0


@dataclass(frozen=True)
class CommandSpec:
    """An ``eigenthings`` sub-command: ``configure`` adds its options, ``run`` executes it.

    ``run`` returns the exit status. Register it with the ``register_commands`` hook.

    Example:
        >>> import argparse
        >>> from hessian_eigenthings.plugins import CommandSpec
        >>> def configure(parser):
        ...     parser.add_argument("--name", default="world")
        >>> def run(args):
        ...     print(f"hello, {args.name}")
        ...     return 0
        >>> spec = CommandSpec(help="say hello", configure=configure, run=run)
        >>> parser = argparse.ArgumentParser(prog="eigenthings hello")
        >>> spec.configure(parser)
        >>> spec.run(parser.parse_args(["--name", "Hessian"]))
        hello, Hessian
        0
    """

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class LoaderSpec:
    """A model and/or data loader the CLI offers as ``--<option> VALUE``.

    ``load_model(value, args)`` returns an ``nn.Module``; ``load_data(value, args)`` an iterable
    of batches; ``loss(args)`` the matching ``(loss_fn, forward_fn, loss_of_output_fn)`` helpers.
    Register it with the ``register_loaders`` hook.

    Example:
        A loader the CLI would offer as ``--tiny-mlp WIDTH``:

        >>> import argparse
        >>> from torch import nn
        >>> from hessian_eigenthings.plugins import LoaderSpec
        >>> def tiny_mlp(value, args):
        ...     width = int(value)
        ...     return nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 2))
        >>> spec = LoaderSpec(option="tiny-mlp", help="an MLP of that width", load_model=tiny_mlp)
        >>> spec.load_model("8", argparse.Namespace())[0]
        Linear(in_features=4, out_features=8, bias=True)
        >>> spec.load_data is None and spec.loss is None  # a model loader only
        True
    """

    option: str
    help: str
    load_model: Callable[[str, argparse.Namespace], Any] | None = None
    load_data: Callable[[str, argparse.Namespace], Any] | None = None
    loss: Callable[[argparse.Namespace], Any] | None = None


ParamNamer = Callable[[nn.Module], Mapping[str, Sequence[str]] | None]
"""``namer(model) -> {raw name: [other names]}``, or ``None`` for a model it does not know.

A plugin registers one with the ``register_param_namers`` hook to tell the core what else the
parameters of models it knows are called. Keys are the names ``model.named_parameters()``
reports; a parameter missing from the mapping has no other names. A ``param_filter`` that
accepts none of the raw names is tried on these (see
:func:`~hessian_eigenthings.select_parameters`), so ``match_names("blocks.*.attn")`` can
select a wrapped model's attention parameters under the names users know. The namer may be
called on any model whose filter selects no raw name, so it must answer ``None`` cheaply for
other models (check the class before walking anything) and must not import heavy optional
packages itself.

Example:
    A namer that knows one kind of model, registered in-process:

    >>> from torch import nn
    >>> from hessian_eigenthings import match_names, select_parameters
    >>> from hessian_eigenthings.plugins import (
    ...     get_plugin_manager, hookimpl, refresh_registries)
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(3, 2)
    ...         self.head = nn.Linear(2, 1)
    >>> def net_namer(model):
    ...     if not isinstance(model, Net):
    ...         return None
    ...     return {"fc.weight": ["encoder.W"], "fc.bias": ["encoder.b"]}
    >>> class NetNames:
    ...     @hookimpl
    ...     def register_param_namers(self, register):
    ...         register("net", net_namer, description="encoder.* names for Net")
    >>> _ = get_plugin_manager().register(NetNames(), name="net-names")
    >>> _ = refresh_registries()
    >>> [name for name, _ in select_parameters(Net(), match_names("encoder.*"))]
    ['fc.weight', 'fc.bias']
    >>> _ = get_plugin_manager().unregister(name="net-names")
    >>> _ = refresh_registries()
"""
