"""FisherOperator: type-2 (exact, via the loss-Hessian square root) equals the dense GGN for
cross-entropy, MSE and BCE; the Monte-Carlo Fisher converges to it like 1/√M, is one fixed
matrix, and is reproducible bit for bit."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from hessian_eigenthings import (
    BUILTIN_OPERATORS,
    FisherOperator,
    InvalidArgumentError,
    get_registries,
    match_names,
    select_parameters,
)
from hessian_eigenthings.loss_fns import supervised_forward, supervised_loss_of_output
from tests.core.oracles import dense_ggn, rel_err
from tests.core.zoo import CASE_IDS, CASES, Case, attention, mlp, mlp_bce, mlp_mse
from tests.core.zoo_losses import analytical_loss

TOL = 1e-10


def _fisher(case: Case, **kw: Any) -> FisherOperator:
    return FisherOperator(case.model, case.batches, case.forward, analytical_loss(case), **kw)


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_type2_is_the_ggn(make_case: Any) -> None:
    case = make_case()
    G = dense_ggn(case)
    op = _fisher(case)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_err(op.matvec(v), G @ v) < TOL
    assert rel_err(op.to_dense(), G) < TOL  # matmat on blocks of identity columns


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_type2_param_filter_and_microbatching(make_case: Any) -> None:
    case = make_case()
    selection = match_names(*case.subset)
    names = [n for n, _ in select_parameters(case.model, selection)]
    D = _fisher(case, param_filter=selection).to_dense()
    assert rel_err(D, dense_ggn(case, names)) < TOL
    micro = _fisher(case, param_filter=selection, microbatch_size=2).to_dense()
    assert rel_err(micro, D) < 1e-12


def test_type2_with_a_torch_criterion() -> None:
    case = mlp()
    op = FisherOperator(
        case.model,
        case.batches,
        supervised_forward,
        supervised_loss_of_output(nn.CrossEntropyLoss()),
    )
    assert rel_err(op.to_dense(), dense_ggn(case)) < TOL


# -- Monte-Carlo ----------------------------------------------------------------------------


@pytest.mark.parametrize("make_case", [mlp, mlp_mse, mlp_bce, attention])
def test_mc_converges_like_one_over_sqrt_m(make_case: Any) -> None:
    # Error of F̂ V against the exact F V, averaged over 4 seeds, for M = 1 … 256: the log-log
    # slope of a least-squares fit must be ≈ −1/2 (fixed seeds, so the check is deterministic).
    case = make_case()
    G = dense_ggn(case)
    V = torch.randn(G.shape[0], 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = G @ V
    sizes = [1, 4, 16, 64, 256]
    errors = []
    for m in sizes:
        per_seed = [
            rel_err(_fisher(case, fisher_type="mc", mc_samples=m, seed=s).matmat(V), exact)
            for s in range(4)
        ]
        errors.append(sum(per_seed) / len(per_seed))
    xs = [math.log(m) for m in sizes]
    ys = [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    assert -0.65 < slope < -0.35, (slope, errors)
    assert errors[-1] < errors[0] / 8


def test_mc_is_one_fixed_reproducible_matrix() -> None:
    case = mlp_mse()
    op = _fisher(case, fisher_type="mc", mc_samples=3, seed=7)
    D = op.to_dense()
    assert torch.equal(op.to_dense(), D)  # the same draws at every product
    assert torch.equal(_fisher(case, fisher_type="mc", mc_samples=3, seed=7).to_dense(), D)
    from_generator = _fisher(
        case, fisher_type="mc", mc_samples=3, seed=torch.Generator().manual_seed(7)
    )
    assert torch.equal(from_generator.to_dense(), D)
    other = _fisher(case, fisher_type="mc", mc_samples=3, seed=8).to_dense()
    assert not torch.allclose(other, D)
    # a matrix: symmetric positive semi-definite, and matvec agrees with its columns
    assert torch.allclose(D, D.T, rtol=0, atol=1e-12 * float(D.abs().max()))
    assert float(torch.linalg.eigvalsh(D).min()) > -1e-12 * float(D.abs().max())
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert rel_err(op.matvec(v), D @ v) < 1e-12
    # the draws are made per batch, so splitting batches does not change them
    micro = _fisher(case, fisher_type="mc", mc_samples=3, seed=7, microbatch_size=2)
    assert rel_err(micro.to_dense(), D) < 1e-12


# -- state and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("fisher_type", ["type-2", "mc"])
def test_model_state_is_untouched(fisher_type: str) -> None:
    case = mlp()
    for p in case.model.parameters():
        p.grad = torch.randn_like(p)
    values = [p.detach().clone() for p in case.model.parameters()]
    grads = [p.grad for p in case.model.parameters()]

    def check() -> None:
        for p, v, g in zip(case.model.parameters(), values, grads, strict=True):
            assert torch.equal(p.detach(), v)
            assert p.grad is g
        assert all(m.training for m in case.model.modules())

    _fisher(case, fisher_type=fisher_type, seed=0).matmat(torch.randn(57, 2, dtype=torch.float64))
    check()
    calls = [0]

    def failing(model: nn.Module, batch: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] > 2:
            raise RuntimeError("forward failed midway")
        return model(batch[0])  # type: ignore[no-any-return]

    op = FisherOperator(
        case.model, case.batches, failing, analytical_loss(case), fisher_type=fisher_type, seed=0
    )
    with pytest.raises(RuntimeError, match="failed midway"):
        op.matvec(torch.randn(op.size, dtype=torch.float64))
    check()


def test_errors() -> None:
    case = mlp()
    loss = analytical_loss(case)
    args = (case.model, case.batches, case.forward)
    with pytest.raises(InvalidArgumentError, match="EmpiricalFisherOperator"):
        FisherOperator(*args, loss, fisher_type="empirical")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="fisher_type"):
        FisherOperator(*args, loss, fisher_type="type-1")  # type: ignore[arg-type]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="mc_samples"):
            FisherOperator(*args, loss, fisher_type="mc", mc_samples=bad)  # type: ignore[arg-type]
    custom = case.with_weight(case.loss_of_output)  # no likelihood methods
    for fisher_type in ("type-2", "mc"):
        with pytest.raises(InvalidArgumentError, match="GGNOperator"):
            FisherOperator(*args, custom, fisher_type=fisher_type)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="seed"):
        FisherOperator(*args, loss, fisher_type="mc", seed="0")  # type: ignore[arg-type]
    reg = mlp_mse()
    per_row = FisherOperator(
        reg.model,
        reg.batches,
        lambda m, b: m(b[0]).reshape(-1),
        analytical_loss(reg),
        fisher_type="mc",
        seed=0,
    )
    with pytest.raises(InvalidArgumentError, match="dimension 0"):
        per_row.matvec(torch.zeros(per_row.size, dtype=torch.float64))


def test_registered() -> None:
    assert BUILTIN_OPERATORS["fisher"][0] is FisherOperator
    assert get_registries().operators.get("fisher") is FisherOperator
