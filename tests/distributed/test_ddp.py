"""DDP operators on 2 gloo ranks with unequal shards (rank 0: batches of 4, 4 and 2 samples,
rank 1: one batch of 5) equal the single-process operators on the union of the shards, also
for DDP-wrapped models; algorithms give identical answers on every rank; a failing rank does
not hang the others."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from hessian_eigenthings.algorithms import lanczos, trace
from hessian_eigenthings.loss_fns import cross_entropy_loss_of_output
from hessian_eigenthings.operators.distributed import rank_seed
from hessian_eigenthings.operators.empirical_fisher import EmpiricalFisherOperator
from hessian_eigenthings.operators.fisher import FisherOperator
from hessian_eigenthings.operators.ggn import GGNOperator
from hessian_eigenthings.operators.hessian import HessianOperator
from tests.distributed import _cases as C
from tests.distributed._launch import launch
from tests.distributed._scenarios import MC_SEED

pytestmark = pytest.mark.timeout(300)

#: float64 products that differ only in the order of the sums over batches and ranks
EXACT = 1e-10


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    return launch("ddp", timeout=280.0)


def _data() -> list[C.Batch]:
    return C.union(C.shards())


def _hessian(**kwargs: Any) -> HessianOperator:
    return HessianOperator(C.classifier(), _data(), C.loss_fn, **kwargs)


def _check(results: list[dict[str, Any]], keys: tuple[str, ...], want: torch.Tensor) -> None:
    for key in keys:
        for r in results:
            assert C.rel_err(r[key], want) <= EXACT, key
        # every rank holds the same product, bit for bit
        assert torch.equal(results[0][key], results[1][key]), key


def test_ddp_hessian_equals_single_process(results: list[dict[str, Any]]) -> None:
    ref = _hessian()
    V = C.directions(ref.size)
    want = ref.matmat(V)
    _check(results, ("autograd", "wrapped", "microbatched"), want)
    _check(results, ("matvec",), want[:, 0])
    # finite differences: the same steps on the same data, only the sums reordered
    want_fd = _hessian(method="finite_difference").matmat(V)
    for r in results:
        assert C.rel_err(r["fd"], want_fd) <= 1e-8
        assert r["unchanged"]


def test_ddp_ggn_and_empirical_fisher_equal_single_process(results: list[dict[str, Any]]) -> None:
    model = C.classifier()
    V = C.directions(_hessian().size)
    ggn = GGNOperator(
        model, _data(), C.forward_fn, cross_entropy_loss_of_output(fused="eager")
    ).matmat(V)
    _check(results, ("ggn", "ggn_wrapped", "ggn_autograd"), ggn)
    ef = EmpiricalFisherOperator(
        model, _data(), loss_fn=C.per_sample_losses, per_sample=True
    ).matmat(V)
    _check(results, ("ef", "ef_wrapped"), ef)


def test_ddp_fisher_equals_single_process(results: list[dict[str, Any]]) -> None:
    model = C.classifier()
    V = C.directions(_hessian().size)
    ce = cross_entropy_loss_of_output(fused="eager")
    _check(results, ("fisher",), FisherOperator(model, _data(), C.forward_fn, ce).matmat(V))


def test_ddp_mc_fisher_draws_per_rank_seeds(results: list[dict[str, Any]]) -> None:
    """Each rank samples its labels with rank_seed(seed, rank); the product is the
    sample-weighted mean of the ranks' own MC products, reproducible bit for bit."""
    model = C.classifier()
    V = C.directions(_hessian().size)
    ce = cross_entropy_loss_of_output(fused="eager")

    def local(rank: int, seed: int) -> tuple[torch.Tensor, float]:
        shard = C.shards()[rank]
        op = FisherOperator(
            model, shard, C.forward_fn, ce, fisher_type="mc", mc_samples=2, seed=seed
        )
        return op.matmat(V), float(sum(b[0].shape[0] for b in shard))

    parts = [local(r, rank_seed(MC_SEED, r)) for r in (0, 1)]
    want = sum(p * w for p, w in parts) / sum(w for _, w in parts)
    same = [local(r, MC_SEED) for r in (0, 1)]
    same_seed = sum(p * w for p, w in same) / sum(w for _, w in same)
    for r in results:
        assert r["fisher_mc"].shape == V.shape
        assert torch.equal(r["fisher_mc"], r["fisher_mc_again"])
        assert C.rel_err(r["fisher_mc"], want) <= EXACT
        assert C.rel_err(r["fisher_mc"], same_seed) > 1e-3  # the ranks' draws differ
    assert torch.equal(results[0]["fisher_mc"], results[1]["fisher_mc"])
    exact = FisherOperator(model, _data(), C.forward_fn, ce).matmat(V)
    assert C.rel_err(results[0]["fisher_mc"], exact) < 1.0  # a noisy estimate of the Fisher


