"""Every ```python block in README.md and docs/ runs.

The blocks of one page run in order in one fresh interpreter (so a page may build on its
earlier blocks), in a temporary working directory, with matplotlib's Agg backend and no
plugin state shared with other pages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: Path) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(page.read_text())]


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=page_id)
def test_page_code_blocks_run(page: Path, tmp_path: Path) -> None:
    blocks = python_blocks(page)
    script = "\n\n".join(
        f"# --- block {i + 1} of {page_id(page)}\n{block}" for i, block in enumerate(blocks)
    )
    (tmp_path / "page.py").write_text(script)
    env = {**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "page.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, (
        f"a code block of {page_id(page)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )


def test_there_are_pages_with_code() -> None:
    assert any(python_blocks(p) for p in PAGES)
