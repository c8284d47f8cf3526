"""A bridge around an HF GPT-2: tied embedding/unembedding, HF names, split QKV views.

``named_parameters()`` reports the tied matrix once (as ``transformer.wte...``), while the
model uses it twice (embedding and unembedding): the operators, which differentiate the live
module, must see both uses. The oracle writes the tensor into both slots (see
``oracles.functional_logits``) and is checked against finite differences of the live model.

The bridge splits GPT-2's fused ``c_attn`` weight into q/k/v parameters that are *views* of
its storage and leaves the fused weight registered (``attn.qkv``) but unused. The oracle is
built over every other parameter: perturbing the fused weight in place would also move the
views. The operators must give zero curvature on the fused weight's coordinates.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from hessian_eigenthings.operators.hessian import HessianOperator
from hessian_eigenthings_tlens import (
    component_operators,
    tlens_loss,
    tlens_names,
    tlens_param_filter,
)
from tests.tlens import oracles
from tests.tlens.models import gpt2_bridge, has_bridge_builder, token_batches
from tests.tlens.test_operators import assert_products, block, untouched

pytestmark = pytest.mark.skipif(
    not has_bridge_builder(),
    reason="wrapping an HF model in a TransformerBridge needs transformer-lens >= 4",
)


@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    return gpt2_bridge()


def live_names(model: nn.Module) -> list[str]:
    """Every parameter except the fused QKV source the forward does not read."""
    return [n for n, e in tlens_names(model).items() if not e.fused_source]


@pytest.fixture(scope="module")
def gpt2_hessian(gpt2: nn.Module) -> torch.Tensor:
    """Oracle over ``live_names`` (all parameters but the fused QKV weight and bias)."""
    return oracles.dense_hessian(gpt2, token_batches(), live_names(gpt2))


def test_the_fused_qkv_source_is_flagged_and_never_selected(gpt2: nn.Module) -> None:
    names = tlens_names(gpt2)
    fused = [e.canonical for e in names.values() if e.fused_source]
    assert fused == ["blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"]
    keep = tlens_param_filter(gpt2, "blocks.0.attn")
    assert [n for n, p in gpt2.named_parameters() if keep(n, p)] == [
        n for n in live_names(gpt2) if names[n].canonical.startswith("blocks.0.attn.")
    ]


def test_the_tied_matrix_answers_to_both_names(gpt2: nn.Module) -> None:
    names = tlens_names(gpt2)
    (tied,) = [n for n, e in names.items() if e.canonical == "embed.W_E"]
    assert "unembed.W_U" in names[tied].aliases
    assert [n for n, _ in gpt2.named_parameters() if tlens_param_filter(gpt2, "unembed")(n, _)] == [
        tied
    ]
    attn = tlens_param_filter(gpt2, "blocks.0.attn")
    canon = [names[n].canonical for n, p in gpt2.named_parameters() if attn(n, p)]
    assert {"blocks.0.attn.W_Q", "blocks.0.attn.W_O", "blocks.0.attn.b_V"} <= set(canon)


def test_hessian_through_tied_weights(gpt2: nn.Module, gpt2_hessian: torch.Tensor) -> None:
    live = tlens_param_filter(gpt2, "**")
    op = HessianOperator(gpt2, token_batches(), tlens_loss(), param_filter=live)
    assert list(op.space.names) == live_names(gpt2)
    expected = block(gpt2_hessian, gpt2, op, live_names(gpt2))
    with untouched(gpt2):
        assert_products(op, expected, matvec=True)
    embed_only = HessianOperator(
        gpt2, token_batches(), tlens_loss(), param_filter=tlens_param_filter(gpt2, "unembed.W_U")
    )
    assert_products(embed_only, block(gpt2_hessian, gpt2, embed_only, live_names(gpt2)))
    fd = HessianOperator(
        gpt2, token_batches(), tlens_loss(), param_filter=live, method="finite_difference"
    )
    with untouched(gpt2):
        assert_products(fd, expected, rtol=1e-6)


def test_all_parameters_give_zero_curvature_on_the_fused_source(
    gpt2: nn.Module, gpt2_hessian: torch.Tensor
) -> None:
    op = HessianOperator(gpt2, token_batches(), tlens_loss())  # no filter: qkv included
    live = torch.tensor([not e.fused_source for e in tlens_names(gpt2).values()])
    sizes = [p.numel() for p in op.space.params]
    mask = torch.repeat_interleave(live, torch.tensor(sizes))
    V = torch.randn(op.size, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = op.matmat(V)
    assert bool((got[~mask] == 0).all())
    expected = gpt2_hessian @ V[mask]
    assert ((got[mask] - expected).norm() / expected.norm()).item() < 1e-10


def head_index(gpt2: nn.Module, head: int) -> torch.Tensor:
    """Coordinates of ``head`` in the oracle's vector: rows of the nn.Linear q/k/v weights
    and biases, rows of the Conv1D output projection (stored (in, out))."""
    names = tlens_names(gpt2)
    params = dict(gpt2.named_parameters())
    rows = slice(4 * head, 4 * head + 4)
    out, start = [], 0
    for raw in live_names(gpt2):
        p = params[raw]
        leaf = names[raw].canonical
        label = torch.zeros(p.shape, dtype=torch.bool)
        if leaf.startswith("blocks.0.attn.") and leaf.rsplit(".", 1)[-1] in (
            "W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O",
        ):  # fmt: skip
            label[rows] = True
        out.append(torch.nonzero(label.reshape(-1)).view(-1) + start)
        start += p.numel()
    return torch.cat(out)


def test_heads_with_linear_and_conv1d_projections(
    gpt2: nn.Module, gpt2_hessian: torch.Tensor
) -> None:
    batches: list[Any] = token_batches()
    ops = component_operators(gpt2, batches, components="heads")
    assert list(ops) == ["blocks.0.attn.head.0", "blocks.0.attn.head.1"]
    for h, op in enumerate(ops.values()):
        index = head_index(gpt2, h)
        assert op.size == index.numel() == 3 * (4 * 8 + 4) + 4 * 8
        assert_products(op, gpt2_hessian[index][:, index])
