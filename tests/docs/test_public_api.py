"""The public API of every package: its ``__all__``, a docstring with examples that run, typing.

* Every public namespace has an ``__all__`` without duplicates or private names, whose names all
  resolve, and that exports no module unless :data:`DELIBERATE_MODULE_EXPORTS` says so.
* Every public object (deduplicated over the namespaces that re-export it, and named after
  where it is defined) has its own docstring with at least one ``>>>`` example, and every
  example in it (for a class, also in its methods' docstrings) runs under ``doctest`` in a
  fresh namespace and prints what it shows. Objects without a ``__doc__`` of their own
  (constants, type aliases, marker instances) are documented by an attribute docstring, the
  string literal right after the assignment, found by parsing the defining module.
* Names the core resolves lazily through the plugin registry (``hf_lm_loss``, ...) stay out of
  the core's ``__all__`` (a star import never loads plugins) and are the documented objects of
  the plugin packages.
* The API reference pages (``docs/api``) render every public object.
* Every distribution ships a ``py.typed`` marker.
"""

from __future__ import annotations

import ast
import doctest
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import inspect
import itertools
import os
import re
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before Python 3.11
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
API_PAGES = ROOT / "docs" / "api"

#: The namespaces users import from. Subpackages of the core not listed here (e.g.
#: ``hessian_eigenthings.operators.base``) are implementation modules.
NAMESPACES = (
    "hessian_eigenthings",
    "hessian_eigenthings.operators",
    "hessian_eigenthings.algorithms",
    "hessian_eigenthings.loss_fns",
    "hessian_eigenthings.linalg",
    "hessian_eigenthings.dense",
    "hessian_eigenthings.param_utils",
    "hessian_eigenthings.errors",
    "hessian_eigenthings.plugins",
    "hessian_eigenthings.util",
    "hessian_eigenthings_hf",
    "hessian_eigenthings_tlens",
    "hessian_eigenthings_triton",
    "hessian_eigenthings_cli",
)
#: Dunder names allowed in ``__all__``: metadata, not objects with documentation of their own.
DUNDER_EXPORTS = frozenset({"__version__"})
#: ``"namespace.name"`` of modules exported on purpose (none so far).
DELIBERATE_MODULE_EXPORTS: frozenset[str] = frozenset()
#: The import package of each distribution (packages/<dir>/src/<package>).
DISTRIBUTIONS = {
    "hessian-eigenthings": "hessian_eigenthings",
    "hessian-eigenthings-triton": "hessian_eigenthings_triton",
    "hessian-eigenthings-hf": "hessian_eigenthings_hf",
    "hessian-eigenthings-tlens": "hessian_eigenthings_tlens",
    "hessian-eigenthings-cli": "hessian_eigenthings_cli",
}
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


# -- where a public name is defined ---------------------------------------------------------


@cache
def _module_tree(module_name: str) -> ast.Module:
    source = inspect.getsource(importlib.import_module(module_name))
    return ast.parse(source)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _bodies(body: list[ast.stmt]) -> Iterator[list[ast.stmt]]:
    """The module body and the statement lists nested in its ``if``/``try`` blocks (those that
    run at import, so not ``if TYPE_CHECKING:``)."""
    yield body
    for node in body:
        if isinstance(node, ast.If) and not _is_type_checking(node.test):
            yield from _bodies(node.body)
            yield from _bodies(node.orelse)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody):
                yield from _bodies(part)
            for handler in node.handlers:
                yield from _bodies(handler.body)


def _assigned_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    return []


def _definition(module_name: str, name: str) -> tuple[str, str]:
    """``(module, name)`` where ``module_name.name`` gets its value, following imports."""
    found: tuple[str, str] | None = None
    for body in _bodies(_module_tree(module_name).body):
        for node in body:
            if name in _assigned_names(node):
                found = (module_name, name)
            elif isinstance(node, ast.ImportFrom):
                source = importlib.util.resolve_name(
                    "." * node.level + (node.module or ""), module_name.rpartition(".")[0]
                )
                for alias in node.names:
                    if alias.name == "*":
                        exported = getattr(importlib.import_module(source), "__all__", ())
                        if name in exported:
                            found = _definition(source, name)
                    elif (alias.asname or alias.name) == name:
                        found = _definition(source, alias.name)
    if found is None:
        raise LookupError(f"no definition of {name!r} found in {module_name}")
    return found


