"""Hessian and GGN products through the TransformerLens helpers equal the dense oracles.

The oracles (``tests/tlens/oracles.py``) are built with torch.func from the logits over all
parameters and both batches (different shapes, padding, a loss mask: 12 and 8 scored
tokens), so a product that weighs batches by samples instead of tokens, mishandles the masks
or swaps a parameter tensor fails here. The attention-only operator must equal the oracle's
attention block (the Hessian/GGN of a parameter subset is the submatrix).

Tolerances: exact products agree to ~1e-15 here; 1e-10 relative leaves room for summation order.
Finite differences carry an O(ε²) bias and roundoff, held to 1e-6 as in the core's tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from hessian_eigenthings.operators.base import CurvatureOperator
from hessian_eigenthings.operators.ggn import GGNOperator
from hessian_eigenthings.operators.hessian import HessianOperator
from hessian_eigenthings_tlens import (
    tlens_forward,
    tlens_loss,
    tlens_loss_of_output,
    tlens_param_filter,
)
from tests.tlens import oracles

SELECTIONS = {"all": None, "attention": ("blocks.*.attn.*",)}


def block(
    M: torch.Tensor, model: nn.Module, op: CurvatureOperator, names: list[str] | None = None
) -> torch.Tensor:
    """The rows and columns of the oracle ``M`` (over ``names``, default all trainable
    parameters) that ``op``'s space spans."""
    names = oracles.trainable(model) if names is None else names
    params = dict(model.named_parameters())
    starts, offset = {}, 0
    for n in names:
        starts[n] = offset
        offset += params[n].numel()
    space = getattr(op, "space")  # noqa: B009 - model operators carry their ParamSpace
    index = torch.cat([torch.arange(starts[n], starts[n] + params[n].numel()) for n in space.names])
    return M[index][:, index]


def directions(n: int, m: int = 2) -> torch.Tensor:
    return torch.randn(n, m, generator=torch.Generator().manual_seed(n), dtype=torch.float64)


def assert_products(
    op: CurvatureOperator, M: torch.Tensor, rtol: float = 1e-10, *, matvec: bool = False
) -> None:
    """``op.matmat`` on two random directions (and ``op.matvec`` on one, a separate code path
    in the operators, when asked) against the dense ``M``."""
    V = directions(op.size)
    expected = M @ V
    got = op.matmat(V)
    err = ((got - expected).norm(dim=0) / expected.norm(dim=0)).max().item()
    assert err < rtol, f"relative error {err:.2e}"
    if matvec:
        v = V[:, 0]
        err1 = ((op.matvec(v) - M @ v).norm() / (M @ v).norm()).item()
        assert err1 < rtol, f"matvec relative error {err1:.2e}"


@contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Assert the block leaves parameters (objects and bits), .grad and modes unchanged."""
    params = list(model.parameters())
    ids = [id(p) for p in params]
    values = [p.detach().clone() for p in params]
    modes = [m.training for m in model.modules()]
    yield
    after = list(model.parameters())
    assert [id(p) for p in after] == ids, "parameters were replaced"
    assert all(type(p) is nn.Parameter for p in after)
    assert all(torch.equal(p, v) for p, v in zip(after, values, strict=True))
    assert all(p.grad is None for p in after)
    assert [m.training for m in model.modules()] == modes


def param_filter(model: nn.Module, selection: str) -> Any:
    patterns = SELECTIONS[selection]
    return None if patterns is None else tlens_param_filter(model, *patterns)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("method", ["autograd", "forward_over_reverse"])
def test_hessian_products(
    model: nn.Module, batches: list[Any], dense_hessian: torch.Tensor, method: str, selection: str
) -> None:
    op = HessianOperator(
        model, batches, tlens_loss(), param_filter=param_filter(model, selection), method=method
    )
    with untouched(model):
        assert_products(op, block(dense_hessian, model, op), matvec=method == "autograd")


def test_hessian_finite_differences_and_microbatches(
    model: nn.Module, batches: list[Any], dense_hessian: torch.Tensor
) -> None:
    keep = param_filter(model, "attention")
    fd = HessianOperator(
        model, batches, tlens_loss(), param_filter=keep, method="finite_difference"
    )
    micro = HessianOperator(model, batches, tlens_loss(), param_filter=keep, microbatch_size=1)
    expected = block(dense_hessian, model, fd)
    with untouched(model):
        assert_products(fd, expected, rtol=1e-6)
        assert_products(micro, expected)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("loss_hvp", ["analytical", "autograd"])
def test_ggn_products(
    model: nn.Module, batches: list[Any], dense_ggn: torch.Tensor, loss_hvp: str, selection: str
) -> None:
    op = GGNOperator(
        model,
        batches,
        tlens_forward(),
        tlens_loss_of_output(fused="eager"),  # "auto" would compile a kernel: seconds of CPU
        loss_hvp=loss_hvp,  # type: ignore[arg-type]
        param_filter=param_filter(model, selection),
    )
    assert op.effective_loss_hvp == loss_hvp
    with untouched(model):
        assert_products(op, block(dense_ggn, model, op))


def test_token_weighting_is_what_the_oracle_checks(
    model: nn.Module, batches: list[Any], dense_hessian: torch.Tensor
) -> None:
    # Guard against a vacuous oracle comparison: weighting the batches by their sample counts
    # (2, 3) instead of their scored tokens (12, 8) gives a different matrix.
    keep = param_filter(model, "attention")
    ops = [HessianOperator(model, [b], tlens_loss(), param_filter=keep) for b in batches]
    V = directions(ops[0].size, 1)
    by_tokens = sum(w * op.matmat(V) for w, op in zip((12, 8), ops, strict=True)) / 20
    by_samples = sum(w * op.matmat(V) for w, op in zip((2, 3), ops, strict=True)) / 5
    expected = block(dense_hessian, model, ops[0]) @ V
    assert (by_tokens - expected).norm() < 1e-10 * expected.norm()
    assert (by_samples - expected).norm() > 1e-3 * expected.norm()
