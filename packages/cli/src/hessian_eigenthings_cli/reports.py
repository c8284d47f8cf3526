"""Results as JSON-ready dictionaries and as rich tables, shared by every analysis command.

Each ``*_json`` function gives the object a command puts under its result key (``"eig"``,
``"trace"``, ``"density"``); each ``render_*`` function draws that object, so the table and
the JSON always show the same numbers.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from hessian_eigenthings.algorithms import EigenResult, SpectralDensityResult, TraceResult
from hessian_eigenthings_cli.errors import CLIError
from hessian_eigenthings_cli.output import floats, number

__all__ = [
    "WHICH_LABELS",
    "density_json",
    "eig_json",
    "render_density",
    "render_eig",
    "render_setup",
    "render_trace",
    "sparkline",
    "trace_json",
    "write_density_plot",
]

WHICH_LABELS = {
    "LM": "largest magnitude",
    "LA": "largest algebraic",
    "SA": "smallest algebraic",
}
_SETUP_LABELS = {
    "model": "model",
    "data": "data",
    "loss": "loss",
    "operator": "operator",
    "size": "parameters (n)",
    "dtype": "dtype",
    "device": "device",
    "params": "parameter globs",
    "max_batches": "max batches",
    "seed": "seed",
}
_BARS = "▁▂▃▄▅▆▇█"


def eig_json(result: EigenResult, *, which: str, k: int) -> dict[str, Any]:
    return {
        "which": which,
        "k": k,
        "eigenvalues": floats(result.eigenvalues),
        "residuals": floats(result.residuals),
        "converged": bool(result.converged),
        "iterations": int(result.iterations),
        "num_matvecs": int(result.num_matvecs),
        "note": result.note,
    }


def trace_json(result: TraceResult) -> dict[str, Any]:
    return {
        "estimate": number(result.estimate),
        "stderr": number(result.stderr),
        "method": result.method,
        "num_matvecs": int(result.num_matvecs),
        "operator_size": int(result.operator_size),
    }


def density_json(
    result: SpectralDensityResult,
    *,
    num_runs: int,
    lanczos_steps: int,
    num_matvecs: int,
    plot: Path | None,
) -> dict[str, Any]:
    return {
        "num_runs": num_runs,
        "lanczos_steps": lanczos_steps,
        "num_matvecs": num_matvecs,
        "sigma": number(result.sigma),
        "grid": floats(result.grid),
        "density": floats(result.density),
        "nodes": [floats(n) for n in result.nodes],
        "weights": [floats(w) for w in result.weights],
        "plot": None if plot is None else str(plot),
    }


def _fmt(x: float | None, spec: str = ".6g") -> str:
    return "n/a" if x is None else format(x, spec)


def render_setup(console: Console, setup: dict[str, Any], title: str = "setup") -> None:
    table = Table(title=title, title_justify="left", show_header=False, box=None)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in setup.items():
        if value is None or value == []:
            continue
        label = _SETUP_LABELS.get(key, key.replace("_", " "))
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        table.add_row(label, shown)
    console.print(table)


def render_eig(console: Console, eig: dict[str, Any], title: str = "eigenvalues") -> None:
    label = WHICH_LABELS.get(eig["which"], eig["which"])
    console.print(f"{title}: top {eig['k']} by {label}", highlight=False)
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("eigenvalue", justify="right")
    table.add_column("residual", justify="right")
    for i, (value, res) in enumerate(zip(eig["eigenvalues"], eig["residuals"], strict=True)):
        table.add_row(str(i + 1), _fmt(value), _fmt(res, ".1e"))
    console.print(table)
    status = "converged" if eig["converged"] else "NOT converged"
    console.print(
        f"{status} after {eig['iterations']} Lanczos iterations ({eig['num_matvecs']} matvecs)",
        highlight=False,
    )
    if eig["note"]:
        console.print(f"note: {eig['note']}", highlight=False, markup=False)


def render_trace(console: Console, trace: dict[str, Any]) -> None:
    console.print(
        f"trace ≈ {_fmt(trace['estimate'])} ± {_fmt(trace['stderr'], '.2g')} (standard error; "
        f"{trace['method']}, {trace['num_matvecs']} matvecs, n = {trace['operator_size']})",
        highlight=False,
    )


def sparkline(density: torch.Tensor, width: int = 64) -> str:
    """The log-density as one line of block characters (bulk and outliers both visible)."""
    d = density.detach().to(torch.float64).clamp_min(1e-300).log10()
    n = d.numel()
    width = max(1, min(width, n))
    edges = torch.linspace(0, n, width + 1).round().long().tolist()
    cols = torch.stack([d[a:b].max() for a, b in itertools.pairwise(edges)])
    floor = float(cols.max()) - 6.0  # six decades below the peak show as the lowest bar
    scaled = ((cols - floor) / 6.0).clamp(0, 1)
    return "".join(_BARS[min(len(_BARS) - 1, math.floor(float(s) * len(_BARS)))] for s in scaled)


def render_density(console: Console, density: dict[str, Any]) -> None:
    grid = [g for g in density["grid"] if g is not None]
    values = torch.tensor([v or 0.0 for v in density["density"]], dtype=torch.float64)
    console.print(
        f"spectral density: {density['num_runs']} runs x {density['lanczos_steps']} Lanczos "
        f"steps ({density['num_matvecs']} matvecs), Gaussian width σ = "
        f"{_fmt(density['sigma'], '.3g')}",
        highlight=False,
    )
    if grid:
        console.print(f"  log density  {sparkline(values)}", highlight=False)
        console.print(
            f"  eigenvalue   {_fmt(grid[0], '.4g')} … {_fmt(grid[-1], '.4g')}", highlight=False
        )
    if density["plot"]:
        console.print(f"plot written to {density['plot']}", highlight=False, markup=False)


def write_density_plot(result: SpectralDensityResult, path: Path, title: str) -> None:
    """Save the density (log scale) as an image; the format follows the file's extension."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.subplots()
    result.plot(ax)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    except (OSError, ValueError) as err:
        raise CLIError(f"--plot: cannot write {path}: {err}") from err
