"""Cross-library check: GGN and empirical-Fisher products equal curvlinops' on the zoo's MLP
and CNN (an independent implementation of the same matrices), in float64."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from hessian_eigenthings import EmpiricalFisherOperator, FisherOperator, GGNOperator
from tests.core.oracles import rel_err
from tests.core.zoo import cnn_batchnorm, mlp
from tests.core.zoo_losses import analytical_loss, per_sample_loss

curvlinops = pytest.importorskip(
    "curvlinops",
    reason="curvlinops (dev dependency curvlinops-for-pytorch) is the cross-library oracle",
)

CASES = [mlp, cnn_batchnorm]


def _theirs(cls: Any, case: Any) -> torch.Tensor:
    params = [p for p in case.model.parameters() if p.requires_grad]
    op = cls(case.model, nn.CrossEntropyLoss(), params, case.batches)
    return op @ torch.eye(op.shape[1], dtype=torch.float64)  # type: ignore[no-any-return]


@pytest.mark.parametrize("make_case", CASES, ids=[c.__name__ for c in CASES])
def test_ggn_and_type2_fisher_match_curvlinops(make_case: Any) -> None:
    case = make_case()
    theirs = _theirs(curvlinops.GGNLinearOperator, case)
    ggn = GGNOperator(case.model, case.batches, case.forward, analytical_loss(case))
    assert rel_err(ggn.to_dense(), theirs) < 1e-10
    fisher = FisherOperator(case.model, case.batches, case.forward, analytical_loss(case))
    assert rel_err(fisher.to_dense(), theirs) < 1e-10


@pytest.mark.parametrize("make_case", CASES, ids=[c.__name__ for c in CASES])
def test_empirical_fisher_matches_curvlinops(make_case: Any) -> None:
    case = make_case()
    theirs = _theirs(curvlinops.EFLinearOperator, case)
    for limit in (0, 1000):  # forward-mode route and per-sample-gradient route
        ours = EmpiricalFisherOperator(
            case.model, case.batches, per_sample_loss(case), per_sample_limit=limit
        )
        assert rel_err(ours.to_dense(), theirs) < 1e-10
