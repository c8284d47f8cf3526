"""The reference documents' code examples run unchanged against our packages (issue #10, item 3).

``tests/docs/seed_examples/`` holds every code example of the reference documents
``000_55e7f7ae4c69fa03.txt`` (custom loss functions) and ``001_6a7c25e97bbd622d.txt`` (the
manual) that uses the public API, one file each, verbatim: the scraped text lost indentation and
code fences, which are restored; names, calls and arguments are not touched. Each file starts
with two comment lines naming the seed and the section it reproduces.

How an example runs. Its statements run one by one in a fresh namespace, as a REPL would run
them: the value of a bare expression statement is kept (the reference shows e.g.
``HessianOperator(model=hf_model, ...)`` without assigning it), so the checks can look at it.
The names an example reads but never binds are computed from its source; each gets a stand-in:

* ``model``/``loader``/``dataloader``/``loss_fn``/``model_forward``/``loss_of_output_fn``/
  ``filter_func``/``hessian_op``/``custom_computation``: a float64 MLP classifier (5-6-3, tanh;
  57 parameters) with uneven batches of 12, 9 and 3 samples, cross-entropy, so every operator
  can be compared with a dense torch.func oracle (``tests/core/oracles.py``);
* examples about HuggingFace (``hf_model``, ``batches``, or ``transformer.h.*`` names): a tiny
  float64 GPT-2 from ``GPT2Config`` with eager attention and its token batches
  (``tests/hf/models.py``), ``loss_fn = hf_lm_loss()``;
* examples about TransformerLens (``tlens_model``, ``tokens``, or ``blocks.*`` names): the tiny
  float64 model of ``tests/tlens/models.py`` (a ``TransformerBridge`` on TransformerLens 4),
  ``loss_fn = tlens_loss()``;
* distributed examples: two gloo CPU processes (forked from one fresh interpreter), each with
  its shard of the data; ``ddp_model = DDP(model)`` where the example takes it as given;
* public names an example uses without importing (because an earlier block of the same page
  imported them, e.g. ``HessianOperator``, ``match_names``, ``torch``): imported from where
  that page imports them.

Every run must finish, and whatever it produces is checked: operators against dense oracles
(MLP) or for symmetry and positive semi-definiteness (HF, TLens); eigenpairs finite, ordered as
documented (``which="LM"``: non-increasing ``|λ|``), unit-norm, with Rayleigh quotients equal
to the eigenvalues; trace estimates within six reported standard errors of the exact trace;
spectral densities non-negative with unit mass and nodes inside the spectrum.

``EXCLUDED`` lists the code blocks that are not examples of the public API (signature listings,
shell commands, excerpts of the library's internals) with the reason. ``WRONG_IN_REFERENCE``
lists the examples that cannot work as written by the reference's own description, what is
wrong and what we run instead (``<name>__corrected.py``); a test shows each defect.

torch.compile is disabled (``torch._dynamo.config.disable``) while an example and its checks
run, so ``fused="auto"`` picks the eager cross-entropy HVP: the first compiled call costs ~16 s
of CPU (docs/fused_ce_hvp.md), and the compiled backend has its own tests
(``tests/core/test_ce_hvp.py``).

``python -m tests.docs.test_seed_examples OUT_DIR`` is the distributed worker (see
:func:`_ddp_worker`).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import os
import re
import signal
import subprocess
import symtable
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hessian_eigenthings import (
    CurvatureOperator,
    EigenResult,
    GGNOperator,
    HessianOperator,
    SpectralDensityResult,
    TraceResult,
    lanczos,
)
from tests.core.oracles import (
    dense_empirical_fisher,
    dense_ggn,
    dense_hessian,
    rel_err,
)
from tests.core.zoo import Case

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = Path(__file__).resolve().parent / "seed_examples"
SEED_000 = "000_55e7f7ae4c69fa03.txt"
SEED_001 = "001_6a7c25e97bbd622d.txt"

# Exact float64 products of the same mean loss agree with the oracles to rounding; a central
# difference with the float64 default step (6e-6) carries O(ε²) ≈ 1e-10 bias plus roundoff
# ~1e-16/ε relative to the gradient: 1e-6 leaves room for both.
EXACT_RTOL = 1e-10
FD_RTOL = 1e-6


# --- the code blocks that are not examples of the public API ------------------------------

SIGNATURE = "a signature or class listing of the library's API, with no body to run"
SHELL = "shell commands, not Python"
INTERNALS = "an excerpt of the library's internals (uses locals: theta, vec, self, ...)"
ANNOTATED_CALL = "a signature written as a call with annotations (not valid Python)"
MATH = "a formula in math notation (<p, u>, ∇, ε), not Python"

#: Code blocks of the reference manual (001_…; every block of 000_… runs) that are not
#: examples of the public API: (section, the block, why it does not run here).
EXCLUDED: tuple[tuple[str, str, str], ...] = (
    ("Introduction > Installation", "pip install; git clone; uv sync", SHELL),
    ("Installation Guide > Installation Methods", "pip install; uv sync --extra ...", SHELL),
    ("Installation Guide > Verification Commands", "uv run ruff/black/mypy/pytest", SHELL),
    ("Curvature Matrices > HessianOperator Implementation", "class HessianOperator", SIGNATURE),
    ("Curvature Matrices > GGNOperator Implementation", "class GGNOperator", SIGNATURE),
    ("Curvature Matrices > Two-Function API Design", "ForwardFn = Callable[...]", SIGNATURE),
    ("Curvature Matrices > EmpiricalFisherOperator", "class EmpiricalFisherOperator", SIGNATURE),
    ("Curvature Matrices > Curvature Operator Interface", "class CurvatureOperator", SIGNATURE),
    ("Curvature Matrices > Parameter Filtering", "def match_names / match_regex", SIGNATURE),
    ("Curvature Matrices > Lanczos Eigendecomposition", "def lanczos(...)", SIGNATURE),
    ("Curvature Matrices > Trace Estimation", "def trace(...)", SIGNATURE),
    ("Why HVPs > Method 1: Autograd", "def __init__(self, ..., method=...)", SIGNATURE),
    ("System Architecture > Hessian / GGN Operator", "HessianOperator(model: ...)", ANNOTATED_CALL),
    ("System Architecture > Lanczos / Trace", "lanczos(operator: ...) -> ...", ANNOTATED_CALL),
    (
        "System Architecture > Adding New Algorithms",
        "def custom_algorithm(...) -> SomeResult",
        "a skeleton: SomeResult is a placeholder and the body only picks a backend",
    ),
    ("Eigendecomposition > Symmetric Lanczos", "def lanczos_tridiagonal(...)", SIGNATURE),
    ("Eigendecomposition > Lanczos Output Structure", "class LanczosTridiag", SIGNATURE),
    ("Eigendecomposition > Full Lanczos Eigensolver", "def lanczos(...)", SIGNATURE),
    ("Eigendecomposition > Eigenvalue Selection Logic", "if which == 'LM': ...", INTERNALS),
    ("Eigendecomposition > Power Iteration", "def power_iteration_one / deflated_...", SIGNATURE),
    (
        "Eigendecomposition > Trace Estimation",
        "def hutchinson / hutch_plus_plus / trace",
        SIGNATURE,
    ),
    ("Eigendecomposition > Stochastic Lanczos Quadrature", "def spectral_density", SIGNATURE),
    (
        "Eigendecomposition > result types",
        "class TraceResult / SpectralDensity... / EigenResult",
        SIGNATURE,
    ),
    ("Loss Functions > MSE Loss", "def mse_loss_of_output()", SIGNATURE),
    ("Loss Functions > Cross-Entropy with Analytical HVP", "def _ce_hvp(...)", SIGNATURE),
    ("Loss Functions > Autoregressive LM Loss", "def hf_lm_loss()", SIGNATURE),
    ("Loss Functions > Shifted Cross-Entropy", "def hf_lm_shifted_ce(fused)", SIGNATURE),
    ("Loss Functions > Backend Selection", "FusedCEHvpBackend = Literal[...]", SIGNATURE),
    ("Loss Functions > Memory Optimization", "out_flat = (p * u - p * <p, u>) ...", MATH),
    ("Loss Functions > Loss Function Wrapper", "class _LossOfOutputWithHvp", SIGNATURE),
    ("Loss Functions > GGN Operator Integration", "GGNOperator docstring fragment", "prose"),
    ("Loss Functions > TransformerLens Integration", "def tlens_loss()", SIGNATURE),
    ("Parameter Utilities > ParamFilter Type", "ParamFilter = Callable[...]", SIGNATURE),
    ("Parameter Utilities > Parameter Vectorization", "def flatten_/unflatten_params", SIGNATURE),
    ("Parameter Utilities > Reshaping Vectors", "for name, param, size in zip(...)", INTERNALS),
    ("Parameter Utilities > Operator Size", "self.size = sum(...)", INTERNALS),
    ("Parameter Utilities > Name-Based Filtering", "def match_names(*patterns)", SIGNATURE),
    ("Parameter Utilities > API Reference", "def match_names / get_param_names / ...", SIGNATURE),
    ("Distributed Computing with DDP > DDPHessianOperator", "class DDPHessianOperator", SIGNATURE),
    ("Distributed Computing with DDP > Parameter Access", "# From the source: ...", "comments"),
    ("Distributed Computing with DDP > Class Hierarchy", "a text tree of classes", "not code"),
    ("(several sections)", "H @ u = (p * u - p * <p, u>) / n; (∇L(θ+εv) − ...) / 2ε", MATH),
    ("(several sections)", "graph TD / sequenceDiagram / classDiagram blocks", "Mermaid diagrams"),
    ("Introduction > Citation", "@misc{hessian-eigenthings, ...}", "a BibTeX entry"),
)


# --- running an example ---------------------------------------------------------------------


@dataclass
class Run:
    """An example's namespace after it ran, and the values of its bare expression statements."""

    namespace: dict[str, Any]
    displayed: list[Any]


