"""CurvatureOperator's concrete methods on LambdaOperator and dense adapters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hessian_eigenthings import (
    CurvatureOperator,
    InvalidArgumentError,
    LambdaOperator,
    OperatorTooLargeError,
    as_operator,
)


def sym(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a + a.T


def test_seed_form_of_lambda_operator_is_two_identity() -> None:
    op = LambdaOperator(size=1000, matvec=lambda v: 2.0 * v)
    assert op.shape == (1000, 1000)
    assert op.dtype == torch.get_default_dtype()
    v = torch.randn(1000)
    assert torch.equal(op.matvec(v), 2.0 * v)
    small = LambdaOperator(size=6, matvec=lambda v: 2.0 * v, dtype=torch.float64)
    assert torch.equal(small.to_dense(), 2.0 * torch.eye(6, dtype=torch.float64))


def test_matmat_and_matmul_agree_with_matvec() -> None:
    A = sym(9)
    op = LambdaOperator(size=9, matvec=lambda v: A @ v, dtype=torch.float64)
    V = torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        # column-by-column products and one GEMM sum in different orders: compare in norm
        return bool((a - b).norm() <= 1e-14 * b.norm())

    assert close(op.matmat(V), A @ V)
    assert close(op @ V, A @ V)
    assert close(op @ V[:, 0], A @ V[:, 0])
    assert op.matmat(V[:, :0]).shape == (9, 0)
    assert close(op.to_dense(chunk=4), A)


def test_to_scipy_agrees_with_matvec_and_matmat() -> None:
    A = sym(12, seed=1)
    op = as_operator(A)
    lin = op.to_scipy()
    x = np.random.default_rng(0).standard_normal(12)
    X = np.random.default_rng(1).standard_normal((12, 3))
    assert lin.shape == (12, 12)
    assert lin.dtype == np.float64
    np.testing.assert_allclose(lin.matvec(x), (A @ torch.from_numpy(x)).numpy(), rtol=1e-13)
    np.testing.assert_allclose(lin.matmat(X), (A @ torch.from_numpy(X)).numpy(), rtol=1e-13)
    np.testing.assert_allclose(
        lin @ x.reshape(-1, 1), (A @ torch.from_numpy(x)).numpy()[:, None], rtol=1e-13
    )
    from scipy.sparse.linalg import eigsh

    top = eigsh(lin, k=1, which="LA", return_eigenvectors=False)[0]
    assert abs(top - torch.linalg.eigvalsh(A)[-1].item()) < 1e-10


def test_as_operator_wraps_scipy_and_numpy() -> None:
    from scipy.sparse.linalg import aslinearoperator

    A = sym(5, seed=2)
    for obj in (aslinearoperator(A.numpy()), A.numpy()):
        op = as_operator(obj)
        assert isinstance(op, CurvatureOperator)
        assert op.dtype == torch.float64
        assert torch.allclose(op.to_dense(), A, rtol=1e-14, atol=0)
    with pytest.raises(InvalidArgumentError, match="square"):
        as_operator(torch.zeros(2, 3))
    with pytest.raises(InvalidArgumentError, match="CurvatureOperator"):
        as_operator("A")


def test_to_dense_refuses_large_operators() -> None:
    op = LambdaOperator(size=100_000, matvec=lambda v: v)
    with pytest.raises(OperatorTooLargeError, match="max_size"):
        op.to_dense()


def test_vector_checks_name_the_problem() -> None:
    op = LambdaOperator(size=4, matvec=lambda v: v, dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match=r"shape \(n,\) with n = 4"):
        op.matvec(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match=r"dtype torch\.float32"):
        op.matvec(torch.zeros(4))
    with pytest.raises(InvalidArgumentError, match=r"must be a torch\.Tensor"):
        op.matvec([0.0] * 4)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match=r"\(n, m\)"):
        op.matmat(torch.zeros(4, dtype=torch.float64))
    bad = LambdaOperator(size=4, matvec=lambda v: v[:2], dtype=torch.float64)
    with pytest.raises(InvalidArgumentError, match="returned"):
        bad.matvec(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="positive int"):
        LambdaOperator(size=0, matvec=lambda v: v)
