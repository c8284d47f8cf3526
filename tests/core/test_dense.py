"""Explicit Hessian matrices (hessian_eigenthings.dense) against plain double backward.

The reference here uses only ``torch.autograd.grad`` on the real parameters (one second
backward per gradient entry), no torch.func: it is right for LayerNorm on this torch, where
``torch.func.hessian`` and ``jacrev(jacrev(·))`` are not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from hessian_eigenthings import HessianOperator, InvalidArgumentError, dense, match_names
from hessian_eigenthings.dense import hessian_blocks, loss_hessian_matrix, model_hessian_matrix
from tests.core.oracles import dense_hessian, rel_err
from tests.core.zoo import attention, layernorm_mlp, tied_embedding


def double_backward_hessian(
    scalar: Callable[[], torch.Tensor], params: Sequence[torch.Tensor]
) -> torch.Tensor:
    """∇²s by differentiating every entry of ∇s again (reference only: n backward passes)."""
    grads = torch.autograd.grad(scalar(), params, create_graph=True)
    g = torch.cat([t.reshape(-1) for t in grads])
    rows = []
    for i in range(g.numel()):
        row = torch.autograd.grad(
            g[i], params, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        rows.append(torch.cat([r.reshape(-1) for r in row]))
    return torch.stack(rows)


def model_reference(
    model: nn.Module, args: tuple[torch.Tensor, ...], params: list[torch.Tensor]
) -> torch.Tensor:
    """Per output entry k, the double-backward Hessian of model(*args)[k]."""
    shape = model(*args).shape
    H = torch.stack(
        [
            double_backward_hessian(lambda k=k: model(*args).reshape(-1)[k], params)
            for k in range(shape.numel())
        ]
    )
    return H.reshape(*shape, *H.shape[-2:])


class MimoModel(nn.Module):
    """The reference package's two-input, two-output demo model."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(m, m))
        self.B = nn.Parameter(torch.randn(m, m))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        row_1 = torch.trace(self.A.T @ self.A) * x
        row_2 = torch.trace(self.B.T @ self.B) * y
        return torch.hstack((row_1, row_2))


