"""The third-party plugin example installs, is discovered through its entry point, and works."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.plugins._subprocess import ROOT, run_python

EXAMPLE = ROOT / "examples" / "custom_operator_plugin"


def test_installed_example_plugin_is_found_and_correct(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    cmd = (
        [uv, "pip", "install", "--python", sys.executable]
        if uv
        else [sys.executable, "-m", "pip", "install"]
    )
    subprocess.run(
        [*cmd, "--no-deps", "--quiet", "--target", str(tmp_path), str(EXAMPLE)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert list(tmp_path.glob("eigenthings_gradient_outer_product-*.dist-info"))
    out = run_python(
        """
        import torch
        from hessian_eigenthings.plugins import get_registries, plugin_info

        entry = get_registries().operators.entry("gradient-outer-product")
        assert entry.plugin == "eigenthings-gradient-outer-product", entry
        info = {i.name: i for i in plugin_info()}["eigenthings-gradient-outer-product"]
        assert info.distribution == "eigenthings-gradient-outer-product" and info.version == "0.1.0"

        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2).double()
        batches = [(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)),
                   (torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 2, dtype=torch.float64))]
        loss = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])
        op = entry.obj(model, batches, loss)
        dense = op.to_dense()
        expected = 0
        for b in batches:
            gs = torch.autograd.grad(loss(model, b), list(model.parameters()))
            g = torch.cat([t.reshape(-1) for t in gs])
            expected = expected + b[0].shape[0] * torch.outer(g, g)
        expected = expected / 6
        err = ((dense - expected).norm() / expected.norm()).item()
        assert err < 1e-12, err
        print("found", err)
        """,
        extra_path=tmp_path,
    )
    assert out.stdout.startswith("found")
