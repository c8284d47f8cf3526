"""The oracles themselves: symmetric, consistent with each other, and honest about the data."""

from __future__ import annotations

import pytest
import torch

from tests.core.oracles import dense_ggn, dense_hessian, rel_err
from tests.core.zoo import CASE_IDS, CASES, mlp_mse


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_hessian_oracle_is_symmetric_and_matches_finite_differences(make_case) -> None:
    # dense_hessian asserts symmetry and a finite-difference agreement internally.
    H = dense_hessian(make_case())
    assert H.dtype == torch.float64
    assert torch.isfinite(H).all()


def test_ggn_equals_hessian_for_linear_model_with_mse() -> None:
    case = mlp_mse()
    model = torch.nn.Linear(4, 2).double()
    case.model = model
    assert rel_err(dense_ggn(case), dense_hessian(case)) < 1e-12
