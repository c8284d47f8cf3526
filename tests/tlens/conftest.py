"""TransformerLens tests run offline: models are built from tiny configs, nothing is downloaded.

The session fixtures build the TINY model of each kind the installed TransformerLens offers and
its dense oracles once; every operator test compares products against them.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# The environment must be set before transformer_lens (and transformers) is imported.
from typing import Any

import pytest
import torch
from torch import nn

from tests.tlens import oracles
from tests.tlens.models import MODEL_KINDS, tiny_model, token_batches


@pytest.fixture(scope="session", params=MODEL_KINDS)
def model(request: pytest.FixtureRequest) -> nn.Module:
    """The 2-layer float64 TINY model of each kind the installed TransformerLens builds."""
    return tiny_model(request.param)


@pytest.fixture(scope="session")
def batches() -> list[Any]:
    return token_batches()


@pytest.fixture(scope="session")
def dense_hessian(model: nn.Module, batches: list[Any]) -> torch.Tensor:
    """Oracle Hessian of the token-mean loss over ``batches``, all parameters."""
    return oracles.dense_hessian(model, batches)


@pytest.fixture(scope="session")
def dense_ggn(model: nn.Module, batches: list[Any]) -> torch.Tensor:
    """Oracle GGN of the token-mean loss over ``batches``, all parameters."""
    return oracles.dense_ggn(model, batches)
