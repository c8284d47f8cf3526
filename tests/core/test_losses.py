"""Loss-of-output helpers: values, analytical Hessian products, square roots, MC gradients,
recognition of torch criteria, the supervised helpers and their errors.

Every analytical product is compared with a dense Hessian of the loss itself built by
autograd (tests/core/oracles.dense_loss_hessian) in float64.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings import InvalidArgumentError, get_registries
from hessian_eigenthings.loss_fns import (
    BUILTIN_LOSS_FNS,
    CrossEntropyLossOfOutput,
    LossOfOutput,
    bce_with_logits_loss_of_output,
    cross_entropy_loss_of_output,
    mse_loss_of_output,
    supervised_forward,
    supervised_loss,
    supervised_loss_of_output,
    supervised_per_sample_loss,
)
from tests.core.oracles import dense_loss_hessian, rel_err

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class LossCase:
    name: str
    loss: LossOfOutput
    output: torch.Tensor
    targets: torch.Tensor
    #: the plain torch computation the loss must equal
    reference: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    @property
    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.zeros(self.output.shape[0]), self.targets)


def _labels(shape: tuple[int, ...], classes: int, seed: int, ignored: int) -> torch.Tensor:
    y = torch.randint(0, classes, shape, generator=_gen(seed))
    flat = y.view(-1)
    flat[torch.randperm(flat.numel(), generator=_gen(seed + 1))[:ignored]] = -100
    return y


def _flat_ce(**kw: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def ref(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        v = out.shape[-1]
        target = y.reshape(-1, v) if y.is_floating_point() else y.reshape(-1)
        return F.cross_entropy(out.reshape(-1, v), target, **kw)

    return ref


def loss_cases() -> list[LossCase]:
    g = _gen(0)
    logits2 = torch.randn(6, 4, generator=g, dtype=DT) * 2
    logits3 = torch.randn(3, 5, 7, generator=g, dtype=DT) * 2
    probs = torch.softmax(torch.randn(6, 4, generator=g, dtype=DT), -1)
    torch_layout = torch.randn(3, 4, 5, generator=g, dtype=DT)  # (N, C, d)
    reg = torch.randn(5, 3, generator=g, dtype=DT)
    reg3 = torch.randn(2, 3, 4, generator=g, dtype=DT)
    bce_y = torch.randint(0, 2, (5, 3), generator=g).to(DT)
    soft_y = torch.rand(5, 3, generator=g, dtype=DT)
    y2 = _labels((6,), 4, 1, ignored=2)
    y3 = _labels((3, 5), 7, 2, ignored=4)
    y_torch = _labels((3, 5), 4, 3, ignored=3)
    y_torch[y_torch == -100] = 2  # this criterion ignores class 2 instead
    ce_torch = supervised_loss_of_output(nn.CrossEntropyLoss(ignore_index=2, reduction="sum"))
    assert isinstance(ce_torch, LossOfOutput)
    ce_fn = supervised_loss_of_output(F.cross_entropy)
    assert isinstance(ce_fn, LossOfOutput)
    ce = cross_entropy_loss_of_output
    return [
        LossCase("ce_2d", ce(fused="eager"), logits2, y2, _flat_ce()),
        LossCase("ce_seq_mean", ce(fused="eager"), logits3, y3, _flat_ce()),
        LossCase(
            "ce_seq_sum", ce(reduction="sum", fused="eager"), logits3, y3, _flat_ce(reduction="sum")
        ),
        LossCase(
            "ce_smoothing",
            ce(label_smoothing=0.2, fused="eager"),
            logits3,
            y3,
            _flat_ce(label_smoothing=0.2),
        ),
        LossCase("ce_probabilities", ce(fused="eager"), logits2, probs, _flat_ce()),
        LossCase("ce_auto_backend", ce(), logits3, y3, _flat_ce()),
        LossCase(
            "ce_torch_layout",
            ce_torch,
            torch_layout,
            y_torch,
            functools.partial(F.cross_entropy, ignore_index=2, reduction="sum"),
        ),
        LossCase("ce_torch_2d", ce_fn, logits2, y2, F.cross_entropy),
        LossCase("mse_mean", mse_loss_of_output(), reg, soft_y, F.mse_loss),
        LossCase(
            "mse_sum",
            mse_loss_of_output("sum"),
            reg,
            soft_y,
            functools.partial(F.mse_loss, reduction="sum"),
        ),
        LossCase("mse_3d", mse_loss_of_output(), reg3, torch.randn(2, 3, 4, dtype=DT), F.mse_loss),
        LossCase(
            "bce_mean",
            bce_with_logits_loss_of_output(),
            reg,
            bce_y,
            F.binary_cross_entropy_with_logits,
        ),
        LossCase(
            "bce_sum_soft",
            bce_with_logits_loss_of_output("sum"),
            reg,
            soft_y,
            functools.partial(F.binary_cross_entropy_with_logits, reduction="sum"),
        ),
    ]


LOSS_CASES = loss_cases()
IDS = [c.name for c in LOSS_CASES]


@pytest.mark.parametrize("case", LOSS_CASES, ids=IDS)
def test_value_is_the_torch_loss(case: LossCase) -> None:
    got = case.loss(case.output, case.batch)
    assert got.ndim == 0
    torch.testing.assert_close(got, case.reference(case.output, case.targets), rtol=0, atol=0)


@pytest.mark.parametrize("case", LOSS_CASES, ids=IDS)
def test_hvp_matches_autograd_double_backward(case: LossCase) -> None:
    H = dense_loss_hessian(case.loss, case.output, case.batch)
    g = _gen(5)
    for _ in range(3):
        u = torch.randn(case.output.shape, generator=g, dtype=DT)
        got = case.loss.hvp(case.output, case.batch, u)
        assert got.shape == case.output.shape
        assert rel_err(got.reshape(-1), H @ u.reshape(-1)) < 1e-12


def _dense_sqrt(case: LossCase, transpose: bool) -> torch.Tensor:
    k = case.output.numel()
    cols = [
        case.loss.hessian_sqrt_matmul(
            case.output, case.batch, e.view(case.output.shape), transpose=transpose
        ).reshape(-1)
        for e in torch.eye(k, dtype=DT)
    ]
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("case", LOSS_CASES, ids=IDS)
def test_hessian_square_root(case: LossCase) -> None:
    H = dense_loss_hessian(case.loss, case.output, case.batch)
    S = _dense_sqrt(case, transpose=False)
    St = _dense_sqrt(case, transpose=True)
    assert rel_err(St, S.T) < 1e-14
    assert rel_err(S @ S.T, H) < 1e-12


@pytest.mark.parametrize("case", LOSS_CASES, ids=IDS)
def test_sampled_gradients_have_the_hessian_as_covariance(case: LossCase) -> None:
    # E[g_i g_iᵀ] = H's block of sample i, and H has no blocks across samples. With M = 40000
    # draws the relative standard error of the estimate is ~√(2/M) ≈ 0.7%; 4% is > 5σ and the
    # draws are fixed by the seed.
    m = 40000
    noise = torch.rand((m, *case.loss.noise_shape(case.output.shape)), generator=_gen(9), dtype=DT)
    g = case.loss.sample_gradients(case.output, case.batch, noise)
    assert g.shape == (m, *case.output.shape)
    H = dense_loss_hessian(case.loss, case.output, case.batch)
    n = case.output.shape[0]
    per = case.output[0].numel()
    blocks = H.reshape(n, per, n, per)
    gf = g.reshape(m, n, per)
    for i in range(n):
        others = torch.cat([blocks[i, :, :i], blocks[i, :, i + 1 :]], dim=1)
        assert others.abs().max() == 0
        est = gf[:, i].T @ gf[:, i] / m
        target = blocks[i, :, i]
        assert float((est - target).norm()) <= 0.04 * max(float(target.norm()), 1e-300)


def test_sampled_gradients_are_the_score_of_the_drawn_label() -> None:
    # √c (p − e_ŷ) with ŷ the inverse-CDF draw of the uniform: the drawn row has p_ŷ − 1
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]], dtype=DT)
    loss = cross_entropy_loss_of_output(fused="eager")
    batch = (torch.zeros(2), torch.tensor([0, 1]))
    p = torch.softmax(logits, -1)
    u = torch.tensor([[0.0, 0.999], [p[0, 0] + 1e-9, 0.5]], dtype=DT)  # draws: (0, 2), (1, 1)
    g = loss.sample_gradients(logits, batch, u)
    expected = torch.stack([p.clone(), p.clone()])
    expected[0, 0, 0] -= 1
    expected[0, 1, 2] -= 1
    expected[1, 0, 1] -= 1
    expected[1, 1, 1] -= 1
    torch.testing.assert_close(g, expected * 0.5**0.5, rtol=0, atol=1e-15)


def test_ignored_rows_are_zero_and_weigh_nothing() -> None:
    loss = cross_entropy_loss_of_output(fused="eager")
    logits = torch.randn(4, 3, dtype=DT)
    y = torch.tensor([1, -100, 2, -100])
    batch = (torch.zeros(4), y)
    u = torch.randn(4, 3, dtype=DT)
    assert loss.batch_weight(batch) == 2
    for out in (
        loss.hvp(logits, batch, u),
        loss.hessian_sqrt_matmul(logits, batch, u),
        loss.sample_gradients(logits, batch, torch.rand(3, 4, dtype=DT))[0],
    ):
        assert out[1].abs().max() == 0
        assert out[3].abs().max() == 0
        assert out[0].abs().max() > 0
    everything_ignored = (torch.zeros(4), torch.full((4,), -100))
    assert loss.batch_weight(everything_ignored) == 0
    assert loss.hvp(logits, everything_ignored, u).abs().max() == 0


def test_batch_weights() -> None:
    y = torch.randint(0, 3, (4, 5))
    y[0, :3] = -100
    assert cross_entropy_loss_of_output().batch_weight((None, y)) == 17
    assert cross_entropy_loss_of_output().batch_weight({"labels": y}) == 17
    probs = torch.rand(4, 5, 3)
    assert cross_entropy_loss_of_output().batch_weight((None, probs)) == 20
    assert mse_loss_of_output().batch_weight((None, torch.zeros(4, 2, 3))) == 24
    assert bce_with_logits_loss_of_output().batch_weight((None, torch.zeros(7, 2))) == 14


# -- recognising torch criteria ------------------------------------------------------------


@pytest.mark.parametrize(
    ("criterion", "kind", "options"),
    [
        (F.cross_entropy, "ce", {"ignore_index": -100, "reduction": "mean"}),
        (
            nn.CrossEntropyLoss(ignore_index=3, reduction="sum", label_smoothing=0.1),
            "ce",
            {"ignore_index": 3, "reduction": "sum", "label_smoothing": 0.1},
        ),
        (functools.partial(F.cross_entropy, ignore_index=0), "ce", {"ignore_index": 0}),
        (F.mse_loss, "mse", {"reduction": "mean"}),
        (nn.MSELoss(reduction="sum"), "mse", {"reduction": "sum"}),
        (F.binary_cross_entropy_with_logits, "bce", {"reduction": "mean"}),
        (nn.BCEWithLogitsLoss(reduction="sum"), "bce", {"reduction": "sum"}),
    ],
)
def test_standard_criteria_are_recognised(
    criterion: Any, kind: str, options: dict[str, Any]
) -> None:
    loss = supervised_loss_of_output(criterion)
    assert isinstance(loss, LossOfOutput)
    assert callable(loss.hvp)
    names = {"ce": "CrossEntropy", "mse": "MSE", "bce": "BCEWithLogits"}
    assert type(loss).__name__.startswith(names[kind])
    for key, value in options.items():
        assert getattr(loss, key) == value
    if kind == "ce":
        assert isinstance(loss, CrossEntropyLossOfOutput)
        assert loss.class_dim == "torch"


@pytest.mark.parametrize(
    "criterion",
    [
        nn.CrossEntropyLoss(weight=torch.ones(3, dtype=DT)),
        nn.CrossEntropyLoss(reduction="none"),
        nn.BCEWithLogitsLoss(pos_weight=torch.ones(3, dtype=DT)),
        functools.partial(F.cross_entropy, weight=torch.ones(3, dtype=DT)),
        nn.HuberLoss(),
        lambda out, y: ((out - y) ** 4).mean(),
    ],
    ids=["ce_weight", "ce_none", "bce_pos_weight", "partial_weight", "huber", "custom"],
)
def test_other_criteria_are_called_as_they_are(criterion: Any) -> None:
    loss = supervised_loss_of_output(criterion)
    assert not hasattr(loss, "hvp")
    out = torch.randn(4, 3, dtype=DT)
    y = torch.randint(0, 3, (4,)) if isinstance(criterion, nn.CrossEntropyLoss) else None
    if isinstance(criterion, functools.partial):
        y = torch.randint(0, 3, (4,))
    if y is None:
        y = torch.rand(4, 3, dtype=DT)
    torch.testing.assert_close(loss(out, (None, y)), criterion(out, y), rtol=0, atol=0)


def test_supervised_helpers() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    x = torch.randn(5, 3, dtype=DT)
    y = torch.tensor([0, 1, -100, 3, 2])
    batch = (x, y)
    torch.testing.assert_close(supervised_forward(model, batch), model(x), rtol=0, atol=0)
    loss_fn = supervised_loss(F.cross_entropy)
    torch.testing.assert_close(loss_fn(model, batch), F.cross_entropy(model(x), y), rtol=0, atol=0)
    assert loss_fn.batch_weight(batch) == 4  # type: ignore[attr-defined]
    # a criterion that is not recognised: the plain call, weighted by samples (no attribute)
    plain = supervised_loss(lambda out, t: out.pow(2).mean())
    assert not hasattr(plain, "batch_weight")
    per_sample = supervised_per_sample_loss(F.cross_entropy)
    torch.testing.assert_close(
        per_sample(model, (x[1], y[1])), F.cross_entropy(model(x[1:2]), y[1:2]), rtol=0, atol=0
    )
    # a LossOfOutput is used as it is
    ce = cross_entropy_loss_of_output()
    assert supervised_loss_of_output(ce) is ce


def test_registered_and_exported() -> None:
    import hessian_eigenthings.loss_fns.standard as standard

    assert standard.cross_entropy_loss_of_output is cross_entropy_loss_of_output
    assert standard.mse_loss_of_output is mse_loss_of_output
    registry = get_registries().loss_fns
    for name in BUILTIN_LOSS_FNS:
        assert name in registry
        assert registry.get(name) is BUILTIN_LOSS_FNS[name]
    assert {"supervised_loss", "cross_entropy_loss_of_output", "mse_loss_of_output"} <= set(
        BUILTIN_LOSS_FNS
    )


# -- errors -------------------------------------------------------------------------------


def test_errors() -> None:
    with pytest.raises(InvalidArgumentError, match="reduction"):
        cross_entropy_loss_of_output(reduction="none")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="reduction"):
        mse_loss_of_output("batchmean")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="ignore_index"):
        cross_entropy_loss_of_output(ignore_index=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="criterion"):
        supervised_loss_of_output("cross_entropy")
    loss = cross_entropy_loss_of_output(fused="eager")
    logits = torch.randn(4, 3, dtype=DT)
    with pytest.raises(InvalidArgumentError, match="u must have the output's shape"):
        loss.hvp(logits, (None, torch.zeros(4, dtype=torch.long)), torch.zeros(4, 2, dtype=DT))
    with pytest.raises(InvalidArgumentError, match="labels must have shape"):
        loss.hvp(logits, (None, torch.zeros(3, dtype=torch.long)), torch.zeros(4, 3, dtype=DT))
    with pytest.raises(InvalidArgumentError, match="targets"):
        loss.hvp(logits, torch.zeros(4), torch.zeros(4, 3, dtype=DT))
    with pytest.raises(InvalidArgumentError, match="labels"):
        loss.batch_weight({"inputs": torch.zeros(4)})
    with pytest.raises(InvalidArgumentError, match="uniforms"):
        mse_loss_of_output().sample_gradients(logits, (None, logits), torch.rand(2, 4, 2))