def free_names(source: str) -> set[str]:
    """The module-level names the code reads (at top level or from inside its functions and
    lambdas) but never binds, other than builtins."""
    top = symtable.symtable(source, "<example>", "exec")
    bound = {sym.get_name() for sym in top.get_symbols() if sym.is_assigned() or sym.is_imported()}
    read: set[str] = set()
    tables = [top]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        for sym in table.get_symbols():
            if sym.is_referenced() and (table is top or sym.is_global()):
                read.add(sym.get_name())
    return read - bound - set(dir(builtins))


def run_example(path: Path, stand_ins: dict[str, Any]) -> Run:
    """Run ``path`` statement by statement in a fresh namespace holding what it does not define:
    its stand-ins, and the public names of ``API_NAMES`` it uses without importing."""
    source = path.read_text()
    needed = free_names(source)
    missing = needed - stand_ins.keys() - API_NAMES.keys()
    assert not missing, f"{path.name}: no stand-in for {sorted(missing)}"
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": str(path)}
    for name in sorted(needed):
        namespace[name] = stand_ins[name] if name in stand_ins else _api(API_NAMES[name])
    displayed: list[Any] = []
    for stmt in ast.parse(source, filename=str(path)).body:
        try:
            if isinstance(stmt, ast.Expr):
                code = compile(ast.Expression(stmt.value), str(path), "eval")
                value = eval(code, namespace)
                if value is not None:
                    displayed.append(value)
            else:
                exec(compile(ast.Module([stmt], type_ignores=[]), str(path), "exec"), namespace)
        except Exception as err:
            line = source.splitlines()[stmt.lineno - 1].strip()
            raise AssertionError(
                f"{path.name} line {stmt.lineno} ({line!r}) raised {type(err).__name__}: {err}"
            ) from err
    return Run(namespace, displayed)


# --- stand-ins ------------------------------------------------------------------------------


def _api(path: str) -> Any:
    module, _, attr = path.partition(":")
    mod = importlib.import_module(module)
    return getattr(mod, attr) if attr else mod