def _attribute_docstring(module_name: str, name: str) -> tuple[str, int] | None:
    """The string literal right after ``name = ...`` in ``module_name``, and its line."""
    for body in _bodies(_module_tree(module_name).body):
        for node, after in itertools.pairwise(body):
            if (
                name in _assigned_names(node)
                and isinstance(node, ast.Assign | ast.AnnAssign)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                return inspect.cleandoc(after.value.value), after.lineno
    return None


def _own_docstring(obj: Any) -> str | None:
    """The docstring written on a class or routine itself (not inherited, not generated: a
    dataclass without one gets its signature as ``__doc__``)."""
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    qualname = getattr(obj, "__qualname__", "")
    if module is not None and "<locals>" not in qualname:
        try:
            tree = _module_tree(module.__name__)
        except (OSError, TypeError):
            tree = None
        nodes: list[ast.stmt] = tree.body if tree is not None else []
        for part in qualname.split("."):
            match = [
                n
                for body in _bodies(nodes)
                for n in body
                if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and n.name == part
            ]
            if not match:
                break
            node = match[-1]
            nodes = node.body
        else:
            return ast.get_docstring(node)
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    return inspect.cleandoc(doc) if isinstance(doc, str) else None


# -- the public objects ---------------------------------------------------------------------


@dataclass
class PublicObject:
    """One documented thing, however many namespaces export it."""

    id: str  # where it is defined: "module.qualname"
    obj: Any
    module: str  # the defining module
    name: str  # its name there
    kind: str  # "class", "routine" or "attribute"
    exported_as: list[str] = field(default_factory=list)

    def docstring(self) -> tuple[str | None, int]:
        if self.kind == "attribute":
            found = _attribute_docstring(self.module, self.name)
            return found if found is not None else (None, 0)
        try:
            line = inspect.getsourcelines(self.obj)[1]
        except (OSError, TypeError):
            line = 0
        return _own_docstring(self.obj), line

    def doctests(self) -> list[doctest.DocTest]:
        """Every example of the object (a class's: also its methods'), in a fresh namespace."""
        filename = inspect.getsourcefile(importlib.import_module(self.module))
        if self.kind == "attribute":
            text, line = self.docstring()
            if text is None:
                return []
            parser = doctest.DocTestParser()
            return [parser.get_doctest(text, {}, self.id, filename, line)]
        finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
        module = sys.modules[self.obj.__module__]
        return finder.find(self.obj, self.id, module=module, globs={})


def public_names(namespace: str) -> list[str]:
    """The documented names of ``namespace.__all__`` (those that resolve: the ``__all__`` test
    reports the others)."""
    module = importlib.import_module(namespace)
    exported = getattr(module, "__all__", ())
    return [n for n in exported if n not in DUNDER_EXPORTS and hasattr(module, n)]


def _public_object(namespace: str, name: str) -> PublicObject:
    obj = getattr(importlib.import_module(namespace), name)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        module, qualname = obj.__module__, obj.__qualname__
        kind = "class" if inspect.isclass(obj) else "routine"
        return PublicObject(f"{module}.{qualname}", obj, module, qualname, kind)
    try:
        module, defined_as = _definition(namespace, name)
    except LookupError:  # bound dynamically: its docstring check fails and says so
        module, defined_as = namespace, name
    return PublicObject(f"{module}.{defined_as}", obj, module, defined_as, "attribute")


@cache
def public_objects() -> dict[str, PublicObject]:
    """Every public object by id, with every ``namespace.name`` it is exported as."""
    objects: dict[str, PublicObject] = {}
    for namespace in NAMESPACES:
        for name in public_names(namespace):
            found = _public_object(namespace, name)
            objects.setdefault(found.id, found).exported_as.append(f"{namespace}.{name}")
    return objects


def _run_examples(tests: list[doctest.DocTest], where: str) -> None:
    """Run ``tests``; fail if an example left a plugin registered or a process group open.

    Examples may register in-process plugins or start a one-process ``torch.distributed``
    group, and must undo it. Whatever they leave behind is undone here so that it cannot break
    the next object's examples, and reported.
    """
    import torch.distributed as dist

    from hessian_eigenthings.plugins import get_plugin_manager, refresh_registries

    plugins_before = {name for name, _ in get_plugin_manager().list_name_plugin()}
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=DOCTEST_FLAGS)
    try:
        for test in tests:
            runner.run(test, out=report.append, clear_globs=True)
    finally:
        leaked = []
        manager = get_plugin_manager()
        extra = {name for name, _ in manager.list_name_plugin()} - plugins_before
        for name in sorted(extra):
            manager.unregister(name=name)
            leaked.append(f"plugin {name!r}")
        if extra:
            refresh_registries()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            leaked.append("an initialised torch.distributed process group")
    assert runner.tries > 0, f"{where}: doctest found no examples to run"
    assert runner.failures == 0, f"{where}: examples failed\n{''.join(report)}"
    assert not leaked, f"{where}: the examples left behind {', '.join(leaked)}"