def test_ddp_operators_refuse_a_reducing_backend(results: list[dict[str, Any]]) -> None:
    for r in results:
        assert r["backend_error"][0] == "InvalidArgumentError"
        assert "multiplies them by the world size" in r["backend_error"][1]


def test_in_graph_allreduce_overcounts_by_world_size(results: list[dict[str, Any]]) -> None:
    want = _hessian().matvec(C.directions(_hessian().size)[:, 0])
    for r in results:
        # the naive autograd-aware all-reduce doubles the product on 2 ranks; ours does not
        assert C.rel_err(r["naive_in_graph"], 2 * want) <= EXACT
        assert C.rel_err(r["matvec"], want) <= EXACT


def test_ddp_lanczos_and_trace_match_single_process(results: list[dict[str, Any]]) -> None:
    ref = _hessian()
    res = lanczos(ref, k=5, seed=0)
    dense = torch.linalg.eigvalsh(ref.to_dense())
    top5 = dense[dense.abs().argsort(descending=True)[:5]]
    est = trace(ref, 30, seed=0).estimate
    r0, r1 = results
    assert torch.equal(r0["lanczos_values"], r1["lanczos_values"])
    assert torch.equal(r0["lanczos_vectors"], r1["lanczos_vectors"])
    assert r0["trace"] == r1["trace"]
    torch.testing.assert_close(r0["lanczos_values"], res.eigenvalues, rtol=1e-10, atol=0)
    torch.testing.assert_close(r0["lanczos_values"], top5, rtol=1e-8, atol=0)
    assert abs(r0["trace"] - est) <= 1e-10 * abs(est)


def test_ddp_algorithms_without_a_seed_agree_across_ranks(results: list[dict[str, Any]]) -> None:
    """seed=None: every rank seeds its own generator, but the operator's ReplicatedBackend
    broadcasts the first rank's draws, so the ranks stay in lock step (before, Lanczos mixed
    different start vectors and stopped with a bogus asymmetry error)."""
    ref = _hessian()
    dense = torch.linalg.eigvalsh(ref.to_dense())
    top5 = dense[dense.abs().argsort(descending=True)[:5]]
    r0, r1 = results
    assert torch.equal(r0["unseeded_values"], r1["unseeded_values"])
    assert torch.equal(r0["unseeded_vectors"], r1["unseeded_vectors"])
    assert r0["unseeded_trace"] == r1["unseeded_trace"]
    torch.testing.assert_close(r0["unseeded_values"], top5, rtol=1e-8, atol=0)


def test_a_failing_rank_makes_every_rank_raise_promptly(results: list[dict[str, Any]]) -> None:
    r0, r1 = results
    assert r1["error"] == ("ValueError", "loss exploded on rank 1")
    assert r0["error"] is not None
    assert r0["error"][0] == "RuntimeError"
    assert "other rank(s) raised" in r0["error"][1]
    # no waiting for the 60 s group timeout: the error travels with the first, small all-reduce
    assert r0["elapsed"] < 30
    assert r1["elapsed"] < 30
    # the group is still usable and the model untouched
    assert torch.equal(r0["after_failure"], r1["after_failure"])
    assert r0["unchanged_after_failure"]
    assert r1["unchanged_after_failure"]
    ref = _hessian()
    assert C.rel_err(r0["after_failure"], ref.matvec(C.directions(ref.size)[:, 0])) <= EXACT
