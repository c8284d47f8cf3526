"""``eigenthings demo``: train a small MLP on scikit-learn's digits, then analyse its Hessian.

No network and no arguments needed: the digits (1797 8×8 images, 10 classes) ship inside
scikit-learn. The MLP is trained for a few epochs in float32; its Hessian is then analysed in
float64 on a subset of the training set: the top eigenvalues (for a cross-entropy classifier
with C classes, about C − 1 of them stand out from the bulk), the trace with its standard
error, and the spectral density, drawn to a PNG.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from hessian_eigenthings.algorithms import lanczos, spectral_density, trace
from hessian_eigenthings.plugins import CommandSpec
from hessian_eigenthings_cli.analysis import DTYPES, build_operator, positive_int
from hessian_eigenthings_cli.commands.density import add_density_options
from hessian_eigenthings_cli.commands.eig import add_eig_options, default_max_iter
from hessian_eigenthings_cli.commands.trace import add_trace_options
from hessian_eigenthings_cli.losses import criterion_forms
from hessian_eigenthings_cli.output import add_output_options, emit, number, payload
from hessian_eigenthings_cli.progress import Reporter, Step, add_progress_options
from hessian_eigenthings_cli.reports import (
    density_json,
    eig_json,
    render_density,
    render_eig,
    render_setup,
    render_trace,
    trace_json,
    write_density_plot,
)

__all__ = [
    "DEFAULT_PLOT",
    "SPEC",
    "digits_split",
    "load_digits_arrays",
    "outlier_gap",
    "train_mlp",
]

DEFAULT_PLOT = Path("eigenthings-density.png")
NUM_CLASSES = 10
TEST_FRACTION = 0.2
CURVATURE_BATCH = 256


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds training and every algorithm (default 0)"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (default 1: the model is small, more threads only add "
        "synchronisation)",
    )
    model = parser.add_argument_group("model and training")
    model.add_argument("--hidden", type=positive_int, default=64, help="hidden width (64)")
    model.add_argument("--epochs", type=positive_int, default=10, help="training epochs (10)")
    model.add_argument(
        "--curvature-samples",
        type=positive_int,
        default=512,
        metavar="N",
        help="training samples the Hessian is averaged over (default 512)",
    )
    model.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="dtype of the curvature analysis (default float64)",
    )
    add_eig_options(parser, k=12)
    add_trace_options(parser, num_matvecs=60)
    add_density_options(parser, num_runs=8, lanczos_steps=60, plot=DEFAULT_PLOT)
    parser.add_argument("--no-plot", action="store_true", help="do not write the plot")
    add_output_options(parser)
    add_progress_options(parser)


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as (1797, 64) float64 pixel values 0..16 and (1797,) int64 labels.

    Read straight from the CSV file scikit-learn ships (the file ``load_digits`` parses),
    because importing ``sklearn.datasets`` costs seconds; ``load_digits`` is the fallback.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    locations = spec.submodule_search_locations if spec is not None else None
    if locations:
        path = Path(next(iter(locations))) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                table = torch.tensor([[float(v) for v in row] for row in csv.reader(f)])
            if table.shape == (1797, 65):
                return table[:, :-1].double(), table[:, -1].long()
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    return torch.as_tensor(images, dtype=torch.float64), torch.as_tensor(labels).long()


def digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits scaled to [0, 1], split into train/test by a seeded permutation."""
    images, labels = load_digits_arrays()
    x = (images / 16.0).float()
    y = labels
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    num_test = round(TEST_FRACTION * len(x))
    train, test = perm[num_test:], perm[:num_test]
    return x[train], y[train], x[test], y[test]


@dataclass(frozen=True)
class Training:
    epochs: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float


class _Adam:
    """Adam (lr 3e-3, betas 0.9/0.999, eps 1e-8), written out: ``torch.optim`` imports
    ``torch._dynamo`` on first use, which alone costs seconds of the demo's start-up."""

    def __init__(self, params: list[nn.Parameter], lr: float = 3e-3) -> None:
        self.params, self.lr, self.steps = params, lr, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: tuple[torch.Tensor, ...]) -> None:
        self.steps += 1
        b1, b2 = 0.9, 0.999
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / (1 - b2**self.steps)).sqrt_().add_(1e-8)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1**self.steps))


