"""Cost of one curvature-operator product, as a ratio to one plain gradient on the same data.

For each workload (an MLP, a small CNN, a tiny GPT-2-like language model written in plain
torch, all float32 on one CPU thread) this measures, in the same run:

* ``gradient`` — forward + backward, ``torch.autograd.grad(loss, params)``: the unit;
* ``hvp_baseline`` — a hand-written double-backward Hessian-vector product
  (``grad(grad(loss, create_graph=True), params, v)``): the exact-HVP floor;
* every operator in :data:`OPERATORS` — one ``op.matvec(v)`` through the full engine
  (parameter views, batch loop, weighting, state restoration, checks).

It prints one JSON line per (workload, candidate) with the median time (interleaved rounds),
the peak tensor memory (profiler allocation timeline, see ``_harness.py``), both as ratios to
the gradient and to the baseline HVP, and — for Hessian operators — the relative error
against the baseline HVP.

Targets (Hessian, ``method="autograd"``): time within 5% of ``hvp_baseline``; ≤ 2.3× a
gradient on the MLP; peak memory ≤ 2× a gradient's.

Adding an operator (e.g. GGN, Fisher): add a builder to :data:`OPERATORS`, taking a
:class:`Workload` (model, one batch, the loss as ``loss_fn`` or as ``forward`` +
``loss_of_output``) and returning the operator. Name it ``"<family>/<variant>"``.

Run: ``uv run python benchmarks/bench_operators.py`` (``--quick`` for small sizes and few
repeats; ``--models mlp,cnn`` and ``--operators hessian/autograd`` to select).
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import math
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import emit, interleaved_medians, peak_tensor_bytes

from hessian_eigenthings import (
    CurvatureOperator,
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
)
from hessian_eigenthings.loss_fns import cross_entropy_loss_of_output

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Workload:
    """A model, one batch, and its loss in both shapes the operators take."""

    name: str
    model: nn.Module
    batch: Batch
    forward: Callable[[nn.Module, Batch], torch.Tensor]
    loss_of_output: Callable[[torch.Tensor, Batch], torch.Tensor]

    def loss_fn(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.loss_of_output(self.forward(model, batch), batch)

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


# -- workloads ----------------------------------------------------------------------------


def _forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(batch[0])  # type: ignore[no-any-return]


def _ce(output: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), batch[1].reshape(-1))


def _mlp(quick: bool, act: type[nn.Module], name: str) -> Workload:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    width, batch = (128, 64) if quick else (512, 256)
    model = nn.Sequential(
        nn.Linear(784, width), act(), nn.Linear(width, width), act(), nn.Linear(width, 10)
    )
    x = torch.randn(batch, 784, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return Workload(name, model, (x, y), _forward, _ce)


def mlp(quick: bool) -> Workload:
    """784-512-512-10 tanh MLP, batch 256 (MNIST-shaped)."""
    return _mlp(quick, nn.Tanh, "mlp")


def mlp_relu(quick: bool) -> Workload:
    """The same MLP with ReLU: piecewise linear, so finite differences see kinks (see docs)."""
    return _mlp(quick, nn.ReLU, "mlp_relu")


def cnn(quick: bool) -> Workload:
    """Two 3×3 conv layers (16, 32 channels) with tanh and average pooling on 32×32×3 inputs."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 10),
    )
    batch = 16 if quick else 64
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return Workload("cnn", model, (x, y), _forward, _ce)


