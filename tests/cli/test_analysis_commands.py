"""``eigenthings eig | trace | density`` on a tiny model, checked against dense float64 oracles.

Each command runs as the installed console script (those invocations are started together,
two at a time, by the ``runs`` fixture); variations of the options call the same ``main`` in
this process. The oracles are the dense matrices of ``tests/core/oracles.py`` (built with
torch.func, guarded by symmetry and finite-difference checks) on the same model and data,
rebuilt in this process from ``tests/cli/models.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from hessian_eigenthings_cli.main import main
from tests.cli import models
from tests.cli._cli import MODELS, ROOT, Runs, model_args, ok, shared_runs, validated
from tests.core.oracles import dense_empirical_fisher, dense_ggn, dense_hessian
from tests.core.zoo import Case

#: Lanczos stops at residual ≤ tol·‖A‖ (tol 1e-8 by default); an eigenvalue's error is at most
#: its residual, so 1e-8 relative to the largest eigenvalue bounds every reported value.
EIG_RTOL = 1e-8
N = models.IN * models.HIDDEN + models.HIDDEN + models.HIDDEN * models.CLASSES + models.CLASSES
FILE = "tests/cli/models.py"
#: Hutch++ spends a third of its budget on a sketch of the range; with 3n products the sketch
#: spans the whole space and the estimate is exact up to rounding.
EXACT_TRACE_BUDGET = 3 * N
#: The GGN/Fisher tests use the eager CE-HVP backend: "auto" may pick torch.compile, whose
#: first compilation costs seconds and is tested in tests/core.
EAGER = ("--ce-backend", "eager")


def eig(*extra: str) -> list[str]:
    return ["eig", *model_args(*extra), "--json"]


def commands(tmp: Path) -> dict[str, list[str]]:
    """What runs as the installed console script: each command, table and JSON."""
    trace24 = ["trace", *model_args("--num-matvecs", "24", "--method", "hutchinson")]
    return {
        "eig": eig("-k", "3"),
        "eig table": ["eig", *model_args("-k", "2")],
        "progress": ["eig", *model_args("-k", "2", "--progress")],
        "trace": [*trace24, "--json"],
        "trace table": trace24,
        "density": [
            "density", *model_args("--num-runs", "3", "--lanczos-steps", "12"),
            "--plot", str(tmp / "plots" / "density.png"), "--json", "--out", str(tmp / "d.json"),
        ],
    }  # fmt: skip


def _in_process(*extra: str) -> list[str]:
    return ["eig", "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data", *extra]


#: Variations of the options, run through the console script's ``main`` in this process (the
#: same code without an interpreter start-up each; no --threads, which is process-global).
IN_PROCESS: dict[str, list[str]] = {
    "eig SA from file": [
        "eig", "--model", f"{FILE}:make_model", "--data", f"{FILE}:make_data",
        "-k", "2", "--which", "SA", "--json",
    ],
    "params of one batch": _in_process(
        "-k", "2", "--params", "2.*", "--max-batches", "1", "--json"
    ),
    "mse": [
        "eig", "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_regression_data",
        "--loss", "mse", "-k", "2", "--json",
    ],
    "loss-fn": _in_process("-k", "2", "--loss-fn", f"{MODELS}:whole_batch_loss", "--json"),
    "custom criterion": _in_process("-k", "1", "--loss", f"{MODELS}:squared_logits", "--json"),
    "ggn": _in_process("-k", "2", "--operator", "ggn", *EAGER, "--json"),
    "empirical-fisher": _in_process("-k", "2", "--operator", "empirical-fisher", "--json"),
    "fisher": _in_process("-k", "2", "--operator", "fisher", *EAGER, "--json"),
    "float32": _in_process("-k", "1", "--dtype", "float32", "--json"),
    "trace exact": [
        "trace", "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data",
        "--num-matvecs", str(EXACT_TRACE_BUDGET), "--json",
    ],
}  # fmt: skip


@cache
def run_in_process(name: str) -> str:
    """stdout of ``main(IN_PROCESS[name])``, run from the repository root."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(IN_PROCESS[name])
    finally:
        os.chdir(cwd)
    assert code == 0, f"exit {code}\n{out.getvalue()}\n{err.getvalue()}"
    return out.getvalue()


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Runs]:
    return shared_runs(tmp_path_factory, "analysis", commands)


