"""The HF loss helpers: semantics against HF's own losses and an independent re-implementation,
token weights, the analytical loss-Hessian product, attention handling and name resolution."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, jacrev

import hessian_eigenthings
import hessian_eigenthings.loss_fns
import hessian_eigenthings_hf as hf
from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.plugins import get_registries
from tests.hf.models import VOCAB, batches, build, causal_batches, seq2seq_batches
from tests.hf.oracles import Problem, count_scored, scored_positions

NAMES = (
    "hf_lm_loss",
    "hf_lm_forward",
    "hf_lm_loss_of_output",
    "hf_lm_shifted_ce",
    "hf_seq2seq_loss",
)


@pytest.mark.parametrize("name", NAMES)
def test_reference_names_resolve_through_the_plugin(name: str) -> None:
    assert getattr(hessian_eigenthings, name) is getattr(hf, name)
    assert getattr(hessian_eigenthings.loss_fns, name) is getattr(hf, name)
    assert get_registries().loss_fns.entry(name).plugin == "hessian-eigenthings-hf"


def test_loss_matches_hf_loss_in_float32() -> None:
    """No padding, labels = input_ids: exactly ``model(**batch).loss`` (which is float32)."""
    model = build("gpt2").float()
    ids = torch.randint(0, VOCAB, (3, 6), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ours = hf.hf_lm_loss()(model, batch)
    theirs = model(**batch, labels=ids).loss
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_float64_model_gives_float64_loss_equal_to_the_reference(arch: str) -> None:
    """hf_lm_loss keeps float64 (HF's .loss is float32) and matches the re-implementation on
    right padding and -100 labels, batch by batch."""
    model = build(arch)
    for batch in causal_batches():
        ours = hf.hf_lm_loss()(model, batch)
        assert ours.dtype == torch.float64
        P = Problem(model, [batch], "causal")
        torch.testing.assert_close(ours, P.loss(P.theta), rtol=1e-13, atol=0)
        hf_labels = batch.get("labels", batch["input_ids"]).masked_fill(
            batch["attention_mask"] == 0, -100
        )
        theirs = model(**{**batch, "labels": hf_labels}).loss
        assert theirs.dtype == torch.float32  # the reason hf_lm_loss computes its own
        torch.testing.assert_close(ours.float(), theirs, rtol=1e-6, atol=0)


def test_seq2seq_loss_matches_t5_loss_and_the_reference() -> None:
    model = build("t5")
    for batch in seq2seq_batches():
        ours = hf.hf_seq2seq_loss()(model, batch)
        assert ours.dtype == torch.float64
        P = Problem(model, [batch], "seq2seq")
        torch.testing.assert_close(ours, P.loss(P.theta), rtol=1e-13, atol=0)
        torch.testing.assert_close(ours, model(**batch).loss, rtol=1e-13, atol=0)


def test_seq2seq_decoder_attention_mask_acts_like_minus_100_labels() -> None:
    """Padding the targets with pad ids and decoder_attention_mask 0 scores the same tokens
    as labelling those positions -100 (HF's convention)."""
    model = build("t5")
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 2]])
    labels = torch.tensor([[4, 5, 6, 7, 8], [9, 3, 0, 0, 0]])
    dec_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    masked = {"input_ids": ids, "labels": labels, "decoder_attention_mask": dec_mask}
    minus_100 = {"input_ids": ids, "labels": labels.masked_fill(dec_mask == 0, -100)}
    loss = hf.hf_seq2seq_loss()
    assert loss.batch_weight(masked) == loss.batch_weight(minus_100) == 7
    torch.testing.assert_close(loss(model, masked), loss(model, minus_100), rtol=1e-13, atol=0)
    torch.testing.assert_close(loss(model, minus_100), model(**minus_100).loss, rtol=1e-13, atol=0)


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_every_helper_weighs_a_batch_by_its_scored_tokens(arch: str) -> None:
    kind = "causal" if arch == "gpt2" else "seq2seq"
    prefix = "hf_lm" if kind == "causal" else "hf_seq2seq"
    helpers = [getattr(hf, f"{prefix}_{s}")() for s in ("loss", "forward", "loss_of_output")]
    for batch in batches(arch):
        expected = len(scored_positions(batch, kind))
        assert expected > 0
        assert [h.batch_weight(batch) for h in helpers] == [expected] * 3


def test_causal_targets_ignore_padding_on_either_side_and_minus_100() -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    batch = {
        "input_ids": ids,
        "attention_mask": torch.tensor([[0, 1, 1, 1, 0]]),  # left and right padding
        "labels": torch.tensor([[5, 6, -100, 8, 9]]),
    }
    # position 0 is padding (its prediction is not scored), label 7 is -100, 9 is padding
    assert hf.causal_lm_targets(batch).tolist() == [[-100, -100, 8, -100, -100]]
    assert hf.hf_lm_loss().batch_weight(batch) == 1


