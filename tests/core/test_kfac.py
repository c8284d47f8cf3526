"""KFAC and EKFAC: exact where the approximation is exact, curvlinops' numbers elsewhere.

* KFAC is exact for one linear layer under MSE (every input row sees the same output-gradient
  covariance): KFAC-expand equals the dense GGN oracle to 1e-10 for Linear layers (with and
  without bias, with weight sharing over a sequence) and for convolutions (stride, dilation,
  'same' padding with an even kernel, circular padding), with uneven batches and microbatches.
* Its spectrum comes from the factors: eigenvalues equal ``eigvalsh(to_dense())``, eigenpairs
  satisfy K x = λ x, the inverse inverts.
* EKFAC's eigenvalues are the diagonal of the exact GGN blocks in the Kronecker eigenbasis for
  layers without weight sharing (George et al.'s defining property).
* Products agree with curvlinops' KFACLinearOperator / EKFACLinearOperator (~1e-15) for every
  deterministic Fisher type, both kfac_approx settings and both bias treatments; the MC Fisher,
  whose draws differ between the libraries, is compared statistically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import tests.core.test_operator_state as state
from hessian_eigenthings import (
    EKFACOperator,
    InvalidArgumentError,
    KFACInverseOperator,
    KFACOperator,
    NonFiniteError,
    match_names,
)
from hessian_eigenthings.loss_fns import (
    bce_with_logits_loss_of_output,
    cross_entropy_loss_of_output,
    mse_loss_of_output,
    supervised_loss_of_output,
)
from hessian_eigenthings.operators import BUILTIN_OPERATORS
from hessian_eigenthings.operators.kfac_factors import eigen_correction
from tests.core.oracles import dense_ggn, rel_err
from tests.core.zoo import (
    Batch,
    Case,
    attention,
    cnn_batchnorm,
    layernorm_mlp,
    mlp,
    mlp_bce,
    mlp_mse,
    tied_embedding,
)

F64 = torch.float64


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _loss(case: Case) -> Any:
    return {
        "ce": cross_entropy_loss_of_output(),
        "mse": mse_loss_of_output(),
        "bce": bce_with_logits_loss_of_output(),
    }[case.task]


def _split(x: torch.Tensor, y: torch.Tensor, sizes: list[int]) -> list[Batch]:
    return list(zip(torch.split(x, sizes), torch.split(y, sizes), strict=True))


def linear_case(bias: bool = True, seq: int | None = None) -> Case:
    """One Linear layer under MSE on uneven batches (optionally on (N, seq, d) inputs)."""
    torch.manual_seed(10)
    model = nn.Linear(4, 3, bias=bias).to(F64)
    lead = (11,) if seq is None else (11, seq)
    x, y = _rand(*lead, 4, seed=11), _rand(*lead, 3, seed=12)
    return Case("linear", model, _split(x, y, [5, 4, 2]), "mse")


class ChannelsLast(nn.Module):
    """A conv layer whose output features (channels) are put last for the MSE loss: for
    element-wise losses KFAC treats the last output axis as the features (see the docs)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).permute(0, 2, 3, 1)  # type: ignore[no-any-return]


def conv_case(**conv_options: Any) -> Case:
    torch.manual_seed(13)
    model = ChannelsLast(nn.Conv2d(2, 3, **conv_options)).to(F64)
    x = _rand(9, 2, 6, 7, seed=14)
    with torch.no_grad():
        y = _rand(*model(x).shape, seed=15)
    return Case("conv", model, _split(x, y, [4, 3, 2]), "mse")


# -- exactness ------------------------------------------------------------------------------