#: Public names examples use without importing them (an earlier block of their page did),
#: resolved from where that page imports them.
API_NAMES = {
    "torch": "torch",
    "nn": "torch:nn",
    "CurvatureOperator": "hessian_eigenthings.operators:CurvatureOperator",
    "HessianOperator": "hessian_eigenthings.operators:HessianOperator",
    "GGNOperator": "hessian_eigenthings.operators:GGNOperator",
    "DDPHessianOperator": "hessian_eigenthings.operators:DDPHessianOperator",
    "lanczos": "hessian_eigenthings:lanczos",
    "match_names": "hessian_eigenthings:match_names",
    "hf_lm_loss": "hessian_eigenthings.loss_fns:hf_lm_loss",
    "hf_lm_shifted_ce": "hessian_eigenthings.loss_fns:hf_lm_shifted_ce",
    "hf_lm_loss_of_output": "hessian_eigenthings.loss_fns:hf_lm_loss_of_output",
}


@dataclass
class StandIns:
    """The names supplied to an example, and what the checks need to judge its results."""

    names: dict[str, Any]
    case: Case | None = None  # the MLP stand-in's model, batches and loss (dense oracles)


def ce_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def mlp_case(sizes: tuple[int, ...] = (12, 9, 3), seed: int = 0) -> Case:
    """Float64 5-6-3 tanh classifier (57 parameters) and cross-entropy data in uneven batches."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(sum(sizes), 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (sum(sizes),), generator=g)
    batches = list(zip(torch.split(x, list(sizes)), torch.split(y, list(sizes)), strict=True))
    return Case("mlp", model, batches, "ce")


def mlp(loss_fn: str = "model") -> StandIns:
    """The MLP stand-ins; ``loss_fn="output"`` makes ``loss_fn`` a loss of the output (for the
    example that passes ``loss_of_output_fn=loss_fn``)."""
    case = mlp_case()
    hessian_op = HessianOperator(case.model, case.batches, ce_loss)
    names: dict[str, Any] = {
        "model": case.model,
        "loader": case.batches,
        "dataloader": case.batches,
        "loss_fn": ce_loss if loss_fn == "model" else case.loss_of_output,
        "model_forward": case.forward,
        "loss_of_output_fn": case.loss_of_output,
        "filter_func": lambda name, param: name.startswith("2."),
        "hessian_op": hessian_op,
        "custom_computation": hessian_op.matvec,
    }
    return StandIns(names, case)


def gpt2() -> StandIns:
    from tests.hf.models import build, causal_batches

    model = build("gpt2", attn="eager")
    data = causal_batches()
    loss = _api("hessian_eigenthings.loss_fns:hf_lm_loss")()
    names = {"model": model, "hf_model": model, "dataloader": data, "batches": data}
    return StandIns({**names, "loss_fn": loss})


def tlens() -> StandIns:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from tests.tlens.models import MODEL_KINDS, tiny_model, token_batches

    model = tiny_model(MODEL_KINDS[0])
    data = token_batches()
    loss = _api("hessian_eigenthings.loss_fns:tlens_loss")()
    names = {"model": model, "tlens_model": model, "dataloader": data, "tokens": data}
    return StandIns({**names, "loss_fn": loss})


class FilterDemoNet(nn.Module):
    """A classifier whose parameters exercise each clause of the custom filter example:
    ``embedding.weight`` (1000, excluded by name), ``layer.weight`` and ``head.weight`` (1000
    each, selected), ``mixer.weight`` (2500, neither "layer" nor "head"), small biases."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 20)
        self.layer = nn.Linear(20, 50)
        self.mixer = nn.Linear(50, 50)
        self.head = nn.Linear(50, 20)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embedding(ids).mean(1)
        return self.head(torch.tanh(self.mixer(torch.tanh(self.layer(h)))))  # type: ignore[no-any-return]


def filter_demo() -> StandIns:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FilterDemoNet().double()
    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randint(0, 50, (n, 3), generator=g), torch.randint(0, 20, (n,), generator=g))
        for n in (6, 4)
    ]
    return StandIns({"model": model, "dataloader": data, "loss_fn": ce_loss})


def no_stand_ins() -> StandIns:
    return StandIns({})


# --- checks ---------------------------------------------------------------------------------


