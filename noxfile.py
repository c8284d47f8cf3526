"""Every check a contributor or CI runs. `uv run nox -l` lists them.

Sessions that test the whole workspace reuse the locked project environment (`uv run --frozen`);
`core_only` builds a fresh environment holding only the core package, to prove it stands alone.
"""

from __future__ import annotations

import os
import pathlib

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["tests", "lint", "typecheck", "core_only"]

ROOT = pathlib.Path(__file__).parent
#: Libraries the core must never need: the plugins' and the CLI's dependencies.
NOT_IN_CORE = ("transformers", "transformer_lens", "triton", "rich", "sklearn", "matplotlib")


def _uv_run(session: nox.Session, *args: str, **kwargs: object) -> None:
    session.run("uv", "run", "--frozen", *args, external=True, **kwargs)  # type: ignore[arg-type]


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The whole workspace's tests (same as the README's `uv run pytest`)."""
    _uv_run(session, "pytest", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    _uv_run(session, "ruff", "check", ".")
    _uv_run(session, "ruff", "format", "--check", ".")


@nox.session(venv_backend="none")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on every package (configured in pyproject.toml)."""
    _uv_run(session, "mypy")


@nox.session
def core_only(session: nox.Session) -> None:
    """Install the core alone and run its tests with no plugin or CLI library present."""
    session.install("./packages/core")
    session.install(
        "pytest", "pytest-timeout", "pytest-xdist", "hypothesis", "curvlinops-for-pytorch"
    )
    # torch's Linux wheels depend on triton; the core does not: remove it to prove that.
    session.run(
        "uv",
        "pip",
        "uninstall",
        "--python",
        session.virtualenv.location,
        "triton",
        external=True,
        silent=True,
        success_codes=[0, 1, 2],
    )
    probe = (
        "import importlib.util, sys\n"
        "import hessian_eigenthings as he\n"
        f"bad = [m for m in {NOT_IN_CORE!r} if importlib.util.find_spec(m) is not None]\n"
        "assert not bad, f'core-only environment has {bad}'\n"
        f"loaded = [m for m in {NOT_IN_CORE!r} if m in sys.modules]\n"
        "assert not loaded, f'import hessian_eigenthings imported {loaded}'\n"
        "print('core-only environment OK:', he.__version__)\n"
    )
    session.run("python", "-c", probe)
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/core",
        "tests/plugins",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={"PYTHONPATH": str(ROOT)},
    )


@nox.session
def tlens_legacy(session: nox.Session) -> None:
    """TransformerLens tests against a release before 4.0 (HookedTransformer API)."""
    session.install("./packages/core", "./packages/integrations-tlens", "transformer-lens>=2.0,<4")
    session.install("pytest", "pytest-timeout", "pytest-xdist", "numpy", "pyyaml")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/tlens",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )


@nox.session(venv_backend="none")
def docs(session: nox.Session) -> None:
    """Build the documentation site strictly (broken links and warnings fail)."""
    _uv_run(
        session,
        "--group",
        "docs",
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        "site",
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session(venv_backend="none")
def examples(session: nox.Session) -> None:
    """Run every example script (each finishes on a CPU in under a minute)."""
    scripts = sorted((ROOT / "examples").glob("*.py"))
    if not scripts:
        session.error("no examples found")
    for script in scripts:
        _uv_run(session, "python", str(script), env={"MPLBACKEND": "Agg"})


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Performance harness: JSON lines to benchmarks/results/. Never part of CI."""
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    selected = session.posargs or [p.name for p in sorted((ROOT / "benchmarks").glob("bench_*.py"))]
    for name in selected:
        with open(out / (pathlib.Path(name).stem + ".jsonl"), "w") as fh:
            _uv_run(
                session,
                "python",
                str(ROOT / "benchmarks" / name),
                stdout=fh,
                env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
            )
