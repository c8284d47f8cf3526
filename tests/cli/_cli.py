"""Run the installed ``eigenthings`` console script in a subprocess and check its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from filelock import FileLock  # a dependency of torch

ROOT = Path(__file__).resolve().parents[2]
#: The console script installed next to the interpreter running the tests (the uv venv).
EIGENTHINGS = Path(sys.executable).with_name("eigenthings")
SCHEMA = ROOT / "packages/cli/src/hessian_eigenthings_cli/schemas/output-v1.json"
MODELS = "tests.cli.models"


def run_cli(
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``eigenthings ARGS`` with a clean plugin environment, stdout/stderr captured."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HESSIAN_EIGENTHINGS_")}
    environ["COLUMNS"] = "120"
    environ.update(env or {})
    return subprocess.run(
        [str(EIGENTHINGS), *map(str, args)],
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


#: The arguments of one invocation, optionally with keyword arguments of :func:`run_cli`
#: (``env``, ``cwd``).
Invocation = Sequence[str | Path] | tuple[Sequence[str | Path], dict[str, Any]]


def run_many(commands: Mapping[str, Invocation]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run independent CLI invocations concurrently, one per core: each is mostly the start-up
    of torch, so this halves the wall time on two cores."""

    def run(invocation: Invocation) -> subprocess.CompletedProcess[str]:
        if (
            isinstance(invocation, tuple)
            and len(invocation) == 2
            and isinstance(invocation[1], dict)
        ):
            return run_cli(*invocation[0], **invocation[1])
        return run_cli(*invocation)  # type: ignore[arg-type]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {name: pool.submit(run, invocation) for name, invocation in commands.items()}
        return {name: future.result() for name, future in futures.items()}


Runs = dict[str, subprocess.CompletedProcess[str]]


def shared(
    tmp_path_factory: pytest.TempPathFactory,
    key: str,
    compute: Callable[[Path], dict[str, Any]],
) -> tuple[Path, dict[str, Any]]:
    """``compute(directory)`` once per test session, also under pytest-xdist.

    The workers share the base temporary directory's parent: the first to get here computes
    (in ``<shared>/<key>/``) and stores the JSON result, the others wait for it and read it.
    So each module's CLI runs happen once although xdist spreads its tests over workers.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    directory = root / f"eigenthings-cli-{key}"
    result = directory / "result.json"
    with FileLock(str(root / f"eigenthings-cli-{key}.lock")):
        if not result.is_file():
            directory.mkdir(exist_ok=True)
            result.write_text(json.dumps(compute(directory)))
    loaded: dict[str, Any] = json.loads(result.read_text())
    return directory, loaded


def dump_runs(runs: Runs) -> dict[str, Any]:
    return {
        name: [list(map(str, p.args)), p.returncode, p.stdout, p.stderr] for name, p in runs.items()
    }


def load_runs(data: dict[str, Any]) -> Runs:
    return {name: subprocess.CompletedProcess(*fields) for name, fields in data.items()}


def shared_runs(
    tmp_path_factory: pytest.TempPathFactory,
    key: str,
    commands: Callable[[Path], Mapping[str, Invocation]],
) -> tuple[Path, Runs]:
    """:func:`run_many` of ``commands(directory)``, once per session (see :func:`shared`)."""
    directory, data = shared(tmp_path_factory, key, lambda d: dump_runs(run_many(commands(d))))
    return directory, load_runs(data)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def validated(text: str) -> dict[str, Any]:
    """Parse a ``--json`` document and validate it against the shipped schema."""
    document: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator(schema()).validate(document)
    return document


def model_args(*extra: str) -> list[str]:
    """The tiny model and its data; one thread, since the tests run two CLIs at a time."""
    return [
        "--model", f"{MODELS}:make_model", "--data", f"{MODELS}:make_data", "--threads", "1",
        *extra,
    ]  # fmt: skip


def assert_one_line_error(
    proc: subprocess.CompletedProcess[str], *fragments: str, code: int = 1
) -> str:
    """A failed run: exit ``code``, no traceback, one ``eigenthings: error:`` line naming
    every fragment."""
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("eigenthings: error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert proc.stdout == "", proc.stdout
    return errors[0]
