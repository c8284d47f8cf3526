"""``reuse_graph=True``: products from a kept linearisation equal the dense oracles on every
case, and the kept graph is dropped whenever the model, its mode or the data change.

Every operator family that splits off its direction-independent work is covered: the Hessian
(∇L with its graph), the GGN and Fisher operators (z with the graphs of J v and Jᵀ u) and both
routes of the empirical Fisher (that graph, or the explicit per-sample gradients).
"""

from __future__ import annotations

import gc
import importlib.util
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hessian_eigenthings import (
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    InvalidArgumentError,
)
from hessian_eigenthings.operators import ModelCurvatureOperator
from tests.core.oracles import dense_empirical_fisher, dense_ggn, dense_hessian, rel_err
from tests.core.zoo import CASE_IDS, CASES, Case, cnn_batchnorm, mlp
from tests.core.zoo_losses import analytical_loss, per_sample_loss

TOL = 1e-10
Build = Callable[..., ModelCurvatureOperator]


def _hessian(case: Case, data: Any, **kw: Any) -> ModelCurvatureOperator:
    return HessianOperator(case.model, data, case.with_weight(case.loss), **kw)


def _ggn(case: Case, data: Any, **kw: Any) -> ModelCurvatureOperator:
    return GGNOperator(case.model, data, case.forward, analytical_loss(case), **kw)


def _ggn_autograd(case: Case, data: Any, **kw: Any) -> ModelCurvatureOperator:
    loss = case.with_weight(case.loss_of_output)
    return GGNOperator(case.model, data, case.forward, loss, loss_hvp="autograd", **kw)


def _fisher(case: Case, data: Any, **kw: Any) -> ModelCurvatureOperator:
    return FisherOperator(case.model, data, case.forward, analytical_loss(case), **kw)


def _fisher_mc(case: Case, data: Any, **kw: Any) -> ModelCurvatureOperator:
    loss = analytical_loss(case)
    return FisherOperator(
        case.model, data, case.forward, loss, fisher_type="mc", mc_samples=3, seed=5, **kw
    )


def _ef(limit: int) -> Build:
    def build(case: Case, data: Any, **kw: Any) -> ModelCurvatureOperator:
        loss = per_sample_loss(case)
        return EmpiricalFisherOperator(case.model, data, loss, per_sample_limit=limit, **kw)

    return build


BUILDS: dict[str, Build] = {
    "hessian": _hessian,
    "ggn": _ggn,
    "ggn_autograd": _ggn_autograd,
    "fisher": _fisher,
    "fisher_mc": _fisher_mc,
    "ef_forward_mode": _ef(0),
    "ef_per_sample": _ef(1000),
}
ORACLES: dict[str, Callable[[Case], torch.Tensor]] = {
    "hessian": dense_hessian,
    "ggn": dense_ggn,
    "ggn_autograd": dense_ggn,
    "fisher": dense_ggn,
    "ef_forward_mode": dense_empirical_fisher,
    "ef_per_sample": dense_empirical_fisher,
}