def _probe(n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def assert_matches(op: Any, expected: torch.Tensor, rtol: float = EXACT_RTOL) -> None:
    assert isinstance(op, CurvatureOperator)
    err = rel_err(op.to_dense().detach(), expected.detach())
    assert err < rtol, f"{type(op).__name__} differs from the dense oracle (rel err {err:.2e})"


def assert_symmetric(op: Any, psd: bool = False) -> None:
    """Finite products with uᵀ(Av) = vᵀ(Au) (and vᵀAv ≥ 0 for a PSD operator)."""
    assert isinstance(op, CurvatureOperator)
    assert op.size > 0
    u, v = _probe(op.size, op.dtype, 1), _probe(op.size, op.dtype, 2)
    Au, Av = op @ u, op @ v
    assert torch.isfinite(Au).all()
    assert torch.isfinite(Av).all()
    scale = float(Au.norm() * v.norm() + Av.norm() * u.norm())
    assert abs(float(u @ Av - v @ Au)) <= 1e-10 * scale, "operator is not symmetric"
    if psd:
        assert float(v @ Av) >= -1e-10 * float(Av.norm() * v.norm()), "operator is not PSD"


def top_by_magnitude(matrix: torch.Tensor, k: int) -> torch.Tensor:
    vals: torch.Tensor = torch.linalg.eigvalsh(matrix)
    return vals[vals.abs().argsort(descending=True)][:k]


def assert_eigenpairs(
    vals: torch.Tensor, vecs: torch.Tensor, op: Any, expected: torch.Tensor | None = None
) -> None:
    """Ordered by non-increasing |λ| (``which="LM"``), unit-norm rows, xᵢᵀ A xᵢ = λᵢ; and equal
    to the ``expected`` top eigenvalues when given."""
    assert vals.ndim == 1
    assert vals.numel() > 0
    assert torch.isfinite(vals).all()
    assert (vals.abs()[:-1] >= vals.abs()[1:] - 1e-12 * vals.abs().max()).all(), vals
    assert vecs.shape == (vals.numel(), op.size)
    # float32 products: a Rayleigh quotient sums n ~ 1e4 terms, each rounded to ~6e-8.
    tol = 1e-4 if op.dtype == torch.float32 else 1e-9
    vecs = vecs.to(op.dtype)
    assert torch.allclose(vecs.norm(dim=1).double(), torch.ones_like(vals).double(), atol=tol)
    rayleigh = (vecs.T * (op @ vecs.T)).sum(0).double()
    atol = tol * float(vals.abs().max())
    assert torch.allclose(rayleigh, vals.double(), rtol=0, atol=atol), (rayleigh, vals)
    if expected is not None:
        assert torch.allclose(vals, expected, rtol=0, atol=1e-8 * float(expected.abs().max()))


def assert_result(result: Any, op: Any, expected: torch.Tensor | None = None) -> None:
    assert isinstance(result, EigenResult)
    assert_eigenpairs(result.eigenvalues, result.eigenvectors, op, expected)


def assert_trace(result: Any, exact: float, num_matvecs: int) -> None:
    """Within 6 reported standard errors of the exact trace. The standard error comes from 10-33
    block estimates, so the error in units of it is roughly t-distributed: over 200 seeds the
    largest was 4.0 (num_matvecs=30) and 3.9 (the GGN, 100); 6 has probability ~1e-6 for the one
    unseeded example (33 blocks), and the seeded ones are deterministic."""
    assert isinstance(result, TraceResult)
    assert result.num_matvecs <= num_matvecs
    assert result.stderr >= 0
    err = abs(result.estimate - exact)
    assert err <= 6 * result.stderr + 1e-9 * abs(exact), (result.estimate, result.stderr, exact)


def tlens_selection(model: nn.Module, regex: str) -> list[str]:
    """Raw names of the parameters whose TransformerLens name matches ``regex`` (in full)."""
    from hessian_eigenthings_tlens import tlens_names

    names = tlens_names(model)
    return [raw for raw, nm in names.items() if re.fullmatch(regex, nm.canonical)]


def assert_selects(op: Any, names: list[str]) -> None:
    assert names, "the check's expected selection is empty"
    assert list(op.space.names) == names, (list(op.space.names), names)


TL_ATTN = r"blocks\.\d+\.attn\..+"
TL_MLP = r"blocks\.\d+\.mlp\..+"
GPT2_ATTN = r"transformer\.h\.\d+\.attn\..+"


def gpt2_selection(model: nn.Module, regex: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if re.fullmatch(regex, n)]


# Per-example checks: (run, stand-ins) -> None.


def check_hessian_of_loader(run: Run, s: StandIns) -> None:
    assert s.case is not None
    assert_matches(run.namespace["op"], dense_hessian(s.case))


def check_ggn_of_loader(run: Run, s: StandIns) -> None:
    assert s.case is not None
    assert_matches(run.namespace["op"], dense_ggn(s.case))


def check_empirical_fisher(run: Run, s: StandIns) -> None:
    assert s.case is not None
    assert_matches(run.namespace["op"], dense_empirical_fisher(s.case))


def check_hessian_helpers(run: Run, s: StandIns) -> None:
    check_hessian_of_loader(run, s)
    for helper in ("hf_lm_loss", "tlens_loss"):
        assert callable(run.namespace[helper]())


def check_lm_operators(run: Run, s: StandIns) -> None:
    """The two unassigned operators: a symmetric Hessian and a symmetric PSD GGN over every
    trainable parameter."""
    hessian, ggn = run.displayed
    size = sum(p.numel() for p in s.names["model"].parameters() if p.requires_grad)
    assert isinstance(hessian, HessianOperator)
    assert isinstance(ggn, GGNOperator)
    assert hessian.size == ggn.size == size
    assert ggn.effective_loss_hvp == "analytical"
    assert_symmetric(hessian)
    assert_symmetric(ggn, psd=True)


def check_intro_hessian_operator(run: Run, s: StandIns) -> None:
    ns, model = run.namespace, s.names["model"]
    full = HessianOperator(
        model=model, dataloader=s.names["dataloader"], loss_fn=s.names["loss_fn"]
    )
    assert_eigenpairs(ns["eigenvalues"], ns["eigenvectors"], full)
    assert ns["eigenvalues"].numel() == 10
    assert_selects(ns["op"], gpt2_selection(model, GPT2_ATTN))
    assert_symmetric(ns["op"])


def check_standard_loss(run: Run, s: StandIns) -> None:
    """A cross-entropy loss of the output with the closed-form ``.hvp``: (p⊙u − p⟨p,u⟩)/n."""
    loss_fn = run.namespace["loss_fn"]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=g, dtype=torch.float64)
    batch = (torch.zeros(4, 5), torch.tensor([0, 2, 1, 2]))
    assert torch.allclose(loss_fn(logits, batch), F.cross_entropy(logits, batch[1]), rtol=1e-14)
    u = torch.randn(4, 3, generator=g, dtype=torch.float64)
    p = logits.softmax(-1)
    expected = (p * u - p * (p * u).sum(-1, keepdim=True)) / 4
    assert torch.allclose(loss_fn.hvp(logits, batch, u), expected, rtol=1e-12, atol=1e-15)


def shifted_ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts token t + 1."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def assert_hf_lm_loss_value(loss: torch.Tensor, model: nn.Module, batch: Any) -> None:
    """``loss`` is HF's ``model(**batch, labels=input_ids).loss`` (which HF computes in float32,
    hence 1e-6), and exactly the float64 shifted cross-entropy."""
    ids = batch["input_ids"]
    assert loss.ndim == 0
    assert torch.allclose(loss, shifted_ce(model(**batch).logits, ids), rtol=1e-12)
    hf = model(**batch, labels=ids).loss
    assert torch.allclose(loss.float(), hf, rtol=1e-6)


