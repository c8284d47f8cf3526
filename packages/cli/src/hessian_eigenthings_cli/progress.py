"""Progress bars fed by the algorithms' callbacks: matvec counts, a running estimate and an ETA.

Shown on stderr when it is a terminal (``--progress`` forces them, ``--quiet`` hides them), so
the results on stdout stay clean when piped.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hessian_eigenthings.algorithms import IterationInfo

__all__ = ["Reporter", "Step", "Task", "add_progress_options", "describe"]


def add_progress_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bars and no notes on stderr (errors are still reported)",
    )
    group.add_argument(
        "--progress",
        action="store_true",
        help="show progress bars even when stderr is not a terminal",
    )


def describe(info: IterationInfo | Step) -> str:
    """A short status line for an algorithm's :class:`IterationInfo` (or a :class:`Step`)."""
    if isinstance(info, Step):
        return info.status
    values = info.estimates.reshape(-1)
    if values.numel() == 0:
        return ""
    if info.algorithm == "spectral_density":  # the estimates are one run's quadrature nodes
        low, high = float(values.min()), float(values.max())
        return f"run {info.iteration} [{low:.3g}, {high:.3g}]"
    if info.stderr is not None and math.isfinite(info.stderr):  # a stochastic estimator
        return f"≈ {float(values[-1]):.4g} ± {info.stderr:.2g}"
    top = float(values[0])  # the best wanted Ritz value
    return f"top ≈ {top:.4g} ({info.num_converged} conv.)"


@dataclass(frozen=True)
class Step:
    """Progress of something that is not an algorithm (e.g. a training epoch)."""

    completed: int
    status: str = ""


class Reporter:
    """Progress display for one command run; a no-op when disabled."""

    def __init__(self, *, enabled: bool, quiet: bool = False) -> None:
        self.enabled = enabled and not quiet
        self.quiet = quiet
        self._progress: Progress | None = None
        if self.enabled:
            console = Console(file=sys.stderr, force_terminal=True)
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<9}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Reporter:
        forced = bool(getattr(args, "progress", False))
        return cls(enabled=forced or sys.stderr.isatty(), quiet=bool(getattr(args, "quiet", False)))

    def __enter__(self) -> Reporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    @contextmanager
    def task(self, description: str, total: int, *, unit: str = "matvecs") -> Iterator[Task]:
        """A bar of ``total`` steps; yields the :class:`Task` to pass as an algorithm's callback."""
        task = Task(self._progress, description, total, unit)
        try:
            yield task
        finally:
            task.finish()

    def note(self, message: str) -> None:
        """A line on stderr (above the bars, if any), unless ``--quiet``."""
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(message, highlight=False, markup=False)
        else:
            print(message, file=sys.stderr)


class Task:
    """An algorithm callback that counts products and advances a progress bar (if shown).

    It reads ``info.num_matvecs`` (or ``info.completed`` for other steps, e.g. training
    epochs) and never asks the algorithm to stop.
    """

    def __init__(self, progress: Progress | None, description: str, total: int, unit: str) -> None:
        self.done = 0
        self.total = total
        self._progress = progress
        self._id: TaskID | None = None
        if progress is not None:
            self._id = progress.add_task(description, total=total, unit=unit, status="")

    def __call__(self, info: IterationInfo | Step) -> None:
        self.done = info.completed if isinstance(info, Step) else info.num_matvecs
        if self._progress is not None and self._id is not None:
            self._progress.update(
                self._id, completed=min(self.done, self.total), status=describe(info)
            )

    def finish(self) -> None:
        # An algorithm that converged early used fewer products than its budget.
        if self._progress is not None and self._id is not None:
            done = max(self.done, 1)
            self._progress.update(self._id, total=done, completed=done)
