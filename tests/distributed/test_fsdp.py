"""FSDP2 finite-difference Hessian on 2 gloo ranks: products on the local shards equal the
single-process finite-difference products on the union of the data, and lanczos, trace and
spectral_density run on the shards (through DistributedBackend) with identical results on
every rank."""

from __future__ import annotations

import pytest
import torch

from hessian_eigenthings.algorithms import lanczos, spectral_density, trace
from hessian_eigenthings.operators import HessianOperator, LambdaOperator
from tests.distributed import _cases as C
from tests.distributed._launch import launch
from tests.distributed._scenarios import WIDE

pytestmark = pytest.mark.timeout(300)

#: FSDP and single-process finite differences take the same steps on the same data; they
#: differ by rounding in the order of the gradient sums, amplified by 1/ε (module doc of
#: operators/distributed/fsdp.py): ~1e-10 relative in float64.
FD_AGREEMENT = 1e-8
#: Finite differences against the exact Hessian: the O(ε²) truncation plus the roundoff above.
FD_VS_EXACT = 1e-6


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return launch("fsdp", timeout=280.0)


def _reference(method: str = "finite_difference") -> HessianOperator:
    data = C.union(C.shards(WIDE[0], WIDE[2]))
    return HessianOperator(C.classifier(WIDE), data, C.loss_fn, method=method)


def _assemble(results: list[dict], key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The global product in parameter order, and the map from FSDP order to it."""
    idx = torch.cat([r["idx"] for r in results])
    local = torch.cat([r[key] for r in results])
    full = torch.empty_like(local)
    full[idx] = local
    return full, idx


def test_fsdp_products_match_single_process_finite_differences(results: list[dict]) -> None:
    ref = _reference()
    V = C.directions(ref.size)
    want = ref.matmat(V)
    got, idx = _assemble(results, "matmat")
    assert sorted(idx.tolist()) == list(range(ref.size))  # the shards tile the vector
    assert [r["size"] for r in results] == [106, 106]
    assert C.rel_err(got, want) <= FD_AGREEMENT
    exact = _reference("autograd").matmat(V)
    assert C.rel_err(got, exact) <= FD_VS_EXACT
    micro, _ = _assemble(results, "microbatched")
    assert C.rel_err(micro, want[:, 0]) <= FD_AGREEMENT
    custom, _ = _assemble(results, "divide_factor_1")
    assert C.rel_err(custom, want[:, 0]) <= FD_AGREEMENT
    for r in results:
        assert torch.equal(r["zero"], torch.zeros_like(r["zero"]))
        assert r["unchanged"]


def _in_fsdp_order(op: HessianOperator, idx: torch.Tensor) -> LambdaOperator:
    """The single-process operator in the coordinates of the sharded global vector."""

    def matvec(u: torch.Tensor) -> torch.Tensor:
        x = torch.empty_like(u)
        x[idx] = u
        return op.matvec(x)[idx]

    return LambdaOperator(op.size, matvec, dtype=op.dtype)


def test_algorithms_on_shards_are_identical_on_all_ranks(results: list[dict]) -> None:
    r0, r1 = results
    for key in ("lanczos_values", "density_nodes"):
        assert torch.equal(r0[key], r1[key]), key
    assert r0["trace"] == r1["trace"]
    assert r0["lanczos_converged"]
    assert r1["lanczos_converged"]


def test_algorithms_on_shards_match_single_process(results: list[dict]) -> None:
    ref = _reference()
    _, idx = _assemble(results, "matmat")
    permuted = _in_fsdp_order(ref, idx)
    r0 = results[0]
    # same seed, same global start vectors (DistributedBackend draws world-size independently)
    res = lanczos(permuted, k=5, seed=0)
    torch.testing.assert_close(r0["lanczos_values"], res.eigenvalues, rtol=FD_AGREEMENT, atol=0)
    dense = torch.linalg.eigvalsh(_reference("autograd").to_dense())
    top5 = dense[dense.abs().argsort(descending=True)[:5]]
    torch.testing.assert_close(r0["lanczos_values"], top5, rtol=FD_VS_EXACT, atol=0)
    vectors = torch.cat([r["lanczos_vectors"] for r in results], dim=1)
    cos = (vectors * res.eigenvectors).sum(1).abs()
    torch.testing.assert_close(cos, torch.ones(5, dtype=C.DTYPE), rtol=0, atol=1e-6)
    est = trace(permuted, 30, seed=0).estimate
    assert abs(r0["trace"] - est) <= FD_AGREEMENT * abs(est)
    nodes = torch.cat(spectral_density(permuted, num_runs=2, lanczos_steps=12, seed=0).nodes)
    torch.testing.assert_close(r0["density_nodes"], nodes, rtol=1e-6, atol=1e-9)