@pytest.fixture(scope="module")
def tmp(analysis: tuple[Path, Runs]) -> Path:
    return analysis[0]


@pytest.fixture(scope="module")
def runs(analysis: tuple[Path, Runs]) -> Runs:
    return analysis[1]


@pytest.fixture(scope="module")
def docs(runs: Runs) -> Callable[[str], dict[str, Any]]:
    def doc(name: str) -> dict[str, Any]:
        if name in IN_PROCESS:
            return validated(run_in_process(name))
        return validated(ok(runs[name]).stdout)

    return doc


@cache
def case(task: str = "ce", max_batches: int | None = None) -> Case:
    data = models.make_data() if task != "mse" else models.make_regression_data()
    return Case(f"cli-{task}", models.make_model(), data[:max_batches], task)


@cache
def hessian(task: str = "ce", max_batches: int | None = None) -> torch.Tensor:
    return dense_hessian(case(task, max_batches))


def top_by_magnitude(matrix: torch.Tensor, k: int) -> list[float]:
    values = torch.linalg.eigvalsh(matrix)
    order = torch.sort(values.abs(), descending=True, stable=True).indices
    return values[order[:k]].tolist()


def assert_eigenvalues(reported: list[float], expected: list[float]) -> None:
    scale = max(abs(v) for v in expected)
    assert len(reported) == len(expected)
    for got, want in zip(reported, expected, strict=True):
        assert abs(got - want) <= EIG_RTOL * scale, (reported, expected)


def test_eig_json_matches_the_dense_hessian(docs: Callable[[str], dict[str, Any]]) -> None:
    doc = docs("eig")
    assert doc["setup"] == {
        "model": f"{MODELS}:make_model",
        "data": f"{MODELS}:make_data",
        "loss": "cross_entropy",
        "operator": "hessian",
        "operator_plugin": "core:builtin",
        "size": N,
        "dtype": "float64",
        "device": "cpu",
        "params": [],
        "max_batches": None,
        "seed": 0,
    }
    result = doc["eig"]
    assert result["converged"] is True
    assert result["which"] == "LM"
    assert result["k"] == 3
    assert result["num_matvecs"] == result["iterations"] > 0
    assert_eigenvalues(result["eigenvalues"], top_by_magnitude(hessian(), 3))


def test_eig_smallest_algebraic_from_a_model_file(docs: Callable[[str], dict[str, Any]]) -> None:
    doc = docs("eig SA from file")
    assert doc["setup"]["model"] == f"{FILE}:make_model"
    values = torch.linalg.eigvalsh(hessian())
    assert values[0] < 0  # the untrained model has negative curvature to find
    assert_eigenvalues(doc["eig"]["eigenvalues"], values[:2].tolist())


def test_eig_table_shows_setup_and_values(
    runs: Runs,
) -> None:
    proc = ok(runs["eig table"])
    for value in top_by_magnitude(hessian(), 2):
        assert format(value, ".6g") in proc.stdout
    text = " ".join(proc.stdout.split())
    assert "hessian eigenvalues: top 2 by largest magnitude" in text
    assert f"model {MODELS}:make_model" in text
    assert f"parameters (n) {N}" in text
    assert "converged after" in text
    assert proc.stderr == ""  # piped: no progress bars


def test_params_batches_and_loss_select_what_is_analysed(
    docs: Callable[[str], dict[str, Any]],
) -> None:
    sub = docs("params of one batch")
    assert sub["setup"]["params"] == ["2.*"]
    assert sub["setup"]["max_batches"] == 1
    assert sub["setup"]["size"] == models.HIDDEN * models.CLASSES + models.CLASSES
    expected = dense_hessian(case(max_batches=1), ["2.weight", "2.bias"])
    assert_eigenvalues(sub["eig"]["eigenvalues"], top_by_magnitude(expected, 2))

    mse = docs("mse")
    assert mse["setup"]["loss"] == "mse"
    assert_eigenvalues(mse["eig"]["eigenvalues"], top_by_magnitude(hessian("mse"), 2))


