"""``eigenthings trace``: a stochastic estimate of the curvature's trace."""

from __future__ import annotations

import argparse

from rich.console import Console

from hessian_eigenthings.algorithms import trace
from hessian_eigenthings.plugins import CommandSpec
from hessian_eigenthings_cli.analysis import add_analysis_options, positive_int, prepare
from hessian_eigenthings_cli.output import add_output_options, emit, payload
from hessian_eigenthings_cli.progress import Reporter, add_progress_options
from hessian_eigenthings_cli.reports import render_setup, render_trace, trace_json

__all__ = ["METHODS", "SPEC", "add_trace_options"]

METHODS = ("hutch++", "xtrace", "hutchinson")


def add_trace_options(parser: argparse.ArgumentParser, *, num_matvecs: int = 60) -> None:
    group = parser.add_argument_group("trace estimator")
    group.add_argument(
        "--num-matvecs",
        type=positive_int,
        default=num_matvecs,
        metavar="N",
        help=f"product budget of the estimator (default {num_matvecs})",
    )
    group.add_argument(
        "--method", choices=METHODS, default="hutch++", help="estimator (default hutch++)"
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    add_analysis_options(parser)
    add_trace_options(parser)
    add_output_options(parser)
    add_progress_options(parser)


def _run(args: argparse.Namespace) -> int:
    analysis = prepare(args)
    with Reporter.from_args(args) as reporter, reporter.task(args.method, args.num_matvecs) as task:
        result = trace(
            analysis.operator,
            args.num_matvecs,
            method=args.method,
            seed=args.seed,
            callback=task,
        )
    doc = trace_json(result)

    def render(console: Console) -> None:
        render_setup(console, analysis.setup)
        render_trace(console, doc)

    emit(args, payload("trace", setup=analysis.setup, trace=doc), render)
    return 0


SPEC = CommandSpec(
    help="stochastic estimate of the trace of the Hessian (or GGN/Fisher), with its standard error",
    configure=_configure,
    run=_run,
)
