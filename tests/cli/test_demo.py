"""``eigenthings demo``: offline, under a minute, a table, a real plot, valid JSON, seeded.

The full demo runs once, as a user types it, and is timed; JSON and determinism use a reduced
configuration (fewer epochs, samples and products: the same code, a fraction of the time).
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.cli._cli import (
    Invocation,
    Runs,
    dump_runs,
    load_runs,
    ok,
    run_cli,
    run_many,
    shared,
    validated,
)
from tests.cli.test_analysis_commands import assert_real_plot

#: The brief: the demo finishes in under a minute on two CPU cores, start-up included.
TIME_LIMIT = 60.0
SMALL = ["--epochs", "3", "--curvature-samples", "128", "-k", "4", "--num-matvecs", "24"]
SMALL += ["--num-runs", "2", "--lanczos-steps", "16", "--json"]


@dataclass
class Demo:
    table: subprocess.CompletedProcess[str]
    seconds: float
    cwd: Path
    seeded: Runs
    seeded_dirs: dict[str, Path]


SEEDED_DIRS = {"seed 7": "seed-7", "seed 7 again": "seed-7-again"}


def _run_demos(directory: Path) -> dict[str, Any]:
    """The timed default run, then the reduced seeded runs two at a time."""
    (directory / "default").mkdir()
    start = time.monotonic()
    table = run_cli("demo", cwd=directory / "default")
    seconds = time.monotonic() - start
    invocations: dict[str, Invocation] = {}
    for name, folder in SEEDED_DIRS.items():
        (directory / folder).mkdir()
        # Same relative --plot in two directories: the two JSON documents can be equal.
        invocations[name] = (
            ["demo", "--seed", "7", *SMALL, "--plot", "density.png"],
            {"cwd": directory / folder},
        )
    invocations["seed 8"] = ["demo", "--seed", "8", *SMALL, "--no-plot"]
    return {
        "seconds": seconds,
        "table": dump_runs({"table": table}),
        "seeded": dump_runs(run_many(invocations)),
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    directory, data = shared(tmp_path_factory, "demo", _run_demos)
    return Demo(
        table=ok(load_runs(data["table"])["table"]),
        seconds=data["seconds"],
        cwd=directory / "default",
        seeded=load_runs(data["seeded"]),
        seeded_dirs={name: directory / folder for name, folder in SEEDED_DIRS.items()},
    )


def test_demo_finishes_in_under_a_minute(demo: Demo) -> None:
    assert demo.seconds < TIME_LIMIT


def test_demo_prints_the_table(demo: Demo) -> None:
    out = " ".join(demo.table.stdout.split())
    assert "Hessian eigenvalues: top 12 by largest magnitude" in out
    assert re.search(r"converged after \d+ Lanczos iterations", out)
    accuracy = re.search(r"test accuracy (\d+\.\d)%", out)
    assert accuracy is not None
    assert float(accuracy.group(1)) > 90
    # A trained 10-class cross-entropy model: 9 outlying eigenvalues, then a clear gap.
    gap = re.search(r"largest gap: after eigenvalue #(\d+) \(×(\d+\.\d+)\)", out)
    assert gap is not None
    assert int(gap.group(1)) == 9
    assert float(gap.group(2)) > 2
    assert re.search(r"trace ≈ \d+\.?\d* ± \d", out)
    assert "log density" in out
    assert "plot written to eigenthings-density.png" in out
    assert demo.table.stderr == ""  # piped: no progress bars, no warnings


def test_demo_writes_a_real_plot_by_default(demo: Demo) -> None:
    assert_real_plot(demo.cwd / "eigenthings-density.png")


def test_demo_json_is_valid_and_consistent(demo: Demo) -> None:
    doc = validated(ok(demo.seeded["seed 7"]).stdout)
    assert doc["command"] == "demo"
    assert doc["setup"]["seed"] == 7
    assert doc["setup"]["dtype"] == "float64"
    assert doc["training"]["epochs"] == 3
    eig = doc["eig"]
    assert len(eig["eigenvalues"]) == 4
    assert eig["eigenvalues"] == sorted(eig["eigenvalues"], key=abs, reverse=True)
    gap_after = doc["outliers"]["largest_gap_after"]
    values = eig["eigenvalues"]
    assert values[gap_after - 1] / values[gap_after] == pytest.approx(
        doc["outliers"]["gap_ratio"], rel=1e-12
    )
    assert doc["trace"]["num_matvecs"] <= 24
    density = doc["density"]
    assert density["plot"] == "density.png"
    grid, values_on_grid = np.array(density["grid"]), np.array(density["density"])
    assert np.trapezoid(values_on_grid, grid) == pytest.approx(1.0, abs=1e-6)
    # Ritz values of the density runs never exceed the top eigenvalue.
    assert max(max(nodes) for nodes in density["nodes"]) <= values[0] * (1 + 1e-8)
    assert_real_plot(demo.seeded_dirs["seed 7"] / "density.png")


def test_same_seed_same_output(demo: Demo) -> None:
    first, again = ok(demo.seeded["seed 7"]), ok(demo.seeded["seed 7 again"])
    assert first.stdout == again.stdout
    plots = [d / "density.png" for d in demo.seeded_dirs.values()]
    assert plots[0].read_bytes() == plots[1].read_bytes()
    other = validated(ok(demo.seeded["seed 8"]).stdout)
    assert other["eig"]["eigenvalues"] != validated(first.stdout)["eig"]["eigenvalues"]


def test_fast_digits_reader_matches_scikit_learn() -> None:
    from sklearn.datasets import load_digits

    from hessian_eigenthings_cli.commands.demo import load_digits_arrays

    images, labels = load_digits_arrays()
    expected_images, expected_labels = load_digits(return_X_y=True)
    assert images.dtype == torch.float64
    assert labels.dtype == torch.int64
    assert np.array_equal(images.numpy(), expected_images)
    assert np.array_equal(labels.numpy(), expected_labels)


def test_outlier_gap_is_the_largest_ratio_of_positive_neighbours() -> None:
    from hessian_eigenthings_cli.commands.demo import outlier_gap

    assert outlier_gap([8.0, 4.0, 3.0, 2.9]) == (1, 2.0)
    assert outlier_gap([5.0, 4.5, 1.5, None, -3.0]) == (2, 3.0)
    assert outlier_gap([1.0, -1.0]) is None
