"""A Hessian product leaves the model exactly as it found it, also when the loss raises midway.

Parameters and buffers bit for bit (torch.equal against clones), ``.grad`` (the same objects
with the same values, ``None`` staying ``None``) and every module's ``training`` flag — for
every method, including finite differences, which move the parameters while they work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from hessian_eigenthings import HessianOperator, InvalidArgumentError, StochasticOperatorWarning
from tests.core.zoo import (
    Case,
    attention,
    cnn_batchnorm,
    frozen_tied,
    lstm,
    mlp,
    tied_embedding,
)

METHODS = ["autograd", "forward_over_reverse", "finite_difference"]
STATE_CASES = [mlp, cnn_batchnorm, frozen_tied, lstm, attention, tied_embedding]
STATE_IDS = [c.__name__ for c in STATE_CASES]


@dataclass
class Snapshot:
    values: list[torch.Tensor]
    buffers: list[torch.Tensor]
    grad_objects: list[torch.Tensor | None]
    grad_values: list[torch.Tensor | None]
    modes: list[bool]


def prepare(model: nn.Module) -> None:
    """Pre-fill every other parameter's .grad, and mix training flags where harmless."""
    g = torch.Generator().manual_seed(0)
    for i, p in enumerate(model.parameters()):
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) if i % 2 == 0 else None
    for m in model.modules():  # activations and containers have no mode-dependent behaviour
        if not isinstance(m, nn.modules.batchnorm._BatchNorm | nn.Dropout) and not list(
            m.children()
        ):
            m.train(not m.training)


def snapshot(model: nn.Module) -> Snapshot:
    ps = list(model.parameters())
    return Snapshot(
        values=[p.detach().clone() for p in ps],
        buffers=[b.clone() for b in model.buffers()],
        grad_objects=[p.grad for p in ps],
        grad_values=[None if p.grad is None else p.grad.clone() for p in ps],
        modes=[m.training for m in model.modules()],
    )


def assert_unchanged(model: nn.Module, before: Snapshot) -> None:
    after = snapshot(model)
    assert all(torch.equal(a, b) for a, b in zip(before.values, after.values, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(before.buffers, after.buffers, strict=True))
    for p, obj, val in zip(
        model.parameters(), before.grad_objects, before.grad_values, strict=True
    ):
        assert p.grad is obj
        assert (val is None) == (p.grad is None)
        if val is not None:
            assert p.grad is not None
            assert torch.equal(p.grad, val)
    assert after.modes == before.modes


def op_for(case: Case, method: str, loss: Callable[..., Any] | None = None) -> HessianOperator:
    return HessianOperator(
        case.model, case.batches, case.with_weight(loss or case.loss), method=method
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make_case", STATE_CASES, ids=STATE_IDS)
def test_products_leave_the_model_untouched(make_case: Callable[[], Case], method: str) -> None:
    case = make_case()
    prepare(case.model)
    before = snapshot(case.model)
    op = op_for(case, method)
    g = torch.Generator().manual_seed(1)
    op.matvec(torch.randn(op.size, generator=g, dtype=torch.float64))
    assert_unchanged(case.model, before)
    op.matmat(torch.randn(op.size, 3, generator=g, dtype=torch.float64))
    assert_unchanged(case.model, before)
    micro = HessianOperator(case.model, case.batches, case.loss, method=method, microbatch_size=2)
    micro.matvec(torch.randn(op.size, generator=g, dtype=torch.float64))
    assert_unchanged(case.model, before)


@pytest.mark.parametrize(
    ("method", "fail_at"),
    [("autograd", 1), ("autograd", 2), ("forward_over_reverse", 2)]
    + [("finite_difference", k) for k in (1, 2, 3, 4)],
)
@pytest.mark.parametrize(
    "make_case", [mlp, cnn_batchnorm, tied_embedding], ids=["mlp", "cnn_bn", "tied_embedding"]
)
def test_loss_raising_midway_leaves_the_model_untouched(
    make_case: Callable[[], Case], method: str, fail_at: int
) -> None:
    """Raise on the k-th loss evaluation. Exact methods evaluate each batch's loss once (k = 2
    is batch 1); finite differences twice per direction: k = 2 is batch 0 at θ − εv̂ and k = 3
    batch 0's second direction at θ + εv̂, i.e. while the parameters are displaced."""
    case = make_case()
    prepare(case.model)
    before = snapshot(case.model)
    calls = [0]

    def flaky(model: nn.Module, batch: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == fail_at:
            raise RuntimeError("boom")
        return case.loss(model, batch)

    op = op_for(case, method, flaky)
    V = torch.randn(op.size, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with pytest.raises(RuntimeError, match="boom"):
        op.matmat(V)
    assert_unchanged(case.model, before)
    assert calls[0] == fail_at  # raised once, not retried


def test_no_method_pays_for_the_engine_snapshot() -> None:
    # Finite differences restore the parameters they move themselves (in a finally, checked bit
    # for bit by the tests above, also when the loss raises mid-product), so no method asks the
    # engine for its extra whole-model copy of values.
    case = mlp()
    assert HessianOperator.perturbs_parameters is False
    for method in METHODS:
        assert op_for(case, method).perturbs_parameters is False


def _dropout_case() -> Case:
    case = mlp()
    case.model = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.3), nn.Tanh(), nn.Linear(6, 3))
    case.model.double().train()
    return case


@pytest.mark.parametrize("method", METHODS)
def test_train_mode_dropout_warns_and_eval_mode_does_not(method: str) -> None:
    case = _dropout_case()
    op = op_for(case, method)
    v = torch.ones(op.size, dtype=torch.float64)
    with pytest.warns(StochasticOperatorWarning, match=r"model\.eval\(\)"):
        op.matvec(v)
    assert case.model.training
    case.model.eval()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", StochasticOperatorWarning)
        first = op_for(case, method).matvec(v)
        assert torch.equal(first, op_for(case, method).matvec(v))


@pytest.mark.parametrize("method", METHODS)
def test_train_mode_batchnorm_is_refused(method: str) -> None:
    case = cnn_batchnorm()
    case.model.train()
    before = snapshot(case.model)
    op = op_for(case, method)
    with pytest.raises(InvalidArgumentError, match=r"Call model\.eval\(\)"):
        op.matvec(torch.ones(op.size, dtype=torch.float64))
    assert_unchanged(case.model, before)
