"""GGNOperator against the dense Jᵀ H_ℓ J oracle on every zoo case, in float64.

The zoo's data comes in uneven batches and the oracle evaluates the loss on the concatenated
data, so agreement also checks the batch weighting (valid tokens for the attention case).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings import (
    BUILTIN_OPERATORS,
    GGNOperator,
    InvalidArgumentError,
    get_registries,
    match_names,
    select_parameters,
)
from hessian_eigenthings.loss_fns import supervised_forward, supervised_loss_of_output
from tests.core.oracles import dense_ggn, dense_hessian, rel_err
from tests.core.zoo import CASE_IDS, CASES, Case, mlp, mlp_mse
from tests.core.zoo_losses import analytical_loss

TOL = 1e-10


def _ggn(case: Case, kind: str, **kw: Any) -> GGNOperator:
    if kind == "analytical":
        return GGNOperator(case.model, case.batches, case.forward, analytical_loss(case), **kw)
    loss = case.with_weight(case.loss_of_output)  # a plain callable: no .hvp
    return GGNOperator(case.model, case.batches, case.forward, loss, loss_hvp="autograd", **kw)


def _subset_names(case: Case) -> list[str]:
    return [n for n, _ in select_parameters(case.model, match_names(*case.subset))]


@pytest.mark.parametrize("kind", ["analytical", "autograd"])
@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_matches_dense_ggn(make_case: Any, kind: str) -> None:
    case = make_case()
    G = dense_ggn(case)
    op = _ggn(case, kind)
    assert op.effective_loss_hvp == kind
    assert op.size == G.shape[0]
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_err(op.matvec(v), G @ v) < TOL
    assert rel_err(op.to_dense(), G) < TOL  # matmat on blocks of identity columns


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_shared_jvp_pass(make_case: Any) -> None:
    # the forward-mode pass also records the graph for Jᵀ: same matrix, one forward less
    case = make_case()
    op = _ggn(case, "analytical", jvp="shared")
    assert rel_err(op.to_dense(), dense_ggn(case)) < TOL


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_param_filter_and_microbatching(make_case: Any) -> None:
    case = make_case()
    names = _subset_names(case)
    G = dense_ggn(case, names)
    op = _ggn(case, "analytical", param_filter=match_names(*case.subset))
    assert list(op.space.names) == names
    D = op.to_dense()
    assert rel_err(D, G) < TOL
    micro = _ggn(case, "analytical", param_filter=match_names(*case.subset), microbatch_size=2)
    assert rel_err(micro.to_dense(), D) < 1e-12


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_analytical_and_autograd_agree(make_case: Any) -> None:
    case = make_case()
    v = torch.randn(
        sum(p.numel() for p in case.model.parameters() if p.requires_grad),
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    a = _ggn(case, "analytical").matvec(v)
    b = _ggn(case, "autograd").matvec(v)
    assert rel_err(a, b) < TOL


def test_equals_the_hessian_for_a_linear_model_with_mse() -> None:
    case = mlp_mse()
    case.model = nn.Linear(4, 2).double()
    H = dense_hessian(case)
    op = GGNOperator(case.model, case.batches, case.forward, analytical_loss(case))
    assert rel_err(op.to_dense(), H) < TOL


def test_first_batches_and_num_total_samples() -> None:
    case = mlp()
    first = case.batches[0]
    sub = Case("first", case.model, [first], case.task)
    G1 = dense_ggn(sub)
    op = GGNOperator(case.model, case.batches, case.forward, analytical_loss(case), num_batches=1)
    assert rel_err(op.to_dense(), G1) < TOL
    op = GGNOperator(
        case.model, case.batches, case.forward, analytical_loss(case), full_dataset=False
    )
    assert rel_err(op.to_dense(), G1) < TOL
    n = sum(b[0].shape[0] for b in case.batches)
    op = GGNOperator(
        case.model, case.batches, case.forward, analytical_loss(case), num_total_samples=n
    )
    assert rel_err(op.to_dense(), n * dense_ggn(case)) < TOL


def test_torch_criteria_take_the_analytical_path() -> None:
    case = mlp()
    G = dense_ggn(case)
    recognised = GGNOperator(
        case.model, case.batches, supervised_forward, supervised_loss_of_output(F.cross_entropy)
    )
    assert recognised.effective_loss_hvp == "analytical"
    assert rel_err(recognised.to_dense(), G) < TOL
    # a custom loss has no .hvp: "analytical" falls back to autograd, with the same result
    custom = GGNOperator(
        case.model, case.batches, supervised_forward, lambda out, b: F.cross_entropy(out, b[1])
    )
    assert custom.loss_hvp == "analytical"
    assert custom.effective_loss_hvp == "autograd"
    assert rel_err(custom.to_dense(), G) < TOL


class _NoForwardAD(torch.autograd.Function):
    """tanh with a backward but no forward-mode formula: J V must use the double-vjp route."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class _Tanh(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _NoForwardAD.apply(x)
        return out


def test_models_without_forward_mode_derivatives() -> None:
    case = mlp()
    G = dense_ggn(case)  # the oracle uses torch.tanh
    case.model[1] = _Tanh()
    op = GGNOperator(case.model, case.batches, case.forward, analytical_loss(case))
    assert rel_err(op.to_dense(), G) < TOL
    assert op.jacobian._forward_ad_ok is False


# -- state and errors ---------------------------------------------------------------------


def _snapshot(model: nn.Module) -> tuple[list[torch.Tensor], list[Any], list[bool]]:
    return (
        [p.detach().clone() for p in model.parameters()],
        [p.grad for p in model.parameters()],
        [m.training for m in model.modules()],
    )