def check_hf_loss(run: Run, s: StandIns) -> None:
    """``hf_lm_loss()`` is ``model(**batch).loss`` with ``labels = input_ids``."""
    model, batch = s.names["model"], s.names["batches"][2]  # a batch without padding or labels
    assert_hf_lm_loss_value(run.namespace["loss_fn"](model, batch), model, batch)


def check_basic_eigendecomposition(run: Run, s: StandIns) -> None:
    ns = run.namespace
    assert ns["result"].eigenvalues.numel() == 3
    assert_result(ns["result"], ns["op"])


def check_attention_only(run: Run, s: StandIns) -> None:
    op = run.namespace["attn_op"]
    assert_selects(op, tlens_selection(s.names["model"], TL_ATTN))
    assert_result(run.namespace["eigenvalues"], op)


def check_trace_30(run: Run, s: StandIns) -> None:
    assert s.case is not None
    assert_trace(run.namespace["result"], float(dense_hessian(s.case).trace()), 30)


def check_filtered_hessian(run: Run, s: StandIns) -> None:
    assert s.case is not None
    assert_matches(run.namespace["op"], dense_hessian(s.case, names=["2.weight", "2.bias"]))


def check_fd_hessian(run: Run, s: StandIns) -> None:
    assert s.case is not None
    assert_matches(run.namespace["op"], dense_hessian(s.case), rtol=FD_RTOL)


def check_tl_attention_filter(run: Run, s: StandIns) -> None:
    op = run.namespace["attn_op"]
    assert_selects(op, tlens_selection(s.names["model"], TL_ATTN))
    assert_symmetric(op)


def check_exports(run: Run, s: StandIns) -> None:
    ns = run.namespace
    for name in ("HessianOperator", "GGNOperator", "EmpiricalFisherOperator", "LambdaOperator"):
        assert issubclass(ns[name], ns["CurvatureOperator"]), name
    assert issubclass(ns["DDPHessianOperator"], ns["HessianOperator"])
    for name in ("lanczos", "trace", "spectral_density", "deflated_power_iteration"):
        if name in ns:
            assert callable(ns[name]), name


def check_architecture_basic(run: Run, s: StandIns) -> None:
    assert s.case is not None
    ns = run.namespace
    expected = top_by_magnitude(dense_hessian(s.case), 10)
    assert_result(ns["eig_result"], ns["hessian_op"], expected)


def check_architecture_param_filtered(run: Run, s: StandIns) -> None:
    op = run.namespace["attn_op"]
    assert_selects(op, tlens_selection(s.names["model"], TL_ATTN))
    assert_result(run.namespace["eig_attn"], op)


def check_architecture_trace(run: Run, s: StandIns) -> None:
    assert s.case is not None
    assert_trace(run.namespace["trace_result"], float(dense_hessian(s.case).trace()), 30)


def check_custom_operator(run: Run, s: StandIns) -> None:
    """The corrected class works with the algorithms: lanczos on it finds the Hessian's top
    eigenvalues (``custom_computation`` is the stand-in MLP's Hessian product)."""
    assert s.case is not None
    op = run.namespace["CustomCurvatureOperator"](s.names["model"], s.names["dataloader"])
    expected = top_by_magnitude(dense_hessian(s.case), 3)
    assert_result(lanczos(op, k=3, max_iter=57), op, expected)


def check_lambda_operator(run: Run, s: StandIns) -> None:
    op = run.namespace["custom_op"]
    assert op.size == 1000
    v = _probe(1000, torch.float32, 0)
    assert torch.equal(op @ v, 2.0 * v)


def check_top_eigenvalues(run: Run, s: StandIns) -> None:
    assert s.case is not None
    ns = run.namespace
    assert_result(ns["result"], ns["operator"], top_by_magnitude(dense_hessian(s.case), 10))


def check_ggn_trace(run: Run, s: StandIns) -> None:
    assert s.case is not None
    assert_trace(run.namespace["result"], float(dense_ggn(s.case).trace()), 100)


def check_component_specific(run: Run, s: StandIns) -> None:
    ns, model = run.namespace, s.names["model"]
    assert_selects(ns["attn_only"], tlens_selection(model, TL_ATTN))
    assert_selects(ns["mlp_only"], tlens_selection(model, TL_MLP))
    assert_symmetric(ns["attn_only"])


def check_algorithms_example(run: Run, s: StandIns) -> None:
    assert s.case is not None
    ns = run.namespace
    H = dense_hessian(s.case)
    assert ns["eig_result"].converged
    assert_result(ns["eig_result"], ns["operator"], top_by_magnitude(H, 5))
    assert_trace(ns["trace_result"], float(H.trace()), 99)
    density = ns["density_result"]
    assert isinstance(density, SpectralDensityResult)
    assert len(density.nodes) == 8
    assert (density.density >= 0).all()
    assert torch.isfinite(density.density).all()
    mass = float(torch.trapezoid(density.density, density.grid))
    assert abs(mass - 1) < 1e-3, mass
    spectrum = torch.linalg.eigvalsh(H)
    slack = 1e-8 * float(spectrum.abs().max())
    for nodes, weights in zip(density.nodes, density.weights, strict=True):
        assert abs(float(weights.sum()) - 1) < 1e-10
        assert float(nodes.min()) >= float(spectrum[0]) - slack
        assert float(nodes.max()) <= float(spectrum[-1]) + slack


def check_standard_classification(run: Run, s: StandIns) -> None:
    assert s.case is not None
    assert_matches(run.namespace["operator"], dense_hessian(s.case))


def check_hf_large_model(run: Run, s: StandIns) -> None:
    op = run.namespace["operator"]
    assert op.effective_loss_hvp == "analytical"
    assert op.size == sum(p.numel() for p in s.names["model"].parameters())
    assert_symmetric(op, psd=True)


def check_name_filtering(run: Run, s: StandIns) -> None:
    ns, model = run.namespace, s.names["model"]
    assert_selects(ns["attn_op"], tlens_selection(model, TL_ATTN))
    assert_selects(ns["mlp_op"], tlens_selection(model, TL_MLP))


