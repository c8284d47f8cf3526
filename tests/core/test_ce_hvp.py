"""Cross-entropy loss-Hessian-vector products: the eager and compile backends and the dispatcher.

The oracle is autograd's double backward through ``F.cross_entropy`` in float64 (itself checked
against central differences of the gradient). ``eager`` and ``compile`` must match it to 1e-12
relative in float64. In low precision ``compile`` must match ``eager`` to 1e-6 (float32), 2e-3
(float16) and 1e-2 (bfloat16), measured by :func:`hvp_err`: relative to the largest term
|scale · p_i u_i| of the product rather than to the result, because p ⊙ u − p ⟨p, u⟩ cancels on
peaked rows and any float32 evaluation errs by a few ulps of the terms it subtracts. One
rounding of the output to bfloat16 (float16) is up to 3.9e-3 (4.9e-4) relative.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.loss_fns import ce_hvp, ce_hvp_eager, resolve_ce_hvp_backend
from hessian_eigenthings.loss_fns import ce_hvp_compiled as compiled_mod
from hessian_eigenthings.loss_fns.ce_hvp_compiled import compiled_ce_hvp, compiled_ce_hvp_supports
from hessian_eigenthings.plugins import get_registries

IGNORE = -100
#: Low-precision tolerances on :func:`hvp_err` (see the module docstring).
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a − b| / max|b|, in float64 (the plain error when ``b`` is zero)."""
    err = float((a.double() - b.double()).abs().max())
    denom = float(b.double().abs().max())
    return err / denom if denom else err


def hvp_err(
    a: torch.Tensor, b: torch.Tensor, logits: torch.Tensor, u: torch.Tensor, scale: float = 1.0
) -> float:
    """max|a − b| relative to max|scale · softmax(logits) ⊙ u| over the rows (float64)."""
    terms = scale * torch.softmax(logits.double(), dim=-1) * u.double()
    err = float((a.double() - b.double()).abs().max())
    denom = float(terms.abs().max())
    return err / denom if denom else err


