"""Cost of one curvature-operator product, as a ratio to one plain gradient on the same data.

For each workload (an MLP, a small CNN, a tiny GPT-2-like language model written in plain
torch, all float32 on one CPU thread) this measures, in the same run:

* ``gradient`` — forward + backward, ``torch.autograd.grad(loss, params)``: the unit;
* ``hvp_baseline`` — a hand-written double-backward Hessian-vector product
  (``grad(grad(loss, create_graph=True), params, v)``): the exact-HVP floor when recomputing;
* every operator in :data:`OPERATORS` — one ``op.matvec(v)`` through the full engine
  (parameter views, batch loop, weighting, state restoration, checks) — as built by default
  (everything recomputed per product) and with ``reuse_graph=True`` (suffix ``/reuse_graph``:
  the batch's linearisation kept between products);
* the peers in :data:`PEERS` — other libraries' products on the same batch, each used the way
  it is fastest (PyHessian keeps ∇L's graph; curvlinops recomputes; BackPACK's GGN product
  with the forward kept).

It prints one JSON line per (workload, candidate) with the median time (interleaved rounds)
as ratios to the gradient and to the baseline HVP; the peak tensor memory (profiler allocation
timeline, see ``_harness.py``) as a ratio to the gradient's — the larger of a fresh instance's
first product (which builds what it keeps) and a later product on top of what is kept — and
what stays allocated between products (``held_vs_gradient``); and the relative error against
the baseline HVP (Hessian-type candidates) or our analytical GGN (GGN/Fisher-type).

Targets (issue: curvature operators): Hessian within 5% of ``hvp_baseline`` and ≤ 2.3× a
gradient on the MLP; GGN ≤ 2.3×, empirical Fisher ≤ 2.4× everywhere; at or below the best peer
on every workload; peak memory ≤ 2× a gradient's.

Adding an operator (e.g. GGN, Fisher): add a builder to :data:`OPERATORS`, taking a
:class:`Workload` (model, one batch, the loss as ``loss_fn`` or as ``forward`` +
``loss_of_output``) and returning the operator. Name it ``"<family>/<variant>"``.

Run: ``uv run python benchmarks/bench_operators.py`` (``--quick`` for small sizes and few
repeats; ``--models mlp,cnn``, ``--operators 'hessian/*'``, ``--peers ''`` and
``--reuse off|on|both`` to select).
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import itertools
import math
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import emit, interleaved_medians, tensor_bytes

from hessian_eigenthings import (
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
)
from hessian_eigenthings.loss_fns import cross_entropy_loss_of_output
from hessian_eigenthings.operators import ModelCurvatureOperator

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

OperatorBuilder = Callable[[Workload], ModelCurvatureOperator]


def _hessian(method: str) -> OperatorBuilder:
    def build(w: Workload) -> ModelCurvatureOperator:
        return HessianOperator(w.model, [w.batch], w.loss_fn, method=method)  # type: ignore[arg-type]

    return build


def _ggn(loss_hvp: str, jvp: str = "separate") -> OperatorBuilder:
    def build(w: Workload) -> ModelCurvatureOperator:
        # analytical: the CE helper's closed-form .hvp; autograd: the workload's plain loss
        loss = cross_entropy_loss_of_output() if loss_hvp == "analytical" else w.loss_of_output
        return GGNOperator(w.model, [w.batch], w.forward, loss, loss_hvp=loss_hvp, jvp=jvp)  # type: ignore[arg-type]

    return build


def _fisher_type2(w: Workload) -> ModelCurvatureOperator:
    return FisherOperator(w.model, [w.batch], w.forward, cross_entropy_loss_of_output())


def _empirical_fisher(per_sample_limit: int, jvp: str = "separate") -> OperatorBuilder:
    """``per_sample_limit=0``: always the forward-mode route (the batch-size sweep, including
    the per-sample route for tiny batches, is ``bench_empirical_fisher.py``)."""

    def build(w: Workload) -> ModelCurvatureOperator:
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


#: methods without a graph to keep (``reuse_graph`` changes nothing for them)
_NOTHING_TO_REUSE = {"hessian/forward_over_reverse", "hessian/finite_difference"}


# -- peers --------------------------------------------------------------------------------
#
# Other libraries' products on the same workload, each used the way that library is fastest on
# one fixed batch. A peer is a factory: ``make(w, v_list)`` returns the product as a callable
# whose first call also does whatever the peer keeps between products (so that the memory
# measurement of a fresh instance sees it), or ``None`` if the library is not installed.

Product = Callable[[], Any]
PeerFactory = Callable[[Workload, list[torch.Tensor]], "Product | None"]


class _Versions:
    """Whether the parameters were written since the last call (finite differences do)."""

    def __init__(self, w: Workload) -> None:
        self.params = w.params
        self.seen: list[int] = []

    def changed(self) -> bool:
        now = [p._version for p in self.params]
        stale, self.seen = now != self.seen, now
        return stale


def _kept_graph_hvp(w: Workload, v_list: list[torch.Tensor]) -> Product:
    """PyHessian's single-batch mode: ∇L with its graph built once, then
    ``grad(∇L, θ, v, retain_graph=True)`` per product (its ``hessian_vector_product``)."""
    kept: list[Any] = []
    versions = _Versions(w)

    def product() -> Any:
        if versions.changed():  # PyHessian would need a new object: the graph is stale
            kept.clear()
        if not kept:
            kept.extend(
                torch.autograd.grad(w.loss_fn(w.model, w.batch), w.params, create_graph=True)
            )
        return torch.autograd.grad(kept, w.params, v_list, retain_graph=True)

    return product


def _backpack_ggnvp(w: Workload, v_list: list[torch.Tensor]) -> Product | None:
    """BackPACK's ``ggn_vector_product_from_plist`` with the forward (output and loss) kept."""
    try:
        from backpack.hessianfree.ggnvp import ggn_vector_product_from_plist
    except ImportError:
        return None
    kept: list[torch.Tensor] = []
    versions = _Versions(w)

    def product() -> Any:
        if versions.changed():
            kept.clear()
        if not kept:
            out = w.forward(w.model, w.batch)
            kept.extend((w.loss_of_output(out, w.batch), out))
        return ggn_vector_product_from_plist(kept[0], kept[1], w.params, v_list)

    return product