class _Block(nn.Module):
    """Pre-LN transformer block: causal multi-head attention (explicit softmax) and a GELU MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        att = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return out


class TinyGPT(nn.Module):
    """GPT-2's shape in miniature: token + position embeddings, blocks, final LN, tied head."""

    def __init__(self, vocab: int, d: int, heads: int, layers: int, context: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.wte(tokens) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # type: ignore[no-any-return]


def gpt(quick: bool) -> Workload:
    """GPT-2-like: vocab 512, width 64, 4 heads, 2 blocks, context 64, batch 8."""
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    vocab, d, heads, layers, context, batch = (
        (128, 32, 2, 1, 16, 4) if quick else (512, 64, 4, 2, 64, 8)
    )
    model = TinyGPT(vocab, d, heads, layers, context)
    tokens = torch.randint(0, vocab, (batch, context + 1), generator=g)
    return Workload("gpt", model, (tokens[:, :-1], tokens[:, 1:]), _forward, _ce)


WORKLOADS: dict[str, Callable[[bool], Workload]] = {
    "mlp": mlp,
    "cnn": cnn,
    "gpt": gpt,
    "mlp_relu": mlp_relu,
}
DEFAULT_WORKLOADS = "mlp,cnn,gpt"


# -- operators ----------------------------------------------------------------------------

OperatorBuilder = Callable[[Workload], CurvatureOperator]


def _hessian(method: str) -> OperatorBuilder:
    def build(w: Workload) -> CurvatureOperator:
        return HessianOperator(w.model, [w.batch], w.loss_fn, method=method)  # type: ignore[arg-type]

    return build


def _ggn(loss_hvp: str, jvp: str = "separate") -> OperatorBuilder:
    def build(w: Workload) -> CurvatureOperator:
        # analytical: the CE helper's closed-form .hvp; autograd: the workload's plain loss
        loss = cross_entropy_loss_of_output() if loss_hvp == "analytical" else w.loss_of_output
        return GGNOperator(w.model, [w.batch], w.forward, loss, loss_hvp=loss_hvp, jvp=jvp)  # type: ignore[arg-type]

    return build


def _fisher_type2(w: Workload) -> CurvatureOperator:
    return FisherOperator(w.model, [w.batch], w.forward, cross_entropy_loss_of_output())


def _empirical_fisher(per_sample_limit: int, jvp: str = "separate") -> OperatorBuilder:
    """``per_sample_limit=0``: always the forward-mode route (the batch-size sweep, including
    the per-sample route for tiny batches, is ``bench_empirical_fisher.py``)."""

    def build(w: Workload) -> CurvatureOperator:
        def per_sample_loss(model: nn.Module, sample: Batch) -> torch.Tensor:
            batch = (sample[0].unsqueeze(0), sample[1].unsqueeze(0))
            return w.loss_of_output(w.forward(model, batch), batch)

        return EmpiricalFisherOperator(
            w.model,
            [w.batch],
            per_sample_loss,
            per_sample_limit=per_sample_limit,
            jvp=jvp,  # type: ignore[arg-type]
        )

    return build


#: Operators measured on every workload: ``"<family>/<variant>"`` → builder. Families whose
#: name starts with ``hessian`` are also checked against the baseline HVP.
OPERATORS: dict[str, OperatorBuilder] = {
    "hessian/autograd": _hessian("autograd"),
    "hessian/forward_over_reverse": _hessian("forward_over_reverse"),
    "hessian/finite_difference": _hessian("finite_difference"),
    "ggn/analytical": _ggn("analytical"),
    "ggn/analytical_shared_jvp": _ggn("analytical", jvp="shared"),
    "ggn/autograd": _ggn("autograd"),
    "fisher/type-2": _fisher_type2,
    "empirical_fisher/forward_mode": _empirical_fisher(0),
    "empirical_fisher/forward_mode_shared_jvp": _empirical_fisher(0, jvp="shared"),
}


# -- measurement --------------------------------------------------------------------------


def _matvec(op: CurvatureOperator, v: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: op.matvec(v)


def run(w: Workload, operators: dict[str, OperatorBuilder], repeats: int) -> None:
    params = w.params
    n = sum(p.numel() for p in params)
    v = torch.randn(n, generator=torch.Generator().manual_seed(3))
    ends = list(itertools.accumulate(p.numel() for p in params))
    v_list = [v[e - p.numel() : e].view_as(p) for e, p in zip(ends, params, strict=True)]

    def gradient() -> Any:
        return torch.autograd.grad(w.loss_fn(w.model, w.batch), params)

    def hvp_baseline() -> Any:
        g = torch.autograd.grad(w.loss_fn(w.model, w.batch), params, create_graph=True)
        return torch.autograd.grad(g, params, v_list)

    ops = {name: build(w) for name, build in operators.items()}
    candidates: dict[str, Callable[[], Any]] = {
        "gradient": gradient,
        "hvp_baseline": hvp_baseline,
    }
    for name, op in ops.items():
        candidates[name] = _matvec(op, v)
    times = interleaved_medians(candidates, repeats=repeats)
    peaks = {name: peak_tensor_bytes(fn) for name, fn in candidates.items()}
    reference = torch.cat([t.reshape(-1) for t in hvp_baseline()])
    for name, fn in candidates.items():
        record: dict[str, Any] = {
            "bench": "operator_product",
            "workload": w.name,
            "params": n,
            "candidate": name,
            "time_s": round(times[name], 6),
            "time_vs_gradient": round(times[name] / times["gradient"], 3),
            "time_vs_hvp_baseline": round(times[name] / times["hvp_baseline"], 3),
            "peak_bytes": peaks[name],
            "peak_vs_gradient": round(peaks[name] / peaks["gradient"], 3),
            "peak_vs_hvp_baseline": round(peaks[name] / peaks["hvp_baseline"], 3),
        }
        if name.startswith("hessian"):
            out = fn()
            record["rel_err_vs_hvp_baseline"] = float((out - reference).norm() / reference.norm())
        emit(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    parser.add_argument(
        "--models", default=DEFAULT_WORKLOADS, help=f"comma-separated, of {','.join(WORKLOADS)}"
    )
    parser.add_argument("--operators", default="*", help="glob over operator names")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 9)
    operators = {k: b for k, b in OPERATORS.items() if fnmatch.fnmatch(k, args.operators)}
    emit(
        {
            "bench": "operator_product_setup",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "repeats": repeats,
            "dtype": "float32",
            "targets": {
                "hessian/autograd time_vs_hvp_baseline": 1.05,
                "hessian/autograd time_vs_gradient (mlp)": 2.3,
                "hessian/autograd peak_vs_gradient": 2.0,
            },
        }
    )
    for name in args.models.split(","):
        run(WORKLOADS[name](args.quick), operators, repeats)


if __name__ == "__main__":
    main()
