"""ggn_diagonal: the exact diagonal equals diag of the dense GGN oracle on the model zoo; the MC
diagonal is unbiased and converges like 1/√M; the stochastic ``diagonal`` estimator applied to
the GGN operator agrees with it (exactly, for XDiag with a full sketch; within its variance for
Hutchinson)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import tests.core.test_operator_state as state
from hessian_eigenthings import GGNOperator, InvalidArgumentError, diagonal, ggn_diagonal
from hessian_eigenthings.loss_fns import (
    bce_with_logits_loss_of_output,
    cross_entropy_loss_of_output,
    mse_loss_of_output,
)
from hessian_eigenthings.param_utils import match_names
from tests.core.oracles import dense_ggn, rel_err, selected
from tests.core.zoo import CASE_IDS, CASES, Case, attention, lstm, mlp, mlp_bce, mlp_mse

F64 = torch.float64


def _loss(case: Case) -> Any:
    return {
        "ce": cross_entropy_loss_of_output(),
        "mse": mse_loss_of_output(),
        "bce": bce_with_logits_loss_of_output(),
    }[case.task]


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_exact_diagonal_matches_the_dense_ggn(make_case: Callable[[], Case]) -> None:
    """Every zoo case: token CE with ignored labels (valid-token weights), tied and frozen
    parameters, LayerNorm, eval-mode BatchNorm, and an LSTM (which vmap cannot batch over
    samples: the per-sample fallback)."""
    case = make_case()
    truth = torch.diagonal(dense_ggn(case))
    d = ggn_diagonal(case.model, case.batches, case.forward, _loss(case))
    assert d.shape == truth.shape
    assert d.dtype == F64
    assert rel_err(d, truth) < 1e-10
    micro = ggn_diagonal(case.model, case.batches, case.forward, _loss(case), microbatch_size=2)
    assert rel_err(micro, truth) < 1e-10


@pytest.mark.parametrize("make_case", [mlp, attention], ids=["mlp", "attention"])
def test_parameter_subset(make_case: Callable[[], Case]) -> None:
    case = make_case()
    keep = match_names(*case.subset)
    names = [n for n in selected(case.model) if keep(n, None)]
    truth = torch.diagonal(dense_ggn(case, names)).detach()
    d = ggn_diagonal(case.model, case.batches, case.forward, _loss(case), param_filter=keep)
    assert not d.requires_grad
    assert rel_err(d, truth) < 1e-10


def test_num_total_samples_and_batch_limits() -> None:
    case = mlp()
    loss = _loss(case)
    base = ggn_diagonal(case.model, case.batches, case.forward, loss)
    scaled = ggn_diagonal(case.model, case.batches, case.forward, loss, num_total_samples=11)
    assert rel_err(scaled, 11 * base) < 1e-14
    first = ggn_diagonal(case.model, case.batches, case.forward, loss, full_dataset=False)
    only = ggn_diagonal(case.model, case.batches[:1], case.forward, loss)
    assert torch.equal(first, only)


@pytest.mark.parametrize("make_case", [mlp, mlp_mse, mlp_bce], ids=["ce", "mse", "bce"])
def test_mc_diagonal_is_unbiased_and_converges(make_case: Callable[[], Case]) -> None:
    case = make_case()
    loss = _loss(case)
    truth = ggn_diagonal(case.model, case.batches, case.forward, loss)

    def mc(seed: int, m: int, **kw: Any) -> torch.Tensor:
        return ggn_diagonal(
            case.model, case.batches, case.forward, loss, method="mc", mc_samples=m, seed=seed, **kw
        )

    assert torch.equal(mc(0, 3), mc(0, 3))  # reproducible
    assert rel_err(mc(0, 3, microbatch_size=2), mc(0, 3)) < 1e-12  # the same draws
    runs = torch.stack([mc(s, 1) for s in range(120)])
    z = (runs.mean(0) - truth).abs() / (runs.std(0) / 120**0.5 + 1e-300)
    assert float(z.max()) < 5  # unbiased, entry by entry
    coarse = sum(rel_err(mc(s, 2), truth) for s in range(4)) / 4
    fine = sum(rel_err(mc(s, 200), truth) for s in range(4)) / 4
    assert fine < coarse / 4  # ∝ 1/√M: 10× smaller expected
    assert fine < 0.05


def test_diagonal_estimator_on_the_ggn_operator_agrees() -> None:
    case = mlp_mse()
    loss = _loss(case)
    exact = ggn_diagonal(case.model, case.batches, case.forward, loss)
    op = GGNOperator(case.model, case.batches, case.forward, loss)
    n = op.size
    # XDiag with n + 1 probe pairs sketches the whole space: exact up to rounding
    xdiag = diagonal(op, 2 * (n + 1), method="xdiag", seed=0)
    assert rel_err(xdiag, exact) < 1e-8
    # Hutchinson: entry j has variance Σ_{k≠j} G_jk² / m with Rademacher probes
    m = 1000
    hutch = diagonal(op, m, seed=1)
    G = dense_ggn(case)
    std = ((G.square().sum(1) - torch.diagonal(G).square()) / m).sqrt()
    assert float(((hutch - exact).abs() / std).max()) < 5


def test_model_state_is_restored() -> None:
    case = lstm()
    state.prepare(case.model)
    before = state.snapshot(case.model)
    ggn_diagonal(case.model, case.batches, case.forward, _loss(case))
    ggn_diagonal(case.model, case.batches, case.forward, _loss(case), method="mc", seed=0)
    state.assert_unchanged(case.model, before)


def test_bad_arguments() -> None:
    case = mlp()
    args = (case.model, case.batches, case.forward)
    with pytest.raises(InvalidArgumentError, match="hessian_sqrt_matmul"):
        ggn_diagonal(*args, case.loss_of_output)  # a plain loss has no square root
    with pytest.raises(InvalidArgumentError, match="sample_gradients"):
        ggn_diagonal(*args, case.loss_of_output, method="mc")
    with pytest.raises(InvalidArgumentError, match="method"):
        ggn_diagonal(*args, _loss(case), method="hutchinson")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="mc_samples"):
        ggn_diagonal(*args, _loss(case), method="mc", mc_samples=0)
    with pytest.raises(InvalidArgumentError, match="dimension 0"):
        ggn_diagonal(case.model, case.batches, lambda m, b: m(b[0]).T, mse_loss_of_output())
    with pytest.raises(InvalidArgumentError, match="no batches"):
        ggn_diagonal(case.model, [], case.forward, _loss(case))