def _directions(n: int, m: int, seed: int) -> torch.Tensor:
    return torch.randn(n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


#: every (case, family); nn.LSTM has no vmap batching rule, which the forward-mode EF's
#: batched per-sample losses need (its per-sample route is covered)
ORACLE_CASES = [
    pytest.param(make_case, family, id=f"{name}-{family}")
    for make_case, name in zip(CASES, CASE_IDS, strict=True)
    for family in sorted(ORACLES)
    if not (name == "lstm" and family == "ef_forward_mode")
]


@pytest.mark.parametrize(("make_case", "family"), ORACLE_CASES)
def test_kept_linearisations_match_the_oracle(make_case: Any, family: str) -> None:
    """Every batch's graph kept (``True``), then reused by matvec and matmat products."""
    case = make_case()
    A = ORACLES[family](case)
    op = BUILDS[family](case, case.batches, reuse_graph=True)
    V = _directions(op.size, 3, seed=1)
    first = op.matvec(V[:, 0])
    assert len(op._graph_cache.entries) == len(case.batches)
    assert rel_err(first, A @ V[:, 0]) < TOL
    assert torch.equal(op.matvec(V[:, 0]), first)  # from the kept graphs: the same numbers
    assert rel_err(op.matmat(V), A @ V) < TOL


@pytest.mark.parametrize("family", sorted(BUILDS))
def test_only_reuse_graph_keeps_and_it_keeps_every_chunk(family: str) -> None:
    case = mlp()
    default = BUILDS[family](case, case.batches)
    kept = BUILDS[family](case, case.batches, reuse_graph=True, microbatch_size=2)
    V = _directions(default.size, 2, seed=2)
    want = default.matmat(V)
    assert not default._graph_cache.entries  # recomputing is the default
    for _ in range(2):
        assert rel_err(kept.matmat(V), want) < 1e-12
        assert len(kept._graph_cache.entries) == 6  # batches of 4, 4, 3 in chunks of ≤ 2


def test_mc_fisher_keeps_its_draws_with_a_kept_graph() -> None:
    case = mlp()
    one = [case.full_batch]
    kept, fresh = _fisher_mc(case, one, reuse_graph=True), _fisher_mc(case, one)
    V = _directions(kept.size, 2, seed=3)
    assert rel_err(kept.matmat(V), fresh.matmat(V)) < 1e-12
    assert rel_err(kept.matmat(V), fresh.matmat(V)) < 1e-12


# -- what makes a kept graph stale -------------------------------------------------------------


def _changes() -> dict[str, Callable[[nn.Module, list[Any]], None]]:
    def optimizer_step(model: nn.Module, data: list[Any]) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.zero_grad()
        case_loss = model(data[0][0]).pow(2).mean()
        case_loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)

    def data_write(model: nn.Module, data: list[Any]) -> None:
        next(model.parameters()).data.mul_(1.5)  # bypasses the version counter

    def load_state(model: nn.Module, data: list[Any]) -> None:
        state = {k: v * 0.5 for k, v in model.state_dict().items()}
        model.load_state_dict(state)

    def replace_batch(model: nn.Module, data: list[Any]) -> None:
        x, y = data[0]
        data[0] = (x * 2, y)

    def batch_in_place(model: nn.Module, data: list[Any]) -> None:
        data[0][0].mul_(-1)

    def train_mode(model: nn.Module, data: list[Any]) -> None:
        model.train()  # the test model computes something else in training mode

    return {
        "optimizer_step": optimizer_step,
        "data_write": data_write,
        "load_state_dict": load_state,
        "replace_batch": replace_batch,
        "batch_in_place": batch_in_place,
        "train_mode": train_mode,
    }


