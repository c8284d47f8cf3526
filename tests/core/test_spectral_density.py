"""Stochastic Lanczos quadrature against known spectra."""

from __future__ import annotations

import itertools

import pytest
import torch

from hessian_eigenthings import (
    InvalidArgumentError,
    IterationInfo,
    LambdaOperator,
    spectral_density,
)
from tests.core.known_spectra import dense_known

F64 = torch.float64


def _two_bulks(n: int = 1200) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a = 1.0 + torch.rand(2 * n // 3, generator=g, dtype=F64)  # [1, 2]: 2/3 of the mass
    b = 4.0 + 2.0 * torch.rand(n - 2 * n // 3, generator=g, dtype=F64)  # [4, 6]: 1/3
    return torch.cat([a, b])


def test_density_integrates_to_one_and_keeps_runs() -> None:
    known = dense_known(_two_bulks(300), seed=1)
    res = spectral_density(known.operator, num_runs=6, lanczos_steps=30, seed=0)
    assert float(torch.trapezoid(res.density, res.grid)) == pytest.approx(1.0, abs=1e-8)
    assert (res.density >= 0).all()
    assert len(res.nodes) == len(res.weights) == 6
    for nodes, weights in zip(res.nodes, res.weights, strict=True):
        assert nodes.numel() == 30
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
        assert float(nodes.min()) >= 1.0 - 1e-10
        assert float(nodes.max()) <= 6.0 + 1e-10
    assert res.eigenvalues is res.nodes
    nodes = torch.cat(res.nodes)
    span = float(nodes.max() - nodes.min())
    assert res.sigma == pytest.approx(span / 60)  # default: spread / (2 · lanczos_steps)
    assert float(res.grid[0]) == pytest.approx(float(nodes.min()) - 6 * res.sigma)
    assert float(res.grid[-1]) == pytest.approx(float(nodes.max()) + 6 * res.sigma)


def test_density_matches_a_histogram_of_the_true_spectrum() -> None:
    lam = _two_bulks()
    known = dense_known(lam, seed=2)
    res = spectral_density(known.operator, num_runs=16, lanczos_steps=60, seed=0)
    edges = torch.linspace(0.5, 6.5, 13, dtype=F64)  # bins of width 0.5 ≫ σ
    for lo, hi in itertools.pairwise(edges):
        inside = (res.grid >= lo) & (res.grid <= hi)
        mass = float(torch.trapezoid(res.density[inside], res.grid[inside]))
        frac = float(((lam >= lo) & (lam < hi)).double().mean())
        assert abs(mass - frac) < 0.03, (float(lo), mass, frac)


def test_exact_for_few_distinct_eigenvalues() -> None:
    lam = torch.tensor([1.0] * 30 + [3.0] * 60 + [8.0] * 10, dtype=F64)
    known = dense_known(lam, seed=3)
    res = spectral_density(known.operator, num_runs=64, lanczos_steps=20, seed=0)
    for nodes in res.nodes:  # the Krylov space is invariant after 3 steps: exact quadrature
        assert nodes.tolist() == pytest.approx([1.0, 3.0, 8.0], abs=1e-10)
    w = torch.stack(res.weights).mean(0)
    assert w.tolist() == pytest.approx([0.3, 0.6, 0.1], abs=0.03)


def test_without_reorthogonalization_the_density_agrees() -> None:
    known = dense_known(_two_bulks(400), seed=4)
    full = spectral_density(known.operator, num_runs=4, lanczos_steps=40, seed=0)
    bare = spectral_density(
        known.operator, num_runs=4, lanczos_steps=40, seed=0, reorthogonalize=False, grid=full.grid
    )
    # Same probes, same quadrature up to the loss of orthogonality: close densities.
    l1 = float(torch.trapezoid((full.density - bare.density).abs(), full.grid))
    assert l1 < 0.05


def test_reproducible_grid_sigma_and_callback() -> None:
    known = dense_known(_two_bulks(200), seed=5)
    a = spectral_density(known.operator, 4, 20, seed=9)
    b = spectral_density(known.operator, 4, 20, seed=9)
    assert torch.equal(a.density, b.density)
    assert all(torch.equal(x, y) for x, y in zip(a.nodes, b.nodes, strict=True))
    grid = torch.linspace(0, 7, 50, dtype=F64)
    c = spectral_density(known.operator, 4, 20, seed=9, grid=grid, sigma=0.3)
    assert torch.equal(c.grid, grid)
    assert c.sigma == 0.3
    seen: list[IterationInfo] = []
    spectral_density(known.operator, 4, 20, seed=9, callback=seen.append)
    assert [i.num_matvecs for i in seen] == [20, 40, 60, 80]
    stopped = spectral_density(known.operator, 4, 20, seed=9, callback=lambda i: True)
    assert len(stopped.nodes) == 1
    assert float(torch.trapezoid(stopped.density, stopped.grid)) == pytest.approx(1.0, abs=1e-8)


def test_half_precision_operator() -> None:
    lam = _two_bulks(300)
    known = dense_known(lam, seed=6, dtype=torch.bfloat16)
    res = spectral_density(known.operator, num_runs=4, lanczos_steps=30, seed=0)
    assert float(torch.trapezoid(res.density, res.grid)) == pytest.approx(1.0, abs=1e-8)
    nodes = torch.cat(res.nodes)
    assert float(nodes.min()) > 1.0 - 0.05
    assert float(nodes.max()) < 6.0 + 0.05  # bf16 rounding of the matrix: ~1% of ‖A‖
    low = res.grid < 3.0
    assert float(torch.trapezoid(res.density[low], res.grid[low])) == pytest.approx(2 / 3, abs=0.1)


def test_degenerate_spectra_and_bad_input() -> None:
    op = LambdaOperator(20, lambda v: 2.0 * v, dtype=F64)
    res = spectral_density(op, 3, 10, seed=0)
    assert all(n.tolist() == pytest.approx([2.0]) for n in res.nodes)
    assert float(torch.trapezoid(res.density, res.grid)) == pytest.approx(1.0, abs=1e-8)
    assert res.sigma == pytest.approx(2e-3)
    with pytest.raises(InvalidArgumentError, match="num_runs must be at least 1"):
        spectral_density(op, 0)
    with pytest.raises(InvalidArgumentError, match="lanczos_steps must be at least 1"):
        spectral_density(op, 1, 0)
    with pytest.raises(InvalidArgumentError, match="sigma must be"):
        spectral_density(op, sigma=-1.0)
    with pytest.raises(InvalidArgumentError, match="kernel must be"):
        spectral_density(op, kernel="lorentzian")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="grid must be"):
        spectral_density(op, grid=torch.zeros(3, 3))