@pytest.mark.parametrize("microbatch_size", [None, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_single_linear_layer_equals_the_ggn(bias: bool, microbatch_size: int | None) -> None:
    case = linear_case(bias)
    G = dense_ggn(case)
    for approx in ("expand", "reduce"):  # identical without weight sharing
        K = KFACOperator(
            case.model,
            case.batches,
            case.forward,
            mse_loss_of_output(),
            kfac_approx=approx,
            microbatch_size=microbatch_size,
        )
        assert rel_err(K.to_dense(), G) < 1e-10


def test_weight_shared_linear_layer_equals_the_ggn_with_expand() -> None:
    """A Linear on (N, T, d): expand's rows are the N·T positions, A their mean."""
    case = linear_case(seq=5)
    K = KFACOperator(case.model, case.batches, case.forward, mse_loss_of_output())
    assert rel_err(K.to_dense(), dense_ggn(case)) < 1e-10


@pytest.mark.parametrize(
    "options",
    [
        {"kernel_size": 3},
        {"kernel_size": 2, "stride": 2, "dilation": 1},
        {"kernel_size": 3, "dilation": 2, "padding": 1},
        {"kernel_size": 2, "padding": "same"},  # torch pads the odd extra at the end
        {"kernel_size": 3, "padding": 1, "padding_mode": "circular"},
        {"kernel_size": 3, "padding": 1, "padding_mode": "reflect", "bias": False},
    ],
    ids=["plain", "stride", "dilation", "same-even", "circular", "reflect-nobias"],
)
def test_single_conv_layer_equals_the_ggn_with_expand(options: dict[str, Any]) -> None:
    case = conv_case(**options)
    K = KFACOperator(case.model, case.batches, case.forward, mse_loss_of_output())
    assert rel_err(K.to_dense(), dense_ggn(case)) < 1e-10


def test_separate_bias_keeps_only_the_diagonal_blocks() -> None:
    """With separate blocks the weight-bias cross terms are dropped and the rest is exact."""
    case = linear_case()
    G = dense_ggn(case)
    K = KFACOperator(
        case.model, case.batches, case.forward, mse_loss_of_output(), separate_weight_and_bias=True
    ).to_dense()
    w = case.model.weight.numel()
    assert rel_err(K[:w, :w], G[:w, :w]) < 1e-10
    assert rel_err(K[w:, w:], G[w:, w:]) < 1e-10
    assert torch.count_nonzero(K[:w, w:]) == 0
    assert float(G[:w, w:].abs().max()) > 1e-3  # there was something to drop


def test_layout_is_row_major_kronecker_of_the_factors() -> None:
    """For a bias-free layer the whole matrix is kron(G, A) in PyTorch's flattening."""
    case = linear_case(bias=False)
    K = KFACOperator(case.model, case.batches, case.forward, mse_loss_of_output())
    ((A, G),) = K.factors
    assert rel_err(K.to_dense(), torch.kron(G, A)) < 1e-14


def test_batching_does_not_change_the_factors() -> None:
    """Token cross-entropy with ignored labels: batches weigh their valid tokens, so uneven
    batches, one big batch and microbatches give the same KFAC."""
    case = attention()
    keep = match_names("q.*", "k.*", "v.*", "out.*")
    loss = cross_entropy_loss_of_output()

    def dense(batches: list[Batch], **kw: Any) -> torch.Tensor:
        return KFACOperator(
            case.model, batches, case.forward, loss, param_filter=keep, **kw
        ).to_dense()

    ref = dense(case.batches)
    assert rel_err(dense([case.full_batch]), ref) < 1e-12
    assert rel_err(dense(case.batches, microbatch_size=1), ref) < 1e-12
    assert (
        rel_err(
            dense(case.batches, kfac_approx="reduce", microbatch_size=2),
            dense(case.batches, kfac_approx="reduce"),
        )
        < 1e-12
    )


def test_num_total_samples_scales_the_operator() -> None:
    case = mlp()
    loss = cross_entropy_loss_of_output()
    base = KFACOperator(case.model, case.batches, case.forward, loss).to_dense()
    scaled = KFACOperator(case.model, case.batches, case.forward, loss, num_total_samples=50)
    assert rel_err(scaled.to_dense(), 50 * base) < 1e-13


def test_forward_only_uses_identity_gradient_factors() -> None:
    case = mlp()
    K = KFACOperator(
        case.model, case.batches, case.forward, case.loss_of_output, fisher_type="forward-only"
    )
    for _, G in K.factors:
        assert torch.equal(G, torch.eye(G.shape[0], dtype=F64))


# -- spectra, inverse, EKFAC ------------------------------------------------------------------


def _configs() -> list[tuple[str, Callable[[], KFACOperator]]]:
    def build(make: Callable[[], Case], **kw: Any) -> Callable[[], KFACOperator]:
        def f() -> KFACOperator:
            case = make()
            return KFACOperator(case.model, case.batches, case.forward, _loss(case), **kw)

        return f

    cnn_subset = match_names("0.*", "4.*")
    return [
        ("mlp", build(mlp)),
        ("mlp-separate", build(mlp, separate_weight_and_bias=True)),
        ("mlp_bce-reduce", build(mlp_bce, kfac_approx="reduce")),
        ("cnn", build(cnn_batchnorm, param_filter=cnn_subset)),
        ("cnn-ekfac", build(cnn_batchnorm, param_filter=cnn_subset, correct_eigenvalues=True)),
        ("mlp-ekfac-separate", build(mlp, correct_eigenvalues=True, separate_weight_and_bias=True)),
    ]


CONFIGS = _configs()


@pytest.mark.parametrize("build", [c[1] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_eigenvalues_from_the_factors_match_the_dense_matrix(
    build: Callable[[], KFACOperator],
) -> None:
    K = build()
    dense = K.to_dense()
    assert torch.allclose(dense, dense.T, rtol=0, atol=1e-14 * float(dense.abs().max()))
    exact = torch.linalg.eigvalsh(dense).flip(0)
    ours = K.eigenvalues()
    assert float((ours - exact).abs().max()) < 1e-10 * float(exact.abs().max())
    k = 7
    result = K.eigendecomposition(k)
    assert torch.allclose(result.eigenvalues, exact[:k], rtol=0, atol=1e-12 * float(exact[0]))
    X = result.eigenvectors
    assert X.shape == (k, K.size)
    assert torch.allclose(X @ X.T, torch.eye(k, dtype=F64), atol=1e-12)
    residual = (dense @ X.T - X.T * result.eigenvalues).norm(dim=0)
    assert float(residual.max()) < 1e-12 * float(exact[0])
    assert float(result.residuals.max()) < 1e-12 * float(exact[0])
    smallest = K.eigendecomposition(3, which="SA")
    assert torch.allclose(smallest.eigenvalues, exact.flip(0)[:3], atol=1e-12 * float(exact[0]))


@pytest.mark.parametrize("build", [c[1] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_exact_damped_inverse(build: Callable[[], KFACOperator]) -> None:
    K = build()
    V = _rand(K.size, 3, seed=20)
    for damping in (1e-2, 1.0):
        inv = K.inverse(damping)
        assert isinstance(inv, KFACInverseOperator)
        assert rel_err(inv @ (K @ V + damping * V), V) < 1e-10
        assert rel_err(inv @ V[:, 0], (inv @ V)[:, 0]) < 1e-14


def test_undamped_inverse_of_a_nonsingular_kfac_and_singular_refusal() -> None:
    case = linear_case()  # 11 samples, 5 inputs: A is positive definite, G = (2/3)·I
    K = KFACOperator(case.model, case.batches, case.forward, mse_loss_of_output())
    V = _rand(K.size, 2, seed=21)
    assert rel_err(K.inverse() @ (K @ V), V) < 1e-10
    assert rel_err(K @ (K.inverse() @ V), V) < 1e-10
    cnn = cnn_batchnorm()  # the CE gradient factor is singular (softmax: rows sum to zero)
    Kc = KFACOperator(
        cnn.model, cnn.batches, cnn.forward, _loss(cnn), param_filter=match_names("4.*")
    )
    with pytest.raises(InvalidArgumentError, match="damping > 0"):
        Kc.inverse(0.0)


def test_heuristic_damping_inverts_the_damped_factors() -> None:
    case = linear_case(bias=False)
    K = KFACOperator(case.model, case.batches, case.forward, mse_loss_of_output())
    ((A, G),) = K.factors
    delta = 0.3
    pi = ((A.trace() / A.shape[0]) / (G.trace() / G.shape[0])).sqrt()
    I_A, I_G = torch.eye(A.shape[0], dtype=F64), torch.eye(G.shape[0], dtype=F64)
    expected = torch.linalg.inv(torch.kron(G + delta**0.5 / pi * I_G, A + pi * delta**0.5 * I_A))
    inv = K.inverse(delta, method="heuristic")
    assert rel_err(inv.to_dense(), expected) < 1e-12
    E = EKFACOperator(case.model, case.batches, case.forward, mse_loss_of_output())
    with pytest.raises(InvalidArgumentError, match="exact"):
        E.inverse(delta, method="heuristic")
    with pytest.raises(InvalidArgumentError, match="damping"):
        K.inverse(-1.0)


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("make_case", [mlp, mlp_mse, mlp_bce], ids=["ce", "mse", "bce"])
def test_ekfac_eigenvalues_are_the_ggn_diagonal_in_the_kronecker_eigenbasis(
    make_case: Callable[[], Case], separate: bool
) -> None:
    """Λ = diag(Qᵀ G_block Q) for layers without weight sharing (type-2: exact per sample)."""
    case = make_case()
    E = KFACOperator(
        case.model,
        case.batches,
        case.forward,
        _loss(case),
        correct_eigenvalues=True,
        separate_weight_and_bias=separate,
    )
    result = E.eigendecomposition()  # all n pairs: the Kronecker eigenbasis
    X = result.eigenvectors
    ggn = dense_ggn(case)
    diag_in_basis = ((X @ ggn) * X).sum(1)
    scale = float(result.eigenvalues.abs().max())
    assert float((diag_in_basis - result.eigenvalues).abs().max()) < 1e-10 * scale
    # and it is the best approximation diagonal in that basis: closer to the GGN than KFAC
    K = KFACOperator(
        case.model, case.batches, case.forward, _loss(case), separate_weight_and_bias=separate
    )
    assert rel_err(E.to_dense(), ggn) <= rel_err(K.to_dense(), ggn) + 1e-12


def test_ekfac_operator_is_kfac_with_corrected_eigenvalues() -> None:
    case = mlp()
    a = EKFACOperator(case.model, case.batches, case.forward, _loss(case))
    b = KFACOperator(case.model, case.batches, case.forward, _loss(case), correct_eigenvalues=True)
    V = _rand(a.size, 2, seed=22)
    assert torch.equal(a @ V, b @ V)
    assert BUILTIN_OPERATORS["kfac"][0] is KFACOperator
    assert BUILTIN_OPERATORS["ekfac"][0] is EKFACOperator


def test_eigen_correction_strategies_agree() -> None:
    g, rows = _rand(3, 4, 5, 6, seed=23), _rand(4, 5, 7, seed=24)
    Q_G = torch.linalg.qr(_rand(6, 6, seed=25))[0]
    Q_A = torch.linalg.qr(_rand(7, 7, seed=26))[0]
    gram = eigen_correction(g @ Q_G, rows @ Q_A, strategy="gram")
    per_sample = eigen_correction(g @ Q_G, rows @ Q_A, strategy="per-sample")
    direct = torch.stack(
        [
            Q_G.T @ torch.einsum("to,ti->oi", g[k, n], rows[n]) @ Q_A
            for k in range(3)
            for n in range(4)
        ]
    )
    assert rel_err(gram, direct.square().sum(0)) < 1e-13
    assert rel_err(per_sample, direct.square().sum(0)) < 1e-13


# -- the Monte-Carlo Fisher -------------------------------------------------------------------


def test_mc_is_reproducible_microbatch_invariant_and_converges_to_type2() -> None:
    case = mlp()
    loss = _loss(case)

    def mc(**kw: Any) -> torch.Tensor:
        return KFACOperator(
            case.model, case.batches, case.forward, loss, fisher_type="mc", **kw
        ).to_dense()

    exact = KFACOperator(case.model, case.batches, case.forward, loss).to_dense()
    one = mc(seed=3)
    assert torch.equal(one, mc(seed=3))
    assert rel_err(mc(seed=3, microbatch_size=2), one) < 1e-12  # the same draws
    assert not torch.equal(one, mc(seed=4))

    def mean_error(m: int) -> float:
        return sum(rel_err(mc(seed=s, mc_samples=m), exact) for s in range(5)) / 5

    coarse, fine = mean_error(4), mean_error(400)
    assert fine < 0.05
    assert fine < coarse / 4  # error ∝ 1/√M: 10× smaller expected for 100× the samples


def test_mc_gradient_factor_is_unbiased() -> None:
    """G is linear in the sampled outer products, so its mean over seeds is type-2's G."""
    case = mlp_bce()
    loss = _loss(case)
    exact = [G for _, G in KFACOperator(case.model, case.batches, case.forward, loss).factors]
    runs = [
        [
            G
            for _, G in KFACOperator(
                case.model, case.batches, case.forward, loss, fisher_type="mc", seed=s
            ).factors
        ]
        for s in range(300)
    ]
    for i, G in enumerate(exact):
        samples = torch.stack([r[i] for r in runs])
        z = (samples.mean(0) - G).abs() / (samples.std(0) / len(runs) ** 0.5 + 1e-300)
        assert float(z.max()) < 5


# -- model state, errors ------------------------------------------------------------------------


@pytest.mark.parametrize("fisher_type", ["type-2", "mc", "empirical", "forward-only"])
def test_factors_leave_the_model_untouched(fisher_type: str) -> None:
    case = cnn_batchnorm()
    state.prepare(case.model)
    before = state.snapshot(case.model)
    K = KFACOperator(
        case.model,
        case.batches,
        case.forward,
        _loss(case),
        fisher_type=fisher_type,  # type: ignore[arg-type]
        param_filter=match_names("0.*", "4.*"),
        correct_eigenvalues=fisher_type != "forward-only",
        microbatch_size=2,
        seed=0,
    )
    K.matvec(_rand(K.size, seed=27))
    state.assert_unchanged(case.model, before)
    assert all(not m._forward_hooks for m in case.model.modules())


def test_loss_raising_midway_leaves_the_model_untouched() -> None:
    case = mlp()
    state.prepare(case.model)
    before = state.snapshot(case.model)
    calls = [0]

    def flaky(output: torch.Tensor, batch: Batch) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("boom")
        return case.loss_of_output(output, batch)

    K = KFACOperator(case.model, case.batches, case.forward, flaky, fisher_type="empirical")
    with pytest.raises(RuntimeError, match="boom"):
        K.matvec(_rand(K.size, seed=28))
    state.assert_unchanged(case.model, before)
    assert all(not m._forward_hooks for m in case.model.modules())


@pytest.mark.parametrize(
    ("make_case", "named"),
    [
        (layernorm_mlp, "'1.weight' (LayerNorm)"),
        (cnn_batchnorm, "'1.bias' (BatchNorm2d)"),
        (tied_embedding, "'emb.weight' (shared by modules 'emb' and 'head')"),
    ],
    ids=["layernorm", "batchnorm", "tied"],
)
def test_unsupported_parameters_are_refused_by_name(
    make_case: Callable[[], Case], named: str
) -> None:
    case = make_case()
    with pytest.raises(InvalidArgumentError, match="param_filter") as info:
        KFACOperator(case.model, case.batches, case.forward, _loss(case))
    assert named in str(info.value)


def test_other_unsupported_layers_and_arguments() -> None:
    x, y = _rand(4, 4, 5, 5, seed=29), _rand(4, 2, 3, 3, seed=30)
    grouped = nn.Conv2d(4, 2, 3, groups=2).to(F64)
    with pytest.raises(InvalidArgumentError, match="groups=2"):
        KFACOperator(grouped, [(x, y)], lambda m, b: m(b[0]), mse_loss_of_output())
    mha = nn.MultiheadAttention(4, 1).to(F64)
    with pytest.raises(InvalidArgumentError, match="MultiheadAttention"):
        KFACOperator(
            mha,
            [(x, y)],
            lambda m, b: m(b[0]),
            mse_loss_of_output(),
            param_filter=match_names("out_proj.*"),
        )
    case = mlp()
    args = (case.model, case.batches, case.forward)
    with pytest.raises(InvalidArgumentError, match="LossOfOutput"):
        KFACOperator(*args, case.loss_of_output)  # a plain callable has no square root
    with pytest.raises(InvalidArgumentError, match="fisher_type"):
        KFACOperator(*args, _loss(case), fisher_type="exact")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="mc_samples"):
        KFACOperator(*args, _loss(case), mc_samples=3)
    with pytest.raises(InvalidArgumentError, match="kfac_approx"):
        KFACOperator(*args, _loss(case), kfac_approx="mean")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="forward-only"):
        KFACOperator(*args, _loss(case), fisher_type="forward-only", correct_eigenvalues=True)
    K = KFACOperator(*args, _loss(case))
    with pytest.raises(InvalidArgumentError, match="shape"):
        K.matvec(torch.zeros(3, dtype=F64))


def test_inplace_activation_after_a_layer_is_refused() -> None:
    torch.manual_seed(31)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)).to(F64)
    x, y = _rand(5, 3, seed=32), torch.randint(0, 2, (5,))
    K = KFACOperator(model, [(x, y)], lambda m, b: m(b[0]), cross_entropy_loss_of_output())
    with pytest.raises(InvalidArgumentError, match="inplace=False"):
        K.matvec(_rand(K.size, seed=33))
    assert all(not m._forward_hooks for m in model.modules())


def test_batch_matmat_is_the_kfac_of_that_batch() -> None:
    case = mlp()
    loss = _loss(case)
    K = KFACOperator(case.model, case.batches, case.forward, loss)
    batch = case.batches[1]
    V = [_rand(3, *p.shape, seed=34 + i) for i, p in enumerate(K.params)]
    ours = torch.cat([b.reshape(3, -1) for b in K.batch_matmat(batch, V)], dim=1)
    alone = KFACOperator(case.model, [batch], case.forward, loss)
    flat = torch.cat([v.reshape(3, -1) for v in V], dim=1).T
    assert rel_err(ours.T, alone @ flat) < 1e-13


def test_float32_model() -> None:
    case = mlp()
    v = _rand(sum(p.numel() for p in case.model.parameters()), seed=35)
    expected = KFACOperator(case.model, case.batches, case.forward, _loss(case)) @ v
    model32 = case.model.float()
    batches32 = [(x.float(), y) for x, y in case.batches]
    K32 = KFACOperator(model32, batches32, case.forward, _loss(case))
    out = K32 @ v.float()
    assert out.dtype == torch.float32
    assert rel_err(out.double(), expected) < 1e-5


# -- curvlinops ----------------------------------------------------------------------------------


def _curvlinops() -> Any:
    return pytest.importorskip(
        "curvlinops",
        reason="curvlinops-for-pytorch (the cross-library oracle) is not installed in this env",
    )


def cnn_case() -> Case:
    """Two convolutions and a head on 40 samples: enough rows that every Kronecker factor
    (also KFAC-reduce's, one row per sample) is non-singular, so the EKFAC eigenbasis is
    unique and both libraries must find the same one."""
    torch.manual_seed(40)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 2, 2, stride=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).to(F64)
    x = _rand(40, 2, 5, 5, seed=41)
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(42))
    return Case("cnn", model, _split(x, y, [16, 16, 8]), "ce")


