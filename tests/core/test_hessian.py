"""HessianOperator against dense float64 oracles on every zoo case, and its input checks.

Exact products (double backward, forward-over-reverse) are held to 1e-10 relative error
against ``oracles.dense_hessian`` (jacrev(grad) of the loss on the concatenated data, itself
guarded by symmetry and finite differences). Finite differences are held to a bound derived
from their error model (see ``test_finite_difference_within_derived_bound``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import hessian_eigenthings
from hessian_eigenthings import (
    HessianOperator,
    InvalidArgumentError,
    NonFiniteError,
    match_names,
)
from hessian_eigenthings.operators import BUILTIN_OPERATORS
from hessian_eigenthings.operators.hessian import DEFAULT_FD_EPS
from hessian_eigenthings.plugins import get_registries
from tests.core.oracles import dense_hessian, dense_hessian_of, rel_err, selected
from tests.core.zoo import CASE_IDS, CASES, Case, frozen_tied, lstm, mlp, tied_embedding

EXACT = ["autograd", "forward_over_reverse"]
TOL = 1e-10


def directions(n: int, m: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, generator=g, dtype=torch.float64)


def make_op(case: Case, **kwargs: Any) -> HessianOperator:
    data = kwargs.pop("data", case.batches)
    return HessianOperator(case.model, data, case.with_weight(case.loss), **kwargs)


def subset_names(case: Case) -> list[str]:
    keep = match_names(*case.subset)
    return [n for n in selected(case.model) if keep(n, None)]


def concat(batches: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


# -- exact products against the oracle ----------------------------------------------------


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_exact_products_match_dense_hessian(make_case: Callable[[], Case], method: str) -> None:
    case = make_case()
    H = dense_hessian(case)
    op = make_op(case, method=method)
    assert op.size == H.shape[0]
    V = directions(op.size, 3)
    assert rel_err(op.matvec(V[:, 0]), H @ V[:, 0]) < TOL
    assert rel_err(op.matmat(V), H @ V) < TOL
    assert rel_err(op @ V[:, 1], H @ V[:, 1]) < TOL


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_param_filter_subset_matches_dense_hessian(
    make_case: Callable[[], Case], method: str
) -> None:
    case = make_case()
    names = subset_names(case)
    assert names, "the case's subset must select something"
    H = dense_hessian(case, names).detach()  # the oracle keeps a graph to unselected params
    op = make_op(case, method=method, param_filter=match_names(*case.subset))
    assert op.space.names == tuple(names)
    V = directions(op.size, 2, seed=1)
    assert rel_err(op.matvec(V[:, 0]), H @ V[:, 0]) < TOL
    assert rel_err(op.matmat(V), H @ V) < TOL


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_to_dense_uses_batched_products_and_matches_oracle(make_case: Callable[[], Case]) -> None:
    case = make_case()
    op = make_op(case)
    calls: list[int] = []
    inner = op.batch_matmat

    def spy(batch: Any, V: Any) -> Any:
        calls.append(V[0].shape[0])
        return inner(batch, V)

    op.batch_matmat = spy  # type: ignore[method-assign]
    assert rel_err(op.to_dense(chunk=16), dense_hessian(case)) < TOL
    assert max(calls) == min(16, op.size)  # many directions per batch, not one at a time


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_microbatching_changes_nothing(make_case: Callable[[], Case], method: str) -> None:
    case = make_case()
    H = dense_hessian(case)
    V = directions(H.shape[0], 2, seed=2)
    for size in (1, 2):
        op = make_op(case, method=method, microbatch_size=size)
        assert rel_err(op.matmat(V), H @ V) < TOL


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_first_batches_only(make_case: Callable[[], Case]) -> None:
    case = make_case()
    V = directions(make_op(case).size, 2, seed=3)
    first = dense_hessian(case, batch=concat(case.batches[:1]))
    assert rel_err(make_op(case, full_dataset=False).matmat(V), first @ V) < TOL
    assert rel_err(make_op(case, num_batches=1).matmat(V), first @ V) < TOL
    two = dense_hessian(case, batch=concat(case.batches[:2]))
    assert rel_err(make_op(case, num_batches=2).matmat(V), two @ V) < TOL
    # the short-batch data must actually differ, or this test would prove nothing
    assert rel_err(first @ V, dense_hessian(case) @ V) > 1e-3


@pytest.mark.parametrize("make_case", [mlp, tied_embedding], ids=["mlp", "tied_embedding"])
def test_num_total_samples_scales(make_case: Callable[[], Case]) -> None:
    case = make_case()
    H = dense_hessian(case)
    V = directions(H.shape[0], 2, seed=4)
    assert rel_err(make_op(case, num_total_samples=1000).matmat(V), 1000 * H @ V) < TOL


def test_token_weighting_is_what_makes_the_attention_case_right() -> None:
    from tests.core.zoo import attention

    case = attention()
    H = dense_hessian(case)
    V = directions(H.shape[0], 2, seed=5)
    weighted = HessianOperator(case.model, case.batches, case.with_weight(case.loss))
    by_samples = HessianOperator(case.model, case.batches, case.loss)
    assert rel_err(weighted.matmat(V), H @ V) < TOL
    assert rel_err(by_samples.matmat(V), H @ V) > 1e-3  # sample counts give a biased mean


@pytest.mark.parametrize("method", [*EXACT, "finite_difference"])
def test_generator_dataloader_supports_repeated_products(method: str) -> None:
    case = mlp()
    H = dense_hessian(case)
    op = HessianOperator(case.model, (b for b in case.batches), case.loss, method=method)
    v = directions(op.size, 1, seed=6)[:, 0]
    first, second = op.matvec(v), op.matvec(v)
    assert torch.equal(first, second)
    assert rel_err(first, H @ v) < (TOL if method in EXACT else 1e-7)


# -- both code paths of the batched products ------------------------------------------------


@pytest.mark.parametrize("method", EXACT)
def test_looped_fallback_equals_batched_path(method: str) -> None:
    """LSTM batches fine on CPU; force the per-direction loop and compare both with the oracle."""
    case = lstm()
    H = dense_hessian(case)
    V = directions(H.shape[0], 4, seed=7)
    batched = make_op(case, method=method)
    assert rel_err(batched.matmat(V), H @ V) < TOL
    assert batched._vmap_ok
    looped = make_op(case, method=method)
    looped._vmap_ok = False
    assert rel_err(looped.matmat(V), H @ V) < TOL


class _CubeGrad(torch.autograd.Function):
    """d/dx x³ = 3x²·g, whose own backward reads a value (``float``): vmap cannot batch it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, g)
        return 3 * x**2 * g

    @staticmethod
    def backward(ctx: Any, gg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, g = ctx.saved_tensors
        one = float(gg.abs().max() > -1)  # data-dependent Python value
        return 6 * x * g * gg * one, 3 * x**2 * gg


class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return _CubeGrad.apply(x, g)  # type: ignore[no-any-return]


def test_ops_vmap_cannot_batch_fall_back_to_one_backward_per_direction() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randn(6, 2, dtype=torch.float64)

    def cube_loss(m: nn.Module, batch: Any) -> torch.Tensor:
        return _Cube.apply(m(batch[0]) - batch[1]).pow(2).mean()  # type: ignore[no-any-return]

    def plain_loss(m: nn.Module, new: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((functional_call(m, new, (x,)) - y) ** 3).pow(2).mean()

    H = dense_hessian_of(model, plain_loss)
    op = HessianOperator(model, [(x[:4], y[:4]), (x[4:], y[4:])], cube_loss)
    V = directions(op.size, 3, seed=8)
    assert op._vmap_ok
    assert rel_err(op.matmat(V), H @ V) < TOL
    assert not op._vmap_ok  # the batched backward failed and the loop took over
    assert rel_err(op.matmat(V), H @ V) < TOL


# -- finite differences -----------------------------------------------------------------------


@pytest.mark.parametrize("make_case", CASES, ids=CASE_IDS)
def test_finite_difference_within_derived_bound(make_case: Callable[[], Case]) -> None:
    """Relative error of the central difference along v̂ = v/‖v‖ with step ε:

        ε²/6 · ‖∇³L[v̂,v̂,·]‖/‖Hv̂‖  +  C·u·‖∇L‖/(ε‖Hv̂‖)

    (truncation + roundoff, u = unit roundoff, C the gradient's rounding amplification).
    float64, ε = 6e-6, u = 1.1e-16: with third derivatives and ‖∇L‖/‖Hv̂‖ of order 10 (the
    zoo's ratio is ≤ 7.4) and C ≤ 100, that is ≤ 6e-11 + 2e-8 < 1e-7. Measured: ≤ 1e-10.
    """
    case = make_case()
    H = dense_hessian(case)
    op = make_op(case, method="finite_difference")
    assert op.fd_eps == DEFAULT_FD_EPS[torch.float64] == 6e-6
    V = directions(op.size, 3, seed=9)
    assert rel_err(op.matvec(V[:, 0]), H @ V[:, 0]) < 1e-7
    assert rel_err(op.matmat(V), H @ V) < 1e-7
    # the step is taken along v̂, so the relative error does not depend on ‖v‖
    assert rel_err(op.matvec(1e6 * V[:, 0]), 1e6 * H @ V[:, 0]) < 1e-7
    assert torch.equal(op.matvec(torch.zeros(op.size, dtype=torch.float64)), torch.zeros(op.size))


def test_finite_difference_bias_shrinks_like_eps_squared() -> None:
    """Large steps are truncation-dominated: halving ε quarters the error."""
    case = mlp()
    H = dense_hessian(case)
    v = directions(H.shape[0], 1, seed=10)[:, 0]
    errs = [
        rel_err(make_op(case, method="finite_difference", fd_eps=eps).matvec(v), H @ v)
        for eps in (0.2, 0.1)
    ]
    assert 3.5 < errs[0] / errs[1] < 4.5


@pytest.mark.parametrize(
    ("dtype", "tol"),
    # roundoff u·C·‖∇L‖/(ε‖Hv̂‖) dominates: float32 6e-8/5e-3 ≈ 1.2e-5 per unit of C·ratio,
    # bfloat16 3.9e-3/0.2 ≈ 2e-2 (+ ε²/6 ≈ 7e-3 truncation); allow C·ratio up to 40 / 7.
    [(torch.float32, 5e-4), (torch.bfloat16, 0.2)],
)
@pytest.mark.parametrize("make_case", [mlp, lstm], ids=["mlp", "lstm"])
def test_finite_difference_in_low_precision(
    make_case: Callable[[], Case], dtype: torch.dtype, tol: float
) -> None:
    case = make_case()
    H = dense_hessian(case)  # float64 truth
    case.model.to(dtype)
    batches = [(x.to(dtype), y) for x, y in case.batches]
    op = HessianOperator(case.model, batches, case.loss, method="finite_difference")
    assert op.fd_eps == DEFAULT_FD_EPS[dtype]
    V = directions(op.size, 2, seed=11)
    before = [p.detach().clone() for p in case.model.parameters()]
    out = op.matmat(V.to(dtype))
    assert out.dtype == dtype
    assert rel_err(out.double(), H @ V) < tol
    assert all(torch.equal(a, b) for a, b in zip(before, case.model.parameters(), strict=True))


# -- structure: unused, frozen and tied parameters -----------------------------------------


@pytest.mark.parametrize("method", [*EXACT, "finite_difference"])
def test_unused_parameters_give_zero_blocks_and_frozen_are_excluded(method: str) -> None:
    case = frozen_tied()
    op = make_op(case, method=method)
    assert not any(n.startswith("frozen.") for n in op.space.names)
    assert op.size == sum(p.numel() for p in case.model.parameters() if p.requires_grad)
    D = op.to_dense()
    idx = [i for i, n in enumerate(_entry_names(op)) if n.startswith("unused.")]
    assert len(idx) == 6
    assert torch.equal(D[idx], torch.zeros_like(D[idx]))
    assert torch.equal(D[:, idx], torch.zeros_like(D[:, idx]))
    assert D.abs().sum() > 0
    tol = TOL if method in EXACT else 1e-7
    assert rel_err(D, dense_hessian(case)) < tol


def _entry_names(op: HessianOperator) -> list[str]:
    return [n for n, p in zip(op.space.names, op.params, strict=True) for _ in range(p.numel())]


@pytest.mark.parametrize("method", [*EXACT, "finite_difference"])
def test_loss_linear_in_some_parameters(method: str) -> None:
    """The mean of a Linear output is linear in its bias: that gradient has no graph at all."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        return m(batch[0]).mean() + m[0].bias.pow(3).sum()  # type: ignore[index]

    def oracle_loss(m: nn.Module, new: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(m, new, (x,)).mean() + new["0.bias"].pow(3).sum()

    H = dense_hessian_of(model, oracle_loss)
    op = HessianOperator(model, [(x,)], loss, method=method)
    D = op.to_dense()
    bias = [i for i, n in enumerate(_entry_names(op)) if n == "2.bias"]
    assert torch.equal(D[bias], torch.zeros_like(D[bias]))
    assert rel_err(D, H) < (TOL if method in EXACT else 1e-7)
    # a loss linear in every selected parameter has a zero Hessian
    lin = HessianOperator(model, [(x,)], loss, param_filter=match_names("2.*"), method=method)
    assert torch.equal(lin.to_dense(), torch.zeros(lin.size, lin.size, dtype=torch.float64))


@pytest.mark.parametrize("method", [*EXACT, "finite_difference"])
def test_tied_weights_count_every_use(method: str) -> None:
    """Fold the Hessian of an untied copy: H_tied = Sᵀ H_untied S, S duplicating the shared block.

    Independent of functional_call's tie handling (the untied copy has no alias).
    """
    case = tied_embedding()
    model = case.model
    assert "head.weight" not in dict(model.named_parameters())
    untied = tied_embedding().model
    untied.head.weight = nn.Parameter(untied.emb.weight.detach().clone())
    data = case.full_batch

    def loss(m: nn.Module, new: dict[str, torch.Tensor]) -> torch.Tensor:
        return case.loss_of_output(functional_call(m, new, (data[0],)), data)

    H_untied = dense_hessian_of(untied, loss)
    tied_names, untied_names = selected(model), selected(untied)
    t_off = dict(zip(tied_names, _offsets(model, tied_names), strict=True))
    u_off = dict(zip(untied_names, _offsets(untied, untied_names), strict=True))
    numel = {n: p.numel() for n, p in untied.named_parameters()}
    S = torch.zeros(H_untied.shape[0], sum(numel[n] for n in tied_names), dtype=torch.float64)
    for name in untied_names:
        t = t_off["emb.weight" if name == "head.weight" else name]
        S[u_off[name] : u_off[name] + numel[name], t : t + numel[name]] = torch.eye(numel[name])
    H_tied = S.T @ H_untied @ S
    op = make_op(case, method=method)
    assert rel_err(op.to_dense(), H_tied) < (TOL if method in EXACT else 1e-7)
    # counting only the embedding use (what an untied functional call would do) is far off
    S_emb = S.clone()
    S_emb[u_off["head.weight"] : u_off["head.weight"] + numel["head.weight"]] = 0
    assert rel_err(S_emb.T @ H_untied @ S_emb, H_tied) > 1e-2


def _offsets(model: nn.Module, names: list[str]) -> list[int]:
    params = dict(model.named_parameters())
    return [0, *itertools.accumulate(params[n].numel() for n in names)][:-1]


# -- registration -----------------------------------------------------------------------------


def test_registered_and_exported() -> None:
    assert BUILTIN_OPERATORS["hessian"][0] is HessianOperator
    assert get_registries().operators.get("hessian") is HessianOperator
    assert hessian_eigenthings.HessianOperator is HessianOperator
    assert hessian_eigenthings.ModelCurvatureOperator.__name__ == "ModelCurvatureOperator"
    case = mlp()
    op = HessianOperator(case.model, case.batches, case.loss, method="func")
    assert op.method == "forward_over_reverse"


# -- bad input --------------------------------------------------------------------------------


def test_non_scalar_loss_names_the_batch() -> None:
    case = mlp()

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        out = F.cross_entropy(m(batch[0]), batch[1], reduction="none")
        return out if out.shape[0] == 3 else out.mean()  # only the last batch (index 2)

    for method in [*EXACT, "finite_difference"]:
        op = HessianOperator(case.model, case.batches, loss, method=method)
        with pytest.raises(InvalidArgumentError, match=r"shape \(3,\) for batch 2 .* \.mean\(\)"):
            op.matvec(torch.ones(op.size, dtype=torch.float64))


def test_loss_without_graph_is_refused() -> None:
    case = mlp()

    def loss(m: nn.Module, batch: Any) -> torch.Tensor:
        return case.loss(m, batch).detach()

    op = HessianOperator(case.model, case.batches, loss)
    with pytest.raises(InvalidArgumentError, match="batch 0 does not depend"):
        op.matvec(torch.ones(op.size, dtype=torch.float64))


def test_empty_dataloader_and_empty_selection() -> None:
    case = mlp()
    op = HessianOperator(case.model, [], case.loss)
    with pytest.raises(InvalidArgumentError, match="no batches"):
        op.matvec(torch.ones(op.size, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="selected no trainable parameters"):
        HessianOperator(case.model, case.batches, case.loss, param_filter=match_names("nope"))


def test_wrong_vectors_are_refused() -> None:
    case = mlp()
    op = make_op(case)
    with pytest.raises(InvalidArgumentError, match=rf"n = {op.size}"):
        op.matvec(torch.ones(op.size + 1, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="dtype"):
        op.matvec(torch.ones(op.size, dtype=torch.float32))
    with pytest.raises(InvalidArgumentError, match="is on meta"):
        op.matvec(torch.ones(op.size, dtype=torch.float64, device="meta"))
    with pytest.raises(InvalidArgumentError, match=r"\(n, m\)"):
        op.matmat(torch.ones(op.size, dtype=torch.float64))


@pytest.mark.parametrize("method", [*EXACT, "finite_difference"])
def test_non_finite_product_names_the_batch(method: str) -> None:
    case = mlp()
    batches = [(x.clone(), y) for x, y in case.batches]
    batches[1][0][2, 0] = float("nan")
    op = HessianOperator(case.model, batches, case.loss, method=method)
    with pytest.raises(NonFiniteError, match="batch 1"):
        op.matvec(torch.ones(op.size, dtype=torch.float64))


@pytest.mark.parametrize("method", ["newton", "", None, 3, "AUTOGRAD"])
def test_bad_method(method: Any) -> None:
    case = mlp()
    with pytest.raises(InvalidArgumentError, match="method must be one of"):
        HessianOperator(case.model, case.batches, case.loss, method=method)


@pytest.mark.parametrize("eps", [0, -1e-3, float("nan"), float("inf"), True, "1e-3"])
def test_bad_fd_eps(eps: Any) -> None:
    case = mlp()
    with pytest.raises(InvalidArgumentError, match="fd_eps must be a positive finite number"):
        HessianOperator(case.model, case.batches, case.loss, method="finite_difference", fd_eps=eps)


def test_fd_eps_needs_finite_differences_and_loss_fn_must_be_callable() -> None:
    case = mlp()
    with pytest.raises(InvalidArgumentError, match="only applies to method='finite_difference'"):
        HessianOperator(case.model, case.batches, case.loss, fd_eps=1e-3)
    with pytest.raises(InvalidArgumentError, match="loss_fn must be a callable"):
        HessianOperator(case.model, case.batches, "cross_entropy")  # type: ignore[arg-type]
    op = HessianOperator(case.model, case.batches, case.loss, method="finite_difference", fd_eps=1)
    assert op.fd_eps == 1.0


@pytest.mark.parametrize("method", [*EXACT, "finite_difference"])
@pytest.mark.parametrize("m", [1, 3])
def test_batch_matmat_returns_one_block_per_parameter_with_leading_m(method: str, m: int) -> None:
    case = frozen_tied()
    op = make_op(case, method=method)
    V = [torch.ones(m, *p.shape, dtype=torch.float64) for p in op.params]
    blocks = op.batch_matmat(case.batches[0], V)
    assert len(blocks) == len(op.params)
    for b, p, name in zip(blocks, op.params, op.space.names, strict=True):
        if b is None:
            assert name.startswith("unused.")
            continue
        assert b.shape == (m, *p.shape)
        assert not b.requires_grad  # products carry no graph out
