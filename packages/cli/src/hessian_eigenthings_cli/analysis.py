"""From command-line options to a curvature operator: model, data, loss, operator, parameters.

Shared by ``eig``, ``trace`` and ``density`` (and available to plugin commands): call
:func:`add_analysis_options` in ``configure`` and :func:`prepare` in ``run``.
"""

from __future__ import annotations

import argparse
import ast
import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hessian_eigenthings.errors import EigenthingsError, InvalidArgumentError
from hessian_eigenthings.operators import CurvatureOperator
from hessian_eigenthings.operators.batching import map_tensors, move_to_device
from hessian_eigenthings.param_utils import ParamFilter, match_names, select_parameters
from hessian_eigenthings.plugins import Entry, LoaderSpec, get_registries
from hessian_eigenthings_cli.errors import CLIError, UsageError
from hessian_eigenthings_cli.loading import load_data, load_model
from hessian_eigenthings_cli.losses import (
    BUILTIN_CRITERIA,
    FORM_NAMES,
    LossForms,
    criterion_forms,
    from_loader,
    loss_fn_forms,
)

__all__ = [
    "DTYPES",
    "Analysis",
    "CastBatches",
    "add_analysis_options",
    "build_operator",
    "param_filter_for",
    "positive_int",
    "prepare",
]

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DEFAULT_LOSS = "cross_entropy"
DEFAULT_OPERATOR = "hessian"


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _loader_dest(name: str) -> str:
    return "loader_" + name.replace("-", "_")


def _loader_flag(spec: LoaderSpec) -> str:
    return "--" + spec.option.lstrip("-")


def add_analysis_options(parser: argparse.ArgumentParser) -> None:
    """The model, data, loss and operator options (plugin loaders add theirs here).

    Example:
        >>> import argparse
        >>> from hessian_eigenthings_cli.analysis import add_analysis_options
        >>> parser = argparse.ArgumentParser()
        >>> add_analysis_options(parser)
        >>> args = parser.parse_args(["--model", "mypkg.models:make_model",
        ...                           "--data", "mypkg.data:make_loader"])
        >>> args.model, args.operator, args.device, args.seed
        ('mypkg.models:make_model', 'hessian', 'cpu', 0)
    """
    source = parser.add_argument_group("model, data and loss")
    source.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="a zero-argument callable returning the torch.nn.Module; MODULE is a dotted "
        "module or the path of a .py file",
    )
    source.add_argument(
        "--data",
        metavar="MODULE:FACTORY",
        help="a zero-argument callable returning an iterable of batches (a list, a DataLoader); "
        "with --loss, batches are (inputs, targets)",
    )
    losses = source.add_mutually_exclusive_group()
    losses.add_argument(
        "--loss",
        metavar="NAME",
        help=f"criterion (output, target) -> scalar: {', '.join(BUILTIN_CRITERIA)} or "
        f"MODULE:NAME (default {DEFAULT_LOSS}, or the loader's loss)",
    )
    losses.add_argument(
        "--loss-fn",
        metavar="MODULE:NAME",
        help="a whole loss_fn(model, batch) -> scalar (for batches that are not "
        "(inputs, targets)); usable with operators that take loss_fn, e.g. hessian",
    )
    source.add_argument(
        "--ce-backend",
        default="auto",
        metavar="NAME",
        help="cross-entropy HVP backend of the GGN/Fisher with --loss cross_entropy: auto (the "
        "best available; 'compile' costs seconds of compilation on first use), eager, compile, "
        "or one a plugin registers",
    )
    loaders = list(get_registries().loaders)
    for entry in loaders:
        spec = entry.obj
        source.add_argument(
            _loader_flag(spec),
            dest=_loader_dest(entry.name),
            metavar="VALUE",
            help=f"{spec.help} (plugin {entry.plugin})",
        )
    if loaders:  # read by loaders that cut token streams into batches
        source.add_argument(
            "--seq-len", type=positive_int, metavar="T", help="sequence length, for loaders"
        )
        source.add_argument(
            "--batch-size", type=positive_int, metavar="B", help="batch size, for loaders"
        )

    op = parser.add_argument_group("operator")
    op.add_argument(
        "--operator",
        default=DEFAULT_OPERATOR,
        metavar="NAME",
        help="curvature operator: hessian, ggn, fisher, empirical-fisher or one a plugin "
        f"registers (`eigenthings plugins` lists them; default {DEFAULT_OPERATOR})",
    )
    op.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword argument of the operator's constructor, e.g. method=func "
        "(VALUE is a Python literal or a plain string; repeatable)",
    )
    op.add_argument(
        "--params",
        action="append",
        default=[],
        metavar="GLOB",
        help="analyse only parameters whose dotted name matches GLOB (e.g. 'layers.*.weight'; "
        "repeatable; default all trainable parameters)",
    )
    op.add_argument(
        "--max-batches",
        type=positive_int,
        metavar="N",
        help="use only the first N batches of the data (default all)",
    )
    op.add_argument("--device", default="cpu", help="torch device for model and data (cpu)")
    op.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="convert the model and floating data to this dtype (default: the model's)",
    )
    op.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch CPU threads (default: torch's choice; 1 is often fastest for small models)",
    )
    op.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the randomized algorithm; the same seed gives the same output (default 0)",
    )