def check_multiple_patterns(run: Run, s: StandIns) -> None:
    model, f = s.names["model"], run.namespace["filter_fn"]
    got = [n for n, p in model.named_parameters() if f(n, p)]
    assert got == gpt2_selection(model, r"transformer\.h\.\d+\.(attn|mlp)\..+")


def check_hf_patterns(run: Run, s: StandIns) -> None:
    op = run.namespace["attn_op"]
    assert_selects(op, gpt2_selection(s.names["model"], GPT2_ATTN))
    assert_symmetric(op)


def check_params_attention_only(run: Run, s: StandIns) -> None:
    ns = run.namespace
    assert_selects(ns["attn_op"], tlens_selection(s.names["model"], TL_ATTN))
    assert ns["eig_attn"].eigenvalues.numel() == 3
    assert_result(ns["eig_attn"], ns["attn_op"])


def check_block_comparison(run: Run, s: StandIns) -> None:
    ns, model = run.namespace, s.names["model"]
    assert_selects(ns["attn_op"], tlens_selection(model, TL_ATTN))
    assert_selects(ns["mlp_op"], tlens_selection(model, TL_MLP))
    for op, result in (("full_op", "full_eig"), ("attn_op", "attn_eig"), ("mlp_op", "mlp_eig")):
        assert_result(ns[result], ns[op])


def check_custom_filter(run: Run, s: StandIns) -> None:
    op = run.namespace["operator"]
    assert_selects(op, ["layer.weight", "head.weight"])
    assert op.size == 2000
    assert_symmetric(op)


#: HookedTransformer-style names (the reference's) with dtypes, for the filter examples.
TL_PARAMS = {
    "embed.W_E": torch.float32,
    "blocks.0.ln1.w": torch.float32,
    "blocks.0.attn.W_Q": torch.float32,
    "blocks.0.attn.b_Q": torch.float64,
    "blocks.0.ln2.b": torch.float32,
    "blocks.0.mlp.W_in": torch.float32,
    "blocks.1.ln1.w": torch.float64,
    "blocks.1.mlp.layernorm_pre.w": torch.float32,
    "ln_final.w": torch.float32,
    "unembed.W_U": torch.float32,
}
LN_PARAMS = {
    "blocks.0.ln1.w",
    "blocks.0.ln2.b",
    "blocks.1.ln1.w",
    "blocks.1.mlp.layernorm_pre.w",
    "ln_final.w",
}


def _tl_params() -> dict[str, nn.Parameter]:
    return {n: nn.Parameter(torch.zeros(2, dtype=d)) for n, d in TL_PARAMS.items()}


def check_filter_composition(run: Run, s: StandIns) -> None:
    """``combined_filter``: block parameters (four dotted components or more) in float32;
    ``exclude_ln``: everything but the LayerNorm parameters."""
    ns, params = run.namespace, _tl_params()
    combined = {n for n, p in params.items() if ns["combined_filter"](n, p)}
    assert combined == {
        n for n, d in TL_PARAMS.items() if n.startswith("blocks.") and d == torch.float32
    }
    kept = {n for n, p in params.items() if ns["exclude_ln"](n, p)}
    assert kept == set(TL_PARAMS) - LN_PARAMS


def check_ddp_import_location(run: Run, s: StandIns) -> None:
    from hessian_eigenthings.operators.distributed import ddp

    assert run.namespace["DDPHessianOperator"] is ddp.DDPHessianOperator


def check_hf_ce_loss_of_output(run: Run, s: StandIns) -> None:
    """The loss of the output with its analytical ``.hvp``: shifted next-token cross-entropy."""
    (loss,) = run.displayed
    model, batch = s.names["model"], s.names["batches"][2]  # a batch without padding or labels
    logits = model(**batch).logits
    assert_hf_lm_loss_value(loss(logits, batch), model, batch)
    u = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0), dtype=logits.dtype)
    z = logits.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(z, batch), z, create_graph=True)
    (expected,) = torch.autograd.grad(g, z, u)
    assert torch.allclose(loss.hvp(logits.detach(), batch, u), expected, rtol=1e-10, atol=1e-14)


# --- the examples ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    setup: Callable[[], StandIns]
    check: Callable[[Run, StandIns], None]


EXAMPLES: dict[str, Example] = {
    "s000_hessian_loss_fn": Example(mlp, check_hessian_of_loader),
    "s000_hessian_helpers": Example(mlp, check_hessian_helpers),
    "s000_ggn_two_functions": Example(mlp, check_ggn_of_loader),
    "s000_ggn_helpers": Example(mlp, check_ggn_of_loader),
    "s000_empirical_fisher": Example(mlp, check_empirical_fisher),
    "s000_huggingface": Example(gpt2, check_lm_operators),
    "s000_transformer_lens": Example(tlens, check_lm_operators),
    "s001_intro_hessian_operator": Example(gpt2, check_intro_hessian_operator),
    "s001_intro_ggn_operator": Example(mlp, check_ggn_of_loader),
    "s001_intro_standard_loss": Example(no_stand_ins, check_standard_loss),
    "s001_intro_huggingface_loss": Example(gpt2, check_hf_loss),
    "s001_intro_basic_eigendecomposition": Example(no_stand_ins, check_basic_eigendecomposition),
    "s001_intro_attention_only": Example(tlens, check_attention_only),
    "s001_intro_trace": Example(mlp, check_trace_30),
    "s001_intro_memory_param_filter": Example(mlp, check_filtered_hessian),
    "s001_intro_memory_microbatch": Example(mlp, check_hessian_of_loader),
    "s001_intro_memory_finite_difference": Example(mlp, check_fd_hessian),
    "s001_matrices_param_filtering": Example(tlens, check_tl_attention_filter),
    "s001_matrices_module_exports": Example(no_stand_ins, check_exports),
    "s001_architecture_basic": Example(mlp, check_architecture_basic),
    "s001_architecture_param_filtered": Example(tlens, check_architecture_param_filtered),
    "s001_architecture_trace": Example(mlp, check_architecture_trace),
    "s001_operators_param_filtering": Example(tlens, check_tl_attention_filter),
    "s001_operators_lambda": Example(no_stand_ins, check_lambda_operator),
    "s001_operators_top_eigenvalues": Example(mlp, check_top_eigenvalues),
    "s001_operators_estimating_trace": Example(lambda: mlp(loss_fn="output"), check_ggn_trace),
    "s001_operators_component_specific": Example(tlens, check_component_specific),
    "s001_operators_module_exports": Example(no_stand_ins, check_exports),
    "s001_algorithms_example_usage": Example(mlp, check_algorithms_example),
    "s001_loss_fns_standard_classification": Example(mlp, check_standard_classification),
    "s001_loss_fns_hf_large_model": Example(gpt2, check_hf_large_model),
    "s001_params_name_filtering": Example(tlens, check_name_filtering),
    "s001_params_multiple_patterns": Example(gpt2, check_multiple_patterns),
    "s001_params_hf_patterns": Example(gpt2, check_hf_patterns),
    "s001_params_attention_only": Example(tlens, check_params_attention_only),
    "s001_params_block_comparison": Example(tlens, check_block_comparison),
    "s001_params_custom_filter": Example(filter_demo, check_custom_filter),
    "s001_ddp_import_operators": Example(no_stand_ins, check_ddp_import_location),
    "s001_ddp_import_distributed": Example(no_stand_ins, check_ddp_import_location),
    # The corrected variants of the examples in WRONG_IN_REFERENCE.
    "s001_architecture_hf_lm_loss__corrected": Example(gpt2, check_hf_ce_loss_of_output),
    "s001_architecture_custom_operator__corrected": Example(mlp, check_custom_operator),
    "s001_operators_fused_ce__corrected": Example(gpt2, check_hf_ce_loss_of_output),
    "s001_params_filter_composition__corrected": Example(no_stand_ins, check_filter_composition),
}


