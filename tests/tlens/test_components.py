"""Per-component operators and spectra: the right parameters, head slices and eigenvalues."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.operators.base import CurvatureOperator
from hessian_eigenthings.operators.ggn import GGNOperator
from hessian_eigenthings.param_utils import ParamFilter, ParamSpace
from hessian_eigenthings_tlens import component_operators, component_spectra, tlens_names
from tests.tlens.models import MODEL_KINDS, TINY, tiny_model
from tests.tlens.test_operators import assert_products, block

N_LAYERS, N_HEADS, D_HEAD = TINY["n_layers"], TINY["n_heads"], TINY["d_head"]
KIND = MODEL_KINDS[0]


def tree_names(model: nn.Module, path: str) -> list[str]:
    """Raw names of the parameters under ``path`` in the model's module tree, in order."""
    ids = {id(p) for p in nn.Module.get_submodule(model, path).parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


@pytest.mark.parametrize("kind", ["blocks", "attn", "mlp"])
def test_pattern_components_select_their_parameters(
    model: nn.Module, batches: list[Any], kind: str
) -> None:
    ops = component_operators(model, batches, components=kind)  # type: ignore[arg-type]
    suffix = "" if kind == "blocks" else f".{kind}"
    assert list(ops) == [f"blocks.{i}{suffix}" for i in range(N_LAYERS)]
    for name, op in ops.items():
        assert list(op.space.names) == tree_names(model, name)  # type: ignore[attr-defined]


def test_named_components_and_operator_choice(model: nn.Module, batches: list[Any]) -> None:
    ops = component_operators(
        model,
        batches,
        components={"embeddings": ("embed", "pos_embed"), "queries": "blocks.*.attn.W_Q"},
        operator="ggn",
        num_batches=1,
    )
    assert list(ops) == ["embeddings", "queries"]
    assert all(isinstance(op, GGNOperator) for op in ops.values())
    assert ops["embeddings"].size == (TINY["d_vocab"] + TINY["n_ctx"]) * TINY["d_model"]
    assert ops["queries"].size == N_LAYERS * N_HEADS * D_HEAD * TINY["d_model"]


def head_labels(model: nn.Module, raw: str) -> torch.Tensor:
    """Which head owns each entry of an attention parameter (-1: shared), by explicit slicing."""
    p = dict(model.named_parameters())[raw]
    leaf = tlens_names(model)[raw].canonical.rsplit(".", 1)[-1]
    label = torch.full(p.shape, -1)
    for h in range(N_HEADS):
        rows = slice(h * D_HEAD, (h + 1) * D_HEAD)
        if leaf == "b_O":
            continue
        if p.ndim == 3 or (p.ndim == 2 and p.shape[0] == N_HEADS):  # HookedTransformer layout
            label[h] = h
        elif leaf == "W_O":  # nn.Linear (d_model, heads·d_head): the head's input columns
            label[:, rows] = h
        else:  # W_Q/W_K/W_V (heads·d_head, d_model) and their biases: the head's output rows
            label[rows] = h
    return label.reshape(-1)


def test_head_operators_are_the_hessians_head_blocks(
    model: nn.Module, batches: list[Any], dense_hessian: torch.Tensor
) -> None:
    ops = component_operators(model, batches, components="heads")
    expected = [f"blocks.{i}.attn.head.{h}" for i in range(N_LAYERS) for h in range(N_HEADS)]
    assert list(ops) == expected
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        offsets[name], start = start, start + p.numel()
    for layer in range(N_LAYERS):
        labels = {n: head_labels(model, n) for n in tree_names(model, f"blocks.{layer}.attn")}
        covered = torch.cat([(lab >= 0) for lab in labels.values()])
        shared = sum(int((lab < 0).sum()) for lab in labels.values())
        assert shared == TINY["d_model"]  # only b_O belongs to no head
        sizes = []
        for h in range(N_HEADS):
            index = torch.cat(
                [torch.nonzero(lab == h).view(-1) + offsets[n] for n, lab in labels.items()]
            )
            op = ops[f"blocks.{layer}.attn.head.{h}"]
            sizes.append(op.size)
            d = TINY["d_model"]
            assert op.size == index.numel() == 3 * (D_HEAD * d + D_HEAD) + d * D_HEAD
            assert_products(op, dense_hessian[index][:, index], matvec=h == 0)
        assert sum(sizes) == int(covered.sum())


class DenseBlock(CurvatureOperator):
    """An operator-factory product for the tests: the block of a dense all-parameter matrix
    that the filter selects, with the ``space`` a model operator carries."""

    def __init__(self, model: nn.Module, param_filter: ParamFilter, M: torch.Tensor) -> None:
        self.space = ParamSpace.from_model(model, param_filter)
        self.matrix = block(M, model, self)

    @property
    def size(self) -> int:
        return self.space.size

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matrix @ v


def test_component_spectra_are_the_top_eigenvalues_of_each_block(
    model: nn.Module, batches: list[Any], dense_hessian: torch.Tensor
) -> None:
    def factory(m: nn.Module, data: Any, keep: ParamFilter) -> CurvatureOperator:
        return DenseBlock(m, keep, dense_hessian)

    for components in ("blocks", "heads"):
        spectra = component_spectra(model, batches, components=components, k=3, operator=factory)
        ops = component_operators(model, batches, components=components, operator=factory)
        assert list(spectra) == list(ops)
        for name, result in spectra.items():
            matrix = getattr(ops[name], "matrix", None)
            if matrix is None:  # a head: the restriction of its layer's block
                V = torch.eye(ops[name].size, dtype=torch.float64)
                matrix = ops[name].matmat(V)
            expected = torch.linalg.eigvalsh(matrix).flip(0)[:3]
            torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-8, atol=1e-10)


