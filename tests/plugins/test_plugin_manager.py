"""The plugin manager: lazy, cached, attributing, robust to broken plugins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hessian_eigenthings import PluginError, PluginNotInstalledError
from hessian_eigenthings.plugins import (
    Register,
    get_plugin_manager,
    get_registries,
    hookimpl,
    plugin_info,
    refresh_registries,
)
from tests.plugins._subprocess import run_python, write_fake_distribution


class InProcessPlugin:
    """A plugin object registered directly with the manager (as tests and apps may do)."""

    @hookimpl
    def register_loss_fns(self, register: Register[Any]) -> None:
        register("my_loss", lambda model, batch: model(batch).sum(), description="test loss")

    @hookimpl
    def register_operators(self, register: Register[Any]) -> None:
        register("my-operator", object, description="a test operator")


@pytest.fixture
def in_process_plugin() -> Iterator[InProcessPlugin]:
    plugin = InProcessPlugin()
    pm = get_plugin_manager()
    pm.register(plugin, name="test-in-process")
    refresh_registries()
    yield plugin
    pm.unregister(plugin)
    refresh_registries()


def test_import_builds_no_manager_and_loads_no_plugin() -> None:
    out = run_python(
        """
        import sys
        import hessian_eigenthings
        from hessian_eigenthings.plugins import manager
        assert manager._manager is None and manager._registries is None
        plugins = [m for m in sys.modules if m.startswith("hessian_eigenthings_")]
        assert not plugins, plugins
        print("lazy")
        """
    )
    assert out.stdout.strip() == "lazy"


def test_manager_is_cached_and_builtins_are_ordinary_plugins() -> None:
    assert get_plugin_manager() is get_plugin_manager()
    assert get_registries() is get_registries()
    infos = {i.name: i for i in plugin_info()}
    assert infos["core:builtin"].builtin
    assert infos["core:builtin"].distribution == "hessian-eigenthings"
    # The core's CE-HVP reference backend is registered through the hook like any plugin's.
    assert get_registries().ce_hvp_backends.entry("eager").plugin == "core:builtin"


def test_in_process_plugin_registrations_are_attributed(in_process_plugin: InProcessPlugin) -> None:
    regs = get_registries()
    assert regs.loss_fns.entry("my_loss").plugin == "test-in-process"
    assert regs.operators.entry("my-operator").description == "a test operator"
    assert regs.by_plugin()["test-in-process"] == {
        "loss_fns": ["my_loss"],
        "operators": ["my-operator"],
    }


def test_duplicate_names_are_an_error_naming_both_plugins(
    in_process_plugin: InProcessPlugin,
) -> None:
    class Clash:
        @hookimpl
        def register_loss_fns(self, register: Register[Any]) -> None:
            register("my_loss", print)

    pm = get_plugin_manager()
    clash = Clash()
    pm.register(clash, name="test-clash")
    try:
        with pytest.raises(PluginError, match="'test-in-process' and 'test-clash'"):
            refresh_registries()
    finally:
        pm.unregister(clash)
        refresh_registries()


def test_unknown_names_list_what_is_available() -> None:
    with pytest.raises(ValueError, match=r"unknown cross-entropy HVP backend 'nope'.*eager"):
        get_registries().ce_hvp_backends.get("nope")


def test_failing_plugin_warns_and_the_library_still_works(tmp_path: Path) -> None:
    write_fake_distribution(
        tmp_path, "broken-plugin", "broken_plugin_mod", "raise ImportError('missing libfoo')\n"
    )
    write_fake_distribution(
        tmp_path / "b",
        "raising-hook",
        "raising_hook_mod",
        """
        from hessian_eigenthings.plugins import hookimpl

        @hookimpl
        def register_loss_fns(register):
            raise RuntimeError("hook exploded")
        """,
    )
    out = run_python(
        """
        import sys, warnings
        sys.path.append(sys.argv[-1] if False else r"%s")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from hessian_eigenthings.plugins import get_registries, plugin_info
            regs = get_registries()
        msgs = [str(w.message) for w in caught if w.category.__name__ == "PluginLoadWarning"]
        assert any("'broken-plugin'" in m and "missing libfoo" in m for m in msgs), msgs
        assert any("'raising-hook'" in m and "hook exploded" in m for m in msgs), msgs
        assert "eager" in regs.ce_hvp_backends
        import hessian_eigenthings as he, torch
        op = he.LambdaOperator(size=3, matvec=lambda v: 2 * v)
        assert torch.equal(op.matvec(torch.ones(3)), 2 * torch.ones(3))
        print("ok", len(msgs))
        """
        % (tmp_path / "b"),
        extra_path=tmp_path,
    )
    assert out.stdout.split()[0] == "ok"


def test_environment_switch_disables_autoloading(tmp_path: Path) -> None:
    write_fake_distribution(
        tmp_path, "never-loaded", "never_loaded_mod", "raise SystemExit('must not be imported')\n"
    )
    out = run_python(
        """
        from hessian_eigenthings.plugins import plugin_info
        print(",".join(i.name for i in plugin_info()))
        """,
        extra_path=tmp_path,
        env={"HESSIAN_EIGENTHINGS_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert out.stdout.strip() == "core:builtin"


@pytest.mark.parametrize(
    ("statement", "extra"),
    [
        ("import hessian_eigenthings as he; he.hf_lm_loss", "hf"),
        ("from hessian_eigenthings.loss_fns import tlens_loss", "tlens"),
        ("from hessian_eigenthings import hf_lm_shifted_ce", "hf"),
        ("from hessian_eigenthings.loss_fns.huggingface import hf_lm_loss", "hf"),
        ("from hessian_eigenthings.loss_fns.transformer_lens import tlens_forward", "tlens"),
    ],
)
def test_plugin_names_raise_an_install_hint_when_absent(statement: str, extra: str) -> None:
    proc = run_python(
        f"""
        try:
            {statement}
        except ImportError as err:
            print(type(err).__name__, err)
        """,
        env={"HESSIAN_EIGENTHINGS_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )
    assert proc.stdout.startswith(PluginNotInstalledError.__name__)
    assert f"pip install 'hessian-eigenthings[{extra}]'" in proc.stdout


def test_unknown_attribute_is_still_an_attribute_error() -> None:
    import hessian_eigenthings

    with pytest.raises(AttributeError):
        hessian_eigenthings.definitely_not_a_name  # noqa: B018


def test_reference_module_paths_resolve_the_same_objects() -> None:
    """The reference's ``loss_fns.huggingface`` / ``loss_fns.transformer_lens`` paths give the
    registry's objects (when the plugins are installed) and nothing else."""
    import hessian_eigenthings.loss_fns as loss_fns
    import hessian_eigenthings.loss_fns.huggingface as hf
    import hessian_eigenthings.loss_fns.transformer_lens as tl
    from hessian_eigenthings.plugins import get_registries

    registered = set(get_registries().loss_fns.names())
    for shim in (hf, tl):
        assert shim.NAMES
        assert shim.__all__ == []
        for name in shim.NAMES:
            if name in registered:
                assert getattr(shim, name) is getattr(loss_fns, name)
            else:
                with pytest.raises(PluginNotInstalledError):
                    getattr(shim, name)
        with pytest.raises(AttributeError):
            shim.not_a_loss  # noqa: B018
