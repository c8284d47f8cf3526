"""``eigenthings density``: the spectral density by stochastic Lanczos quadrature."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from hessian_eigenthings.algorithms import spectral_density
from hessian_eigenthings.plugins import CommandSpec
from hessian_eigenthings_cli.analysis import add_analysis_options, positive_int, prepare
from hessian_eigenthings_cli.output import add_output_options, emit, payload
from hessian_eigenthings_cli.progress import Reporter, add_progress_options
from hessian_eigenthings_cli.reports import (
    density_json,
    render_density,
    render_setup,
    write_density_plot,
)

__all__ = ["SPEC", "add_density_options"]


def add_density_options(
    parser: argparse.ArgumentParser,
    *,
    num_runs: int = 8,
    lanczos_steps: int = 50,
    plot: Path | None = None,
) -> None:
    group = parser.add_argument_group("spectral density")
    group.add_argument(
        "--num-runs",
        type=positive_int,
        default=num_runs,
        metavar="R",
        help=f"random start vectors; the variance falls like 1/R (default {num_runs})",
    )
    group.add_argument(
        "--lanczos-steps",
        type=positive_int,
        default=lanczos_steps,
        metavar="M",
        help=f"Lanczos steps per run; resolution ≈ spread/M (default {lanczos_steps})",
    )
    group.add_argument(
        "--plot",
        type=Path,
        default=plot,
        metavar="FILE.png",
        help="write a plot of the density to this image file"
        + (f" (default {plot})" if plot else ""),
    )


def _configure(parser: argparse.ArgumentParser) -> None:
    add_analysis_options(parser)
    add_density_options(parser)
    add_output_options(parser)
    add_progress_options(parser)


def _run(args: argparse.Namespace) -> int:
    analysis = prepare(args)
    budget = args.num_runs * args.lanczos_steps
    with Reporter.from_args(args) as reporter, reporter.task("density", budget) as task:
        result = spectral_density(
            analysis.operator, args.num_runs, args.lanczos_steps, seed=args.seed, callback=task
        )
    if args.plot is not None:
        write_density_plot(result, args.plot, f"{args.operator} spectral density")
    doc = density_json(
        result,
        num_runs=args.num_runs,
        lanczos_steps=args.lanczos_steps,
        num_matvecs=task.done,
        plot=args.plot,
    )

    def render(console: Console) -> None:
        render_setup(console, analysis.setup)
        render_density(console, doc)

    emit(args, payload("density", setup=analysis.setup, density=doc), render)
    return 0


SPEC = CommandSpec(
    help="spectral density of the Hessian (or GGN/Fisher) by stochastic Lanczos quadrature; "
    "--plot writes an image",
    configure=_configure,
    run=_run,
)
