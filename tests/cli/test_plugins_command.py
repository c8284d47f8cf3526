"""``eigenthings plugins`` and ``schema``, and plugins extending the CLI through the hooks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from hessian_eigenthings_cli.main import main
from tests.cli._cli import (
    SCHEMA,
    Invocation,
    Runs,
    assert_one_line_error,
    ok,
    shared_runs,
    validated,
)
from tests.plugins._subprocess import write_fake_distribution

SIBLINGS = (
    "hessian-eigenthings-cli",
    "hessian-eigenthings-hf",
    "hessian-eigenthings-tlens",
    "hessian-eigenthings-triton",
)
CLI_COMMANDS = ["demo", "eig", "trace", "density", "plugins", "schema"]

TOY_PLUGIN = """
import torch
from torch import nn
from hessian_eigenthings.operators import HessianOperator, LambdaOperator
from hessian_eigenthings.plugins import CommandSpec, LoaderSpec, hookimpl


def _configure(parser):
    parser.add_argument("--name", default="world")


def _run(args):
    print(f"hello {args.name}")
    return 0


@hookimpl
def register_commands(register):
    register("hello", CommandSpec(help="say hello", configure=_configure, run=_run))


def toy_data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    return [(x, torch.randn(10, 2, generator=g, dtype=torch.float64))]


def _model(value, args):
    torch.manual_seed(int(value))
    return nn.Linear(3, 2).double()


def _loss(args):
    from hessian_eigenthings.loss_fns import (
        supervised_forward,
        supervised_loss,
        supervised_loss_of_output,
    )

    criterion = nn.MSELoss()
    return supervised_loss(criterion), supervised_forward, supervised_loss_of_output(criterion)


@hookimpl
def register_loaders(register):
    register(
        "toy",
        LoaderSpec(
            option="toy",
            help="a seeded linear regression",
            load_model=_model,
            load_data=lambda value, args: toy_data(int(value)),
            loss=_loss,
        ),
    )


def doubled_hessian(model, dataloader, loss_fn, **options):
    h = HessianOperator(model, dataloader, loss_fn, **options)
    return LambdaOperator(h.size, lambda v: 2 * h.matvec(v), dtype=h.dtype, device=h.device)


@hookimpl
def register_operators(register):
    register("doubled-hessian", doubled_hessian, description="twice the Hessian")
"""


NO_AUTOLOAD = {"HESSIAN_EIGENTHINGS_DISABLE_PLUGIN_AUTOLOAD": "1"}


def _commands(directory: Path) -> dict[str, Invocation]:
    site = directory / "site"
    write_fake_distribution(site, "toy-plugin", "eigenthings_toy_plugin", TOY_PLUGIN)
    toy = {"env": {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}}
    no_autoload = {"env": NO_AUTOLOAD}
    toy_eig = ["eig", "--toy", "3", "-k", "1", "--threads", "1", "--json"]
    return {
        "table": ["plugins"],
        "no autoload json": (["plugins", "--json"], no_autoload),
        "no autoload hf": (["eig", "--hf", "some/checkpoint"], no_autoload),
        "toy json": (["plugins", "--json"], toy),
        "toy hello": (["hello", "--name", "plugin"], toy),
        "toy eig": (toy_eig, toy),
        "toy doubled": ([*toy_eig, "--operator", "doubled-hessian"], toy),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return shared_runs(tmp_path_factory, "plugins", _commands)[1]


def _toy_hessian_spectrum(seed: int) -> torch.Tensor:
    """For a linear model under mean MSE over N×2 outputs, H = I₂ ⊗ (2/(2N)) Σ [x;1][x;1]ᵀ."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    z = torch.cat([x, torch.ones(10, 1, dtype=torch.float64)], dim=1)
    block = 2.0 / (2 * 10) * z.T @ z
    return torch.linalg.eigvalsh(block).repeat_interleave(2)


def test_plugins_table_lists_core_and_installed_siblings(runs: Runs) -> None:
    proc = ok(runs["table"])
    text = " ".join(proc.stdout.split())
    for name in ("core:builtin", *SIBLINGS):
        assert name in text
    assert "commands: demo, eig, trace, density, plugins, schema" in text
    assert "operators: hessian, ggn, empirical-fisher, fisher" in text