@dataclass(frozen=True)
class Wrong:
    """An example that cannot work as the reference describes it, and what we run instead."""

    wrong: str
    instead: str
    setup: Callable[[], StandIns]
    #: shows the defect on the verbatim example (raises AssertionError if it is not there)
    demonstrate: Callable[[Path, StandIns], None]


def _raises_type_error(path: Path, s: StandIns) -> None:
    with pytest.raises(AssertionError, match="raised TypeError"):
        run_example(path, s.names)


def _custom_operator_is_abstract(path: Path, s: StandIns) -> None:
    cls = run_example(path, s.names).namespace["CustomCurvatureOperator"]
    with pytest.raises(TypeError, match="abstract"):
        cls(s.names["model"], s.names["dataloader"])


def _ln_patterns_match_nothing(path: Path, s: StandIns) -> None:
    exclude_ln = run_example(path, s.names).namespace["exclude_ln"]
    params = _tl_params()
    assert all(exclude_ln(n, params[n]) for n in LN_PARAMS)  # keeps every LayerNorm parameter


WRONG_IN_REFERENCE: dict[str, Wrong] = {
    "s001_architecture_hf_lm_loss": Wrong(
        wrong="hf_lm_loss(fused='auto'): the reference's own listing has hf_lm_loss() without "
        "parameters, and the fused backend choice belongs to the loss of the output (its .hvp, "
        "used by GGN/Fisher); a (model, batch) loss is differentiated by autograd",
        instead="hf_lm_shifted_ce(fused='auto'), the reference's fused shifted cross-entropy",
        setup=gpt2,
        demonstrate=_raises_type_error,
    ),
    "s001_operators_fused_ce": Wrong(
        wrong="hf_lm_loss_of_output(..., fused='auto'): the '...' elides arguments; run as "
        "written it passes Ellipsis as the first positional argument (which is `fused`)",
        instead="hf_lm_loss_of_output(fused='auto')",
        setup=gpt2,
        demonstrate=_raises_type_error,
    ),
    "s001_architecture_custom_operator": Wrong(
        wrong="the text says to implement `matvec`, the code implements `_matvec`, and it defines "
        "no `size` (abstract in the reference too), so the class cannot be instantiated",
        instead="implement `size` and `matvec` (and `dtype`/`device`, abstract in our base "
        "class), collecting the parameters where the comment says so",
        setup=mlp,
        demonstrate=_custom_operator_is_abstract,
    ),
    "s001_params_filter_composition": Wrong(
        wrong="exclude_ln passes regular expressions ('.*laynorm.*', '.*ln.*', with a typo) to "
        "the glob matcher match_names; as globs they only match names starting with '.', so "
        "no LayerNorm parameter is excluded",
        instead="the same filters with globs: match_names('**.*layernorm*', '**.ln*')",
        setup=no_stand_ins,
        demonstrate=_ln_patterns_match_nothing,
    ),
}

#: Run in this order by the same two ranks; the one calling lanczos last, since a rank that
#: fails inside an algorithm leaves the group unusable for what follows.
DDP_EXAMPLES = ("s001_ddp_param_filter", "s001_ddp_finite_difference", "s001_ddp_basic")


@pytest.fixture(autouse=True)
def _eager_ce_hvp() -> Iterator[None]:
    """Disable torch.compile while examples run (see the module docstring)."""
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_runs_unchanged(name: str) -> None:
    example = EXAMPLES[name]
    stand_ins = example.setup()
    run = run_example(EXAMPLE_DIR / f"{name}.py", stand_ins.names)
    example.check(run, stand_ins)


@pytest.mark.parametrize("name", sorted(WRONG_IN_REFERENCE))
def test_wrong_in_reference(name: str) -> None:
    """The verbatim example shows the defect WRONG_IN_REFERENCE describes (its corrected
    variant runs in test_example_runs_unchanged)."""
    entry = WRONG_IN_REFERENCE[name]
    assert f"{name}__corrected" in EXAMPLES
    entry.demonstrate(EXAMPLE_DIR / f"{name}.py", entry.setup())


def test_every_example_file_is_tested() -> None:
    files = {p.stem for p in EXAMPLE_DIR.glob("*.py")}
    tested = set(EXAMPLES) | set(WRONG_IN_REFERENCE) | set(DDP_EXAMPLES)
    assert files == tested, (files - tested, tested - files)
    for stem in files:
        first, second = (EXAMPLE_DIR / f"{stem}.py").read_text().splitlines()[:2]
        seed = SEED_000 if stem.startswith("s000") else SEED_001
        assert first.startswith(f"# Seed: {seed}"), stem
        assert second.startswith("# Section: "), stem


