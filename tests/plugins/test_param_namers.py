"""The ``register_param_namers`` hook: plugins give parameters other names that filters match.

A namer here knows one model class (``Net``, a real module tree) and names its parameters the
way a wrapped model's users would (``encoder.W``); every expected selection is written out by
hand from that table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
import torch
from torch import nn

from hessian_eigenthings import (
    HessianOperator,
    InvalidArgumentError,
    PluginLoadWarning,
    match_names,
    match_regex,
    param_aliases,
    select_parameters,
)
from hessian_eigenthings.plugins import (
    ParamNamer,
    Register,
    get_plugin_manager,
    get_registries,
    hookimpl,
    refresh_registries,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(x)))


NET_NAMES = {
    "fc.weight": ["encoder.W"],
    "fc.bias": ["encoder.b"],
    "out.weight": ["decoder.W", "head"],
    # out.bias: no other name
}


def net_namer(model: nn.Module) -> Mapping[str, Sequence[str]] | None:
    return NET_NAMES if isinstance(model, Net) else None


class NamerPlugin:
    """An in-process plugin registering the given namers under the given names."""

    def __init__(self, **namers: ParamNamer) -> None:
        self.namers = namers

    @hookimpl
    def register_param_namers(self, register: Register[ParamNamer]) -> None:
        for name, namer in self.namers.items():
            register(name, namer, description=f"test namer {name}")


@pytest.fixture
def install() -> Iterator[Callable[..., None]]:
    """``install(plugin_name, **namers)`` registers an in-process plugin; undone afterwards."""
    pm = get_plugin_manager()
    added: list[str] = []

    def _install(plugin_name: str, **namers: ParamNamer) -> None:
        pm.register(NamerPlugin(**namers), name=plugin_name)
        added.append(plugin_name)
        refresh_registries()

    yield _install
    for name in added:
        pm.unregister(name=name)
    refresh_registries()


def selected(model: nn.Module, param_filter: Any) -> list[str]:
    return [n for n, _ in select_parameters(model, param_filter)]


def test_the_namer_is_registered_and_attributed(install: Callable[..., None]) -> None:
    install("test-namers", net=net_namer)
    entry = get_registries().param_namers.entry("net")
    assert entry.obj is net_namer
    assert entry.plugin == "test-namers"
    assert entry.description == "test namer net"
    assert get_registries().by_plugin()["test-namers"] == {"param_namers": ["net"]}


def test_filters_fall_back_to_aliases_only_when_no_raw_name_matches(
    install: Callable[..., None],
) -> None:
    model = Net()
    with pytest.raises(InvalidArgumentError, match="selected no trainable"):
        select_parameters(model, match_names("encoder"))  # no namer yet
    install("test-namers", net=net_namer)
    assert param_aliases(model) == {
        "fc.weight": ("encoder.W",),
        "fc.bias": ("encoder.b",),
        "out.weight": ("decoder.W", "head"),
    }
    assert selected(model, match_names("encoder")) == ["fc.weight", "fc.bias"]
    assert selected(model, match_names("*.W")) == ["fc.weight", "out.weight"]
    assert selected(model, match_names("head")) == ["out.weight"]
    assert selected(model, match_regex(r"^encoder\.b$")) == ["fc.bias"]
    # Raw names keep their meaning: a filter that accepts any raw name is never offered
    # aliases, so raw and alias patterns do not mix, and exclusions stay exclusions.
    assert selected(model, match_names("out")) == ["out.weight", "out.bias"]
    assert selected(model, match_names("out.bias", "encoder.W")) == ["out.bias"]
    assert selected(model, lambda name, p: not name.endswith("bias")) == [
        "fc.weight",
        "out.weight",
    ]
    # Frozen parameters stay out whatever they are called.
    model.fc.weight.requires_grad_(False)
    assert selected(model, match_names("encoder")) == ["fc.bias"]


def test_the_filter_sees_raw_names_then_aliases(install: Callable[..., None]) -> None:
    install("test-namers", net=net_namer)
    model = Net()
    seen: list[tuple[str, int]] = []

    def record(name: str, param: nn.Parameter) -> bool:
        seen.append((name, id(param)))
        return name == "decoder.W"

    assert selected(model, record) == ["out.weight"]
    params = dict(model.named_parameters())
    assert seen == [
        ("fc.weight", id(params["fc.weight"])),
        ("fc.bias", id(params["fc.bias"])),
        ("out.weight", id(params["out.weight"])),
        ("out.bias", id(params["out.bias"])),
        # no raw name accepted: the aliases, parameter by parameter
        ("encoder.W", id(params["fc.weight"])),
        ("encoder.b", id(params["fc.bias"])),
        ("decoder.W", id(params["out.weight"])),  # accepted: "head" is not tried
    ]


def test_other_models_are_unaffected(install: Callable[..., None]) -> None:
    install("test-namers", net=net_namer)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert param_aliases(plain) == {}
    assert selected(plain, match_names("1")) == ["1.weight", "1.bias"]
    with pytest.raises(InvalidArgumentError, match="selected no trainable"):
        select_parameters(plain, match_names("encoder"))


def test_namers_are_asked_only_when_a_raw_name_is_rejected(install: Callable[..., None]) -> None:
    calls: list[type] = []

    def counting(model: nn.Module) -> Mapping[str, Sequence[str]] | None:
        calls.append(type(model))
        return net_namer(model)

    install("test-namers", net=counting)
    model = Net()
    assert len(selected(model, None)) == 4
    assert len(selected(model, match_names("**"))) == 4
    assert calls == []
    assert selected(model, match_names("encoder")) == ["fc.weight", "fc.bias"]
    assert calls == [Net]  # once per selection, not once per parameter


def test_the_first_namer_that_knows_the_model_wins(install: Callable[..., None]) -> None:
    def knows_nothing(model: nn.Module) -> None:
        return None

    def other_names(model: nn.Module) -> Mapping[str, Sequence[str]] | None:
        return {"fc.weight": ["other.W"]} if isinstance(model, Net) else None

    install("test-namers-a", unaware=knows_nothing, first=net_namer)
    install("test-namers-b", second=other_names)
    model = Net()
    assert list(get_registries().param_namers.names())[-3:] == ["unaware", "first", "second"]
    assert selected(model, match_names("encoder.W")) == ["fc.weight"]
    with pytest.raises(InvalidArgumentError, match="selected no trainable"):
        select_parameters(model, match_names("other.W"))  # the second namer is never asked


def test_a_raising_namer_warns_and_is_skipped(install: Callable[..., None]) -> None:
    def broken(model: nn.Module) -> Mapping[str, Sequence[str]] | None:
        raise RuntimeError("namer exploded")

    install("test-broken", broken=broken)
    install("test-namers", net=net_namer)
    model = Net()
    with pytest.warns(PluginLoadWarning, match=r"'test-broken'.*'broken'.*namer exploded"):
        assert selected(model, match_names("encoder.b")) == ["fc.bias"]
    assert selected(model, match_names("out.bias")) == ["out.bias"]  # namers not asked


@pytest.mark.parametrize(
    ("answer", "complaint"),
    [
        (["encoder.W"], "returned a list, expected a mapping"),
        ({"fc.weight": "encoder.W"}, "wrap a single name in a list"),
        ({"fc.weight": 3}, "expected a sequence of strings"),
        ({"fc.weight": ["encoder.W", 7]}, "not non-empty strings"),
        ({"fc.weight": [""]}, "not non-empty strings"),
    ],
)
def test_a_malformed_answer_warns_and_is_ignored(
    install: Callable[..., None], answer: Any, complaint: str
) -> None:
    install("test-malformed", malformed=lambda model: answer)
    model = Net()
    with pytest.warns(PluginLoadWarning, match=complaint):
        assert param_aliases(model) == {}
    with (
        pytest.warns(PluginLoadWarning, match="'test-malformed'"),
        pytest.raises(InvalidArgumentError, match="selected no trainable"),
    ):
        select_parameters(model, match_names("encoder.W"))
    assert selected(model, match_names("fc.weight")) == ["fc.weight"]  # raw names work


def test_a_raising_hook_warns_and_the_other_namers_stay(install: Callable[..., None]) -> None:
    class BrokenHook:
        @hookimpl
        def register_param_namers(self, register: Register[ParamNamer]) -> None:
            raise RuntimeError("hook exploded")

    install("test-namers", net=net_namer)
    pm = get_plugin_manager()
    pm.register(BrokenHook(), name="test-broken-hook")
    try:
        with pytest.warns(PluginLoadWarning, match=r"'test-broken-hook'.*hook exploded"):
            refresh_registries()
        assert "net" in get_registries().param_namers
        assert selected(Net(), match_names("encoder")) == ["fc.weight", "fc.bias"]
    finally:
        pm.unregister(name="test-broken-hook")
        refresh_registries()


def test_the_error_for_an_empty_selection_shows_the_aliases(
    install: Callable[..., None],
) -> None:
    install("test-namers", net=net_namer)
    with pytest.raises(InvalidArgumentError) as err:
        select_parameters(Net(), match_names("decoder.b"))
    message = str(err.value)
    assert "fc.weight (also encoder.W); fc.bias (also encoder.b)" in message
    assert "out.weight (also decoder.W, head); out.bias" in message


def test_an_operator_selected_by_alias_equals_one_selected_by_raw_name(
    install: Callable[..., None],
) -> None:
    install("test-namers", net=net_namer)
    torch.manual_seed(0)
    model = Net().double()
    data = [(torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,)))]

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    by_alias = HessianOperator(model, data, loss, param_filter=match_names("encoder"))
    by_raw = HessianOperator(model, data, loss, param_filter=match_names("fc"))
    assert by_alias.space.names == by_raw.space.names == ("fc.weight", "fc.bias")
    g = torch.Generator().manual_seed(1)
    v = torch.randn(by_raw.size, 3, dtype=torch.float64, generator=g)
    assert torch.equal(by_alias.matmat(v), by_raw.matmat(v))