@pytest.mark.parametrize("fused", ["eager", "auto"])
@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_hvp_is_the_loss_hessian_wrt_logits(arch: str, fused: str) -> None:
    """``.hvp`` equals jacrev(grad) of the re-implemented loss in the logits, on every batch;
    rows of ignored positions are zero."""
    kind = "causal" if arch == "gpt2" else "seq2seq"
    model = build(arch)
    helper = hf.hf_lm_shifted_ce(fused) if kind == "causal" else hf.hf_seq2seq_loss_of_output(fused)
    forward = hf.hf_lm_forward() if kind == "causal" else hf.hf_seq2seq_forward()
    g = torch.Generator().manual_seed(3)
    for batch in batches(arch):
        logits = forward(model, batch).detach()
        P = Problem(model, [batch], kind)
        shape = logits.shape

        def loss_of_flat(
            z: torch.Tensor, P: Problem = P, shape: torch.Size = shape
        ) -> torch.Tensor:
            return P.loss_of_logits([z.view(shape)])

        H = jacrev(grad(loss_of_flat))(logits.reshape(-1))
        u = torch.randn(logits.shape, generator=g, dtype=logits.dtype)
        out = helper.hvp(logits, batch, u)
        assert out.shape == logits.shape
        assert out.dtype == torch.float64
        torch.testing.assert_close(out.reshape(-1), H @ u.reshape(-1), rtol=1e-12, atol=1e-14)
        scored = torch.zeros(logits.shape[:2], dtype=torch.bool)
        for b, t, _ in scored_positions(batch, kind):
            scored[b, t] = True
        assert not out[~scored].any()
        torch.testing.assert_close(
            helper(logits, batch), P.loss_of_logits([logits]), rtol=1e-13, atol=0
        )


def test_batch_without_valid_tokens_has_zero_loss_and_weight() -> None:
    model = build("gpt2")
    ids = torch.tensor([[3, 4, 5]])
    batch = {"input_ids": ids, "attention_mask": torch.tensor([[1, 0, 0]])}
    loss = hf.hf_lm_loss()(model, batch)
    assert loss.item() == 0.0
    assert loss.requires_grad
    assert hf.hf_lm_loss().batch_weight(batch) == 0
    assert count_scored([batch], "causal") == 0


def test_default_sdpa_attention_is_differentiable_twice_through_the_helper() -> None:
    """The model uses HF's default sdpa attention, whose CPU kernel has no double backward;
    through hf_lm_loss the double backward works and SDPA flags are restored afterwards."""
    model = build("gpt2")
    assert model.config._attn_implementation == "sdpa"
    batch = causal_batches()[0]
    params = list(model.parameters())

    def double_backward(loss: torch.Tensor) -> None:
        g = torch.autograd.grad(loss, params, create_graph=True)
        torch.autograd.grad(sum((x * x).sum() for x in g), params)

    plain = torch.nn.functional.cross_entropy(
        model(**batch).logits[:, :-1].reshape(-1, VOCAB), batch["input_ids"][:, 1:].reshape(-1)
    )
    with pytest.raises(RuntimeError, match="flash_attention"):
        double_backward(plain)
    flags = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    double_backward(hf.hf_lm_loss()(model, batch))
    assert (
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
    ) == flags
    assert flags[0], "the flash SDPA backend should be enabled outside the helpers"


def test_unsupported_attention_implementation_names_the_fix() -> None:
    model = build("llama")
    model.config._attn_implementation_internal = "flash_attention_2"
    batch = causal_batches()[0]
    with pytest.raises(InvalidArgumentError, match='attn_implementation="eager"'):
        hf.hf_lm_loss()(model, batch)
    with pytest.raises(InvalidArgumentError, match="flash_attention_2"):
        hf.hf_lm_forward()(model, batch)
    assert hf.attention_implementations(model) == {"flash_attention_2"}
    with pytest.raises(InvalidArgumentError, match="attention must be"):
        hf.hf_lm_forward(attention="math")(model, batch)  # type: ignore[arg-type]


def test_attention_keep_leaves_the_kernel_alone() -> None:
    model = build("gpt2")
    batch = causal_batches()[0]
    loss = hf.hf_lm_loss(attention="keep")(model, batch)
    torch.testing.assert_close(loss, hf.hf_lm_loss()(model, batch), rtol=1e-13, atol=0)
    g = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    with pytest.raises(RuntimeError, match="flash_attention"):
        torch.autograd.grad(sum((x * x).sum() for x in g), list(model.parameters()))


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ((torch.zeros(2, 3, dtype=torch.long),), "dicts of tensors"),
        ({"attention_mask": torch.ones(2, 3)}, "no 'input_ids'"),
        ({"input_ids": torch.zeros(2, 3, dtype=torch.long), "labels": torch.zeros(2, 4)}, "labels"),
    ],
)
def test_bad_batches_are_named(batch: object, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        hf.hf_lm_loss().batch_weight(batch)


def test_seq2seq_batch_without_labels_is_rejected() -> None:
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long)}
    with pytest.raises(InvalidArgumentError, match="need 'labels'"):
        hf.hf_seq2seq_loss()(build("t5"), batch)