class _ModeScale(nn.Module):
    """Doubles its input in training mode (deterministically, unlike dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 if self.training else x


@pytest.mark.parametrize("family", sorted(BUILDS))
@pytest.mark.parametrize("change", sorted(_changes()))
def test_a_kept_graph_is_rebuilt_when_anything_changes(change: str, family: str) -> None:
    case = mlp()
    model = case.model
    model.insert(1, _ModeScale())
    model.eval()
    data = [tuple(t.clone() for t in case.full_batch)]
    op = BUILDS[family](case, data, reuse_graph=True)
    off = BUILDS[family](case, data)  # recomputes everything every time
    v = _directions(op.size, 1, seed=4)[:, 0]
    op.matvec(v)
    assert op._graph_cache.entries
    before = op.matvec(v)
    _changes()[change](model, data)
    got = op.matvec(v)
    assert rel_err(got, before) > 1e-3  # the change matters
    assert rel_err(got, off.matvec(v)) < 1e-12


# -- state, errors, memory -----------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(BUILDS))
def test_reuse_leaves_the_model_untouched(family: str) -> None:
    case = cnn_batchnorm()
    model = case.model
    grads = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g
    before = {k: v.clone() for k, v in model.state_dict().items()}
    op = BUILDS[family](case, [case.full_batch], reuse_graph=True)
    v = _directions(op.size, 1, seed=5)[:, 0]
    for _ in range(3):
        out = op.matvec(v)
        assert not out.requires_grad
    assert op._graph_cache.entries
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    assert not model.training


@pytest.mark.parametrize("reuse", [True, False])
def test_a_replaced_parameter_is_refused(reuse: bool) -> None:
    case = mlp()
    op = HessianOperator(case.model, [case.full_batch], case.loss, reuse_graph=reuse)
    v = _directions(op.size, 1, seed=9)[:, 0]
    op.matvec(v)
    first = case.model[0]
    first.weight = nn.Parameter(first.weight.detach() + 1)
    with pytest.raises(InvalidArgumentError, match=r"0\.weight .*no longer the model's"):
        op.matvec(v)


def test_a_failing_product_keeps_nothing() -> None:
    case = mlp()
    calls = {"n": 0}

    def flaky(model: nn.Module, batch: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("loss failed")
        return case.loss(model, batch)

    op = HessianOperator(case.model, [case.full_batch], flaky, reuse_graph=True)
    v = _directions(op.size, 1, seed=6)[:, 0]
    first = op.matvec(v)
    assert op._graph_cache.entries
    op.clear_graph_cache()  # the next product rebuilds, and its loss raises
    with pytest.raises(RuntimeError, match="loss failed"):
        op.matvec(v)
    assert not op._graph_cache.entries
    assert torch.equal(op.matvec(v), first)


def test_clear_graph_cache_frees_the_graph() -> None:
    case = mlp()
    op = HessianOperator(case.model, [case.full_batch], case.loss, reuse_graph=True)
    op.matvec(_directions(op.size, 1, seed=7)[:, 0])
    (entry,) = op._graph_cache.entries.values()
    kept = weakref.ref(entry[2][0][1])  # a block of ∇L, which holds the graph
    del entry
    op.clear_graph_cache()
    gc.collect()
    assert kept() is None


def test_reuse_graph_arguments() -> None:
    case = mlp()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*case.full_batch))
    with pytest.raises(InvalidArgumentError, match="list or tuple"):
        HessianOperator(case.model, loader, case.loss, reuse_graph=True)
    with pytest.raises(InvalidArgumentError, match="reuse_graph must be True or False"):
        HessianOperator(case.model, [case.full_batch], case.loss, reuse_graph="yes")  # type: ignore[arg-type]
    fd = HessianOperator(
        case.model, [case.full_batch], case.loss, method="finite_difference", reuse_graph=True
    )
    fd.matvec(_directions(fd.size, 1, seed=8)[:, 0])
    assert not fd._graph_cache.entries  # no graph to keep


def _held_bytes(fn: Callable[[], Any]) -> int:
    """Tensor bytes ``fn()`` leaves allocated (the benchmarks' profiler-based accounting)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "_harness.py"
    spec = importlib.util.spec_from_file_location("_bench_harness", path)
    assert spec is not None
    assert spec.loader is not None
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    return int(harness.tensor_bytes(fn)[1])


#: every family, and the GGN-type ones also with jvp="shared" (its forward-mode pass records
#: the graph), each with and without a kept linearisation
NO_LEAK_CASES = [
    pytest.param(family, kw, reuse, id=f"{family}{'-shared' if kw else ''}-reuse={reuse}")
    for family in sorted(BUILDS)
    for kw in ([{}] if family == "hessian" else [{}, {"jvp": "shared"}])
    for reuse in (False, True)
]


@pytest.mark.parametrize(("family", "kw", "reuse"), NO_LEAK_CASES)
def test_products_leave_nothing_allocated(family: str, kw: dict[str, str], reuse: bool) -> None:
    """Repeated products leave no tensor behind (kept linearisations once cleared). Before
    the fix, the graph recorded by ``jvp="shared"`` under vmap (empirical Fisher) leaked once
    per product: a saved output held its own graph through the saved-tensor hook."""
    case = mlp()
    op = BUILDS[family](case, [case.full_batch], reuse_graph=reuse, **kw)
    v = _directions(op.size, 1, seed=10)[:, 0]
    op.matvec(v)  # state built once and kept by design (e.g. the MC Fisher's draws)
    op.clear_graph_cache()

    def products() -> None:
        for _ in range(3):
            op.matvec(v)
        op.clear_graph_cache()

    assert _held_bytes(products) == 0


class _ScaledIdentity(ModelCurvatureOperator):
    """Batch b contributes c_b · I with c_b = mean(x²); c_b is its linearisation."""

    calls = 0

    def batch_matvec(self, batch: Any, v: Any) -> list[torch.Tensor]:
        return [float(batch.pow(2).mean()) * t for t in v]

    def batch_linearize(self, batch: Any) -> float:
        type(self).calls += 1
        return float(batch.pow(2).mean())

    def linearized_accumulate(self, lin: float, batch: Any, V: Any, sink: Any) -> None:
        sink.add_blocks([lin * t for t in V])


def test_a_subclass_linearisation_is_built_once_and_weighted_like_any_product() -> None:
    """The extension point: batches of 3 and 1 samples with c = 1 and 9 give the
    sample-weighted mean (3·1 + 1·9)/4 = 3, from one linearisation per batch."""
    model = nn.Linear(2, 1)
    batches = [torch.full((3, 1), 1.0), torch.full((1, 1), 3.0)]
    op = _ScaledIdentity(model, batches, reuse_graph=True)
    _ScaledIdentity.calls = 0
    for _ in range(3):
        assert torch.equal(op @ torch.ones(3), torch.full((3,), 3.0))
    assert _ScaledIdentity.calls == 2
    batches[1] = torch.full((1, 1), 1.0)  # a new batch: rebuilt, the other one kept
    assert torch.equal(op @ torch.ones(3), torch.ones(3))
    assert _ScaledIdentity.calls == 3


def test_a_linearisation_without_its_product_is_refused() -> None:
    class Half(ModelCurvatureOperator):
        def batch_matvec(self, batch: Any, v: Any) -> list[torch.Tensor]:
            return list(v)

        def batch_linearize(self, batch: Any) -> float:
            return 1.0

    op = Half(nn.Linear(2, 1), [torch.ones(2, 1)], reuse_graph=True)
    with pytest.raises(NotImplementedError, match="must implement linearized_accumulate"):
        op @ torch.ones(3)