def _curvlinops(kind: str) -> PeerFactory:
    """curvlinops' linear operators (they recompute the forward pass on every product)."""

    def make(w: Workload, v_list: list[torch.Tensor]) -> Product | None:
        try:
            import curvlinops
        except ImportError:
            return None
        cls = getattr(curvlinops, f"{kind}LinearOperator")

        class Flat(nn.Module):  # curvlinops' CrossEntropyLoss wants (rows, classes)
            def __init__(self) -> None:
                super().__init__()
                self.inner = w.model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out = w.forward(self.inner, (x, x))
                return out.reshape(-1, out.shape[-1])

        data = [(w.batch[0], w.batch[1].reshape(-1))]
        op = cls(Flat(), nn.CrossEntropyLoss(), w.params, data, check_deterministic=False)
        return lambda: op @ v_list

    return make


PEERS: dict[str, PeerFactory] = {
    "peer/pyhessian_kept_graph_hvp": _kept_graph_hvp,
    "peer/curvlinops_hessian": _curvlinops("Hessian"),
    "peer/curvlinops_ggn": _curvlinops("GGN"),
    "peer/curvlinops_ef": _curvlinops("EF"),
    "peer/backpack_ggnvp_kept_forward": _backpack_ggnvp,
}

#: the reference each candidate's result is compared with (by name prefix)
_REFERENCE_OF = {
    "hessian": "hessian",
    "hvp": "hessian",
    "peer/pyhessian": "hessian",
    "peer/curvlinops_hessian": "hessian",
    "ggn": "ggn",
    "fisher": "ggn",
    "peer/curvlinops_ggn": "ggn",
    "peer/backpack": "ggn",
}


# -- measurement --------------------------------------------------------------------------


def _fresh_peer(peer: PeerFactory, w: Workload, v_list: list[torch.Tensor]) -> Product:
    return cast(Product, peer(w, v_list))