def test_plugins_json_lists_what_each_plugin_registers(runs: Runs) -> None:
    doc = validated(ok(runs["toy json"]).stdout)  # the siblings, and a third-party plugin
    plugins = {p["name"]: p for p in doc["plugins"]}
    assert {"core:builtin", *SIBLINGS} <= set(plugins)
    assert plugins["core:builtin"]["builtin"] is True
    assert plugins["core:builtin"]["distribution"] == "hessian-eigenthings"
    core_operators = {e["name"] for e in plugins["core:builtin"]["registers"]["operators"]}
    assert {"hessian", "ggn", "fisher", "empirical-fisher"} <= core_operators
    cli = plugins["hessian-eigenthings-cli"]
    assert [e["name"] for e in cli["registers"]["commands"]] == CLI_COMMANDS
    assert cli["distribution"] == "hessian-eigenthings-cli"
    assert cli["builtin"] is False
    triton = plugins["hessian-eigenthings-triton"]["registers"]
    assert "triton" in {e["name"] for e in triton["ce_hvp_backends"]}
    hf = plugins["hessian-eigenthings-hf"]["registers"]
    assert "hf_lm_loss" in {e["name"] for e in hf["loss_fns"]}
    tlens = plugins["hessian-eigenthings-tlens"]["registers"]
    assert [e["name"] for e in tlens["param_namers"]] == ["transformer_lens"]
    assert doc["load_failures"] == []


def test_plugins_command_covers_every_registry() -> None:
    from hessian_eigenthings.plugins.registry import Registries
    from hessian_eigenthings_cli.commands.plugins import KINDS

    assert set(KINDS) == {attr for _, attr in Registries.HOOKS}


def test_cli_commands_exist_with_plugin_autoload_disabled(runs: Runs) -> None:
    # The CLI registers its own plugin module when the manager did not load it.
    doc = validated(ok(runs["no autoload json"]).stdout)
    names = [p["name"] for p in doc["plugins"]]
    assert names == ["core:builtin", "hessian-eigenthings-cli"]
    assert doc["plugins"][1]["version"] is not None


def test_third_party_plugin_adds_a_command_a_loader_and_an_operator(runs: Runs) -> None:
    doc = validated(ok(runs["toy json"]).stdout)
    toy = next(p for p in doc["plugins"] if p["name"] == "toy-plugin")
    assert toy["distribution"] == "toy-plugin"
    registers = {kind: [e["name"] for e in entries] for kind, entries in toy["registers"].items()}
    assert registers["commands"] == ["hello"]
    assert registers["loaders"] == ["toy"]
    assert registers["operators"] == ["doubled-hessian"]

    assert ok(runs["toy hello"]).stdout == "hello plugin\n"

    top = float(_toy_hessian_spectrum(3).max())
    eig = validated(ok(runs["toy eig"]).stdout)
    assert eig["setup"]["model"] == "--toy 3"
    assert eig["setup"]["data"] == "--toy 3"
    assert eig["setup"]["loss"] == "--toy"
    assert eig["eig"]["eigenvalues"][0] == pytest.approx(top, rel=1e-10)

    doubled = validated(ok(runs["toy doubled"]).stdout)
    assert doubled["setup"]["operator_plugin"] == "toy-plugin"
    assert doubled["eig"]["eigenvalues"][0] == pytest.approx(2 * top, rel=1e-10)


def test_schema_command_prints_the_shipped_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(SCHEMA.read_text())
    assert printed["properties"]["schema_version"] == {"const": 1}


def test_unknown_option_of_an_unloaded_plugin_names_the_package(runs: Runs) -> None:
    assert_one_line_error(runs["no autoload hf"], "--hf", "hessian-eigenthings-hf", code=2)


def test_missing_plugin_message_when_the_package_is_absent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hessian_eigenthings_cli import plugin_options

    monkeypatch.setattr(plugin_options, "_installed_version", lambda dist: None)
    message = plugin_options.missing_plugin_message("--tlens-tokens")
    assert message is not None
    assert "'hessian-eigenthings-tlens', which is not installed" in message
    assert "pip install 'hessian-eigenthings[tlens]'" in message
    assert plugin_options.missing_plugin_message("--bogus") is None