class CastBatches:
    """Re-iterable view of a data source with every floating tensor cast to ``dtype``."""

    def __init__(self, data: Iterable[Any], dtype: torch.dtype) -> None:
        # One-shot iterators are materialised: every product iterates the data again.
        self.data = list(data) if iter(data) is data else data
        self.dtype = dtype

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype) if t.is_floating_point() else t

    def __iter__(self) -> Iterator[Any]:
        for batch in self.data:
            yield map_tensors(batch, self._cast)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]


@dataclass
class Analysis:
    """What :func:`prepare` built, and a JSON-ready description of it (``setup``)."""

    model: nn.Module
    data: Iterable[Any]
    loss: LossForms
    operator: CurvatureOperator
    setup: dict[str, Any]


def _chosen_loaders(args: argparse.Namespace) -> list[tuple[str, LoaderSpec, str]]:
    chosen = []
    for entry in get_registries().loaders:
        value = getattr(args, _loader_dest(entry.name), None)
        if value is not None:
            chosen.append((entry.name, entry.obj, value))
    return chosen


def _call_loader(flag: str, what: str, fn: Any, *call_args: Any) -> Any:
    try:
        return fn(*call_args)
    except EigenthingsError:
        raise
    except Exception as err:
        raise CLIError(f"{flag}: loading the {what} failed: {type(err).__name__}: {err}") from err


def _resolve_sources(args: argparse.Namespace) -> tuple[nn.Module, Any, LossForms, dict[str, str]]:
    loaders = _chosen_loaders(args)
    model: nn.Module | None = None
    data: Any = None
    forms: LossForms | None = None
    sources: dict[str, str] = {}
    if args.model is not None:
        model, sources["model"] = load_model(args.model), args.model
    if args.data is not None:
        data, sources["data"] = load_data(args.data), args.data
    for _, spec, value in loaders:
        flag = _loader_flag(spec)
        if spec.load_model is not None:
            if "model" in sources:
                raise UsageError(f"give the model once: both {sources['model']} and {flag}")
            model = _call_loader(flag, "model", spec.load_model, value, args)
            sources["model"] = f"{flag} {value}"
            if not isinstance(model, nn.Module):
                raise CLIError(f"{flag} returned a {type(model).__name__}, not an nn.Module")
        if spec.load_data is not None and data is None:
            data = _call_loader(flag, "data", spec.load_data, value, args)
            sources["data"] = f"{flag} {value}"
        if spec.loss is not None and forms is None and args.loss is None and args.loss_fn is None:
            forms = from_loader(flag, _call_loader(flag, "loss", spec.loss, args))
    if model is None:
        raise UsageError(_missing("model", "--model MODULE:FACTORY"))
    if data is None:
        raise UsageError(_missing("data", "--data MODULE:FACTORY"))
    if forms is None:
        if args.loss_fn is not None:
            forms = loss_fn_forms(args.loss_fn)
        else:
            forms = criterion_forms(args.loss or DEFAULT_LOSS, ce_backend=args.ce_backend)
    sources["loss"] = forms.source
    return model, data, forms, sources


def _missing(what: str, option: str) -> str:
    flags = [_loader_flag(e.obj) for e in get_registries().loaders]
    alternatives = f" or a loader option ({', '.join(flags)})" if flags else ""
    return f"no {what}: pass {option}{alternatives}"


def param_filter_for(model: nn.Module, patterns: list[str]) -> ParamFilter | None:
    """The parameters any pattern selects, after checking every pattern selects something.

    Each pattern is resolved on its own with :func:`select_parameters` (raw names, or a
    plugin's names such as TransformerLens ones when it matches no raw name), so patterns of
    both kinds can be given together.
    """
    if not patterns:
        return None
    chosen: set[str] = set()
    for pattern in patterns:
        try:
            chosen |= {name for name, _ in select_parameters(model, match_names(pattern))}
        except InvalidArgumentError as err:
            raise CLIError(
                f"--params {pattern!r} matches no trainable parameter of the model ({err})"
            ) from None

    def selected(name: str, param: object = None) -> bool:
        return name in chosen

    return selected