def _assert_unchanged(
    model: nn.Module, snap: tuple[list[torch.Tensor], list[Any], list[bool]]
) -> None:
    values, grads, modes = snap
    for p, v, g in zip(model.parameters(), values, grads, strict=True):
        assert torch.equal(p.detach(), v)
        assert p.grad is g
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("jvp", ["separate", "shared"])
@pytest.mark.parametrize("kind", ["analytical", "autograd"])
def test_model_state_is_untouched(kind: str, jvp: str) -> None:
    case = mlp()
    for p in case.model.parameters():
        p.grad = torch.randn_like(p)
    case.model.train()
    snap = _snapshot(case.model)
    op = _ggn(case, kind, jvp=jvp)
    op.matvec(torch.randn(op.size, dtype=torch.float64))
    op.matmat(torch.randn(op.size, 2, dtype=torch.float64))
    _assert_unchanged(case.model, snap)

    calls = [0]

    def failing(out: torch.Tensor, batch: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] > 1:
            raise RuntimeError("loss failed midway")
        return F.cross_entropy(out, batch[1])

    def failing_forward(model: nn.Module, batch: Any) -> torch.Tensor:
        calls[0] += 1
        if calls[0] > 2:
            raise RuntimeError("forward failed midway")
        return model(batch[0])  # type: ignore[no-any-return]

    for fwd, loss in ((case.forward, failing), (failing_forward, analytical_loss(case))):
        calls[0] = 0
        op = GGNOperator(case.model, case.batches, fwd, loss, loss_hvp=kind, jvp=jvp)
        with pytest.raises(RuntimeError, match="failed midway"):
            op.matvec(torch.randn(op.size, dtype=torch.float64))
        _assert_unchanged(case.model, snap)


def test_errors() -> None:
    case = mlp()
    loss = analytical_loss(case)
    with pytest.raises(InvalidArgumentError, match="jvp must be"):
        GGNOperator(case.model, case.batches, case.forward, loss, jvp="fused")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="loss_hvp"):
        GGNOperator(case.model, case.batches, case.forward, loss, loss_hvp="exact")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="forward_fn"):
        GGNOperator(case.model, case.batches, None, loss)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="loss_of_output_fn"):
        GGNOperator(case.model, case.batches, case.forward, "ce")
    with pytest.raises(InvalidArgumentError, match="no batches"):
        GGNOperator(case.model, [], case.forward, loss).matvec(torch.zeros(57, dtype=torch.float64))
    op = GGNOperator(case.model, case.batches, case.forward, loss)
    with pytest.raises(InvalidArgumentError, match="shape"):
        op.matvec(torch.zeros(op.size + 1, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        op.matvec(torch.zeros(op.size, dtype=torch.float32))
    per_sample = GGNOperator(
        case.model,
        case.batches,
        case.forward,
        lambda out, b: F.cross_entropy(out, b[1], reduction="none"),
        loss_hvp="autograd",
    )
    with pytest.raises(InvalidArgumentError, match="scalar"):
        per_sample.matvec(torch.zeros(op.size, dtype=torch.float64))
    not_a_tensor = GGNOperator(case.model, case.batches, lambda m, b: [m(b[0])], loss)
    with pytest.raises(InvalidArgumentError, match="forward_fn must return a torch"):
        not_a_tensor.matvec(torch.zeros(op.size, dtype=torch.float64))


def test_registered() -> None:
    assert BUILTIN_OPERATORS["ggn"][0] is GGNOperator
    assert get_registries().operators.get("ggn") is GGNOperator


class _FailingBackward(torch.autograd.Function):
    """Identity whose backward (only: forward mode works) raises while ``armed[0]`` is set."""

    armed: ClassVar[list[bool]] = [False]

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        if _FailingBackward.armed[0]:
            raise RuntimeError("backward failed midway")
        return g

    @staticmethod
    def jvp(ctx: Any, t: torch.Tensor) -> torch.Tensor:  # J v by forward mode: no backward
        return t


def test_streamed_backward_leaves_no_hooks_also_when_it_raises() -> None:
    """The Jᵀ step streams blocks through temporary parameter hooks: none may outlive a
    product, a failed one included (a left-over hook would corrupt the user's training)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    batches = [(torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,)))]

    def hidden_failing(m: nn.Module, batch: Any) -> torch.Tensor:
        h = _FailingBackward.apply(m[1](m[0](batch[0])))
        return m[2](h)  # type: ignore[no-any-return]

    loss = supervised_loss_of_output(F.cross_entropy)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    snap = _snapshot(model)
    op = GGNOperator(model, batches, hidden_failing, loss)
    v = torch.randn(op.size, dtype=torch.float64)
    expected = GGNOperator(model, batches, supervised_forward, loss).matvec(v)
    assert rel_err(op.matvec(v), expected) <= TOL
    assert all(not p._backward_hooks for p in model.parameters())
    _FailingBackward.armed[0] = True
    try:
        with pytest.raises(RuntimeError, match="backward failed midway"):
            op.matmat(torch.randn(op.size, 2, dtype=torch.float64))
    finally:
        _FailingBackward.armed[0] = False
    assert all(not p._backward_hooks for p in model.parameters())
    _assert_unchanged(model, snap)
    assert rel_err(op.matvec(v), expected) <= TOL


def test_callers_saved_tensor_hooks_stay_in_force() -> None:
    """The product measures its graph with saved-tensor hooks of its own; under the caller's
    (activation offloading, e.g. save_on_cpu) it must not push them, or theirs would stop."""
    case = mlp()
    batches = case.batches[:1]  # one batch: the one whose graph the product would measure
    op = GGNOperator(case.model, batches, case.forward, analytical_loss(case))
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected = op.matvec(v)
    packed = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        got = GGNOperator(case.model, batches, case.forward, analytical_loss(case)).matvec(v)
    assert packed[0] > 0
    assert rel_err(got, expected) <= TOL
