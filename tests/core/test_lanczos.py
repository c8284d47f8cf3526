"""lanczos / lanczos_tridiagonal against exact spectra (operators U diag(λ) Uᵀ, U random)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import aslinearoperator

from hessian_eigenthings import (
    ConvergenceWarning,
    InvalidArgumentError,
    IterationInfo,
    LambdaOperator,
    NonFiniteError,
    lanczos,
    lanczos_tridiagonal,
)
from tests.core.known_spectra import (
    Known,
    dense_known,
    gap,
    householder_known,
    sin_angle_to_eigenspace,
)

F64 = torch.float64


def _bulk(n: int, lo: float, hi: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)


def _spectrum(name: str, n: int) -> torch.Tensor:
    if name == "clustered":  # a tight cluster of four, well away from the bulk
        top = torch.tensor([20.0, 19.99, 19.98, 19.97, 5.0], dtype=F64)
        return torch.cat([top, _bulk(n - 5, 0.0, 1.0, 1)])
    if name == "repeated":  # 8 three times: needs block_size >= 3 with a bulk around
        return torch.cat([torch.tensor([8.0, 8.0, 8.0, 6.0], dtype=F64), _bulk(n - 4, 0, 1, 2)])
    if name == "negative":  # negative definite
        return -torch.cat([torch.tensor([50.0, 40.0, 30.0], dtype=F64), _bulk(n - 3, 0.1, 1, 3)])
    if name == "indefinite":
        top = torch.tensor([-30.0, 25.0, -20.0, 15.0], dtype=F64)
        return torch.cat([top, _bulk(n - 4, -1.0, 1.0, 4)])
    if name == "tiny_gap":  # gaps of 1e-6 inside the top cluster
        top = torch.tensor([10.0, 10.0 - 1e-6, 10.0 - 2e-6, 4.0], dtype=F64)
        return torch.cat([top, _bulk(n - 4, 0.0, 1.0, 5)])
    if name == "random":  # small n: the whole spectrum is fair game
        return torch.randn(n, generator=torch.Generator().manual_seed(6), dtype=F64)
    raise AssertionError(name)


def _assert_matches(known: Known, result, which: str, k: int, rtol: float = 1e-8) -> None:
    """Eigenvalues to ``rtol`` relative error, eigenvectors within the Davis–Kahan bound
    ``sin∠ ≤ ‖r‖/gap`` with the true residual, reported residuals equal to the true ones."""
    expected = known.sorted(which, k)
    assert result.eigenvalues.shape == (k,)
    assert result.eigenvectors.shape == (k, known.operator.size)
    err = (result.eigenvalues - expected).abs()
    assert (err <= rtol * expected.abs()).all(), (result.eigenvalues, expected, err)
    norm_a = float(known.eigenvalues.abs().max())
    for i in range(k):
        theta = float(result.eigenvalues[i])
        x = result.eigenvectors[i].to(F64)
        assert abs(float(x.norm()) - 1) < 1e-12
        r = known.residual(theta, x)
        assert abs(r - float(result.residuals[i])) <= 1e-9 * norm_a
        same = 1e-9 * norm_a  # true eigenvalues this close count as one (repeated) eigenspace
        bound = r / gap(known, theta, same)
        assert sin_angle_to_eigenspace(known, theta, x, same) <= bound + 1e-10
    gram = result.eigenvectors.to(F64) @ result.eigenvectors.to(F64).T
    assert torch.allclose(gram, torch.eye(k, dtype=F64), atol=1e-10)


@pytest.mark.parametrize(
    ("name", "n", "which", "k", "block"),
    [
        ("clustered", 400, "LA", 4, 1),
        ("repeated", 300, "LA", 4, 3),
        ("negative", 200, "LM", 3, 1),
        ("negative", 200, "SA", 3, 1),
        ("indefinite", 400, "LM", 4, 1),
        ("indefinite", 400, "LA", 2, 1),
        ("indefinite", 400, "SA", 2, 1),
        ("tiny_gap", 300, "LA", 3, 1),
        ("random", 10, "LM", 10, 1),
        ("random", 10, "SA", 3, 1),
        ("random", 60, "LA", 2, 2),
    ],
)
def test_matches_eigh_on_known_spectra(name: str, n: int, which: str, k: int, block: int) -> None:
    known = dense_known(_spectrum(name, n), seed=n)
    result = lanczos(known.operator, k=k, max_iter=300, which=which, seed=0, block_size=block)
    assert result.converged
    _assert_matches(known, result, which, k)
    # and the oracle itself agrees with torch.linalg.eigh on the explicit matrix
    assert known.dense is not None
    assert torch.allclose(
        torch.linalg.eigvalsh(known.dense), torch.sort(known.eigenvalues).values, atol=1e-12
    )


def test_which_semantics_are_exact_including_ties() -> None:
    # ±5 tie in magnitude: LM puts the larger algebraic value first.
    lam = torch.cat([torch.tensor([5.0, -5.0, 4.0, -3.0], dtype=F64), _bulk(96, -1, 1, 7)])
    known = dense_known(lam, seed=1)
    lm = lanczos(known.operator, k=4, max_iter=100, which="LM", seed=0)
    assert lm.eigenvalues.tolist() == pytest.approx([5.0, -5.0, 4.0, -3.0], abs=1e-10)
    la = lanczos(known.operator, k=2, max_iter=100, which="LA", seed=0)
    assert la.eigenvalues.tolist() == pytest.approx([5.0, 4.0], abs=1e-10)
    sa = lanczos(known.operator, k=2, max_iter=100, which="SA", seed=0)
    assert sa.eigenvalues.tolist() == pytest.approx([-5.0, -3.0], abs=1e-10)


def test_no_ghost_copies_of_outliers() -> None:
    lam = torch.cat([torch.tensor([100.0, 90.0, 80.0], dtype=F64), _bulk(497, 0, 1, 8)])
    known = dense_known(lam, seed=2)
    v0 = torch.ones(500, dtype=F64)

    def copies(alphas: torch.Tensor, betas: torch.Tensor, value: float) -> int:
        T = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
        return int(((torch.linalg.eigvalsh(T) - value).abs() < 1e-6).sum())

    # Far more steps than needed: plain Lanczos duplicates the converged outliers ...
    plain = lanczos_tridiagonal(known.operator, v0, 250, reorthogonalize=False)
    assert max(copies(plain.alphas, plain.betas, v) for v in (100.0, 90.0, 80.0)) > 1
    # ... the default never does.
    full = lanczos_tridiagonal(known.operator, v0, 250)
    assert [copies(full.alphas, full.betas, v) for v in (100.0, 90.0, 80.0)] == [1, 1, 1]
    # Nor does the eigensolver, run to its budget (the bulk pairs cannot all converge).
    with pytest.warns(ConvergenceWarning):
        res = lanczos(known.operator, k=20, max_iter=250, which="LA", tol=1e-300, seed=0)
    assert res.iterations == 250
    top = res.eigenvalues[:3].tolist()
    assert top == pytest.approx([100.0, 90.0, 80.0], abs=1e-10)
    assert (res.eigenvalues[3:] < 1.0).all()


def test_scaled_identity_returns_k_copies() -> None:
    op = LambdaOperator(100, lambda v: 2.0 * v, dtype=F64)
    res = lanczos(op, k=5, seed=0)
    assert res.eigenvalues.tolist() == pytest.approx([2.0] * 5, abs=1e-14)
    assert res.converged
    assert res.note is not None
    assert "invariant" in res.note
    gram = res.eigenvectors @ res.eigenvectors.T
    assert torch.allclose(gram, torch.eye(5, dtype=F64), atol=1e-12)


def test_multiplicity_found_when_krylov_space_becomes_invariant() -> None:
    lam = torch.tensor([3.0] * 3 + [1.0] * 47, dtype=F64)
    known = dense_known(lam, seed=3)
    res = lanczos(known.operator, k=5, which="LA", seed=0)
    assert res.eigenvalues.tolist() == pytest.approx([3, 3, 3, 1, 1], abs=1e-12)
    _assert_matches(known, res, "LA", 5)


def test_block_start_uses_matmat_and_resolves_multiplicity() -> None:
    known = dense_known(_spectrum("repeated", 300), seed=4)
    calls = {"matvec": 0, "matmat": 0}
    A = known.dense
    assert A is not None

    def mv(v: torch.Tensor) -> torch.Tensor:
        calls["matvec"] += 1
        return A @ v

    def mm(V: torch.Tensor) -> torch.Tensor:
        calls["matmat"] += 1
        return A @ V

    op = LambdaOperator(300, mv, matmat=mm, dtype=F64)
    res = lanczos(op, k=4, which="LA", seed=0, block_size=3)
    assert res.eigenvalues.tolist() == pytest.approx([8, 8, 8, 6], abs=1e-10)
    assert calls["matvec"] == 0
    assert calls["matmat"] == res.iterations
    assert res.num_matvecs == 3 * res.iterations


def test_restarted_k100_bounded_basis_and_accurate() -> None:
    n, k, cap = 20_000, 100, 200
    lam = torch.cat([torch.linspace(10, 5, k, dtype=F64), _bulk(n - k, 0, 4, 9)])
    known = householder_known(lam, num_reflections=3, seed=1)
    sizes: list[int] = []

    def record(info: IterationInfo) -> None:
        assert info.basis_size is not None
        sizes.append(info.basis_size)

    res = lanczos(
        known.operator,
        k=k,
        max_iter=2000,
        which="LA",
        seed=0,
        restart=True,
        max_basis=cap,
        callback=record,
    )
    assert res.converged
    assert max(sizes) <= cap
    assert res.note is not None
    assert "thick-restarted" in res.note
    expected = known.sorted("LA", k)
    assert ((res.eigenvalues - expected).abs() <= 1e-8 * expected.abs()).all()
    for i in (0, 50, 99):
        theta, x = float(res.eigenvalues[i]), res.eigenvectors[i]
        r = known.residual(theta, x)
        assert sin_angle_to_eigenspace(known, theta, x, 1e-9) <= r / gap(known, theta, 1e-9) + 1e-10


def test_restart_matches_unrestarted_on_a_small_basis() -> None:
    known = dense_known(_spectrum("clustered", 300), seed=5)
    full = lanczos(known.operator, k=4, max_iter=300, which="LA", seed=0, restart=False)
    small = lanczos(
        known.operator, k=4, max_iter=600, which="LA", seed=0, restart=True, max_basis=8
    )
    assert small.note is not None
    assert "thick-restarted" in small.note
    assert torch.allclose(full.eigenvalues, small.eigenvalues, rtol=1e-12, atol=0)
    _assert_matches(known, small, "LA", 4)


def test_million_dimensional_operator() -> None:
    n = 1_000_000
    lam = torch.cat([torch.tensor([100.0, 90.0, 80.0], dtype=F64), _bulk(n - 3, 0, 1, 10)])
    known = householder_known(lam, num_reflections=2, seed=2)
    res = lanczos(known.operator, k=3, max_iter=60, which="LA", seed=0)
    assert res.converged
    expected = torch.tensor([100.0, 90.0, 80.0], dtype=F64)
    assert ((res.eigenvalues - expected).abs() < 1e-8 * 80).all()
    for i in range(3):
        theta, x = float(res.eigenvalues[i]), res.eigenvectors[i]
        r = known.residual(theta, x)
        assert sin_angle_to_eigenspace(known, theta, x, 1e-9) <= r / gap(known, theta, 1e-9) + 1e-10


def test_same_seed_is_bit_identical_and_none_is_fresh() -> None:
    known = dense_known(_spectrum("indefinite", 200), seed=6)
    a = lanczos(known.operator, k=3, seed=123)
    b = lanczos(known.operator, k=3, seed=123)
    assert torch.equal(a.eigenvalues, b.eigenvalues)
    assert torch.equal(a.eigenvectors, b.eigenvectors)
    assert torch.equal(a.residuals, b.residuals)
    c = lanczos(known.operator, k=3, seed=None)
    d = lanczos(known.operator, k=3, seed=None)
    assert not torch.equal(c.eigenvectors, d.eigenvectors)
    gen = torch.Generator().manual_seed(123)
    e = lanczos(known.operator, k=3, seed=gen)
    assert torch.equal(a.eigenvectors, e.eigenvectors)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_reduced_precision_operator_end_to_end(dtype: torch.dtype) -> None:
    lam = torch.cat([torch.tensor([10.0, 7.0, 5.0], dtype=F64), _bulk(197, 0, 1, 11)])
    known = dense_known(lam, seed=7, dtype=dtype)
    assert known.dense is not None
    # The operator is the rounded matrix: compare with its exact spectrum.
    rounded = known.dense.to(dtype).to(F64)
    expected = torch.linalg.eigvalsh((rounded + rounded.T) / 2).flip(0)[:3]
    res = lanczos(known.operator, k=3, max_iter=100, which="LA", seed=0)
    assert res.eigenvectors.dtype == dtype
    assert res.eigenvalues.dtype == F64
    rel = 1e-5 if dtype == torch.float32 else 3e-2
    assert ((res.eigenvalues - expected).abs() <= rel * expected.abs()).all(), res.eigenvalues
    assert res.converged


def test_accepts_tensor_scipy_and_operator() -> None:
    known = dense_known(_spectrum("indefinite", 120), seed=8)
    assert known.dense is not None
    ref = lanczos(known.operator, k=2, seed=0)
    from_tensor = lanczos(known.dense, k=2, seed=0)
    from_scipy = lanczos(aslinearoperator(known.dense.numpy()), k=2, seed=0)
    from_numpy = lanczos(np.asarray(known.dense.numpy()), k=2, seed=0)
    for other in (from_tensor, from_scipy, from_numpy):
        assert torch.allclose(other.eigenvalues, ref.eigenvalues, rtol=1e-12, atol=0)


def test_callback_reports_progress_and_can_stop() -> None:
    known = dense_known(_spectrum("indefinite", 200), seed=9)
    seen: list[IterationInfo] = []
    res = lanczos(known.operator, k=2, seed=0, callback=seen.append)
    assert [i.iteration for i in seen] == list(range(1, res.iterations + 1))
    assert seen[-1].num_matvecs == res.num_matvecs
    assert seen[-1].num_converged == 2
    assert torch.equal(seen[-1].estimates, res.eigenvalues)

    stopped = lanczos(known.operator, k=2, seed=0, callback=lambda info: info.iteration >= 4)
    assert stopped.iterations == 4
    assert not stopped.converged
    assert stopped.note is not None
    assert "callback" in stopped.note


def test_budget_exhaustion_warns_and_says_so() -> None:
    known = dense_known(_spectrum("clustered", 300), seed=10)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        res = lanczos(known.operator, k=4, max_iter=6, which="LA", seed=0)
    assert not res.converged
    assert res.note is not None
    assert "converged" in res.note
    assert res.eigenvalues.shape == (4,)


def test_bad_input_errors_name_the_argument() -> None:
    known = dense_known(_spectrum("indefinite", 50), seed=11)
    op = known.operator
    with pytest.raises(InvalidArgumentError, match="k=51 exceeds the operator size n=50"):
        lanczos(op, k=51)
    with pytest.raises(InvalidArgumentError, match="k must be at least 1"):
        lanczos(op, k=0)
    with pytest.raises(InvalidArgumentError, match="max_iter=5 is too small for k=10"):
        lanczos(op, k=10, max_iter=5)
    with pytest.raises(InvalidArgumentError, match="which must be"):
        lanczos(op, which="BE")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="tol must be a finite positive"):
        lanczos(op, tol=0.0)
    with pytest.raises(InvalidArgumentError, match="block_size"):
        lanczos(op, block_size=0)
    with pytest.raises(InvalidArgumentError, match="max_basis=5 is too small"):
        lanczos(op, k=4, restart=True, max_basis=5)
    with pytest.raises(InvalidArgumentError, match="restart must be"):
        lanczos(op, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="callback must be callable"):
        lanczos(op, callback=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="operator must be"):
        lanczos([1, 2, 3])
    with pytest.raises(InvalidArgumentError, match="v0 must be a non-zero"):
        lanczos_tridiagonal(op, torch.zeros(50, dtype=F64), 5)
    with pytest.raises(InvalidArgumentError, match="v0 must have shape"):
        lanczos_tridiagonal(op, torch.ones(49, dtype=F64), 5)


def test_unsymmetric_operator_is_detected() -> None:
    g = torch.Generator().manual_seed(0)
    M = torch.randn(40, 40, generator=g, dtype=F64)
    with pytest.raises(InvalidArgumentError, match="not symmetric"):
        lanczos(M, k=2, seed=0)
    with pytest.raises(InvalidArgumentError, match="not symmetric"):
        lanczos_tridiagonal(M, torch.ones(40, dtype=F64), 10, reorthogonalize=False)
    # A finite-difference-sized asymmetry (1e-9 relative) is tolerated.
    S = M + M.T
    E = torch.randn(40, 40, generator=g, dtype=F64)
    res = lanczos(S + 1e-9 * float(S.norm()) / 40 * E, k=2, seed=0)
    assert res.converged


def test_non_finite_product_raises() -> None:
    def bad(v: torch.Tensor) -> torch.Tensor:
        out = v.clone()
        out[3] = float("nan")
        return out

    with pytest.raises(NonFiniteError, match="product number 1"):
        lanczos(LambdaOperator(20, bad, dtype=F64), k=1, seed=0)


def test_lanczos_tridiagonal_is_the_projection_and_stops_when_invariant() -> None:
    known = dense_known(_spectrum("indefinite", 80), seed=12)
    A = known.dense
    assert A is not None
    v0 = torch.randn(80, generator=torch.Generator().manual_seed(1), dtype=F64)
    td = lanczos_tridiagonal(known.operator, v0, 20)
    Q = torch.stack(td.basis)
    assert td.iterations == 20
    assert Q.shape == (20, 80)
    assert torch.allclose(Q @ Q.T, torch.eye(20, dtype=F64), atol=1e-13)
    T = torch.diag(td.alphas) + torch.diag(td.betas, 1) + torch.diag(td.betas, -1)
    assert torch.allclose(Q @ A @ Q.T, T, atol=1e-12)
    assert torch.allclose(Q[0], v0 / v0.norm(), atol=1e-15)
    # A x_m residual coupling: A q_20 − α q_20 − β q_19 has norm last_beta.
    r = A @ Q[-1] - td.alphas[-1] * Q[-1] - td.betas[-1] * Q[-2]
    assert abs(float(r.norm()) - td.last_beta) < 1e-10
    # Three distinct eigenvalues: the Krylov space is invariant after 3 steps.
    three = dense_known(torch.tensor([2.0] * 10 + [-1.0] * 10 + [5.0] * 10, dtype=F64), seed=13)
    td3 = lanczos_tridiagonal(three.operator, torch.ones(30, dtype=F64), 10)
    assert td3.iterations == 3
    assert td3.last_beta == 0.0
    T3 = torch.diag(td3.alphas) + torch.diag(td3.betas, 1) + torch.diag(td3.betas, -1)
    assert torch.linalg.eigvalsh(T3).tolist() == pytest.approx([-1.0, 2.0, 5.0], abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_serves_cuda_operator() -> None:
    known = dense_known(_spectrum("indefinite", 100), seed=14)
    assert known.dense is not None
    A = known.dense.cuda()
    op = LambdaOperator(100, lambda v: A @ v, dtype=F64, device="cuda")
    res = lanczos(op, k=2, seed=5)
    ref = lanczos(known.operator, k=2, seed=5)
    assert res.eigenvectors.device.type == "cuda"
    assert torch.allclose(res.eigenvalues, ref.eigenvalues, rtol=1e-10, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = lanczos(op, k=2, seed=torch.Generator().manual_seed(5))
    assert torch.equal(again.eigenvectors, res.eigenvectors)


@pytest.mark.parametrize(("block", "reorth"), [(1, True), (1, False), (2, True)])
def test_non_finite_later_product_is_caught_by_the_step_norms(block: int, reorth: bool) -> None:
    # The engine skips the product's own finiteness pass and reads it off the norms it
    # takes anyway: an inf (not only NaN) in a later product must still raise, with its index.
    d = torch.linspace(1.0, 2.0, 30, dtype=F64)
    calls = {"n": 0}

    def bad(V: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = d.reshape(-1, *([1] * (V.ndim - 1))) * V
        if calls["n"] == 3:
            out[5] = float("inf")
        return out

    op = LambdaOperator(30, bad, matmat=bad, dtype=F64)
    with pytest.raises(NonFiniteError, match=f"product number {3 * block}"):
        lanczos(op, k=2, seed=0, block_size=block, reorthogonalize=reorth)


def test_skipped_early_checks_change_nothing() -> None:
    # Without a callback no convergence check runs while fewer than k Ritz pairs exist;
    # the result must be bit-identical to a run that checks every step.
    known = dense_known(_spectrum("clustered", 300), seed=15)
    quiet = lanczos(known.operator, k=4, which="LA", seed=3)
    seen: list[int] = []
    watched = lanczos(known.operator, k=4, which="LA", seed=3, callback=lambda i: seen.append(1))
    assert len(seen) == watched.iterations
    assert quiet.iterations == watched.iterations
    assert torch.equal(quiet.eigenvalues, watched.eigenvalues)
    assert torch.equal(quiet.eigenvectors, watched.eigenvectors)
    assert torch.equal(quiet.residuals, watched.residuals)