def _operator_kwargs(items: list[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--operator-arg must look like KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return kwargs


def _operator_entry(name: str) -> Entry[Any]:
    registry = get_registries().operators
    if name not in registry:
        raise CLIError(
            f"--operator: unknown operator {name!r}; available: {', '.join(registry.names())}. "
            "An operator from a plugin needs that plugin installed (`eigenthings plugins` "
            "lists what is loaded)"
        )
    return registry.entry(name)


def build_operator(
    name: str,
    model: nn.Module,
    data: Any,
    forms: LossForms,
    *,
    param_filter: ParamFilter | None = None,
    num_batches: int | None = None,
    seed: int | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[CurvatureOperator, str]:
    """The registered operator ``name`` on this model, data and loss, and its plugin's name.

    The loss shapes and engine options are passed by the names of the constructor's
    parameters, so any operator whose constructor reads ``(model, dataloader, <loss shapes>,
    *, param_filter=..., num_batches=...)`` works, built-in or from a plugin. ``seed`` goes to
    constructors that name it (sampling operators such as the Monte-Carlo Fisher).
    """
    entry = _operator_entry(name)
    factory = entry.obj
    parameters: Mapping[str, inspect.Parameter]
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs: dict[str, Any] = {}
    missing = []
    for form in FORM_NAMES:
        if form not in parameters:
            continue
        value = getattr(forms, form)
        if value is not None:
            kwargs[form] = value
        elif parameters[form].default is inspect.Parameter.empty:
            missing.append(form)
    if missing:
        have = ", ".join(forms.available()) or "nothing"
        raise CLIError(
            f"operator {name!r} is incompatible with the loss {forms.source!r}: it needs "
            f"{' and '.join(missing)}, which that loss does not provide (it gives {have}); "
            "use --loss with a criterion (cross_entropy, mse, bce or MODULE:NAME), or "
            "--operator hessian"
        )
    for key, value in (("param_filter", param_filter), ("num_batches", num_batches)):
        if value is not None and (key in parameters or accepts_any):
            kwargs[key] = value
    if seed is not None and "seed" in parameters:
        kwargs["seed"] = seed
    kwargs.update(extra or {})
    try:
        operator = factory(model, data, **kwargs)
    except EigenthingsError:
        raise
    except Exception as err:
        raise CLIError(
            f"cannot build operator {name!r} (from plugin {entry.plugin}): "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(operator, CurvatureOperator):
        raise CLIError(
            f"operator {name!r} (from plugin {entry.plugin}) built a {type(operator).__name__}, "
            "not a CurvatureOperator"
        )
    return operator, entry.plugin


def _check_first_batch(model: nn.Module, data: Iterable[Any], forms: LossForms) -> None:
    """Evaluate the loss on the first batch, so a model/data/loss mismatch is reported as such."""
    batch = next(iter(data), None)
    if batch is None:
        raise CLIError("the data yields no batch")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    batch = move_to_device(batch, device)
    try:
        with torch.no_grad():
            if forms.loss_fn is not None:
                forms.loss_fn(model, batch)
            elif forms.forward_fn is not None and forms.loss_of_output_fn is not None:
                forms.loss_of_output_fn(forms.forward_fn(model, batch), batch)
    except Exception as err:
        raise CLIError(
            f"the loss {forms.source!r} failed on the first batch (does it fit the model's "
            f"output and the data?): {type(err).__name__}: {' '.join(str(err).split())}"
        ) from err


def prepare(args: argparse.Namespace) -> Analysis:
    """Load the model, data and loss named on the command line and build the operator."""
    # Typos in the operator options fail before anything is loaded.
    _operator_entry(args.operator)
    operator_kwargs = _operator_kwargs(args.operator_arg)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, data, forms, sources = _resolve_sources(args)
    dtype = DTYPES[args.dtype] if args.dtype else None
    try:
        device = torch.device(args.device)
        model.to(device=device, dtype=dtype)
    except (RuntimeError, ValueError, AssertionError) as err:
        raise CLIError(f"--device {args.device}: {' '.join(str(err).split())}") from err
    model.eval()
    if isinstance(data, str | bytes) or not isinstance(data, Iterable):
        raise CLIError(f"the data source gave a {type(data).__name__}, not an iterable")
    data = CastBatches(data, dtype) if dtype is not None else data
    if iter(data) is data:
        data = list(data)
    param_filter = param_filter_for(model, args.params)
    _check_first_batch(model, data, forms)
    operator, plugin = build_operator(
        args.operator,
        model,
        data,
        forms,
        param_filter=param_filter,
        num_batches=args.max_batches,
        seed=args.seed,
        extra=operator_kwargs,
    )
    setup = {
        **sources,
        "operator": args.operator,
        "operator_plugin": plugin,
        "size": operator.size,
        "dtype": str(operator.dtype).removeprefix("torch."),
        "device": str(operator.device),
        "params": list(args.params),
        "max_batches": args.max_batches,
        "seed": args.seed,
    }
    return Analysis(model=model, data=data, loss=forms, operator=operator, setup=setup)