def mimo() -> tuple[MimoModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = MimoModel(2).double()
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    return model, x, -1.0 * x


def test_seed_example_shapes_and_values() -> None:
    model, x, y = mimo()
    H = model_hessian_matrix(model, (x, y))
    assert H.shape == (2, 4, 8, 8)
    # f[b, o] = ‖A‖² x[b, o] (o < 2) or ‖B‖² y[b, o-2]: ∂²/∂A² = 2 x[b, o] I, nothing else
    expected = torch.zeros(2, 4, 8, 8, dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    for b in range(2):
        for o in range(2):
            expected[b, o, :4, :4] = 2 * x[b, o] * eye
            expected[b, o + 2, 4:, 4:] = 2 * y[b, o] * eye
    assert torch.equal(H, expected)
    H_A = model_hessian_matrix(model, (x, y), params=["A"])
    assert H_A.shape == (2, 4, 4, 4)
    assert torch.equal(H_A, expected[..., :4, :4])

    criterion = nn.MSELoss()
    target = torch.randn(2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    L = loss_hessian_matrix(model, criterion, (x, y), target)
    assert L.shape == (8, 8)
    ref = double_backward_hessian(lambda: criterion(model(x, y), target), [model.A, model.B])
    assert rel_err(L, ref) < 1e-12
    L_A = loss_hessian_matrix(model, criterion, (x, y), target, params=["A"])
    assert L_A.shape == (4, 4)
    assert not L_A.requires_grad  # no graph to the unselected B
    assert rel_err(L_A, ref[:4, :4]) < 1e-12


def _ln_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """LayerNorm on a hidden layer, non-trivial affine map (the torch.func.hessian trap)."""
    case = layernorm_mlp()
    x, y = case.full_batch
    return case.model, x, y


def test_layernorm_model_hessian_matches_double_backward() -> None:
    model, x, _ = _ln_model()
    params = list(model.parameters())
    H = model_hessian_matrix(model, x[:3])
    ref = model_reference(model, (x[:3],), params)
    assert H.shape == (3, 3, 53, 53)
    assert rel_err(H, ref) < 1e-12
    ln = slice(4 * 5 + 5, 4 * 5 + 5 + 5)  # LayerNorm weight entries
    assert ref[..., ln, :].abs().max() > 1e-2  # the block the trap gets wrong is non-trivial


def test_layernorm_loss_hessian_matches_double_backward() -> None:
    model, x, y = _ln_model()
    criterion = nn.CrossEntropyLoss()
    L = loss_hessian_matrix(model, criterion, x, y)
    ref = double_backward_hessian(lambda: criterion(model(x), y), list(model.parameters()))
    assert rel_err(L, ref) < 1e-12
    assert torch.equal(L, L.T) or rel_err(L, L.T) < 1e-14


def test_loss_hessian_agrees_with_the_operator_and_the_oracle() -> None:
    case = attention()
    x, y = case.full_batch
    L = loss_hessian_matrix(case.model, lambda out, t: case.loss_of_output(out, (x, t)), x, y)
    assert rel_err(L, dense_hessian(case)) < 1e-12
    single = HessianOperator(case.model, [(x, y)], case.loss)
    assert rel_err(single.to_dense(), L) < 1e-10
    names = ["ln.weight", "ln.bias", "q.weight", "q.bias"]
    sub = loss_hessian_matrix(
        case.model, lambda out, t: case.loss_of_output(out, (x, t)), x, y, params=names[::-1]
    )
    op = HessianOperator(case.model, [(x, y)], case.loss, param_filter=match_names("ln.*", "q.*"))
    assert rel_err(op.to_dense(), sub) < 1e-10  # same layout: named_parameters() order


@pytest.mark.parametrize("chunk", [3, 256])
def test_diagonal_is_the_diagonal_of_the_full_matrix(
    chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dense, "CHUNK", chunk)  # several chunks, or one
    model, x, y = _ln_model()
    criterion = nn.CrossEntropyLoss()
    full = loss_hessian_matrix(model, criterion, x, y)
    diag = loss_hessian_matrix(model, criterion, x, y, diagonal=True)
    assert diag.shape == (53,)
    assert rel_err(diag, torch.diagonal(full)) < 1e-14
    M = model_hessian_matrix(model, x[:2])
    Md = model_hessian_matrix(model, x[:2], diagonal=True)
    assert Md.shape == (2, 3, 53)
    assert rel_err(Md, torch.diagonal(M, dim1=-2, dim2=-1)) < 1e-14
    assert rel_err(M, model_reference(model, (x[:2],), list(model.parameters()))) < 1e-12


def test_blocks_split_and_reassemble() -> None:
    model, x, y = mimo()
    H = model_hessian_matrix(model, (x, y))
    blocks = hessian_blocks(H, model)
    assert list(blocks) == ["A", "B"]
    assert blocks["A"]["B"].shape == (2, 4, 2, 2, 2, 2)
    rebuilt = torch.cat(
        [
            torch.cat([blocks[p][q].reshape(2, 4, 4, 4) for q in ("A", "B")], dim=-1)
            for p in ("A", "B")
        ],
        dim=-2,
    )
    assert torch.equal(rebuilt, H)
    L = loss_hessian_matrix(model, nn.MSELoss(), (x, y), torch.zeros(2, 4).double())
    assert torch.equal(hessian_blocks(L, model)["B"]["A"], torch.zeros(2, 2, 2, 2).double())
    with pytest.raises(InvalidArgumentError, match=r"must end in \(4, 4\)"):
        hessian_blocks(L, model, params=["A"])


def test_tied_parameters_are_one_parameter_under_either_name() -> None:
    case = tied_embedding()
    x, y = case.full_batch

    def crit(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return case.loss_of_output(out, (x, t))

    full = loss_hessian_matrix(case.model, crit, x, y)
    assert rel_err(full, dense_hessian(case)) < 1e-12
    by_alias = loss_hessian_matrix(case.model, crit, x, y, params=["head.weight"])
    assert rel_err(by_alias, full[:18, :18]) < 1e-14
    with pytest.raises(InvalidArgumentError, match="more than once"):
        loss_hessian_matrix(case.model, crit, x, y, params=["head.weight", "emb.weight"])


def test_bad_input() -> None:
    model, x, y = mimo()
    with pytest.raises(InvalidArgumentError, match=r"\['C'\] are not parameters"):
        model_hessian_matrix(model, (x, y), params=["C"])
    with pytest.raises(InvalidArgumentError, match="list of parameter names"):
        model_hessian_matrix(model, (x, y), params="A")
    with pytest.raises(InvalidArgumentError, match="inputs must be a tensor"):
        model_hessian_matrix(model, {"x": x})
    with pytest.raises(InvalidArgumentError, match="criterion must return a scalar"):
        loss_hessian_matrix(model, nn.MSELoss(reduction="none"), (x, y), torch.zeros(2, 4))
    with pytest.raises(InvalidArgumentError, match="model's output must be a tensor"):
        model_hessian_matrix(nn.LSTM(2, 2).double(), torch.zeros(3, 1, 2).double())
    bn = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).double().train()
    with pytest.raises(InvalidArgumentError, match=r"model\.eval\(\)"):
        model_hessian_matrix(bn, torch.zeros(3, 2).double())
    drop = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).double().train()
    with pytest.raises(InvalidArgumentError, match=r"dropout .* model\.eval\(\)"):
        model_hessian_matrix(drop, torch.zeros(3, 2).double())
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(InvalidArgumentError, match="no trainable parameters"):
        model_hessian_matrix(frozen, torch.zeros(3, 2))
    # naming a frozen parameter explicitly is allowed: torch.func needs no requires_grad
    assert model_hessian_matrix(frozen, torch.zeros(3, 2), params=["bias"]).shape == (3, 2, 2, 2)