# --- the distributed examples ---------------------------------------------------------------

DDP_WORLD = 2
DDP_SHARDS = ((7, 5), (6, 6))  # batch sizes per rank: the union has 24 samples


def ddp_case() -> Case:
    """The union of the ranks' data, with the model each rank builds (``layer.4`` is the last
    Linear, as the reference's ``match_names("layer.4.*")`` expects)."""
    g = torch.Generator().manual_seed(3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        layer = nn.Sequential(
            nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3)
        )
        model = nn.Sequential()
        model.add_module("layer", layer)
        model = model.double()
    sizes = [n for shard in DDP_SHARDS for n in shard]
    x = torch.randn(sum(sizes), 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (sum(sizes),), generator=g)
    batches = list(zip(torch.split(x, sizes), torch.split(y, sizes), strict=True))
    return Case("ddp", model, batches, "ce")


def _ddp_rank(rank: int, out: str) -> None:
    """One rank: join the gloo group, run each distributed example with this rank's shard and
    save, after each, what the checks need (the operator as a dense matrix, the eigenpairs) or
    the error it raised. An error ends the rank (its peer then fails in a collective)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{Path(out) / 'rendezvous'}",
        rank=rank,
        world_size=DDP_WORLD,
        timeout=timedelta(seconds=60),
    )
    first = sum(len(shard) for shard in DDP_SHARDS[:rank])
    results: dict[str, dict[str, Any]] = {}
    for name in DDP_EXAMPLES:
        case = ddp_case()
        shard = case.batches[first : first + len(DDP_SHARDS[rank])]
        names = {"model": case.model, "dataloader": shard, "loss_fn": ce_loss}
        try:
            if "ddp_model" in free_names((EXAMPLE_DIR / f"{name}.py").read_text()):
                names["ddp_model"] = DistributedDataParallel(case.model)
            ns = run_example(EXAMPLE_DIR / f"{name}.py", names).namespace
            op = ns["hessian_op_fd" if "hessian_op_fd" in ns else "hessian_op"]
            results[name] = {
                "type": type(op).__name__,
                "names": list(op.space.names),
                "dense": op.to_dense(),
                **{k: ns[k] for k in ("eigenvalues", "eigenvectors") if k in ns},
            }
        except Exception as err:
            results[name] = {"error": f"{type(err).__name__}: {err}"}
            raise
        finally:
            torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _ddp_worker(out: str) -> None:
    from torch.multiprocessing.spawn import start_processes

    start_processes(_ddp_rank, args=(out,), nprocs=DDP_WORLD, start_method="fork")  # type: ignore[no-untyped-call]


def _ddp_results(timeout: float = 180.0) -> tuple[list[dict[str, dict[str, Any]]], str]:
    """Each rank's saved results (possibly partial) and the tail of the worker's log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tests.docs.test_seed_examples", tmp]
        with open(Path(tmp) / "log.txt", "w") as log:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and the ranks it forked
                proc.wait()
        log_tail = (Path(tmp) / "log.txt").read_text()[-4000:]
        ranks = []
        for r in range(DDP_WORLD):
            path = Path(tmp) / f"rank{r}.pt"
            ranks.append(torch.load(path, weights_only=False) if path.exists() else {})
        return ranks, log_tail


def _check_ddp_example(
    name: str, ranks: list[dict[str, dict[str, Any]]], case: Case, H: torch.Tensor
) -> None:
    all_names = [n for n, _ in case.model.named_parameters()]
    last = ["layer.4.weight", "layer.4.bias"]
    dense, rtol, names = {
        "s001_ddp_basic": (H, EXACT_RTOL, all_names),
        "s001_ddp_param_filter": (dense_hessian(case, names=last), EXACT_RTOL, last),
        "s001_ddp_finite_difference": (H, FD_RTOL, all_names),
    }[name]
    for rank, results in enumerate(ranks):
        got = results.get(name, {"error": "did not run (an earlier example failed)"})
        assert "error" not in got, f"rank {rank}: {got['error']}"
        assert got["type"] == "DDPHessianOperator", got["type"]
        assert got["names"] == names, (rank, got["names"])
        err = rel_err(got["dense"], dense)
        assert err < rtol, f"rank {rank}: rel err {err:.2e} against the union's Hessian"
    if name == "s001_ddp_basic":
        vals = [r[name]["eigenvalues"] for r in ranks]
        assert all(torch.equal(v, vals[0]) for v in vals), "the ranks' eigenvalues differ"
        assert vals[0].numel() == 10
        assert_eigenpairs(vals[0], ranks[0][name]["eigenvectors"], _dense_operator(H))
        assert torch.allclose(vals[0][0], top_by_magnitude(H, 1)[0], rtol=1e-10)


def test_ddp_examples_run_unchanged() -> None:
    """The DDP examples on two gloo processes, each rank with its shard: every rank's operator
    equals the single-process Hessian of the union of the shards (finite differences: to
    FD_RTOL), and the eigenpairs agree across ranks and are eigenpairs of that Hessian. One
    launch runs all three; each is judged on its own and all failures are reported."""
    case = ddp_case()
    H = dense_hessian(case)
    ranks, log_tail = _ddp_results()
    failures = []
    for name in DDP_EXAMPLES:
        try:
            _check_ddp_example(name, ranks, case, H)
        except AssertionError as err:
            failures.append(f"{name}: {err}")
    assert not failures, "\n".join(failures) + f"\n--- worker log (tail) ---\n{log_tail}"


def _dense_operator(matrix: torch.Tensor) -> CurvatureOperator:
    from hessian_eigenthings import LambdaOperator

    return LambdaOperator(matrix.shape[0], lambda v: matrix @ v, dtype=matrix.dtype)


if __name__ == "__main__":
    _ddp_worker(sys.argv[1])
