"""Parameter selection, dotted-name globs and the flat-vector round trip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hessian_eigenthings import (
    InvalidArgumentError,
    ParamSpace,
    match_names,
    match_regex,
    params_to_vector,
    select_parameters,
    vector_to_params,
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.ModuleDict({"q": nn.Linear(2, 2), "k": nn.Linear(2, 2, bias=False)})
        self.mlp = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
        self.ln = nn.LayerNorm(2)


class Tiny(nn.Module):
    """A real module tree with GPT-2-like dotted names: blocks.0.attn.q.weight, ..."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 2)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(2, 5)
        self.head.weight = self.embed.weight  # tied: appears once, as embed.weight


def names(model: nn.Module, f) -> list[str]:
    return [n for n, _ in select_parameters(model, f)]


def test_select_parameters_keeps_named_parameters_order_and_dedups_tied() -> None:
    model = Tiny()
    all_names = names(model, None)
    assert all_names == [n for n, _ in model.named_parameters()]
    assert "head.weight" not in all_names  # tied to embed.weight
    assert all_names.count("embed.weight") == 1


def test_star_matches_one_component_and_modules_select_their_parameters() -> None:
    model = Tiny()
    assert names(model, match_names("blocks.*.attn.*")) == [
        "blocks.0.attn.q.weight",
        "blocks.0.attn.q.bias",
        "blocks.0.attn.k.weight",
        "blocks.1.attn.q.weight",
        "blocks.1.attn.q.bias",
        "blocks.1.attn.k.weight",
    ]
    # A pattern naming a module selects all of its parameters.
    assert names(model, match_names("blocks.1.mlp")) == [
        "blocks.1.mlp.0.weight",
        "blocks.1.mlp.0.bias",
        "blocks.1.mlp.1.weight",
        "blocks.1.mlp.1.bias",
    ]
    # `*` does not cross a dot, so "*.weight" names only top-level modules' weights (head's is
    # tied to embed's and listed once, as embed.weight).
    assert names(model, match_names("*.weight")) == ["embed.weight"]


def test_double_star_question_mark_and_classes() -> None:
    model = Tiny()
    assert names(model, match_names("**.bias")) == [
        n for n, _ in model.named_parameters() if n.endswith("bias")
    ]
    assert names(model, match_names("blocks.**.weight"))[0] == "blocks.0.attn.q.weight"
    assert names(model, match_names("blocks.?.ln.*")) == [
        "blocks.0.ln.weight",
        "blocks.0.ln.bias",
        "blocks.1.ln.weight",
        "blocks.1.ln.bias",
    ]
    assert names(model, match_names("blocks.[1].attn.[!q].*")) == ["blocks.1.attn.k.weight"]
    assert names(model, match_names("blocks.0.ln.bias", "head")) == [
        "blocks.0.ln.bias",
        "head.bias",
    ]


def test_match_regex_searches() -> None:
    model = Tiny()
    assert names(model, match_regex(r"blocks\.\d+\.mlp\.1\.")) == [
        "blocks.0.mlp.1.weight",
        "blocks.0.mlp.1.bias",
        "blocks.1.mlp.1.weight",
        "blocks.1.mlp.1.bias",
    ]


def test_bad_filters_raise_with_the_fix() -> None:
    model = Tiny()
    with pytest.raises(InvalidArgumentError, match="param_filter selected no trainable"):
        select_parameters(model, match_names("nothing.*"))
    with pytest.raises(InvalidArgumentError, match="at least one pattern"):
        match_names()
    with pytest.raises(InvalidArgumentError, match="invalid regular expression"):
        match_regex("(")
    with pytest.raises(InvalidArgumentError, match="callable"):
        select_parameters(model, "blocks.*")  # type: ignore[arg-type]
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(InvalidArgumentError, match="requires_grad"):
        select_parameters(frozen)


shapes = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(shapes=shapes, seed=st.integers(0, 2**16))
def test_vector_round_trip(shapes: list[list[int]], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    vec = params_to_vector(tensors)
    assert vec.shape == (sum(t.numel() for t in tensors),)
    back = vector_to_params(vec, tensors)
    assert all(torch.equal(a, b) and a.shape == b.shape for a, b in zip(back, tensors, strict=True))
    # vector_to_params returns views: writing through them writes the vector.
    back[0].zero_()
    assert torch.count_nonzero(vec[: tensors[0].numel()]) == 0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_param_space_flatten_unflatten_inverse(seed: int) -> None:
    model = Tiny()
    space = ParamSpace.from_model(model, match_names("blocks.*.mlp", "embed"))
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(space.size, generator=g)
    assert torch.equal(space.flatten(space.unflatten(v)), v)
    assert space.size == sum(p.numel() for p in space.params)


def test_vector_to_params_rejects_wrong_length_and_mixed_dtypes() -> None:
    t = [torch.zeros(2, 3), torch.zeros(4)]
    with pytest.raises(InvalidArgumentError, match="10 entries"):
        vector_to_params(torch.zeros(9), t)
    with pytest.raises(InvalidArgumentError, match="several dtypes"):
        params_to_vector([torch.zeros(2), torch.zeros(2, dtype=torch.float64)])


def test_param_space_refuses_mixed_dtypes() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(InvalidArgumentError, match="mix dtypes"):
        ParamSpace.from_model(model)