CRITERIA = {"ce": nn.CrossEntropyLoss(), "mse": nn.MSELoss(), "bce": nn.BCEWithLogitsLoss()}


# EKFAC needs output gradients, which forward-only does not have (refused, tested above)
VARIANTS = [("type-2", False), ("type-2", True), ("empirical", False), ("empirical", True)]
VARIANTS.append(("forward-only", False))


@pytest.mark.parametrize("separate", [False, True], ids=["folded", "separate"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize(
    ("fisher_type", "ekfac"), VARIANTS, ids=[f + ("-ekfac" if e else "") for f, e in VARIANTS]
)
@pytest.mark.parametrize(
    "make_case", [mlp, mlp_mse, mlp_bce, cnn_case], ids=["mlp", "mlp_mse", "mlp_bce", "cnn"]
)
def test_products_agree_with_curvlinops(
    make_case: Callable[[], Case], fisher_type: str, ekfac: bool, approx: str, separate: bool
) -> None:
    curvlinops = _curvlinops()
    case = make_case()
    criterion = CRITERIA[case.task]
    params = [p for p in case.model.parameters() if p.requires_grad]
    cls = curvlinops.EKFACLinearOperator if ekfac else curvlinops.KFACLinearOperator
    theirs = cls(
        case.model,
        criterion,
        params,
        case.batches,
        fisher_type=fisher_type,
        kfac_approx=approx,
        separate_weight_and_bias=separate,
        check_deterministic=False,
    )
    ours = KFACOperator(
        case.model,
        case.batches,
        case.forward,
        supervised_loss_of_output(criterion),
        fisher_type=fisher_type,  # type: ignore[arg-type]
        kfac_approx=approx,  # type: ignore[arg-type]
        separate_weight_and_bias=separate,
        correct_eigenvalues=ekfac,
    )
    V = _rand(ours.size, 3, seed=43)
    assert rel_err(ours @ V, theirs @ V) < 1e-10


def test_mc_agrees_with_curvlinops_in_distribution() -> None:
    """The libraries draw different labels, so compare both MC estimates with the exact
    (type-2) KFAC they estimate: with 400 draws per sample each is within a few percent."""
    curvlinops = _curvlinops()
    case = mlp_mse()
    criterion = nn.MSELoss()
    params = list(case.model.parameters())
    exact = KFACOperator(case.model, case.batches, case.forward, mse_loss_of_output()).to_dense()
    ours = KFACOperator(
        case.model,
        case.batches,
        case.forward,
        mse_loss_of_output(),
        fisher_type="mc",
        mc_samples=400,
        seed=0,
    ).to_dense()
    theirs_op = curvlinops.KFACLinearOperator(
        case.model,
        criterion,
        params,
        case.batches,
        fisher_type="mc",
        mc_samples=400,
        separate_weight_and_bias=False,
        check_deterministic=False,
    )
    theirs = theirs_op @ torch.eye(exact.shape[0], dtype=F64)
    assert rel_err(ours, exact) < 0.05
    assert rel_err(theirs, exact) < 0.05


def test_non_finite_data_is_reported_with_its_batch() -> None:
    case = mlp()
    bad = [case.batches[0], (torch.full_like(case.batches[1][0], float("nan")), case.batches[1][1])]
    K = KFACOperator(case.model, bad, case.forward, _loss(case))
    with pytest.raises(NonFiniteError, match="batch 1"):
        K.compute_factors()


def test_batched_column_backward_gives_the_same_factors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Columns back-propagated together (vmapped backward) or one by one: same factors."""
    import hessian_eigenthings.operators.kfac as kfac_module

    case = mlp()
    one = KFACOperator(
        case.model, case.batches, case.forward, _loss(case), correct_eigenvalues=True
    )
    monkeypatch.setattr(kfac_module, "COLUMN_CHUNK", 2)  # 3 classes: chunks of 2 and 1
    two = KFACOperator(
        case.model, case.batches, case.forward, _loss(case), correct_eigenvalues=True
    )
    V = _rand(one.size, 2, seed=36)
    assert rel_err(two @ V, one @ V) < 1e-13


class TwiceApplied(nn.Module):
    """One Linear called on two inputs per sample: its calls are weight-sharing positions."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.lin(x[:, 0]), self.lin(x[:, 1])], dim=1)


def test_repeated_calls_are_weight_sharing_positions() -> None:
    torch.manual_seed(50)
    twice = TwiceApplied().to(F64)
    x, y = _rand(11, 2, 4, seed=51), _rand(11, 2, 3, seed=52)
    data = _split(x, y, [5, 4, 2])
    shared = Case("twice", twice, data, "mse")
    sequence = Case("sequence", twice.lin, data, "mse")  # the same layer on (N, 2, 4) inputs
    assert rel_err(dense_ggn(shared), dense_ggn(sequence)) < 1e-12
    for approx in ("expand", "reduce"):
        a, b = (
            KFACOperator(c.model, data, c.forward, mse_loss_of_output(), kfac_approx=approx)
            for c in (shared, sequence)
        )
        assert rel_err(a.to_dense(), b.to_dense()) < 1e-12
    expand = KFACOperator(twice, data, shared.forward, mse_loss_of_output())
    assert rel_err(expand.to_dense(), dense_ggn(shared)) < 1e-10  # exact, as for sequences
