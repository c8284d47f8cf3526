"""SingleDeviceBackend arithmetic and reproducible randomness."""

from __future__ import annotations

import pytest
import torch

from hessian_eigenthings import InvalidArgumentError, SingleDeviceBackend, make_generator
from hessian_eigenthings.linalg import LinAlgBackend, random_vectors


def test_backend_satisfies_protocol_and_computes_reductions() -> None:
    b = SingleDeviceBackend()
    assert isinstance(b, LinAlgBackend)
    x = torch.tensor([3.0, 4.0], dtype=torch.float64)
    y = torch.tensor([1.0, -2.0], dtype=torch.float64)
    assert b.dot(x, y).item() == -5.0
    assert b.norm(x).item() == 5.0
    assert torch.equal(b.axpy(2.0, x, y), torch.tensor([7.0, 6.0], dtype=torch.float64))
    assert torch.equal(b.scale(x, 0.5), torch.tensor([1.5, 2.0], dtype=torch.float64))
    basis = torch.stack([x, y])
    assert torch.equal(b.inner(basis, x), torch.tensor([25.0, -5.0], dtype=torch.float64))


def test_half_precision_reductions_accumulate_in_float32() -> None:
    b = SingleDeviceBackend()
    v = torch.full((4096,), 1.0, dtype=torch.bfloat16)
    assert b.dot(v, v).dtype == torch.float32
    assert b.dot(v, v).item() == 4096.0  # bf16 accumulation would stall at 256


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_same_seed_same_bits(distribution: str, dtype: torch.dtype) -> None:
    b = SingleDeviceBackend()
    kw = {"dtype": dtype, "device": "cpu", "distribution": distribution}
    a = b.random((3, 50), generator=make_generator(7), **kw)
    c = b.random((3, 50), generator=make_generator(7), **kw)
    d = b.random((3, 50), generator=make_generator(8), **kw)
    assert torch.equal(a, c)
    assert not torch.equal(a, d)
    assert a.dtype == dtype
    if distribution == "rademacher":
        assert set(a.unique().tolist()) <= {-1.0, 1.0}


def test_seed_none_is_fresh_and_generator_passes_through() -> None:
    a = random_vectors(100, generator=make_generator(None), dtype=torch.float64, device="cpu")
    b = random_vectors(100, generator=make_generator(None), dtype=torch.float64, device="cpu")
    assert not torch.equal(a, b)
    g = torch.Generator().manual_seed(3)
    assert make_generator(g) is g


def test_bad_seed_and_distribution() -> None:
    with pytest.raises(InvalidArgumentError, match="seed must be"):
        make_generator("3")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="distribution"):
        random_vectors(
            3,
            generator=make_generator(0),
            dtype=torch.float32,
            device="cpu",
            distribution="uniform",
        )  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_serves_cuda_tensors_bit_identically() -> None:
    b = SingleDeviceBackend()
    on_gpu = b.random(64, generator=make_generator(1), dtype=torch.float32, device="cuda")
    on_cpu = b.random(64, generator=make_generator(1), dtype=torch.float32, device="cpu")
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)