def train_mlp(
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    hidden: int,
    epochs: int,
    seed: int,
    progress: Any = None,
) -> tuple[nn.Module, Training]:
    """A 64-hidden-10 ReLU MLP trained with Adam (lr 3e-3, batches of 128), seeded."""
    x, y, x_test, y_test = data
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))
    params = list(model.parameters())
    optimizer = _Adam(params)
    shuffle = torch.Generator().manual_seed(seed + 1)
    loss = torch.tensor(float("nan"))
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=shuffle)
        for start in range(0, len(x), 128):
            idx = order[start : start + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.step(torch.autograd.grad(loss, params))
        if progress is not None:
            progress(Step(epoch + 1, f"loss {loss.item():.3f}"))
    model.eval()
    with torch.no_grad():
        logits = model(x)
        result = Training(
            epochs=epochs,
            train_loss=float(nn.functional.cross_entropy(logits, y)),
            train_accuracy=float((logits.argmax(1) == y).double().mean()),
            test_accuracy=float((model(x_test).argmax(1) == y_test).double().mean()),
        )
    return model, result


def outlier_gap(eigenvalues: list[float | None]) -> tuple[int, float] | None:
    """Where the largest ratio between consecutive positive eigenvalues falls: ``(i, ratio)``
    with the gap after the i-th eigenvalue (1-based), or ``None`` with fewer than two."""
    positive = [v for v in eigenvalues if v is not None and v > 0]
    ratios = [a / b for a, b in itertools.pairwise(positive)]
    if not ratios:
        return None
    best = max(range(len(ratios)), key=ratios.__getitem__)
    return best + 1, ratios[best]


def _run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    reporter = Reporter.from_args(args)
    dtype = DTYPES[args.dtype]
    with reporter:
        split = digits_split(args.seed)
        with reporter.task("training", args.epochs, unit="epochs") as task:
            model, training = train_mlp(
                split, hidden=args.hidden, epochs=args.epochs, seed=args.seed, progress=task
            )
        x, y = split[0][: args.curvature_samples], split[1][: args.curvature_samples]
        model.to(dtype)
        data = [
            (x[i : i + CURVATURE_BATCH].to(dtype), y[i : i + CURVATURE_BATCH])
            for i in range(0, len(x), CURVATURE_BATCH)
        ]
        op, plugin = build_operator("hessian", model, data, criterion_forms("cross_entropy"))
        max_iter = args.max_iter or default_max_iter(args.k, op.size)
        with reporter.task("lanczos", max_iter) as task:
            eig_result = lanczos(
                op, args.k, max_iter, which=args.which, tol=args.tol, seed=args.seed, callback=task
            )
        with reporter.task(args.method, args.num_matvecs) as task:
            trace_result = trace(
                op, args.num_matvecs, method=args.method, seed=args.seed, callback=task
            )
        with reporter.task("density", args.num_runs * args.lanczos_steps) as task:
            density_result = spectral_density(
                op, args.num_runs, args.lanczos_steps, seed=args.seed, callback=task
            )
        density_matvecs = task.done
    plot = None if args.no_plot else args.plot
    if plot is not None:
        write_density_plot(density_result, plot, "Hessian spectral density, MLP on digits")

    setup = {
        "model": f"MLP {x.shape[1]}-{args.hidden}-{NUM_CLASSES} (ReLU), Adam, {args.epochs} epochs",
        "data": f"scikit-learn digits: {len(split[0])} train / {len(split[2])} test images; "
        f"Hessian over {len(x)} training samples",
        "loss": "cross_entropy",
        "operator": "hessian",
        "operator_plugin": plugin,
        "size": op.size,
        "dtype": args.dtype,
        "device": "cpu",
        "seed": args.seed,
    }
    eig = eig_json(eig_result, which=args.which, k=args.k)
    gap = outlier_gap(eig["eigenvalues"])
    outliers = {
        "num_classes": NUM_CLASSES,
        "expected": NUM_CLASSES - 1,
        "largest_gap_after": None if gap is None else gap[0],
        "gap_ratio": None if gap is None else number(gap[1]),
    }
    document = payload(
        "demo",
        setup=setup,
        training={
            "epochs": training.epochs,
            "train_loss": number(training.train_loss),
            "train_accuracy": number(training.train_accuracy),
            "test_accuracy": number(training.test_accuracy),
        },
        eig=eig,
        outliers=outliers,
        trace=trace_json(trace_result),
        density=density_json(
            density_result,
            num_runs=args.num_runs,
            lanczos_steps=args.lanczos_steps,
            num_matvecs=density_matvecs,
            plot=plot,
        ),
    )

    def render(console: Console) -> None:
        render_setup(console, setup, title="eigenthings demo")
        console.print(
            f"trained: loss {training.train_loss:.4f}, train accuracy "
            f"{training.train_accuracy:.1%}, test accuracy {training.test_accuracy:.1%}",
            highlight=False,
        )
        render_eig(console, eig, title="Hessian eigenvalues")
        if gap is not None:
            console.print(
                f"largest gap: after eigenvalue #{gap[0]} (×{gap[1]:.2f}); a {NUM_CLASSES}-class "
                f"cross-entropy model typically shows {NUM_CLASSES - 1} outliers",
                highlight=False,
            )
        render_trace(console, document["trace"])
        render_density(console, document["density"])

    emit(args, document, render)
    return 0


SPEC = CommandSpec(
    help="train a small MLP on scikit-learn's digits (offline, seconds) and report its Hessian's "
    "top eigenvalues, trace and spectral density",
    configure=_configure,
    run=_run,
)
