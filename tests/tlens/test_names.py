"""TransformerLens names select exactly the expected raw parameters of any TransformerLens model.

Expected selections are read off the model's module tree (``model.blocks[l].attn`` etc.), not
off the name mapping under test.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import hessian_eigenthings as he
from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings_tlens import tlens_loss, tlens_names, tlens_param_filter
from hessian_eigenthings_tlens.names import transformer_lens_name
from tests.tlens.models import TINY

LAYER_NAMES = [
    "ln1.w", "ln1.b",
    "attn.W_Q", "attn.b_Q", "attn.W_K", "attn.b_K", "attn.W_V", "attn.b_V", "attn.W_O", "attn.b_O",
    "ln2.w", "ln2.b",
    "mlp.W_in", "mlp.b_in", "mlp.W_out", "mlp.b_out",
]  # fmt: skip


def selected(model: nn.Module, *patterns: str) -> list[str]:
    keep = tlens_param_filter(model, *patterns)
    return [n for n, p in model.named_parameters() if keep(n, p)]


def raw_names_of(model: nn.Module, params: Any) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def submodule(model: nn.Module, path: str) -> nn.Module:
    return nn.Module.get_submodule(model, path)


def test_every_parameter_gets_its_transformer_lens_name(model: nn.Module) -> None:
    canonical = [entry.canonical for entry in tlens_names(model).values()]
    layers = [f"blocks.{i}.{name}" for i in range(TINY["n_layers"]) for name in LAYER_NAMES]
    # HookedTransformer registers W_* before b_* within a module; the bridge follows the
    # wrapped Linear modules (weight, bias): compare as sets plus the overall layout.
    expected = {"embed.W_E", "pos_embed.W_pos", *layers, "ln_final.w", "ln_final.b", "unembed.W_U"}
    assert set(canonical) - {"unembed.b_U"} == expected
    assert len(canonical) == len(set(canonical)) == len(list(model.parameters()))
    assert list(tlens_names(model)) == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("layer", range(TINY["n_layers"]))
@pytest.mark.parametrize("part", ["attn", "mlp", "ln1", "ln2"])
def test_component_patterns_select_the_components_parameters(
    model: nn.Module, layer: int, part: str
) -> None:
    expected = raw_names_of(model, submodule(model, f"blocks.{layer}.{part}").parameters())
    assert expected  # the tree really has this component
    assert set(selected(model, f"blocks.{layer}.{part}")) == expected
    assert set(selected(model, f"blocks.{layer}.{part}.*")) == expected


def test_the_seeds_attention_pattern_selects_every_attention_parameter(model: nn.Module) -> None:
    expected: set[str] = set()
    for layer in range(TINY["n_layers"]):
        expected |= raw_names_of(model, submodule(model, f"blocks.{layer}.attn").parameters())
    got = selected(model, "blocks.*.attn.*")
    assert set(got) == expected
    assert len(got) == 8 * TINY["n_layers"]
    op = he.HessianOperator(model, [torch.zeros(1, 3, dtype=torch.long)], tlens_loss(),
                            param_filter=tlens_param_filter(model, "blocks.*.attn.*"))  # fmt: skip
    assert list(op.space.names) == got  # named_parameters() order
    d, h = TINY["d_model"], TINY["n_heads"] * TINY["d_head"]
    assert op.size == TINY["n_layers"] * (3 * (h * d + h) + d * h + d)


def test_single_weights_by_transformer_lens_name(model: nn.Module) -> None:
    params = dict(model.named_parameters())
    (w_q,) = selected(model, "blocks.1.attn.W_Q")
    (b_in,) = selected(model, "blocks.0.mlp.b_in")
    (w_e,) = selected(model, "embed.W_E")
    (w_u,) = selected(model, "unembed.W_U")
    n_q = TINY["n_heads"] * TINY["d_head"]
    assert params[w_q].numel() == n_q * TINY["d_model"]
    assert params[b_in].shape == (TINY["d_mlp"],)
    assert params[w_e].shape == (TINY["d_vocab"], TINY["d_model"])
    assert params[w_u].numel() == TINY["d_vocab"] * TINY["d_model"]
    assert w_u != w_e
    q_module = raw_names_of(model, submodule(model, "blocks.1.attn").parameters())
    assert w_q in q_module


def test_globs_and_several_patterns(model: nn.Module) -> None:
    norms = selected(model, "**.ln*")
    assert len(norms) == 2 * (2 * TINY["n_layers"] + 1)  # weight and bias of every LayerNorm
    both = selected(model, "embed", "pos_embed")
    assert len(both) == 2
    union = set(selected(model, "blocks.0.attn", "blocks.1.mlp"))
    assert union == set(selected(model, "blocks.0.attn")) | set(selected(model, "blocks.1.mlp"))
    assert selected(model, "blocks.*.attn.W_[QK]") == [
        n
        for n in selected(model, "blocks.*.attn.*")
        if n in set(selected(model, "**.W_Q", "**.W_K"))
    ]


def test_a_pattern_that_selects_nothing_is_an_error(model: nn.Module) -> None:
    with pytest.raises(InvalidArgumentError, match=r"'blocks\.\*\.attention' matches no"):
        tlens_param_filter(model, "blocks.*.attn", "blocks.*.attention")
    with pytest.raises(InvalidArgumentError, match="at least one pattern"):
        tlens_param_filter(model)


def test_raw_names_still_work_and_the_filter_is_a_core_param_filter(model: nn.Module) -> None:
    raw = next(iter(tlens_names(model)))
    assert selected(model, raw) == [raw]
    keep = tlens_param_filter(model, "blocks.0.attn")
    assert he.select_parameters(model, keep) == [
        (n, p) for n, p in model.named_parameters() if n in set(selected(model, "blocks.0.attn"))
    ]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("blocks.3.attn.q.weight", "blocks.3.attn.W_Q"),
        ("blocks.3.attn.o.bias", "blocks.3.attn.b_O"),
        ("blocks.0.mlp.gate.weight", "blocks.0.mlp.W_gate"),
        ("blocks.0.mlp.out.bias", "blocks.0.mlp.b_out"),
        ("blocks.0.ln2.weight", "blocks.0.ln2.w"),
        ("ln_final.bias", "ln_final.b"),
        ("embed.weight", "embed.W_E"),
        ("pos_embed.weight", "pos_embed.W_pos"),
        ("unembed.bias", "unembed.b_U"),
        ("blocks.2.attn._W_K", "blocks.2.attn.W_K"),  # HookedTransformer's grouped-query keys
        ("blocks.0.attn.qkv.weight", None),
        ("blocks.0.q.weight", None),  # a q outside an attention module is not W_Q
        ("weight", None),
    ],
)
def test_transformer_lens_name_table(path: str, name: str | None) -> None:
    assert transformer_lens_name(path) == name
