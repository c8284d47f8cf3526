"""Run a scenario of ``_scenarios.py`` on several CPU processes (gloo) and collect the results.

One fresh interpreter (``python -m tests.distributed._worker``) forks the ranks; they join
the group through a ``file://`` rendezvous in a temporary directory, run the scenario and save
what it returns with ``torch.save``. Output goes to a file (not a pipe, which could fill up
and stall a rank inside a collective). A hard timeout kills the launcher and its ranks (their
own session), so a bug cannot hang the test run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def launch(
    scenario: str,
    world_size: int = 2,
    *,
    timeout: float = 120.0,
    pg_timeout: float = 60.0,
    args: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every rank's result of ``scenario`` (in rank order); raises if a rank fails or hangs."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cmd = [sys.executable, "-m", "tests.distributed._worker", scenario, str(world_size)]
        cmd += [str(out), str(pg_timeout), json.dumps(args or {})]
        with open(out / "log.txt", "w") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the ranks it forked
                proc.wait()
                raise AssertionError(
                    f"scenario {scenario!r} did not finish within {timeout:.0f} s\n" + _log(out)
                ) from None
        if proc.returncode != 0:
            raise AssertionError(f"scenario {scenario!r} failed\n" + _log(out))
        return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _log(out: Path) -> str:
    return (out / "log.txt").read_text()[-12000:]