def test_component_spectra_on_the_real_operator() -> None:
    model = tiny_model(KIND, n_layers=1)
    batch = [torch.randint(0, 13, (2, 6), generator=torch.Generator().manual_seed(2))]
    result = component_spectra(model, batch, components={"ln_final": "ln_final"}, k=2, seed=0)
    op = component_operators(model, batch, components={"ln_final": "ln_final"})["ln_final"]
    expected = torch.linalg.eigvalsh(op.to_dense()).flip(0)[:2]
    torch.testing.assert_close(result["ln_final"].eigenvalues, expected, rtol=1e-8, atol=1e-10)
    again = component_spectra(model, batch, components={"ln_final": "ln_final"}, k=2, seed=0)
    assert torch.equal(again["ln_final"].eigenvalues, result["ln_final"].eigenvalues)


def test_grouped_query_heads_are_key_value_groups() -> None:
    model = tiny_model(KIND, n_layers=1, n_heads=4, d_head=2, n_key_value_heads=2)
    ops = component_operators(model, [torch.zeros(1, 3, dtype=torch.long)], components="heads")
    assert list(ops) == ["blocks.0.attn.kv_group.0", "blocks.0.attn.kv_group.1"]
    d, dh = TINY["d_model"], 2
    # two query heads (rows of W_Q, b_Q and columns of W_O) and one key/value head each
    per_group = 2 * (dh * d + dh) + 2 * (dh * d + dh) + 2 * d * dh
    assert [op.size for op in ops.values()] == [per_group, per_group]


def test_component_errors(model: nn.Module, batches: list[Any]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"component 'blocks\.0\.attn\.head\.0'"):
        component_spectra(model, batches, components="heads", k=10_000)
    with pytest.raises(InvalidArgumentError, match="sets param_filter"):
        component_operators(model, batches, param_filter=lambda n, p: True)
    with pytest.raises(InvalidArgumentError, match="components must be"):
        component_operators(model, batches, components="layers")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="operator must be"):
        component_operators(model, batches, operator="fisher")
    attn_only = tiny_model(KIND, n_layers=1, attn_only=True)
    with pytest.raises(InvalidArgumentError, match="no MLPs"):
        component_operators(attn_only, batches, components="mlp")
    with pytest.raises(InvalidArgumentError, match="no parameters named blocks"):
        component_operators(nn.Linear(2, 2), batches)
