"""Griffe extension for the API reference: read the project's docstrings as mkdocstrings wants.

* The Google-style docstrings head their doctests ``Example:``. Griffe's Google parser knows only
  the plural ``Examples:`` as an examples section; it would render the singular as an admonition
  of Markdown text, in which ``>>>`` lines turn into nested block quotes.
* Cross-references are written as Sphinx roles (``:class:`~hessian_eigenthings.X```), which
  Markdown shows verbatim; they become inline code of the name (the last component with ``~``).

Only the docstrings griffe reads are rewritten; the source files are untouched. Loaded by
``mkdocs.yml``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR_HEADING = re.compile(r"^Example:[ \t]*$", re.MULTILINE)
_SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def _role_to_code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class ProjectDocstrings(griffe.Extension):
    """Rename ``Example:`` section headings to ``Examples:`` and Sphinx roles to inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _SINGULAR_HEADING.sub("Examples:", obj.docstring.value)
            obj.docstring.value = _SPHINX_ROLE.sub(_role_to_code, text)