def _flat(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.reshape(-1)
    return torch.cat([t.reshape(-1) for t in out])


def run(
    w: Workload,
    operators: dict[str, OperatorBuilder],
    peers: dict[str, PeerFactory],
    repeats: int,
    reuse: str,
) -> None:
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

    # factories: each call gives a fresh instance (for memory), whose first product builds
    # whatever it keeps
    factories: dict[str, Callable[[], Product]] = {
        "gradient": lambda: gradient,
        "hvp_baseline": lambda: hvp_baseline,
    }

    def ours(build: OperatorBuilder, keep: bool) -> Callable[[], Product]:
        def make() -> Product:
            op = build(w)
            op.reuse_graph = keep  # the constructor argument, set after building
            return lambda: op.matvec(v)

        return make

    for name, build in operators.items():
        if reuse in ("off", "both"):
            factories[name] = ours(build, False)
        if reuse in ("on", "both") and name not in _NOTHING_TO_REUSE:
            factories[f"{name}/reuse_graph"] = ours(build, True)
    for name, peer in peers.items():
        if peer(w, v_list) is None:
            emit(
                {
                    "bench": "operator_product",
                    "workload": w.name,
                    "candidate": name,
                    "skipped": "library not installed",
                }
            )
            continue
        factories[name] = functools.partial(_fresh_peer, peer, w, v_list)

    candidates = {name: make() for name, make in factories.items()}
    # Finite differences write the parameters (and restore them), which invalidates every kept
    # graph: they are timed in a round of their own, against baselines measured with them.
    baselines = ("gradient", "hvp_baseline")
    perturbing = {k for k in candidates if "finite_difference" in k}
    times: dict[str, tuple[float, float, float]] = {}  # (time, gradient's, baseline HVP's)
    for group in (set(candidates) - perturbing, perturbing):
        if not group - set(baselines):
            continue
        timed = {k: candidates[k] for k in candidates if k in group or k in baselines}
        t = interleaved_medians(timed, repeats=repeats)
        for k in group:
            times[k] = (t[k], t["gradient"], t["hvp_baseline"])
    memory: dict[str, tuple[int, int]] = {}
    for name, make in factories.items():
        peak_first, held = tensor_bytes(make_fresh := make())
        peak_later, _ = tensor_bytes(make_fresh)
        memory[name] = (max(peak_first, held + peak_later), held)
    references = {
        "hessian": _flat(hvp_baseline()),
        "ggn": OPERATORS["ggn/analytical"](w).matvec(v),
    }
    grad_peak = memory["gradient"][0]
    for name, fn in candidates.items():
        peak, held = memory[name]
        record: dict[str, Any] = {
            "bench": "operator_product",
            "workload": w.name,
            "params": n,
            "candidate": name,
            "time_s": round(times[name][0], 6),
            "time_vs_gradient": round(times[name][0] / times[name][1], 3),
            "time_vs_hvp_baseline": round(times[name][0] / times[name][2], 3),
            "peak_bytes": peak,
            "peak_vs_gradient": round(peak / grad_peak, 3),
            "held_vs_gradient": round(held / grad_peak, 3),
        }
        family = next((f for k, f in _REFERENCE_OF.items() if name.startswith(k)), None)
        if family is not None:
            ref = references[family]
            record[f"rel_err_vs_{family}"] = float((_flat(fn()) - ref).norm() / ref.norm())
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
    parser.add_argument(
        "--reuse",
        choices=("off", "on", "both"),
        default="both",
        help="our operators as built by default (recomputing everything per product), with "
        "reuse_graph=True (suffix /reuse_graph: the batch's linearisation kept), or both",
    )
    parser.add_argument("--peers", default="*", help="glob over peer names ('' for none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 9)
    operators = {k: b for k, b in OPERATORS.items() if fnmatch.fnmatch(k, args.operators)}
    peers = {k: p for k, p in PEERS.items() if args.peers and fnmatch.fnmatch(k, args.peers)}
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
                "ggn/* time_vs_gradient": 2.3,
                "empirical_fisher/* time_vs_gradient": 2.4,
                "time_vs_gradient": "at or below the best peer/*",
                "peak_vs_gradient": 2.0,
            },
        }
    )
    for name in args.models.split(","):
        run(WORKLOADS[name](args.quick), operators, peers, repeats, args.reuse)


if __name__ == "__main__":
    main()
