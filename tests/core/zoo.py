"""The shared case list: small float64 models with data, loss and its two-function split.

Every model operator is tested against dense oracles on every case here. Data comes in uneven
batches so that batch weighting is exercised; the oracles evaluate the loss on the
concatenated data, i.e. the true dataset mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]
DTYPE = torch.float64
IGNORE = -100


@dataclass
class Case:
    """A model, its batches and a loss of one of the supported kinds.

    ``task`` is ``"ce"`` (cross-entropy over the last dim, labels may be ``IGNORE`` for
    sequence outputs), ``"mse"`` or ``"bce"`` (BCE with logits).
    """

    name: str
    model: nn.Module
    batches: list[Batch]
    task: str
    #: parameter-name globs of an interesting subset, for param_filter tests
    subset: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    # -- the loss in the shapes the operators take -----------------------------------------
    def loss_of_output(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        y = batch[1]
        if self.task == "ce":
            return F.cross_entropy(
                output.reshape(-1, output.shape[-1]), y.reshape(-1), ignore_index=IGNORE
            )
        if self.task == "mse":
            return F.mse_loss(output, y)
        return F.binary_cross_entropy_with_logits(output, y)

    def forward(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model(batch[0])  # type: ignore[no-any-return]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.loss_of_output(self.forward(model, batch), batch)

    def batch_weight(self, batch: Batch) -> float:
        """Valid labels for token CE, samples otherwise (matches the loss's mean)."""
        if self.task == "ce" and batch[1].ndim > 1:
            return float((batch[1] != IGNORE).sum())
        return float(batch[1].shape[0])

    @property
    def full_batch(self) -> Batch:
        return (
            torch.cat([b[0] for b in self.batches]),
            torch.cat([b[1] for b in self.batches]),
        )

    def with_weight(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` carrying this case's ``batch_weight`` (for token-weighted losses)."""

        def wrapped(*args: Any) -> Any:
            return fn(*args)

        wrapped.batch_weight = self.batch_weight  # type: ignore[attr-defined]
        return wrapped


def _split(x: torch.Tensor, y: torch.Tensor, sizes: list[int]) -> list[Batch]:
    return list(zip(torch.split(x, sizes), torch.split(y, sizes), strict=True))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp() -> Case:
    g = _gen(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(DTYPE)
    x = torch.randn(11, 5, generator=g, dtype=DTYPE)
    y = torch.randint(0, 3, (11,), generator=g)
    return Case("mlp", model, _split(x, y, [4, 4, 3]), "ce", subset=("2.*",))


def mlp_mse() -> Case:
    g = _gen(1)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 2)).to(DTYPE)
    x = torch.randn(9, 4, generator=g, dtype=DTYPE)
    y = torch.randn(9, 2, generator=g, dtype=DTYPE)
    return Case("mlp_mse", model, _split(x, y, [5, 4]), "mse", subset=("0.weight",))


def mlp_bce() -> Case:
    g = _gen(2)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3)).to(DTYPE)
    x = torch.randn(10, 4, generator=g, dtype=DTYPE)
    y = torch.randint(0, 2, (10, 3), generator=g).to(DTYPE)
    return Case("mlp_bce", model, _split(x, y, [3, 3, 4]), "bce", subset=("0.*",))


def cnn_batchnorm() -> Case:
    """Conv → BatchNorm (eval mode, non-trivial running statistics) → SiLU → Linear."""
    g = _gen(3)
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.SiLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 3)
    ).to(DTYPE)
    bn = model[1]
    assert isinstance(bn, nn.BatchNorm2d)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(3, generator=g, dtype=DTYPE) * 0.1)
        bn.running_var.copy_(torch.rand(3, generator=g, dtype=DTYPE) + 0.5)
        bn.weight.copy_(torch.rand(3, generator=g, dtype=DTYPE) + 0.5)
    model.eval()
    x = torch.randn(7, 2, 5, 5, generator=g, dtype=DTYPE)
    y = torch.randint(0, 3, (7,), generator=g)
    return Case("cnn_bn", model, _split(x, y, [3, 4]), "ce", subset=("0.*", "1.*"))


class FrozenTied(nn.Module):
    """A frozen input layer, then one hidden layer applied twice (a shared/tied parameter)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(3, 4)
        self.frozen.requires_grad_(False)
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.unused = nn.Linear(2, 2)  # in the vector space, but never touched by the loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.shared(torch.tanh(self.frozen(x))))
        return self.head(torch.tanh(self.shared(h)))  # type: ignore[no-any-return]


def frozen_tied() -> Case:
    g = _gen(4)
    torch.manual_seed(4)
    model = FrozenTied().to(DTYPE)
    x = torch.randn(8, 3, generator=g, dtype=DTYPE)
    y = torch.randn(8, 2, generator=g, dtype=DTYPE)
    return Case("frozen_tied", model, _split(x, y, [5, 3]), "mse", subset=("shared.*",))


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])  # type: ignore[no-any-return]


def lstm() -> Case:
    g = _gen(5)
    torch.manual_seed(5)
    model = LSTMClassifier().to(DTYPE)
    x = torch.randn(6, 4, 3, generator=g, dtype=DTYPE)
    y = torch.randint(0, 2, (6,), generator=g)
    return Case("lstm", model, _split(x, y, [4, 2]), "ce", subset=("lstm.*",))


class TinyAttention(nn.Module):
    """Pre-LayerNorm single-head causal self-attention block with a per-token classifier."""

    def __init__(self, d: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        scores = self.q(h) @ self.k(h).transpose(-1, -2) / h.shape[-1] ** 0.5
        t = x.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attn = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        return self.out(x + attn @ self.v(h))  # type: ignore[no-any-return]


def attention() -> Case:
    """Per-token cross-entropy with ignored positions: batches weigh by valid tokens."""
    g = _gen(6)
    torch.manual_seed(6)
    model = TinyAttention().to(DTYPE)
    with torch.no_grad():  # a non-trivial LayerNorm affine map (the torch.func.hessian trap)
        model.ln.weight.copy_(torch.rand(4, generator=g, dtype=DTYPE) + 0.5)
        model.ln.bias.copy_(torch.randn(4, generator=g, dtype=DTYPE) * 0.1)
    x = torch.randn(5, 3, 4, generator=g, dtype=DTYPE)
    y = torch.randint(0, 5, (5, 3), generator=g)
    y[0, 2] = IGNORE
    y[1, :2] = IGNORE
    y[4, 0] = IGNORE
    return Case("attention", model, _split(x, y, [2, 3]), "ce", subset=("ln.*", "q.*"))


def layernorm_mlp() -> Case:
    """LayerNorm on a hidden layer: torch.func.hessian and jacrev∘jacrev get its block wrong."""
    g = _gen(7)
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3)).to(DTYPE)
    ln = model[1]
    assert isinstance(ln, nn.LayerNorm)
    with torch.no_grad():
        ln.weight.copy_(torch.rand(5, generator=g, dtype=DTYPE) + 0.5)
        ln.bias.copy_(torch.randn(5, generator=g, dtype=DTYPE) * 0.1)
    x = torch.randn(9, 4, generator=g, dtype=DTYPE)
    y = torch.randint(0, 3, (9,), generator=g)
    return Case("layernorm_mlp", model, _split(x, y, [4, 2, 3]), "ce", subset=("1.*",))


class TiedEmbeddingLM(nn.Module):
    """A token model whose output head reuses the embedding matrix (one parameter, two names)."""

    def __init__(self, vocab: int = 6, d: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, vocab)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.emb(tokens))))  # type: ignore[no-any-return]


def tied_embedding() -> Case:
    """Weight tying: named_parameters() lists emb.weight once; both uses must be counted."""
    g = _gen(8)
    torch.manual_seed(8)
    model = TiedEmbeddingLM().to(DTYPE)
    assert model.head.weight is model.emb.weight
    x = torch.randint(0, 6, (7, 4), generator=g)
    y = torch.randint(0, 6, (7, 4), generator=g)
    y[0, 3] = IGNORE
    y[5, :2] = IGNORE
    return Case("tied_embedding", model, _split(x, y, [4, 3]), "ce", subset=("emb.*",))


CASES: list[Callable[[], Case]] = [
    mlp,
    mlp_mse,
    mlp_bce,
    cnn_batchnorm,
    frozen_tied,
    lstm,
    attention,
    layernorm_mlp,
    tied_embedding,
]
CASE_IDS = [c.__name__ for c in CASES]
