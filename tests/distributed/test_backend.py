"""DistributedBackend: reductions equal the single-process ones on the concatenated vector and
are bit-identical on every rank; random slices form a world-size independent global draw."""

from __future__ import annotations

import pytest
import torch

from hessian_eigenthings.linalg import SingleDeviceBackend, make_generator, random_vectors
from tests.distributed._launch import launch

pytestmark = pytest.mark.timeout(180)

CHUNK = 5


def _globals(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randn(n, generator=g, dtype=torch.float64),
        torch.randn(n, generator=g, dtype=torch.float64),
    )
    basis = torch.randn(4, n, generator=g, dtype=torch.float64)
    V = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return {"a": a, "b": b, "basis": basis, "V": V}


def _streamed(rows: int, n: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """The chunked mode's definition: consecutive draws of CHUNK entries, row-major."""
    total = rows * n
    pieces = [
        random_vectors(min(CHUNK, total - s), generator=gen, dtype=dtype, device="cpu")
        for s in range(0, total, CHUNK)
    ]
    return torch.cat(pieces).reshape(rows, n) if pieces else torch.zeros(rows, n, dtype=dtype)


@pytest.mark.parametrize("sizes", [[5, 8], [5, 8, 0]], ids=["2 ranks", "3 ranks, one empty"])
def test_distributed_backend(sizes: list[int]) -> None:
    results = launch("backend", len(sizes), args={"sizes": sizes, "chunk": CHUNK})
    n = sum(sizes)
    x = _globals(n)
    single = SingleDeviceBackend()
    expected = {
        "dot": single.dot(x["a"], x["b"]),
        "norm": single.norm(x["a"]),
        "inner_vec": single.inner(x["basis"], x["a"]),
        "inner_mat": single.inner(x["basis"], x["V"]),
    }
    for r in results:
        for key, want in expected.items():
            torch.testing.assert_close(r[key], want, rtol=1e-14, atol=0)
            assert r[key].dtype == torch.float64
        assert r["dot32"].dtype == torch.float32
        torch.testing.assert_close(r["dot32"], expected["dot"].float(), rtol=1e-5, atol=0)
        assert r["total_size"] == n
    # bit-identical on every rank
    for key in ("dot", "dot32", "norm", "inner_vec", "inner_mat", "after_full", "after_stream"):
        assert all(torch.equal(r[key], results[0][key]) for r in results), key

    # the full draw: concatenated slices == what a single device draws for the same seed
    gen = make_generator(5)
    want_gauss = single.random((2, n), generator=gen, dtype=torch.float64, device="cpu")
    want_rade = single.random(
        (3, n), generator=gen, dtype=torch.float32, device="cpu", distribution="rademacher"
    )
    want_1d = single.random(n, generator=gen, dtype=torch.float64, device="cpu")
    for key, want in (("rand_gauss", want_gauss), ("rand_rade", want_rade), ("rand_1d", want_1d)):
        got = torch.cat([r[key] for r in results], dim=-1)
        assert torch.equal(got, want), key
    assert all(r["rand_none"].shape == (0, s) for r, s in zip(results, sizes, strict=True))
    single.random((0, n), generator=gen, dtype=torch.float64, device="cpu")
    assert torch.equal(results[0]["after_full"], torch.randn(1, generator=gen))

    # the streamed draw follows its definition, whatever the number of ranks
    gen = make_generator(5)
    want64 = _streamed(2, n, gen, torch.float64)
    want32 = _streamed(3, n, gen, torch.float32)
    assert torch.equal(torch.cat([r["stream64"] for r in results], dim=-1), want64)
    assert torch.equal(torch.cat([r["stream32"] for r in results], dim=-1), want32)
    assert torch.equal(results[0]["after_stream"], torch.randn(1, generator=gen))
