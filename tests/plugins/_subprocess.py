"""Run Python snippets in a fresh interpreter (plugin discovery happens once per process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(
    code: str,
    *,
    extra_path: Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HESSIAN_EIGENTHINGS_")}
    paths = [str(extra_path)] if extra_path else []
    environ["PYTHONPATH"] = os.pathsep.join([*paths, str(ROOT), environ.get("PYTHONPATH", "")])
    environ.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def write_fake_distribution(root: Path, dist: str, module: str, source: str) -> None:
    """A minimal installed distribution on ``root``: a module and dist-info with an entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[hessian_eigenthings]\n{dist} = {module}\n")
