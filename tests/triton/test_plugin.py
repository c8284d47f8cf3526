"""The ``triton`` backend's registration and availability test, without importing triton."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.loss_fns import resolve_ce_hvp_backend
from hessian_eigenthings.plugins import get_registries
from hessian_eigenthings_triton import plugin

ROOT = Path(__file__).resolve().parents[2]
KERNEL = "hessian_eigenthings_triton.kernel"


def test_registered_by_the_plugin_above_compile() -> None:
    registry = get_registries().ce_hvp_backends
    entry = registry.entry("triton")
    assert entry.plugin == "hessian-eigenthings-triton"
    assert entry.obj.supports is plugin.supports
    assert entry.obj.priority > registry.get("compile").priority > registry.get("eager").priority


def test_plugin_loading_and_cpu_dispatch_never_import_triton() -> None:
    code = textwrap.dedent(
        """
        import sys
        import torch
        import hessian_eigenthings
        from hessian_eigenthings.loss_fns import resolve_ce_hvp_backend
        from hessian_eigenthings.plugins import get_registries

        registry = get_registries().ce_hvp_backends
        assert registry.entry("triton").plugin == "hessian-eigenthings-triton", registry.names()
        # large enough that auto considers compile (COMPILE_MIN_AUTO_ELEMENTS logits)
        x = torch.zeros(1, 1 << 22)
        reason = registry.get("triton").supports(x, x)
        assert reason is not None and "CUDA" in reason, reason
        name, _ = resolve_ce_hvp_backend("auto", x, x)
        assert name != "triton", name
        loaded = sorted(m for m in sys.modules if m == "triton" or m.startswith("triton."))
        assert not loaded, loaded
        assert "hessian_eigenthings_triton.kernel" not in sys.modules
        print("triton-free", name)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env = {k: v for k, v in env.items() if not k.startswith("HESSIAN_EIGENTHINGS_")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.split()[:2] == ["triton-free", "compile"]


@pytest.fixture
def interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delitem(sys.modules, KERNEL, raising=False)


def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(2, 3)
    reason = plugin.supports(x, x)
    assert reason is not None
    assert "CUDA" in reason
    assert "TRITON_INTERPRET" in reason
    with pytest.raises(InvalidArgumentError, match=r"fused='triton' cannot serve.*CUDA"):
        resolve_ce_hvp_backend("triton", x, x)


@pytest.mark.parametrize("value", ["1", "true", "ON"])
def test_cpu_tensors_are_served_in_interpreter_mode(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", value)
    monkeypatch.delitem(sys.modules, KERNEL, raising=False)
    x = torch.zeros(2, 3, dtype=torch.bfloat16)
    assert plugin.supports(x, x) is None


def test_interpreter_requested_after_the_kernel_was_compiled(
    interpret: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, KERNEL, types.SimpleNamespace(INTERPRETED=False))
    x = torch.zeros(2, 3)
    reason = plugin.supports(x, x)
    assert reason is not None
    assert "after" in reason


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.complex64])
def test_unsupported_dtypes_are_refused(interpret: None, dtype: torch.dtype) -> None:
    x = torch.zeros(2, 3)
    for logits, u, name in ((x.to(dtype), x, "logits"), (x, x.to(dtype), "u")):
        reason = plugin.supports(logits, u)
        assert reason is not None
        assert name in reason
        assert str(dtype).removeprefix("torch.") in reason


def test_other_devices_and_mixed_devices_are_refused(interpret: None) -> None:
    meta = torch.zeros(2, 3, device="meta")
    reason = plugin.supports(meta, meta)
    assert reason is not None
    assert "meta" in reason
    reason = plugin.supports(torch.zeros(2, 3), meta)
    assert reason is not None
    assert "u is on meta" in reason


def test_refused_while_dynamo_traces_the_caller(
    interpret: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x = torch.zeros(2, 3)
    reason = plugin.supports(x, x)
    assert reason is not None
    assert "torch.compile" in reason


def test_refused_inside_torch_func_transforms(interpret: None) -> None:
    x = torch.zeros(3, 2, 5)
    reasons: list[str | None] = []

    def probe(z: torch.Tensor) -> torch.Tensor:
        reasons.append(plugin.supports(z, z))
        return z

    torch.func.vmap(probe)(x)
    assert reasons[0] is not None
    assert "torch.func" in reasons[0]
    assert plugin.supports(x[0], x[0]) is None