# -- __all__ --------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_all_is_well_formed(namespace: str) -> None:
    module = importlib.import_module(namespace)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list | tuple), f"{namespace} has no __all__"
    assert exported, f"{namespace}.__all__ is empty"
    assert all(isinstance(n, str) for n in exported), exported
    duplicates = sorted({n for n in exported if exported.count(n) > 1})
    assert not duplicates, f"{namespace}.__all__ lists {duplicates} more than once"
    private = [n for n in exported if n.startswith("_") and n not in DUNDER_EXPORTS]
    assert not private, f"{namespace}.__all__ exports private names {private}"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{namespace}.__all__ lists {missing}, which do not resolve"
    modules = [
        n
        for n in exported
        if isinstance(getattr(module, n), types.ModuleType)
        and f"{namespace}.{n}" not in DELIBERATE_MODULE_EXPORTS
    ]
    assert not modules, f"{namespace}.__all__ exports modules {modules}"


def test_star_import_binds_all_and_loads_no_plugin() -> None:
    """In a fresh interpreter, ``from hessian_eigenthings import *`` binds exactly ``__all__``
    and imports none of the plugin packages."""
    code = textwrap.dedent(
        """
        import sys
        import hessian_eigenthings
        namespace = {}
        exec("from hessian_eigenthings import *", namespace)
        del namespace["__builtins__"]
        assert sorted(namespace) == sorted(hessian_eigenthings.__all__), sorted(namespace)
        loaded = [m for m in sys.modules if m.startswith("hessian_eigenthings_")]
        assert not loaded, loaded
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HESSIAN_EIGENTHINGS_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_dunder_exports_are_versions_matching_the_distributions() -> None:
    for dist, package in DISTRIBUTIONS.items():
        module = importlib.import_module(package)
        assert "__version__" in module.__all__, f"{package} does not export __version__"
        assert module.__version__ == importlib.metadata.version(dist), package


def test_plugin_provided_names_stay_out_of_all() -> None:
    """Reference names like ``hessian_eigenthings.hf_lm_loss`` resolve through the plugin
    registry on attribute access; listing them in ``__all__`` would make a star import load
    every plugin (and fail where one is missing). They are documented where they live."""
    import hessian_eigenthings
    import hessian_eigenthings.loss_fns
    from hessian_eigenthings.plugins.provided import PLUGIN_PROVIDED_NAMES

    for namespace in (hessian_eigenthings, hessian_eigenthings.loss_fns):
        listed = sorted(set(PLUGIN_PROVIDED_NAMES) & set(namespace.__all__))
        assert not listed, f"{namespace.__name__}.__all__ lists plugin-provided names {listed}"
    for name, (dist, _extra) in PLUGIN_PROVIDED_NAMES.items():
        package = importlib.import_module(DISTRIBUTIONS[dist])
        assert name in package.__all__, f"{name} is not exported by {package.__name__}"
        assert getattr(hessian_eigenthings, name) is getattr(package, name), name
        assert getattr(hessian_eigenthings.loss_fns, name) is getattr(package, name), name


# -- docstrings and their examples ----------------------------------------------------------


@pytest.mark.parametrize("object_id", sorted(public_objects()))
def test_documented_with_runnable_examples(object_id: str) -> None:
    public = public_objects()[object_id]
    where = f"{object_id} (exported as {', '.join(public.exported_as)})"
    text, _ = public.docstring()
    if public.kind == "attribute":
        assert text, (
            f"{where} has no attribute docstring: put a string literal right after its "
            "assignment, with a description and a >>> example"
        )
    else:
        assert text, f"{where} has no docstring of its own"
    assert doctest.DocTestParser().get_examples(text), f"{where}: its docstring has no >>> example"
    _run_examples(public.doctests(), where)


# -- the API reference pages ----------------------------------------------------------------

DIRECTIVE = re.compile(r"^:::\s+([\w.]+)\s*$", re.MULTILINE)


def page_directives() -> set[str]:
    """The paths of every ``::: path`` (an mkdocstrings directive) in docs/api."""
    return {m.group(1) for p in API_PAGES.glob("*.md") for m in DIRECTIVE.finditer(p.read_text())}


def _source_with_examples(path: str) -> bool:
    """Whether ``path`` names a module (found without importing it) with ``>>>`` examples."""
    try:
        spec = importlib.util.find_spec(path)
    except ModuleNotFoundError:  # a parent is not a package: path names an object
        return False
    return spec is not None and spec.origin is not None and ">>>" in Path(spec.origin).read_text()


#: Modules with examples that the pages render besides the namespaces (the CLI's building
#: blocks). Modules without examples are never imported (``hessian_eigenthings_triton.kernel``
#: imports triton).
OTHER_RENDERED_MODULES = sorted(
    p for p in page_directives() if p not in NAMESPACES and _source_with_examples(p)
)


def _shadowed_by_submodule(namespace: str, name: str) -> bool:
    """mkdocstrings (griffe) shows a submodule instead of a re-exported function of the same
    name (``algorithms.lanczos``); such names need a directive for their defining path."""
    module = importlib.import_module(namespace)
    if not hasattr(module, "__path__"):
        return False
    return any(
        (Path(p) / f"{name}.py").exists() or (Path(p) / name).is_dir() for p in module.__path__
    )


def test_api_pages_render_every_public_object() -> None:
    rendered: set[str] = set()
    for path in page_directives():
        if path in NAMESPACES:
            rendered |= {
                _public_object(path, n).id
                for n in public_names(path)
                if not _shadowed_by_submodule(path, n)
            }
        else:
            rendered.add(path)
    missing = sorted(
        f"{obj_id} (exported as {', '.join(p.exported_as)})"
        for obj_id, p in public_objects().items()
        if obj_id not in rendered
    )
    assert not missing, (
        "these public objects are on no page of docs/api (add `::: <namespace>` or, for a name "
        "shadowed by a submodule, `::: <defining module>.<name>`):\n" + "\n".join(missing)
    )


@pytest.mark.parametrize("module_name", OTHER_RENDERED_MODULES)
def test_examples_in_other_rendered_modules_run(module_name: str) -> None:
    """The examples of the other modules the pages render run as well."""
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
    _run_examples(finder.find(module, module_name, globs={}), module_name)


# -- py.typed -------------------------------------------------------------------------------


def _gitignore_patterns() -> list[str]:
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_distribution_ships_py_typed(dist: str) -> None:
    package = DISTRIBUTIONS[dist]
    (project_dir,) = [
        p.parent
        for p in (ROOT / "packages").glob("*/pyproject.toml")
        if tomllib.loads(p.read_text())["project"]["name"] == dist
    ]
    config = tomllib.loads((project_dir / "pyproject.toml").read_text())
    marker = project_dir / "src" / package / "py.typed"
    assert marker.is_file(), f"{dist}: {marker.relative_to(ROOT)} is missing"
    # The installed package (editable here) sees the same file.
    installed = Path(inspect.getfile(importlib.import_module(package))).parent
    assert (installed / "py.typed").is_file()

    # Hatchling puts every file under a wheel target's `packages` directories into the wheel,
    # except what `exclude` or the project's .gitignore leave out.
    assert config["build-system"]["build-backend"] == "hatchling.build", (
        f"{dist}: check that its build backend ships py.typed, then extend this test"
    )
    hatch_build = config.get("tool", {}).get("hatch", {}).get("build", {})
    wheel = hatch_build.get("targets", {}).get("wheel", {})
    assert f"src/{package}" in wheel.get("packages", []), (
        f"{dist}: [tool.hatch.build.targets.wheel] packages must include src/{package}"
    )
    for section in (hatch_build, wheel):
        assert "only-include" not in section, f"{dist}: only-include may drop py.typed"
        for pattern in section.get("exclude", []):
            assert not fnmatch.fnmatch("py.typed", pattern.rsplit("/", 1)[-1]), (
                f"{dist}: exclude pattern {pattern!r} drops py.typed from the wheel"
            )
    ignored = [p for p in _gitignore_patterns() if fnmatch.fnmatch("py.typed", p)]
    assert not ignored, f".gitignore patterns {ignored} keep py.typed out of the wheels"
