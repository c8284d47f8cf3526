"""The plugin registers the reference API's TransformerLens names and imports lazily."""

from __future__ import annotations

import hessian_eigenthings
import hessian_eigenthings.loss_fns
import hessian_eigenthings_tlens
from hessian_eigenthings.plugins import get_registries
from hessian_eigenthings_tlens.plugin import LOSS_FN_NAMES
from tests.plugins._subprocess import run_python


def test_names_resolve_from_the_core_packages() -> None:
    registry = get_registries().loss_fns
    for name in LOSS_FN_NAMES:
        helper = getattr(hessian_eigenthings_tlens, name)
        assert getattr(hessian_eigenthings, name) is helper
        assert getattr(hessian_eigenthings.loss_fns, name) is helper
        assert registry.entry(name).plugin == "hessian-eigenthings-tlens"
        assert registry.entry(name).description  # first docstring line, shown by the CLI
    from hessian_eigenthings.loss_fns import tlens_loss  # the reference API's import

    assert tlens_loss is hessian_eigenthings_tlens.tlens_loss


def test_importing_the_package_and_plugin_does_not_import_transformer_lens() -> None:
    proc = run_python(
        """
        import sys
        import hessian_eigenthings, hessian_eigenthings_tlens
        hessian_eigenthings.get_registries()  # loads every plugin, ours included
        assert hessian_eigenthings.tlens_loss is hessian_eigenthings_tlens.tlens_loss
        print("transformer_lens" in sys.modules, "transformers" in sys.modules)
        """
    )
    assert proc.stdout.split() == ["False", "False"]