def test_whole_loss_fn_and_custom_criterion(docs: Callable[[str], dict[str, Any]]) -> None:
    # A hand-written cross-entropy loss_fn gives the built-in criterion's spectrum.
    whole = docs("loss-fn")
    assert whole["setup"]["loss"] == f"{MODELS}:whole_batch_loss"
    assert_eigenvalues(whole["eig"]["eigenvalues"], top_by_magnitude(hessian(), 2))

    custom = docs("custom criterion")
    x, _ = models.full_batch()
    squared = Case("squared", models.make_model(), [(x, torch.zeros(x.shape[0]))], "mse")
    squared.loss_of_output = models.squared_logits  # type: ignore[method-assign,assignment]
    assert_eigenvalues(custom["eig"]["eigenvalues"], top_by_magnitude(dense_hessian(squared), 1))


@pytest.mark.parametrize(
    ("name", "oracle"),
    [
        ("ggn", dense_ggn),
        ("empirical-fisher", dense_empirical_fisher),
        # The exact (type-2) Fisher of a softmax cross-entropy model equals its GGN.
        ("fisher", dense_ggn),
    ],
)
def test_other_operators_match_their_dense_matrices(
    name: str, oracle: Callable[[Case], torch.Tensor], docs: Callable[[str], dict[str, Any]]
) -> None:
    doc = docs(name)
    assert doc["setup"]["operator"] == name
    assert_eigenvalues(doc["eig"]["eigenvalues"], top_by_magnitude(oracle(case()), 2))


def test_float32_runs_in_float32(docs: Callable[[str], dict[str, Any]]) -> None:
    doc = docs("float32")
    assert doc["setup"]["dtype"] == "float32"
    want = top_by_magnitude(hessian(), 1)[0]
    assert doc["eig"]["eigenvalues"][0] == pytest.approx(want, rel=1e-4)  # float32 rounding


def test_trace_json_and_table(docs: Callable[[str], dict[str, Any]], runs: Runs) -> None:
    H = hessian()
    exact = docs("trace exact")["trace"]
    assert exact["estimate"] == pytest.approx(float(H.trace()), rel=1e-9)
    assert exact["method"] == "hutch++"
    assert 0 < exact["num_matvecs"] <= EXACT_TRACE_BUDGET
    assert exact["operator_size"] == N

    small = docs("trace")["trace"]
    assert small["method"] == "hutchinson"
    assert small["num_matvecs"] == 24
    assert small["stderr"] > 0
    # Seeded, hence deterministic: not a flaky statistical test. 4 standard errors.
    assert abs(small["estimate"] - float(H.trace())) <= 4 * small["stderr"]

    table = ok(runs["trace table"]).stdout
    assert f"trace ≈ {small['estimate']:.6g} ± {small['stderr']:.2g}" in table


def test_density_json_out_file_and_plot(runs: Runs, tmp: Path) -> None:
    proc = ok(runs["density"])
    assert proc.stdout == ""  # --out: the JSON went to the file
    doc = validated((tmp / "d.json").read_text())
    density = doc["density"]
    plot = tmp / "plots" / "density.png"
    assert density["plot"] == str(plot)
    assert density["num_runs"] == 3
    assert len(density["nodes"]) == 3
    assert density["num_matvecs"] == 3 * 12
    grid, values = np.array(density["grid"]), np.array(density["density"])
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=1e-6)
    for weights in density["weights"]:
        assert sum(weights) == pytest.approx(1.0, abs=1e-12)
    spectrum = torch.linalg.eigvalsh(hessian())
    slack = 1e-8 * float(spectrum.abs().max())
    nodes = np.concatenate([np.array(n) for n in density["nodes"]])
    # Ritz values lie within the spectrum (Cauchy interlacing).
    assert float(spectrum[0]) - slack <= nodes.min() <= nodes.max() <= float(spectrum[-1]) + slack
    assert_real_plot(plot)


def assert_real_plot(path: Path) -> None:
    """An image of a plot: large enough, not blank, with a fair share of drawn pixels."""
    image = imread(path)
    height, width = image.shape[:2]
    assert height * width >= 200 * 200
    rgb = image[..., :3]
    assert float(rgb.var()) > 0
    assert (rgb.min(axis=2) < 0.9).mean() > 0.01


def test_progress_bars_count_matvecs_when_asked(
    runs: Runs,
) -> None:
    progress = ok(runs["progress"])
    assert "lanczos" in progress.stderr
    assert "matvecs" in progress.stderr
    assert "eta" in progress.stderr
    # The bars go to stderr; stdout is the same bytes as the run without them (same seed).
    assert progress.stdout == ok(runs["eig table"]).stdout
