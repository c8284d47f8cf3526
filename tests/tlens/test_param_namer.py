"""The plugin's parameter namer: the core's own filters select TransformerLens parameters by
their TransformerLens names, exactly as ``tlens_param_filter`` does.

``tlens_param_filter`` is tested against the module tree in ``test_names.py``; here every
selection through the namer is compared with it, and the namer's own contract is checked
(fused sources get no aliases, other models are not touched, answers are cached per model).
"""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

import pytest
import torch
from torch import nn

import hessian_eigenthings as he
from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.plugins import Registry, get_registries
from hessian_eigenthings_tlens import tlens_loss, tlens_names, tlens_param_filter
from hessian_eigenthings_tlens.names import tlens_param_namer
from tests.plugins._subprocess import run_python
from tests.tlens.models import (
    MODEL_KINDS,
    TINY,
    gpt2_bridge,
    has_bridge_builder,
    tiny_model,
    token_batches,
)

needs_builder = pytest.mark.skipif(
    not has_bridge_builder(),
    reason="wrapping an HF model in a TransformerBridge needs transformer-lens >= 4",
)


def by_core_filter(model: nn.Module, param_filter: Any) -> list[str]:
    return [n for n, _ in he.select_parameters(model, param_filter)]


def by_tlens_filter(model: nn.Module, *patterns: str) -> list[str]:
    keep = tlens_param_filter(model, *patterns)
    return [n for n, p in model.named_parameters() if keep(n, p)]


@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    return gpt2_bridge()


