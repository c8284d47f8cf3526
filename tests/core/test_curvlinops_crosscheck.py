"""HessianOperator against an independent library: curvlinops' HessianLinearOperator.

curvlinops weighs each batch of a mean-reduced loss by its size over the dataset size, the
same dataset mean our operators define, so the products must agree to rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from hessian_eigenthings import HessianOperator, match_names
from tests.core.oracles import rel_err
from tests.core.zoo import Case, cnn_batchnorm, mlp

curvlinops = pytest.importorskip(
    "curvlinops",
    reason="curvlinops-for-pytorch (the cross-library oracle) is not installed in this env",
)


def cnn_tanh() -> Case:
    """The zoo's Conv-BatchNorm CNN with Tanh for SiLU: curvlinops multiplies by the Hessian
    with torch.func.jvp over jacrev, and torch 2.15 has no forward AD for silu_backward."""
    case = cnn_batchnorm()
    case.model[2] = nn.Tanh()
    return case


@pytest.mark.parametrize("method", ["autograd", "forward_over_reverse"])
@pytest.mark.parametrize("make_case", [mlp, cnn_tanh], ids=["mlp", "cnn"])
def test_products_agree_with_curvlinops(make_case: Callable[[], Case], method: str) -> None:
    case = make_case()
    assert case.task == "ce"
    params = [p for p in case.model.parameters() if p.requires_grad]
    theirs = curvlinops.HessianLinearOperator(
        case.model, nn.CrossEntropyLoss(reduction="mean"), params, case.batches
    )
    ours = HessianOperator(case.model, case.batches, case.loss, method=method)
    assert theirs.shape == ours.shape
    V = torch.randn(ours.size, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_err(ours.matvec(V[:, 0]), theirs @ V[:, 0]) < 1e-10
    assert rel_err(ours.matmat(V), theirs @ V) < 1e-10


def test_parameter_subset_agrees_with_curvlinops() -> None:
    case = mlp()
    keep = match_names(*case.subset)
    params = [p for n, p in case.model.named_parameters() if keep(n, p)]
    theirs = curvlinops.HessianLinearOperator(
        case.model, nn.CrossEntropyLoss(), params, case.batches
    )
    ours = HessianOperator(case.model, case.batches, case.loss, param_filter=keep)
    v = torch.randn(ours.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert rel_err(ours.matvec(v), theirs @ v) < 1e-10
