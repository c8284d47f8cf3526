"""EmpiricalFisherOperator against (1/N) Σ gᵢ gᵢᵀ built one sample at a time, in float64.

Both routes are checked: forward-mode directional derivatives plus one weighted backward
(``per_sample_limit=0``) and explicit per-sample gradients (a limit above the batch sizes).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings import (
    BUILTIN_OPERATORS,
    EmpiricalFisherOperator,
    InvalidArgumentError,
    get_registries,
    match_names,
    select_parameters,
)
from hessian_eigenthings.loss_fns import supervised_per_sample_loss
from tests.core.oracles import dense_empirical_fisher, rel_err
from tests.core.zoo import CASE_IDS, CASES, Case, attention, lstm, mlp
from tests.core.zoo_losses import per_sample_loss, per_sample_losses

TOL = 1e-10
ROUTES = {"forward_mode": 0, "per_sample_gradients": 1000}
VMAPPABLE = [c for c in CASES if c is not lstm]  # nn.LSTM has no vmap batching rule


def _fisher(case: Case, route: str, **kw: Any) -> EmpiricalFisherOperator:
    return EmpiricalFisherOperator(
        case.model,
        case.batches,
        per_sample_loss(case),
        per_sample_limit=ROUTES[route],
        **kw,
    )


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("make_case", VMAPPABLE, ids=[c.__name__ for c in VMAPPABLE])
def test_matches_dense_empirical_fisher(make_case: Any, route: str) -> None:
    case = make_case()
    E = dense_empirical_fisher(case)
    op = _fisher(case, route)
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_err(op.matvec(v), E @ v) < TOL
    assert rel_err(op.to_dense(), E) < TOL  # matmat on blocks of identity columns


@pytest.mark.parametrize("make_case", [mlp, attention], ids=["mlp", "attention"])
def test_shared_jvp_pass(make_case: Any) -> None:
    case = make_case()
    op = _fisher(case, "forward_mode", jvp="shared")
    assert rel_err(op.to_dense(), dense_empirical_fisher(case)) < TOL


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_per_sample_loss_vector_form(make_case: Any) -> None:
    # the reference API's form: loss_fn(model, batch) -> (N,) with per_sample=True (no vmap,
    # so it also serves models vmap cannot batch, like the LSTM)
    case = make_case()
    E = dense_empirical_fisher(case)
    op = EmpiricalFisherOperator(
        case.model, case.batches, loss_fn=per_sample_losses(case), per_sample=True
    )
    assert rel_err(op.to_dense(), E) < TOL


@pytest.mark.parametrize("make_case", VMAPPABLE, ids=[c.__name__ for c in VMAPPABLE])
def test_param_filter_and_microbatching(make_case: Any) -> None:
    case = make_case()
    selection = match_names(*case.subset)
    names = [n for n, _ in select_parameters(case.model, selection)]
    E = dense_empirical_fisher(case, names)
    op = _fisher(case, "forward_mode", param_filter=selection)
    D = op.to_dense()
    assert rel_err(D, E) < TOL
    # chunks of 2 samples take the per-sample-gradient route (default limit 2): same matrix
    micro = EmpiricalFisherOperator(
        case.model, case.batches, per_sample_loss(case), param_filter=selection, microbatch_size=2
    )
    assert rel_err(micro.to_dense(), D) < 1e-12


def test_sample_dim() -> None:
    case = mlp()
    E = dense_empirical_fisher(case)
    # the same data with the samples on dimension 1
    moved = [(x.T, y.unsqueeze(0)) for x, y in case.batches]

    def loss(model: nn.Module, sample: Any) -> torch.Tensor:
        x, y = sample  # x: (5,), y: (1,)
        return F.cross_entropy(model(x.unsqueeze(0)), y)

    for limit in ROUTES.values():
        op = EmpiricalFisherOperator(case.model, moved, loss, sample_dim=1, per_sample_limit=limit)
        assert rel_err(op.to_dense(), E) < TOL


def test_supervised_helper_and_num_total_samples() -> None:
    case = mlp()
    E = dense_empirical_fisher(case)
    op = EmpiricalFisherOperator(
        case.model, case.batches, supervised_per_sample_loss(F.cross_entropy), num_total_samples=11
    )
    assert rel_err(op.to_dense(), 11 * E) < TOL


# -- state and errors ---------------------------------------------------------------------


def test_model_state_is_untouched() -> None:
    case = mlp()
    for p in case.model.parameters():
        p.grad = torch.randn_like(p)
    case.model.train()
    values = [p.detach().clone() for p in case.model.parameters()]
    grads = [p.grad for p in case.model.parameters()]

    def check() -> None:
        for p, v, g in zip(case.model.parameters(), values, grads, strict=True):
            assert torch.equal(p.detach(), v)
            assert p.grad is g
        assert all(m.training for m in case.model.modules())

    for route in ROUTES:
        _fisher(case, route).matmat(torch.randn(57, 2, dtype=torch.float64))
        check()
    calls = [0]
    base = per_sample_loss(case)

    def failing(model: nn.Module, sample: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] > 1:  # one call per vmap: a later call of the same product raises
            raise RuntimeError("loss failed midway")
        return base(model, sample)

    for limit in ROUTES.values():
        calls[0] = 0
        op = EmpiricalFisherOperator(case.model, case.batches, failing, per_sample_limit=limit)
        with pytest.raises(RuntimeError, match="failed midway"):
            op.matvec(torch.randn(op.size, dtype=torch.float64))
        check()


def test_errors() -> None:
    case = mlp()
    model, data = case.model, case.batches
    v = torch.zeros(57, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match="per_sample_loss_fn"):
        EmpiricalFisherOperator(model, data)
    with pytest.raises(InvalidArgumentError, match="per-sample gradients"):
        EmpiricalFisherOperator(model, data, loss_fn=case.loss)
    with pytest.raises(InvalidArgumentError, match="not both"):
        EmpiricalFisherOperator(
            model, data, per_sample_loss(case), loss_fn=case.loss, per_sample=True
        )
    with pytest.raises(InvalidArgumentError, match="sample_dim"):
        EmpiricalFisherOperator(model, data, per_sample_loss(case), sample_dim=-1)
    with pytest.raises(InvalidArgumentError, match="microbatch_size"):
        EmpiricalFisherOperator(model, data, per_sample_loss(case), sample_dim=1, microbatch_size=2)
    with pytest.raises(InvalidArgumentError, match="no batches"):
        EmpiricalFisherOperator(model, [], per_sample_loss(case)).matvec(v)
    for limit in ROUTES.values():
        vector = EmpiricalFisherOperator(
            model,
            data,
            lambda m, s: F.cross_entropy(m(s[0].unsqueeze(0)), s[1].unsqueeze(0), reduction="none"),
            per_sample_limit=limit,
        )
        with pytest.raises(InvalidArgumentError, match="must return a scalar"):
            vector.matvec(v)
    batch_mean = EmpiricalFisherOperator(model, data, loss_fn=case.loss, per_sample=True)
    with pytest.raises(InvalidArgumentError, match="one loss per sample"):
        batch_mean.matvec(v)
    lstm_case = lstm()
    not_vmappable = EmpiricalFisherOperator(
        lstm_case.model, lstm_case.batches, per_sample_loss(lstm_case)
    )
    with pytest.raises(InvalidArgumentError, match="per_sample=True"):
        not_vmappable.matvec(torch.zeros(not_vmappable.size, dtype=torch.float64))


def test_registered() -> None:
    assert BUILTIN_OPERATORS["empirical-fisher"][0] is EmpiricalFisherOperator
    assert get_registries().operators.get("empirical-fisher") is EmpiricalFisherOperator
