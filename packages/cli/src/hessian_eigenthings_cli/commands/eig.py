"""``eigenthings eig``: the top eigenvalues of a model's curvature, by Lanczos."""

from __future__ import annotations

import argparse

from rich.console import Console

from hessian_eigenthings.algorithms import lanczos
from hessian_eigenthings.plugins import CommandSpec
from hessian_eigenthings_cli.analysis import add_analysis_options, positive_int, prepare
from hessian_eigenthings_cli.output import add_output_options, emit, payload
from hessian_eigenthings_cli.progress import Reporter, add_progress_options
from hessian_eigenthings_cli.reports import WHICH_LABELS, eig_json, render_eig, render_setup

__all__ = ["SPEC", "add_eig_options", "default_max_iter"]


def add_eig_options(parser: argparse.ArgumentParser, *, k: int = 5) -> None:
    group = parser.add_argument_group("eigensolver")
    group.add_argument(
        "-k", type=positive_int, default=k, help=f"number of eigenvalues (default {k})"
    )
    group.add_argument(
        "--which",
        choices=tuple(WHICH_LABELS),
        default="LM",
        help="which end of the spectrum: "
        + ", ".join(f"{key} {label}" for key, label in WHICH_LABELS.items())
        + " (default LM)",
    )
    group.add_argument(
        "--max-iter",
        type=positive_int,
        metavar="N",
        help="most Lanczos iterations = matvecs (default max(100, 3k), at most n)",
    )
    group.add_argument(
        "--tol", type=float, default=1e-8, help="relative residual tolerance (default 1e-8)"
    )


def default_max_iter(k: int, n: int) -> int:
    return max(k, min(n, max(100, 3 * k)))


def _configure(parser: argparse.ArgumentParser) -> None:
    add_analysis_options(parser)
    add_eig_options(parser)
    add_output_options(parser)
    add_progress_options(parser)


def _run(args: argparse.Namespace) -> int:
    analysis = prepare(args)
    op = analysis.operator
    max_iter = args.max_iter or default_max_iter(args.k, op.size)
    with Reporter.from_args(args) as reporter, reporter.task("lanczos", max_iter) as task:
        result = lanczos(
            op, args.k, max_iter, which=args.which, tol=args.tol, seed=args.seed, callback=task
        )
    eig = eig_json(result, which=args.which, k=args.k)

    def render(console: Console) -> None:
        render_setup(console, analysis.setup)
        render_eig(console, eig, title=f"{args.operator} eigenvalues")

    emit(args, payload("eig", setup=analysis.setup, eig=eig), render)
    return 0


SPEC = CommandSpec(
    help="top-k eigenvalues of the Hessian (or GGN/Fisher) of a model's loss",
    configure=_configure,
    run=_run,
)