@pytest.fixture
def no_namers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registries without any parameter namer (as without the plugin installed)."""
    monkeypatch.setattr(get_registries(), "param_namers", Registry("parameter namer"))


def test_the_plugin_registers_the_namer() -> None:
    entry = get_registries().param_namers.entry("transformer_lens")
    assert entry.obj is tlens_param_namer
    assert entry.plugin == "hessian-eigenthings-tlens"
    assert entry.description


def test_the_references_attention_filters_select_what_tlens_param_filter_selects(
    model: nn.Module,
) -> None:
    expected = by_tlens_filter(model, "blocks.*.attn.*")
    assert len(expected) == 8 * TINY["n_layers"]
    assert by_core_filter(model, he.match_names("blocks.*.attn.*")) == expected
    assert by_core_filter(model, he.match_regex(r"blocks\.\d+\.attn\.")) == expected
    mlp = by_tlens_filter(model, "blocks.*.mlp.*")
    assert by_core_filter(model, he.match_regex(r"blocks\.\d+\.mlp\.")) == mlp


@pytest.mark.parametrize(
    "pattern",
    [
        "blocks.*.attn",
        "blocks.1.mlp",
        "blocks.0.attn.W_[QK]",
        "blocks.*.attn.b_*",
        "**.ln*",
        "embed",
        "pos_embed.W_pos",
        "unembed.W_U",
        "ln_final",
        "blocks.1",
        "blocks.0.attn.q.weight",  # a path through the bridge's modules without the hops
    ],
)
def test_every_tlens_pattern_selects_the_same_through_match_names(
    model: nn.Module, pattern: str
) -> None:
    expected = by_tlens_filter(model, pattern)
    assert by_core_filter(model, he.match_names(pattern)) == expected


def test_without_a_namer_bridge_names_select_nothing(model: nn.Module, no_namers: None) -> None:
    # What the namer is for: a bridge's raw names do not contain "blocks".
    if any(n.startswith("blocks.") for n, _ in model.named_parameters()):
        pytest.skip("a HookedTransformer's raw names already are TransformerLens names")
    assert he.param_aliases(model) == {}
    with pytest.raises(InvalidArgumentError, match="selected no trainable parameters"):
        he.select_parameters(model, he.match_names("blocks.*.attn.*"))


def test_an_empty_selection_lists_the_transformer_lens_names(model: nn.Module) -> None:
    with pytest.raises(InvalidArgumentError, match="selected no trainable") as err:
        he.select_parameters(model, he.match_names("blocks.*.attention"))
    names = tlens_names(model)
    first = next(iter(names.values()))
    if first.aliases[0] != first.raw:  # a bridge: the raw name is followed by its names
        assert f"{first.raw} (also {first.aliases[0]}" in str(err.value)


def test_aliases_are_tlens_names_without_the_raw_name(model: nn.Module) -> None:
    aliases = he.param_aliases(model)
    for raw, entry in tlens_names(model).items():
        expected = tuple(a for a in entry.aliases if a != raw)
        assert aliases.get(raw, ()) == expected
        assert raw not in aliases.get(raw, ())


def test_operators_selected_by_the_references_filters_match_tlens_param_filter(
    model: nn.Module,
) -> None:
    batches = token_batches()
    reference = he.HessianOperator(
        model, batches, tlens_loss(), param_filter=tlens_param_filter(model, "blocks.*.attn.*")
    )
    g = torch.Generator().manual_seed(3)
    V = torch.randn(reference.size, 3, generator=g, dtype=torch.float64)
    expected = reference.matmat(V)
    for param_filter in (he.match_names("blocks.*.attn.*"), he.match_regex(r"blocks\.\d+\.attn\.")):
        op = he.HessianOperator(model, batches, tlens_loss(), param_filter=param_filter)
        assert op.space.names == reference.space.names
        assert op.size == reference.size
        err = ((op.matmat(V) - expected).norm() / expected.norm()).item()
        assert err <= 1e-12, err


@needs_builder
def test_fused_sources_are_never_selected_through_aliases(gpt2: nn.Module) -> None:
    names = tlens_names(gpt2)
    fused = [raw for raw, e in names.items() if e.fused_source]
    assert len(fused) == 2  # c_attn's weight and bias
    aliases = he.param_aliases(gpt2)
    assert all(raw not in aliases for raw in fused)
    for param_filter in (
        he.match_names("blocks.*.attn.*"),
        he.match_names("blocks.0.attn"),
        he.match_regex(r"blocks\.\d+\.attn\."),
        he.match_names("**.W_*", "**.b_*"),
    ):
        got = by_core_filter(gpt2, param_filter)
        assert not set(got) & set(fused)
    assert by_core_filter(gpt2, he.match_names("blocks.*.attn.*")) == by_tlens_filter(
        gpt2, "blocks.*.attn.*"
    )
    assert by_core_filter(gpt2, he.match_regex(r"blocks\.\d+\.attn\.")) == by_tlens_filter(
        gpt2, "blocks.*.attn.*"
    )
    # Their TransformerLens-side names select nothing; their raw names still select them.
    with pytest.raises(InvalidArgumentError, match="selected no trainable"):
        he.select_parameters(gpt2, he.match_names("blocks.0.attn.qkv"))
    assert by_core_filter(gpt2, he.match_names(*fused)) == fused


@needs_builder
def test_tied_weights_answer_to_both_names(gpt2: nn.Module) -> None:
    (tied,) = by_tlens_filter(gpt2, "embed.W_E")
    assert by_core_filter(gpt2, he.match_names("unembed.W_U")) == [tied]
    assert by_core_filter(gpt2, he.match_names("embed.W_E")) == [tied]


def test_a_plain_module_is_unaffected(model: nn.Module) -> None:
    assert "transformer_lens" in sys.modules  # the namer's fast path is past
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    assert tlens_param_namer(plain) is None
    assert he.param_aliases(plain) == {}
    assert by_core_filter(plain, he.match_names("2")) == ["2.weight", "2.bias"]
    assert by_core_filter(plain, he.match_regex(r"weight$")) == ["0.weight", "2.weight"]
    with pytest.raises(InvalidArgumentError, match="selected no trainable"):
        he.select_parameters(plain, he.match_names("blocks.*.attn.*"))


def test_selecting_on_other_models_does_not_import_transformer_lens() -> None:
    proc = run_python(
        """
        import sys
        from torch import nn
        import hessian_eigenthings as he
        model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
        assert "transformer_lens" in he.get_registries().param_namers
        picked = [n for n, _ in he.select_parameters(model, he.match_names("1"))]
        print(picked == ["1.weight", "1.bias"], he.param_aliases(model) == {})
        print("transformer_lens" in sys.modules, "transformers" in sys.modules)
        """
    )
    assert proc.stdout.split() == ["True", "True", "False", "False"]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_answers_are_cached_per_model_and_follow_parameter_changes(kind: Any) -> None:
    model = tiny_model(kind)
    first = tlens_param_namer(model)
    assert first is not None
    assert tlens_param_namer(model) is first  # cached
    other = tiny_model(kind)
    assert tlens_param_namer(other) is not first
    assert tlens_param_namer(other) == first  # the same architecture, the same names
    # New parameter memory (here a dtype change) invalidates the cached answer.
    model.to(torch.float32)
    again = tlens_param_namer(model)
    assert again is not first
    assert again == first
    # The cache holds no strong reference to the model.
    ref = weakref.ref(model)
    del model, first, again
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_cli_params_accept_transformer_lens_names(kind: Any) -> None:
    """``eigenthings --params`` resolves each glob on its own: raw or TransformerLens names, in
    one call; a glob matching neither is an error naming it."""
    from hessian_eigenthings_cli.analysis import param_filter_for
    from hessian_eigenthings_cli.errors import CLIError

    model = tiny_model(kind)
    raw = [name for name, _ in model.named_parameters()]
    keep = param_filter_for(model, ["blocks.*.attn.*", raw[0]])
    assert keep is not None
    attention = tlens_param_filter(model, "blocks.*.attn.*")
    params = dict(model.named_parameters())
    want = [n for n in raw if attention(n, params[n]) or n == raw[0]]
    assert [n for n in raw if keep(n, params[n])] == want
    with pytest.raises(CLIError, match=r"--params 'no_such\.\*' matches no trainable parameter"):
        param_filter_for(model, ["no_such.*"])
