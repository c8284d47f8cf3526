"""The loss helpers: values, dtypes, batch weights, the analytical loss-Hessian product, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings_tlens import (
    build_tlens_model,
    next_token_targets,
    tlens_forward,
    tlens_loss,
    tlens_loss_of_output,
)
from hessian_eigenthings_tlens.batches import parse_batch
from tests.tlens import oracles
from tests.tlens.models import MODEL_KINDS, TINY


def test_loss_matches_a_hand_written_cross_entropy(model: nn.Module, batches: list[Any]) -> None:
    loss_fn = tlens_loss()
    for batch in batches:
        logits = oracles.live_logits(model, batch)
        expected = oracles.summed_token_loss(logits, batch) / oracles.scored(batch).sum()
        got = loss_fn(model, batch)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=0)


def test_loss_matches_transformer_lens_own_loss(model: nn.Module, batches: list[Any]) -> None:
    try:
        from transformer_lens.utilities.lm_utils import lm_cross_entropy_loss
    except ImportError:  # TransformerLens < 4
        from transformer_lens.utils import lm_cross_entropy_loss

    plain, padded = batches[0], {k: v for k, v in batches[1].items() if k != "loss_mask"}
    torch.testing.assert_close(
        tlens_loss()(model, plain), model(plain, return_type="loss"), rtol=1e-13, atol=0
    )
    logits = oracles.live_logits(model, padded)
    reference = lm_cross_entropy_loss(
        logits, padded["tokens"], attention_mask=padded["attention_mask"]
    )
    torch.testing.assert_close(tlens_loss()(model, padded), reference, rtol=1e-13, atol=0)


def test_batch_weight_counts_scored_predictions(batches: list[Any]) -> None:
    helpers = (tlens_loss(), tlens_forward(), tlens_loss_of_output())
    for batch in batches:
        expected = int(oracles.scored(batch).sum())
        assert [h.batch_weight(batch) for h in helpers] == [expected] * 3
    assert [tlens_loss().batch_weight(b) for b in batches] == [12, 8]
    assert tlens_loss().batch_weight((batches[0],)) == 12  # a DataLoader(TensorDataset) batch


def test_targets_are_aligned_with_the_logits() -> None:
    tokens = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    batch = {
        "tokens": tokens,
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
        "loss_mask": torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]]),
    }
    expected = torch.tensor([[6, 7, -100, -100], [-100, 3, 4, -100]])
    assert torch.equal(next_token_targets(parse_batch(batch)), expected)


def test_forward_returns_the_models_logits(model: nn.Module, batches: list[Any]) -> None:
    for batch in batches:
        assert torch.equal(tlens_forward()(model, batch), oracles.live_logits(model, batch))


def test_loss_keeps_float64_and_float32_and_upcasts_half() -> None:
    logits = torch.randn(2, 4, 5, dtype=torch.float64)
    tokens = torch.randint(0, 5, (2, 4))
    ce = tlens_loss_of_output()
    assert ce(logits, tokens).dtype == torch.float64
    assert ce(logits.float(), tokens).dtype == torch.float32
    half = ce(logits.bfloat16(), tokens)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, ce(logits.bfloat16().float(), tokens), rtol=0, atol=0)


def test_float32_model_gives_float32_loss() -> None:
    model = build_tlens_model({**TINY, "n_layers": 1}, dtype=torch.float32, kind=MODEL_KINDS[0])
    tokens = torch.randint(0, 13, (2, 5))
    assert tlens_loss()(model, tokens).dtype == torch.float32


def test_hvp_equals_autograd_hessian_of_the_logits_loss() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    u = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    batch = {
        "tokens": torch.randint(0, 7, (3, 5), generator=g),
        "attention_mask": torch.tensor([[1] * 5, [1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]),
        "loss_mask": torch.tensor([[1, 0, 1, 1, 1], [1] * 5, [1] * 5]),
    }
    ce = tlens_loss_of_output(fused="eager")
    z = logits.clone().requires_grad_(True)
    (g_z,) = torch.autograd.grad(ce(z, batch), z, create_graph=True)
    (expected,) = torch.autograd.grad((g_z * u).sum(), z)
    got = ce.hvp(logits, batch, u)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)
    unscored = next_token_targets(parse_batch(batch)) == -100
    assert bool((got[unscored] == 0).all())  # the last position, padding, masked targets
    with pytest.raises(InvalidArgumentError, match="no-such-backend"):  # fused= reaches ce_hvp
        tlens_loss_of_output(fused="no-such-backend").hvp(logits, batch, u)


def test_batches_without_targets_weigh_nothing(model: nn.Module) -> None:
    one_token = torch.tensor([[3], [4]])
    loss = tlens_loss()(model, one_token)
    assert tlens_loss().batch_weight(one_token) == 0
    assert loss.item() == 0.0
    assert loss.requires_grad


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (torch.tensor([1, 2, 3]), "2-D tensor"),
        (torch.rand(2, 3), "integer tensor"),
        ({"tokens": torch.ones(2, 3, dtype=torch.long), "labels": torch.ones(2, 3)}, "unknown"),
        (
            {"tokens": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 4)},
            "shape",
        ),
        ({"attention_mask": torch.ones(2, 3)}, "exactly one of"),
        ("some text", "got a str"),
    ],
)
def test_bad_batches_are_rejected_with_the_reason(batch: Any, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        tlens_loss().batch_weight(batch)


def test_logits_of_the_wrong_shape_are_rejected() -> None:
    tokens = torch.randint(0, 5, (2, 4))
    with pytest.raises(InvalidArgumentError, match="logits must have shape"):
        tlens_loss_of_output()(torch.randn(2, 3, 5), tokens)

    class NotLogits(nn.Module):
        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return tokens.float().sum()

    with pytest.raises(InvalidArgumentError, match="must return logits"):
        tlens_forward()(NotLogits(), tokens)


def test_square_root_form_matches_the_hessian_product() -> None:
    # The Fisher operators use S with S Sᵀ = H_ℓ; the targets plumbing must be the same as .hvp's.
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    u = torch.randn(2, 6, 5, generator=g, dtype=torch.float64)
    batch = {
        "tokens": torch.randint(0, 5, (2, 6), generator=g),
        "attention_mask": torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]]),
    }
    ce = tlens_loss_of_output(fused="eager")
    s_t_u = ce.hessian_sqrt_matmul(logits, batch, u, transpose=True)
    torch.testing.assert_close(
        ce.hessian_sqrt_matmul(logits, batch, s_t_u),
        ce.hvp(logits, batch, u),
        rtol=1e-12,
        atol=1e-15,
    )