def make_inputs(
    shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    ignore: tuple[int, ...] = (),
    spread: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (scaled so softmax is far from uniform), a direction and labels.

    ``ignore`` lists flat row indices whose label is set to ``IGNORE``.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = shape[-1]
    logits = (spread * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    u = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, vocab, shape[:-1], generator=g)
    flat = labels.view(-1)
    for row in ignore:
        flat[row] = IGNORE
    return logits, u, labels


def autograd_ce_hvp(
    logits: torch.Tensor,
    u: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = IGNORE,
    reduction: str = "mean",
) -> torch.Tensor:
    """Double backward through ``F.cross_entropy`` (the reference the backends must match)."""
    z = logits.detach().clone().requires_grad_(True)
    vocab = z.shape[-1]
    loss = F.cross_entropy(
        z.reshape(-1, vocab), labels.reshape(-1), ignore_index=ignore_index, reduction=reduction
    )
    (grad,) = torch.autograd.grad(loss, z, create_graph=True)
    (hvp,) = torch.autograd.grad(grad, z, grad_outputs=u)
    return hvp


@pytest.fixture
def no_interpret(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors must not be offered to the Triton plugin's interpreter mode, and ``auto``
    considers ``compile`` at any size (these tests' inputs are small; the size threshold has
    its own test)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    entries = get_registries().ce_hvp_backends._entries
    entry = entries["compile"]
    monkeypatch.setitem(
        entries,
        "compile",
        dataclasses.replace(entry, obj=dataclasses.replace(entry.obj, min_auto_elements=0)),
    )


# -- the oracle ------------------------------------------------------------------------------


def test_oracle_matches_central_differences_of_the_gradient() -> None:
    logits, u, labels = make_inputs((4, 9), ignore=(2,))
    eps = 1e-5

    def grad_at(z: torch.Tensor) -> torch.Tensor:
        z = z.clone().requires_grad_(True)
        loss = F.cross_entropy(z, labels, ignore_index=IGNORE)
        return torch.autograd.grad(loss, z)[0]

    fd = (grad_at(logits + eps * u) - grad_at(logits - eps * u)) / (2 * eps)
    exact = autograd_ce_hvp(logits, u, labels)
    assert max_rel_err(exact, fd) < 1e-8
    assert exact[2].abs().max() == 0


# -- float64 against the oracle --------------------------------------------------------------

ORACLE_CASES = [
    pytest.param((5, 7), (1,), id="N5-V7"),
    pytest.param((1, 13), (), id="N1-V13"),
    pytest.param((3, 1000), (0,), id="N3-V1000"),
    pytest.param((2, 5003), (), id="N2-V5003"),
    pytest.param((2, 3, 11), (1, 4), id="B2-T3-V11"),
]


@pytest.mark.parametrize("fused", ["eager", "compile"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(("shape", "ignore"), ORACLE_CASES)
def test_float64_matches_autograd_double_backward(
    fused: str, reduction: str, shape: tuple[int, ...], ignore: tuple[int, ...]
) -> None:
    logits, u, labels = make_inputs(shape, ignore=ignore)
    out = ce_hvp(logits, u, labels, reduction=reduction, fused=fused)  # type: ignore[arg-type]
    ref = autograd_ce_hvp(logits, u, labels, reduction=reduction)
    assert out.dtype == torch.float64
    assert out.shape == u.shape
    assert max_rel_err(out, ref) < 1e-12


@pytest.mark.parametrize("fused", ["eager", "compile"])
def test_custom_ignore_index_zeroes_exactly_those_positions(fused: str) -> None:
    logits, u, labels = make_inputs((6, 10), seed=3)
    labels[torch.tensor([0, 3])] = 7
    labels[1] = 2
    out = ce_hvp(logits, u, labels, ignore_index=7, fused=fused)
    ref = autograd_ce_hvp(logits, u, labels, ignore_index=7)
    assert max_rel_err(out, ref) < 1e-12
    assert out[0].abs().max() == 0
    assert out[3].abs().max() == 0
    assert out[1].abs().max() > 0


@pytest.mark.parametrize("fused", ["eager", "compile"])
def test_mean_is_sum_divided_by_the_number_of_valid_positions(fused: str) -> None:
    logits, u, labels = make_inputs((3, 4, 17), seed=5, ignore=(0, 5, 6))
    mean = ce_hvp(logits, u, labels, reduction="mean", fused=fused)
    total = ce_hvp(logits, u, labels, reduction="sum", fused=fused)
    torch.testing.assert_close(mean * 9, total, rtol=1e-13, atol=0)


@pytest.mark.parametrize("fused", ["eager", "compile"])
def test_all_positions_ignored_gives_zero(fused: str) -> None:
    logits, u, labels = make_inputs((2, 3, 8), seed=7, ignore=tuple(range(6)))
    for reduction in ("mean", "sum"):
        out = ce_hvp(logits, u, labels, reduction=reduction, fused=fused)  # type: ignore[arg-type]
        assert torch.equal(out, torch.zeros_like(u))


@pytest.mark.parametrize("fused", ["eager", "compile"])
def test_ignored_rows_are_zero_even_with_nonfinite_logits(fused: str) -> None:
    logits, u, labels = make_inputs((3, 6), dtype=torch.float32, seed=11, ignore=(1,))
    logits[1, 0] = float("nan")
    logits[1, 1] = float("inf")
    out = ce_hvp(logits, u, labels, reduction="sum", fused=fused)
    assert torch.equal(out[1], torch.zeros(6))
    assert torch.isfinite(out).all()


# -- compile against eager in low precision --------------------------------------------------

LOW_PRECISION_SHAPES = [
    pytest.param((1, 1), (), id="N1-V1"),
    pytest.param((1, 7), (), id="N1-V7"),
    pytest.param((4, 7), (2,), id="N4-V7"),
    pytest.param((3, 1000), (1,), id="N3-V1000"),
    pytest.param((2, 5003), (0,), id="N2-V5003"),
    pytest.param((5, 4097), (4,), id="N5-V4097"),
]


@pytest.mark.parametrize(("shape", "ignore"), LOW_PRECISION_SHAPES)
def test_compile_matches_eager_float32(shape: tuple[int, int], ignore: tuple[int, ...]) -> None:
    logits, u, labels = make_inputs(shape, dtype=torch.float32, seed=13, ignore=ignore)
    if shape[1] > 2:
        logits[0, 1] = float("-inf")  # a masked token
    out = compiled_ce_hvp(logits, u, labels, IGNORE, 0.37)
    ref = ce_hvp_eager(logits, u, labels, IGNORE, 0.37)
    assert out.dtype == torch.float32
    assert hvp_err(out, ref, logits, u, 0.37) <= TOL[torch.float32]
    for row in ignore:
        assert out[row].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 1000), (4, 5003)], ids=["V1000", "V5003"])
def test_compile_matches_eager_half_precision(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    logits, u, labels = make_inputs(shape, dtype=dtype, seed=17, ignore=(1,))
    out = compiled_ce_hvp(logits, u, labels, IGNORE, 1.0)
    ref = ce_hvp_eager(logits, u, labels, IGNORE, 1.0)
    assert out.dtype == dtype
    assert hvp_err(out, ref, logits, u) <= TOL[dtype]
    # Both round a float32 result once: against the exact product the error is that rounding.
    exact = autograd_ce_hvp(logits.double(), u.double(), labels, reduction="sum")
    assert hvp_err(out, exact, logits, u) <= TOL[dtype]


def test_compile_mixed_dtypes_follow_u() -> None:
    logits, u, labels = make_inputs((3, 300), dtype=torch.float32, seed=19)
    out = compiled_ce_hvp(logits.bfloat16(), u, labels, IGNORE, 0.5)
    ref = ce_hvp_eager(logits.bfloat16(), u, labels, IGNORE, 0.5)
    assert out.dtype == torch.float32
    assert hvp_err(out, ref, logits.bfloat16(), u, 0.5) <= TOL[torch.float32]


def test_compile_accepts_non_contiguous_inputs() -> None:
    logits, u, labels = make_inputs((4, 40), dtype=torch.float32, seed=23)
    out = compiled_ce_hvp(logits[:, ::2], u[:, ::2], labels, IGNORE, 1.0)
    ref = ce_hvp_eager(logits[:, ::2], u[:, ::2], labels, IGNORE, 1.0)
    assert hvp_err(out, ref, logits[:, ::2], u[:, ::2]) <= TOL[torch.float32]


def test_compile_does_not_recompile_for_new_sizes_or_scales() -> None:
    from torch._dynamo.utils import counters

    def graphs() -> int:
        return int(counters["stats"]["unique_graphs"])

    # Warm both CPU size classes (V ≤ 4096 and V > 4096) for float32 and N ≥ 2.
    for shape in [(6, 100), (6, 5000)]:
        logits, u, labels = make_inputs(shape, dtype=torch.float32)
        compiled_ce_hvp(logits, u, labels, IGNORE, 1.0)
    before = graphs()
    for i, shape in enumerate([(9, 33), (40, 4096), (3, 4100), (17, 50257), (2, 7000)]):
        logits, u, labels = make_inputs(shape, dtype=torch.float32, seed=i, ignore=(1,))
        scale = 1.0 / (i + 2)
        out = compiled_ce_hvp(logits, u, labels, IGNORE, scale)
        ref = ce_hvp_eager(logits, u, labels, IGNORE, scale)
        assert hvp_err(out, ref, logits, u, scale) <= TOL[torch.float32]
    assert graphs() == before, "new N, V or scale must reuse the compiled graphs"


# -- compile's availability checks and its fallback ------------------------------------------


def test_compile_supports_plain_cpu_tensors() -> None:
    x = torch.zeros(2, 3)
    assert compiled_ce_hvp_supports(x, x) is None


def test_compile_refuses_non_float_and_mismatched_tensors() -> None:
    x = torch.zeros(2, 3)
    reason = compiled_ce_hvp_supports(torch.zeros(2, 3, dtype=torch.int64), x)
    assert reason is not None
    assert "logits" in reason
    assert "int64" in reason
    reason = compiled_ce_hvp_supports(x, torch.zeros(2, 3, device="meta"))
    assert reason is not None
    assert "meta" in reason
    reason = compiled_ce_hvp_supports(
        torch.zeros(2, 3, device="meta"), torch.zeros(2, 3, device="meta")
    )
    assert reason is not None
    assert "meta" in reason


@pytest.mark.parametrize("var", ["TORCH_COMPILE_DISABLE", "TORCHDYNAMO_DISABLE"])
def test_compile_refuses_when_torch_compile_is_disabled(
    monkeypatch: pytest.MonkeyPatch, no_interpret: None, var: str
) -> None:
    monkeypatch.setenv(var, "1")
    x = torch.zeros(2, 3)
    reason = compiled_ce_hvp_supports(x, x)
    assert reason is not None
    assert "disabled" in reason
    assert resolve_ce_hvp_backend("auto", x, x)[0] == "eager"
    with pytest.raises(InvalidArgumentError, match=r"fused='compile'.*disabled"):
        resolve_ce_hvp_backend("compile", x, x)


def test_compile_refuses_while_dynamo_traces_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    x = torch.zeros(2, 3)
    reason = compiled_ce_hvp_supports(x, x)
    assert reason is not None
    assert "traced" in reason


def test_auto_inside_a_compiled_caller_matches_eager(no_interpret: None) -> None:
    logits, u, labels = make_inputs((4, 30), dtype=torch.float32, seed=41, ignore=(2,))

    def caller(z: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ce_hvp(2 * z, x, y)

    out = torch.compile(caller)(logits, u, labels)
    ref = ce_hvp(2 * logits, u, labels, fused="eager")
    assert hvp_err(out, ref, 2 * logits, u) <= TOL[torch.float32]


@pytest.mark.parametrize("transform", ["jvp", "vmap"])
def test_auto_inside_torch_func_transforms_uses_eager(no_interpret: None, transform: str) -> None:
    logits, u, labels = make_inputs((3, 40), dtype=torch.float64, seed=43, ignore=(1,))

    def product(z: torch.Tensor) -> torch.Tensor:
        assert compiled_ce_hvp_supports(z, u) is not None  # wrapped tensors are refused
        return ce_hvp(z, u, labels, reduction="sum")

    if transform == "jvp":
        # d/dt H(z + t u) u: the third derivative of the loss, checked by differences.
        _, out = torch.func.jvp(product, (logits,), (u,))
        eps = 1e-5
        plus = ce_hvp(logits + eps * u, u, labels, reduction="sum")
        minus = ce_hvp(logits - eps * u, u, labels, reduction="sum")
        assert max_rel_err(out, (plus - minus) / (2 * eps)) < 1e-7
    else:
        out = torch.func.vmap(product)(torch.stack([logits, 2 * logits]))
        assert max_rel_err(out[1], autograd_ce_hvp(2 * logits, u, labels, reduction="sum")) < 1e-12
    assert compiled_ce_hvp_supports(logits, u) is None  # and nothing was marked as failed


def test_compile_refuses_without_a_cpp_compiler(no_interpret: None) -> None:
    import torch._inductor.config as inductor_config

    x = torch.zeros(2, 3)
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/bin/g++-none")}):
        reason = compiled_ce_hvp_supports(x, x)
        assert resolve_ce_hvp_backend("auto", x, x)[0] == "eager"
    assert reason is not None
    assert "C++ compiler" in reason
    assert "g++-none" in reason
    assert compiled_ce_hvp_supports(x, x) is None


def test_compile_failure_falls_back_to_eager_and_is_remembered(
    monkeypatch: pytest.MonkeyPatch, no_interpret: None
) -> None:
    def broken(*args: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom: no code generator")

    monkeypatch.setattr(compiled_mod, "_failures", {})
    monkeypatch.setattr(compiled_mod, "_compiled_for", lambda key: broken)
    logits, u, labels = make_inputs((3, 20), dtype=torch.float32, seed=29)
    with pytest.warns(RuntimeWarning, match="boom"):
        out = ce_hvp(logits, u, labels, fused="compile")
    assert torch.equal(out, ce_hvp(logits, u, labels, fused="eager"))
    reason = compiled_ce_hvp_supports(logits, u)
    assert reason is not None
    assert "boom" in reason
    assert resolve_ce_hvp_backend("auto", logits, u)[0] == "eager"
    with pytest.raises(InvalidArgumentError, match="boom"):
        ce_hvp(logits, u, labels, fused="compile")
    # Other dtypes are not affected by a float32 failure.
    assert compiled_ce_hvp_supports(logits.double(), u.double()) is None


def test_compile_does_not_blame_itself_for_bad_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled_mod, "_failures", {})
    logits, u, _ = make_inputs((3, 20), dtype=torch.float32, seed=31)
    with pytest.raises(RuntimeError):
        compiled_ce_hvp(logits, u, torch.zeros(4, dtype=torch.long), IGNORE, 1.0)
    assert compiled_mod._failures == {}


# -- the dispatcher ---------------------------------------------------------------------------


def test_builtin_backends_and_priorities() -> None:
    registry = get_registries().ce_hvp_backends
    assert registry.entry("compile").plugin == "core:builtin"
    assert registry.get("compile").priority > registry.get("eager").priority


def test_auto_picks_compile_for_cpu_tensors(no_interpret: None) -> None:
    logits, u, labels = make_inputs((4, 50), dtype=torch.float32)
    reason = compiled_ce_hvp_supports(logits, u)
    assert reason is None, f"torch.compile should run on this machine: {reason}"
    name, backend = resolve_ce_hvp_backend("auto", logits, u)
    assert name == "compile"
    assert backend.fn is compiled_ce_hvp
    out = ce_hvp(logits, u, labels)
    ref = ce_hvp(logits, u, labels, fused="eager")
    assert hvp_err(out, ref, logits, u) <= TOL[torch.float32]


def test_auto_compiles_only_inputs_large_enough_to_repay_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compiling costs seconds once; ``auto`` takes ``eager`` below COMPILE_MIN_AUTO_ELEMENTS
    logits, ``compile`` from there up, and an explicit ``fused="compile"`` at any size."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    limit = compiled_mod.COMPILE_MIN_AUTO_ELEMENTS
    assert get_registries().ce_hvp_backends.get("compile").min_auto_elements == limit
    small = torch.zeros(1, limit - 1)
    large = torch.zeros(1, limit)
    assert resolve_ce_hvp_backend("auto", small, small)[0] == "eager"
    assert resolve_ce_hvp_backend("auto", large, large)[0] == "compile"
    assert resolve_ce_hvp_backend("compile", small, small)[0] == "compile"


def test_auto_picks_eager_for_dtypes_nothing_else_serves(no_interpret: None) -> None:
    x = torch.zeros(2, 3, dtype=torch.complex64)
    assert resolve_ce_hvp_backend("auto", x, x)[0] == "eager"


def test_unknown_backend_is_rejected_with_the_choices() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(InvalidArgumentError, match=r"fused='nope'.*'eager'.*'compile'"):
        ce_hvp(x, x, torch.zeros(2, dtype=torch.long), fused="nope")


def test_unavailable_backend_raises_with_its_reason(no_interpret: None) -> None:
    x = torch.zeros(2, 3, dtype=torch.int32)
    with pytest.raises(InvalidArgumentError, match=r"fused='compile' cannot serve.*int32"):
        resolve_ce_hvp_backend("compile", x, x)


def test_dispatcher_validates_shapes_and_reduction() -> None:
    logits, u, labels = make_inputs((2, 3, 5))
    with pytest.raises(InvalidArgumentError, match="u must have the logits' shape"):
        ce_hvp(logits, u[:, :2], labels)
    with pytest.raises(InvalidArgumentError, match="labels must have shape"):
        ce_hvp(logits, u, labels.reshape(-1))
    with pytest.raises(InvalidArgumentError, match="reduction"):
        ce_hvp(logits, u, labels, reduction="none")  # type: ignore[arg-type]


def test_dispatcher_keeps_sequence_shape_and_u_dtype() -> None:
    logits, u, labels = make_inputs((2, 5, 30), dtype=torch.float32, seed=37, ignore=(3,))
    for fused in ("eager", "compile"):
        out = ce_hvp(logits, u.bfloat16(), labels, fused=fused)
        assert out.shape == (2, 5, 30)
        assert out.dtype == torch.bfloat16
        ref = autograd_ce_hvp(logits.double(), u.bfloat16().double(), labels)
        assert hvp_err(out, ref, logits, u, 1 / 9) <= TOL[torch.bfloat16]
