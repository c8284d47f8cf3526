"""Every failure is one ``eigenthings: error:`` line on stderr and a non-zero exit, without a
traceback unless ``--debug``.

The error cases of the CLI's contract run the installed console script; further messages are
checked by calling the same ``main`` in this process (no interpreter start-up each).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hessian_eigenthings_cli.main import main
from tests.cli._cli import (
    MODELS,
    ROOT,
    SCHEMA,
    Runs,
    assert_one_line_error,
    model_args,
    shared_runs,
)

DATA = ["--data", f"{MODELS}:make_data"]

#: name → (arguments, exit status, fragments the error line must contain)
Cases = dict[str, tuple[list[str], int, tuple[str, ...]]]

SUBPROCESS_CASES: Cases = {
    "unknown module": (
        ["eig", "--model", "no_such_module_xyz:make", *DATA],
        1,
        ("--model", "cannot import module 'no_such_module_xyz'"),
    ),
    "factory raises": (
        ["density", "--model", f"{MODELS}:broken_model", *DATA],
        1,
        (f"the factory {MODELS}:broken_model raised RuntimeError: checkpoint is corrupt",),
    ),
    "operator needs what the loss lacks": (
        ["eig", *model_args("--operator", "ggn", "--loss-fn", f"{MODELS}:whole_batch_loss")],
        1,
        ("operator 'ggn' is incompatible with the loss", "forward_fn", "loss_of_output_fn"),
    ),
    "unknown operator": (
        ["trace", *model_args("--operator", "no-such-operator")],
        1,
        ("unknown operator 'no-such-operator'", "hessian", "eigenthings plugins"),
    ),
    "params match nothing": (
        ["eig", *model_args("--params", "encoder.*")],
        1,
        ("--params 'encoder.*' matches no trainable parameter", "0.weight"),
    ),
    "k exceeds the operator": (
        ["eig", *model_args("-k", "1000")],
        1,
        ("k=1000 exceeds the operator size n=51",),
    ),
}
# (`--hf` without the HF plugin loaded: tests/cli/test_plugins_command.py.)

IN_PROCESS_CASES: Cases = {
    "k is zero": (["eig", *model_args("-k", "0")], 2, ("argument -k", "positive integer")),
    "missing file": (
        ["trace", "--model", "tests/cli/no_such_file.py:make", *DATA],
        1,
        ("--model", "no such Python file: tests/cli/no_such_file.py"),
    ),
    "missing attribute": (
        ["eig", "--model", f"{MODELS}:no_such_factory", *DATA],
        1,
        ("has no attribute 'no_such_factory'", "make_model"),
    ),
    "malformed reference": (
        ["eig", "--model", MODELS, *DATA],
        2,
        ("--model must look like MODULE:NAME",),
    ),
    "factory returns no model": (
        ["eig", "--model", f"{MODELS}:not_a_model", *DATA],
        1,
        ("must return a torch.nn.Module, got str",),
    ),
    "no model": (["eig", *DATA], 2, ("no model: pass --model MODULE:FACTORY",)),
    "loss does not fit the model": (
        ["eig", "--model", f"{MODELS}:make_model", *DATA, "--loss", "bce"],
        1,
        ("the loss 'bce' failed on the first batch",),
    ),
    "unknown loss": (
        ["eig", "--model", f"{MODELS}:make_model", *DATA, "--loss", "hinge"],
        1,
        ("unknown loss 'hinge'",),
    ),
    "unknown CE backend": (
        ["eig", "--model", f"{MODELS}:make_model", *DATA, "--ce-backend", "cuda-magic"],
        1,
        ("unknown cross-entropy HVP backend 'cuda-magic'", "eager"),
    ),
    "bad operator argument": (
        ["eig", "--model", f"{MODELS}:make_model", *DATA, "--operator-arg", "nonsense"],
        2,
        ("--operator-arg must look like KEY=VALUE",),
    ),
    "unknown option": (["plugins", "--bogus"], 2, ("unrecognized arguments: --bogus",)),
    "unknown command": (["frobnicate"], 2, ("invalid choice: 'frobnicate'",)),
    "unwritable output": (
        ["plugins", "--out", "/proc/eigenthings/out.json"],
        1,
        ("--out: cannot write /proc/eigenthings/out.json",),
    ),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    commands = {name: args for name, (args, _, _) in SUBPROCESS_CASES.items()}
    return shared_runs(tmp_path_factory, "errors", lambda _: commands)[1]


@pytest.mark.parametrize("name", list(SUBPROCESS_CASES))
def test_console_script_error_is_one_line(name: str, results: Runs) -> None:
    _, code, fragments = SUBPROCESS_CASES[name]
    assert_one_line_error(results[name], *fragments, code=code)


@pytest.mark.parametrize("name", list(IN_PROCESS_CASES))
def test_main_error_is_one_line(
    name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    args, code, fragments = IN_PROCESS_CASES[name]
    returned = main(args)
    out, err = capsys.readouterr()
    proc = subprocess.CompletedProcess(args, returned, out, err)
    assert_one_line_error(proc, *fragments, code=code)


def test_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["eig", "--model", f"{MODELS}:broken_model", *DATA, "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: checkpoint is corrupt" in err
    assert err.rstrip().splitlines()[-1].startswith("eigenthings: error: ")


def test_schema_path_names_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--path"]) == 0
    assert Path(capsys.readouterr().out.strip()) == SCHEMA


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_main_returns_zero_for_version_and_help(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() returns its exit status (argparse's SystemExit(0) does not escape)."""
    assert main([flag]) == 0
    assert "eigenthings" in capsys.readouterr().out
