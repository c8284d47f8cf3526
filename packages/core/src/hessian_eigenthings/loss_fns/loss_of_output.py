"""Losses of the model output that know their curvature in output space.

The GGN and Fisher operators split a batch's loss into the model output f = forward_fn(model,
batch) and a loss of that output, ℓ(f, batch). Beyond its value they need the loss's Hessian
in output space, H_ℓ = ∇²_f ℓ, in one of three forms. A :class:`LossOfOutput` provides them
all; the operators duck-type the attributes, so any callable carrying the ones an operator
uses works (a plain callable has none, and the GGN then differentiates it twice instead):

``loss(output, batch)``
    the batch's loss, a 0-d tensor.
``loss.hvp(output, batch, u)``
    H_ℓ u for a direction u shaped like the output (GGN, ``loss_hvp="analytical"``).
``loss.hessian_sqrt_matmul(output, batch, x, transpose=False)``
    S x (or Sᵀ x) for a square S with S Sᵀ = H_ℓ (type-2 Fisher, Jᵀ S Sᵀ J).
``loss.noise_shape(output_shape)`` and ``loss.sample_gradients(output, batch, uniforms)``
    Monte-Carlo output gradients (sampled Fisher). Given M independent uniform(0, 1) draws of
    shape (M, *noise_shape), return M output-shaped vectors g_m such that for every sample i
    of the batch (index i of the output's dimension 0), E[g_m[i] g_m[i]ᵀ] is H_ℓ's block of
    sample i. The draws are an input so that the operator controls the randomness.
``loss.batch_weight(batch)``
    the number of terms the mean reduction divides by (valid labels for cross-entropy, output
    elements for MSE and BCE); the operators weight batches by it, so token- or element-level
    means are exact however the data is batched.

The three standard losses are sums of a term per *position* (a row of logits for cross-entropy,
an element for MSE and BCE), scaled by c = 1/(number of terms) for ``reduction="mean"`` and
c = 1 for ``"sum"``. Per position, with p = softmax(f) and σ = sigmoid(f):

* cross-entropy: H = c (diag p − p pᵀ); S = √c (diag √p − p √pᵀ); g = √c (p − e_ŷ), ŷ ~ Cat(p).
* MSE (f − y)²: H = 2c; S = √(2c); g = √c · 2(f − ŷ) = √(2c) z with ŷ ~ N(f, 1/2), z ~ N(0, 1).
* BCE with logits: H = c σ(1 − σ); S = √(c σ(1 − σ)); g = √c (σ − ŷ), ŷ ~ Bernoulli(σ).

(S Sᵀ = diag p − p pᵀ for cross-entropy because Σ p = 1.) H_ℓ does not depend on the targets
— also not with label smoothing or probability targets — which is why the Fisher, an
expectation over the model's own predictions, equals the GGN for these losses. The sampled g is
√c times the gradient of the sum-reduced loss at targets drawn from the model's predictive
distribution: the score of a sampled label, whose outer product has expectation H/c.
Ignored positions (``ignore_index``) are zero in every product. Every method costs O(output
size); the cross-entropy product goes through the :func:`~hessian_eigenthings.loss_fns.ce_hvp`
dispatcher, so fused backends (``fused=``) apply.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

import torch
import torch.nn.functional as F

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.loss_fns.ce_hvp import ce_hvp

__all__ = [
    "BCEWithLogitsLossOfOutput",
    "CrossEntropyLossOfOutput",
    "LossOfOutput",
    "MSELossOfOutput",
    "Reduction",
    "batch_targets",
    "bce_with_logits_loss_of_output",
    "cross_entropy_loss_of_output",
    "mse_loss_of_output",
]

Reduction: TypeAlias = Literal["mean", "sum"]

# Uniform draws are clamped away from 0 before the normal quantile (ndtri(0) = -inf).
_TINY_UNIFORM = 2.0**-60


def _check_reduction(reduction: Any) -> Reduction:
    if reduction not in ("mean", "sum"):
        raise InvalidArgumentError(
            f"reduction must be 'mean' or 'sum' for a loss with an analytical Hessian, got "
            f"{reduction!r}"
        )
    return reduction  # type: ignore[no-any-return]


def batch_targets(batch: Any) -> torch.Tensor:
    """The targets of a supervised batch: ``batch[1]`` of ``(inputs, targets)`` or
    ``batch["labels"]`` of a mapping."""
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise InvalidArgumentError(
                f"a mapping batch needs a 'labels' entry for this loss, got keys {list(batch)}"
            )
        targets = batch["labels"]
    elif isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= 2:
        targets = batch[1]
    else:
        raise InvalidArgumentError(
            "the loss helpers expect batches (inputs, targets) or mappings with 'labels', got "
            f"{type(batch).__name__}"
        )
    if not isinstance(targets, torch.Tensor):
        raise InvalidArgumentError(f"the batch's targets must be a tensor, got {type(targets)}")
    return targets


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 tensors, float32 otherwise: the precision of the curvature math."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_like(name: str, x: torch.Tensor, output: torch.Tensor, leading: int = 0) -> None:
    if tuple(x.shape[leading:]) != tuple(output.shape):
        want = ("(M, " if leading else "(") + ", ".join(map(str, output.shape)) + ")"
        raise InvalidArgumentError(
            f"{name} must have the output's shape {want}, got {tuple(x.shape)}"
        )


class LossOfOutput(ABC):
    """A loss ``(output, batch) -> 0-d tensor`` that knows its Hessian in output space.

    See the module docstring for the protocol: besides its value ℓ(f, batch) a subclass gives
    H_ℓ u (:meth:`hvp`), S x and Sᵀ x for a square root S Sᵀ = H_ℓ
    (:meth:`hessian_sqrt_matmul`), sampled output gradients g with E[g gᵀ] = H_ℓ per sample
    (:meth:`noise_shape`, :meth:`sample_gradients`) and its :meth:`batch_weight`. Subclasses
    read the targets with :meth:`targets` (``batch[1]``, or ``batch["labels"]``).

    Cost: every method is O(output size) time and memory, without an autograd graph.

    Example:
        The three built-in losses against autograd's Hessian-vector product of their value,
        and their square roots (S Sᵀ u = H_ℓ u):

        >>> import torch
        >>> from hessian_eigenthings.loss_fns import (
        ...     LossOfOutput, bce_with_logits_loss_of_output, cross_entropy_loss_of_output,
        ...     mse_loss_of_output)
        >>> _ = torch.manual_seed(0)
        >>> f = torch.randn(4, 3, dtype=torch.float64)  # 4 samples, 3 outputs / classes
        >>> u = torch.randn(4, 3, dtype=torch.float64)
        >>> cases = [
        ...     (mse_loss_of_output(), torch.rand(4, 3, dtype=torch.float64)),
        ...     (bce_with_logits_loss_of_output(), torch.rand(4, 3, dtype=torch.float64)),
        ...     (cross_entropy_loss_of_output(fused="eager"), torch.tensor([0, 2, 1, 0])),
        ... ]
        >>> for loss, targets in cases:
        ...     batch = (None, targets)
        ...     Hu = loss.hvp(f, batch, u)
        ...     _, autograd_Hu = torch.autograd.functional.hvp(lambda z: loss(z, batch), f, u)
        ...     Stu = loss.hessian_sqrt_matmul(f, batch, u, transpose=True)
        ...     SStu = loss.hessian_sqrt_matmul(f, batch, Stu)
        ...     print(isinstance(loss, LossOfOutput), torch.allclose(Hu, autograd_Hu),
        ...           torch.allclose(SStu, Hu), loss.batch_weight(batch))
        True True True 12.0
        True True True 12.0
        True True True 4.0
    """

    def __init__(self, reduction: Reduction) -> None:
        self.reduction: Reduction = _check_reduction(reduction)

    def targets(self, batch: Any) -> torch.Tensor:
        return batch_targets(batch)

    def _scale(self, count: float) -> float:
        """c: 1/count for the mean reduction (0 when nothing counts), 1 for the sum."""
        if self.reduction == "sum":
            return 1.0
        return 1.0 / count if count else 0.0

    @abstractmethod
    def __call__(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        """The batch's loss."""

    @abstractmethod
    def hvp(self, output: torch.Tensor, batch: Any, u: torch.Tensor) -> torch.Tensor:
        """H_ℓ u, shaped like ``output``."""

    @abstractmethod
    def hessian_sqrt_matmul(
        self, output: torch.Tensor, batch: Any, x: torch.Tensor, *, transpose: bool = False
    ) -> torch.Tensor:
        """S x (``transpose=True``: Sᵀ x) with S Sᵀ = H_ℓ; x and the result shaped like
        ``output``."""

    @abstractmethod
    def noise_shape(self, output_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of the uniform draws one Monte-Carlo gradient needs."""

    @abstractmethod
    def sample_gradients(
        self, output: torch.Tensor, batch: Any, uniforms: torch.Tensor
    ) -> torch.Tensor:
        """(M, *output.shape) sampled output gradients from (M, *noise_shape) uniforms."""

    @abstractmethod
    def batch_weight(self, batch: Any) -> float:
        """The number of terms the mean reduction divides by."""


class _ElementwiseLoss(LossOfOutput):
    """A sum of one term per output element with a diagonal Hessian c·h(f)."""

    @abstractmethod
    def _curvature(self, output: torch.Tensor) -> torch.Tensor | float:
        """h(f), per element (in the work dtype)."""

    @abstractmethod
    def _unit_samples(self, output: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Sampled gradients of one term (before the √c scale), (M, *output.shape)."""

    def hvp(self, output: torch.Tensor, batch: Any, u: torch.Tensor) -> torch.Tensor:
        _check_like("u", u, output)
        f = output.detach().to(_work_dtype(output))
        scale = self._scale(output.numel())
        return (u.to(f.dtype) * self._curvature(f) * scale).to(u.dtype)

    def hessian_sqrt_matmul(
        self, output: torch.Tensor, batch: Any, x: torch.Tensor, *, transpose: bool = False
    ) -> torch.Tensor:
        _check_like("x", x, output)
        f = output.detach().to(_work_dtype(output))
        scale = self._scale(output.numel())
        root = torch.sqrt(torch.as_tensor(self._curvature(f) * scale, dtype=f.dtype))
        return (x.to(f.dtype) * root).to(x.dtype)  # diagonal: S = Sᵀ

    def noise_shape(self, output_shape: Sequence[int]) -> tuple[int, ...]:
        return tuple(output_shape)

    def sample_gradients(
        self, output: torch.Tensor, batch: Any, uniforms: torch.Tensor
    ) -> torch.Tensor:
        _check_like("uniforms", uniforms, output, leading=1)
        f = output.detach().to(_work_dtype(output))
        samples = self._unit_samples(f, uniforms.to(f.device, f.dtype))
        return (samples * math.sqrt(self._scale(output.numel()))).to(output.dtype)

    def batch_weight(self, batch: Any) -> float:
        return float(self.targets(batch).numel())


class MSELossOfOutput(_ElementwiseLoss):
    """Mean squared error ``F.mse_loss(output, targets, reduction=...)``.

    ``reduction="mean"`` averages over all K output elements of the batch (torch's
    convention), so H_ℓ = (2/K)·I (2·I for ``"sum"``), S = √(2/K)·I, sampled gradients are
    √(2/K)·z with z ~ N(0, 1), and the batch weighs K. Every method costs O(K).

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from hessian_eigenthings.loss_fns import MSELossOfOutput
        >>> _ = torch.manual_seed(0)
        >>> loss = MSELossOfOutput("mean")
        >>> f, y = torch.randn(4, 3), torch.randn(4, 3)
        >>> batch = (None, y)  # (inputs, targets): only the targets are read
        >>> torch.equal(loss(f, batch), F.mse_loss(f, y))
        True
        >>> u = torch.randn(4, 3)
        >>> torch.allclose(loss.hvp(f, batch, u), 2 / 12 * u)  # K = 12 elements
        True
        >>> loss.batch_weight(batch)
        12.0
    """

    def __call__(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        loss: torch.Tensor = F.mse_loss(output, self.targets(batch), reduction=self.reduction)
        return loss

    def _curvature(self, output: torch.Tensor) -> float:
        return 2.0

    def _unit_samples(self, output: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        normal: torch.Tensor = torch.special.ndtri(uniforms.clamp_min(_TINY_UNIFORM))
        return normal.mul(math.sqrt(2.0))

    def __repr__(self) -> str:
        return f"mse_loss_of_output(reduction={self.reduction!r})"


class BCEWithLogitsLossOfOutput(_ElementwiseLoss):
    """Binary cross-entropy of logits, ``F.binary_cross_entropy_with_logits``.

    Targets may be any values in [0, 1]; H_ℓ = c·diag(σ(f)(1 − σ(f))) with c = 1/K (``"mean"``,
    K output elements) or 1 (``"sum"``), whatever the targets; S is its element-wise square
    root, and sampled gradients are √c·(σ(f) − ŷ) with ŷ ~ Bernoulli(σ(f)). The batch weighs K.
    Every method costs O(K).

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from hessian_eigenthings.loss_fns import BCEWithLogitsLossOfOutput
        >>> _ = torch.manual_seed(0)
        >>> loss = BCEWithLogitsLossOfOutput("sum")
        >>> f, y = torch.randn(4, 3), torch.rand(4, 3)
        >>> batch = (None, y)
        >>> torch.equal(loss(f, batch), F.binary_cross_entropy_with_logits(f, y, reduction="sum"))
        True
        >>> u, s = torch.randn(4, 3), torch.sigmoid(f)
        >>> torch.allclose(loss.hvp(f, batch, u), s * (1 - s) * u)
        True
    """

    def __call__(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            output, self.targets(batch), reduction=self.reduction
        )

    def _curvature(self, output: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(output)
        return s * (1 - s)

    def _unit_samples(self, output: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(output)
        return s - (uniforms < s).to(s.dtype)

    def __repr__(self) -> str:
        return f"bce_with_logits_loss_of_output(reduction={self.reduction!r})"


class CrossEntropyLossOfOutput(LossOfOutput):
    """Softmax cross-entropy of logits; class labels (``ignore_index`` honoured) or probabilities.

    ``class_dim="last"`` (the helpers' layout): logits (..., V), labels (...) — e.g. sequence
    logits (B, T, V) with labels (B, T). ``class_dim="torch"``: ``F.cross_entropy``'s layout,
    logits (N, V, d1, ...) with labels (N, d1, ...) (the same for 2-D logits); used when a torch
    criterion is recognised. The mean reduction divides by the number of non-ignored labels
    (rows, for probability targets), which is also the batch weight.

    Per position, with p = softmax(f) and c the reduction's scale (1/valid labels or 1):
    H = c (diag p − p pᵀ), S = √c (diag √p − p √pᵀ), and sampled gradients √c (p − e_ŷ) with
    ŷ ~ Cat(p); ignored positions are zero. Every method costs O(N·V) for N positions and V
    classes; :meth:`hvp` goes through :func:`~hessian_eigenthings.loss_fns.ce_hvp` with the
    ``fused`` backend (``"auto"`` may compile a kernel on its first call: seconds, once).

    Example:
        Two positions, the second ignored; the sampled gradients' second moment approaches
        the Hessian:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from hessian_eigenthings.loss_fns import CrossEntropyLossOfOutput
        >>> _ = torch.manual_seed(0)
        >>> loss = CrossEntropyLossOfOutput(fused="eager")
        >>> f = torch.randn(2, 3, dtype=torch.float64)
        >>> batch = (None, torch.tensor([2, -100]))
        >>> torch.equal(loss(f, batch), F.cross_entropy(f, batch[1]))
        True
        >>> loss.batch_weight(batch)  # non-ignored labels
        1.0
        >>> p = torch.softmax(f[0], dim=0)
        >>> H0 = torch.diag(p) - torch.outer(p, p)  # c = 1: one valid label
        >>> u = torch.randn(2, 3, dtype=torch.float64)
        >>> Hu = loss.hvp(f, batch, u)
        >>> torch.allclose(Hu[0], H0 @ u[0]), bool((Hu[1] == 0).all())
        (True, True)
        >>> uniforms = torch.rand(20000, *loss.noise_shape(f.shape), dtype=torch.float64)
        >>> g = loss.sample_gradients(f, batch, uniforms)[:, 0]  # (M, 3), position 0
        >>> torch.allclose(g.T @ g / 20000, H0, atol=0.01)
        True
    """

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        class_dim: Literal["last", "torch"] = "last",
        fused: str = "auto",
    ) -> None:
        super().__init__(reduction)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise InvalidArgumentError(f"ignore_index must be an int, got {ignore_index!r}")
        if class_dim not in ("last", "torch"):
            raise InvalidArgumentError(f"class_dim must be 'last' or 'torch', got {class_dim!r}")
        if not isinstance(fused, str):
            raise InvalidArgumentError(f"fused must be a backend name or 'auto', got {fused!r}")
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.class_dim = class_dim
        self.fused = fused

    # -- layout ------------------------------------------------------------------------------

    def _moves(self, ndim: int) -> bool:
        """Whether the class dimension must be moved last (torch layout with ≥ 3 dims)."""
        return self.class_dim == "torch" and ndim > 2

    def _last(self, t: torch.Tensor, lead: int = 0) -> torch.Tensor:
        """Class dimension last (``lead`` extra leading dimensions, e.g. samples)."""
        return t.movedim(lead + 1, -1) if self._moves(t.ndim - lead) else t

    def _back(self, t: torch.Tensor, lead: int = 0) -> torch.Tensor:
        return t.movedim(-1, lead + 1) if self._moves(t.ndim - lead) else t

    def _rows(
        self, logits_last: torch.Tensor, batch: Any
    ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """(labels, ignore_index, keep) over the positions of class-last logits.

        Probability targets count every row: they get zero labels and an index none equals.
        """
        targets = self.targets(batch).to(logits_last.device)
        positions = logits_last.shape[:-1]
        if targets.is_floating_point():
            keep = torch.ones(positions, dtype=torch.bool, device=logits_last.device)
            return torch.zeros(positions, dtype=torch.long, device=keep.device), -1, keep
        if targets.shape != positions:
            raise InvalidArgumentError(
                f"cross-entropy labels must have shape {tuple(positions)} (the logits "
                f"{tuple(self._back(logits_last).shape)} without the class dimension), got "
                f"{tuple(targets.shape)}"
            )
        return targets, self.ignore_index, targets != self.ignore_index

    def _root_scale(self, keep: torch.Tensor) -> float:
        """√c for these rows."""
        return math.sqrt(self._scale(float(keep.sum())))

    # -- the protocol ------------------------------------------------------------------------

    def __call__(self, output: torch.Tensor, batch: Any) -> torch.Tensor:
        targets = self.targets(batch)
        logits, labels = output, targets
        if self.class_dim == "last":
            vocab = output.shape[-1]
            logits = output.reshape(-1, vocab)
            labels = (
                targets.reshape(-1, vocab) if targets.is_floating_point() else targets.reshape(-1)
            )
        return F.cross_entropy(
            logits,
            labels,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def hvp(self, output: torch.Tensor, batch: Any, u: torch.Tensor) -> torch.Tensor:
        _check_like("u", u, output)
        logits = self._last(output.detach())
        labels, ignore, _ = self._rows(logits, batch)
        out = ce_hvp(
            logits,
            self._last(u),
            labels,
            ignore_index=ignore,
            reduction=self.reduction,
            fused=self.fused,
        )
        return self._back(out)

    def hessian_sqrt_matmul(
        self, output: torch.Tensor, batch: Any, x: torch.Tensor, *, transpose: bool = False
    ) -> torch.Tensor:
        _check_like("x", x, output)
        logits = self._last(output.detach())
        _, _, keep = self._rows(logits, batch)
        work = _work_dtype(logits)
        p = torch.softmax(logits.to(work), dim=-1)
        root = p.sqrt()
        xl = self._last(x).to(work)
        if transpose:  # Sᵀ x = √p ⊙ x − √p ⟨p, x⟩
            out = root * xl - root * (p * xl).sum(-1, keepdim=True)
        else:  # S x = √p ⊙ x − p ⟨√p, x⟩
            out = root * xl - p * (root * xl).sum(-1, keepdim=True)
        out = torch.where(keep.unsqueeze(-1), out * self._root_scale(keep), 0.0)
        return self._back(out.to(x.dtype))

    def noise_shape(self, output_shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(output_shape)
        if self._moves(len(shape)):
            return shape[:1] + shape[2:]
        return shape[:-1]

    def sample_gradients(
        self, output: torch.Tensor, batch: Any, uniforms: torch.Tensor
    ) -> torch.Tensor:
        logits = self._last(output.detach())
        positions = tuple(logits.shape[:-1])
        if tuple(uniforms.shape[1:]) != positions:
            raise InvalidArgumentError(
                f"uniforms must have shape (M, {', '.join(map(str, positions))}) (one draw per "
                f"position), got {tuple(uniforms.shape)}"
            )
        _, _, keep = self._rows(logits, batch)
        work = _work_dtype(logits)
        m, vocab = uniforms.shape[0], logits.shape[-1]
        p = torch.softmax(logits.to(work), dim=-1).reshape(-1, vocab)
        cdf = p.cumsum(dim=-1)
        # inverse-CDF sampling of ŷ ~ Cat(p) per row from the (rows, M) uniforms
        u = uniforms.reshape(m, -1).T.to(p.device, work).contiguous()
        drawn = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max_(vocab - 1)
        grads = p.unsqueeze(0).repeat(m, 1, 1)  # (M, rows, V) ← p − e_ŷ
        grads.scatter_add_(-1, drawn.T.unsqueeze(-1), p.new_full((m, p.shape[0], 1), -1.0))
        keep_rows = keep.reshape(1, -1, 1)
        grads = torch.where(keep_rows, grads * self._root_scale(keep), 0.0)
        return self._back(grads.reshape(m, *logits.shape), lead=1).to(output.dtype)

    def batch_weight(self, batch: Any) -> float:
        targets = self.targets(batch)
        if targets.is_floating_point():
            class_axis = -1 if self.class_dim == "last" or targets.ndim < 2 else 1
            return float(targets.numel() // max(targets.shape[class_axis], 1))
        return float((targets != self.ignore_index).sum())

    def __repr__(self) -> str:
        return (
            f"cross_entropy_loss_of_output(ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, class_dim={self.class_dim!r}, fused={self.fused!r})"
        )


# -- factories -------------------------------------------------------------------------------


def cross_entropy_loss_of_output(
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    *,
    label_smoothing: float = 0.0,
    fused: str = "auto",
) -> CrossEntropyLossOfOutput:
    """Cross-entropy ``loss_of_output_fn`` with class dim last and an analytical ``.hvp``.

    Logits (..., V) with labels (...) from ``batch[1]`` (or ``batch["labels"]``); sequence
    logits (B, T, V) with labels (B, T) give the mean over non-ignored tokens, and the batch
    weighs its number of non-ignored tokens. ``fused`` picks the CE-HVP backend.

    Per token H = c (diag p − p pᵀ) with p = softmax(logits) and c = 1/(non-ignored tokens)
    (``"mean"``) or 1 (``"sum"``); every product costs O(B·T·V) (see
    :class:`~hessian_eigenthings.loss_fns.CrossEntropyLossOfOutput`).

    Returns:
        A :class:`~hessian_eigenthings.loss_fns.CrossEntropyLossOfOutput`.

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from hessian_eigenthings.loss_fns import ce_hvp, cross_entropy_loss_of_output
        >>> _ = torch.manual_seed(0)
        >>> loss = cross_entropy_loss_of_output(ignore_index=-100, fused="eager")
        >>> logits = torch.randn(2, 3, 5)  # (B, T, V)
        >>> labels = torch.tensor([[1, 4, -100], [0, -100, -100]])
        >>> batch = {"labels": labels}  # or (inputs, labels)
        >>> torch.allclose(loss(logits, batch), F.cross_entropy(logits.reshape(6, 5),
        ...                                                      labels.reshape(6)))
        True
        >>> loss.batch_weight(batch)  # non-ignored tokens
        3.0
        >>> u = torch.randn(2, 3, 5)
        >>> torch.equal(loss.hvp(logits, batch, u), ce_hvp(logits, u, labels, fused="eager"))
        True
    """
    return CrossEntropyLossOfOutput(
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        fused=fused,
    )


def mse_loss_of_output(reduction: Reduction = "mean") -> MSELossOfOutput:
    """Mean-squared-error ``loss_of_output_fn`` with an analytical ``.hvp`` (2/K · u).

    ℓ = Σ (f − y)² / K over the batch's K output elements (``"mean"``; no division for
    ``"sum"``), so H_ℓ = (2/K)·I; every product costs O(K).

    Returns:
        A :class:`~hessian_eigenthings.loss_fns.MSELossOfOutput`.

    Example:
        >>> import torch
        >>> from hessian_eigenthings.loss_fns import mse_loss_of_output
        >>> loss = mse_loss_of_output("sum")
        >>> loss
        mse_loss_of_output(reduction='sum')
        >>> f, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
        >>> loss(f, (None, y))  # 1² + 2²
        tensor(5.)
        >>> loss.hvp(f, (None, y), torch.tensor([[1.0, -1.0]]))  # H = 2·I
        tensor([[ 2., -2.]])
    """
    return MSELossOfOutput(reduction)


def bce_with_logits_loss_of_output(reduction: Reduction = "mean") -> BCEWithLogitsLossOfOutput:
    """Binary cross-entropy-with-logits ``loss_of_output_fn`` with an analytical ``.hvp``.

    H_ℓ = c·diag(σ(f)(1 − σ(f))) with c = 1/K for the mean over K output elements (1 for
    ``"sum"``), independent of the targets; every product costs O(K).

    Returns:
        A :class:`~hessian_eigenthings.loss_fns.BCEWithLogitsLossOfOutput`.

    Example:
        At logit 0, σ = 1/2 and the curvature is 1/4 per element:

        >>> import torch
        >>> from hessian_eigenthings.loss_fns import bce_with_logits_loss_of_output
        >>> loss = bce_with_logits_loss_of_output("sum")
        >>> f, y = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
        >>> round(float(loss(f, (None, y))), 4)  # 2 · log 2
        1.3863
        >>> loss.hvp(f, (None, y), torch.tensor([[4.0, 8.0]]))
        tensor([[1., 2.]])
    """
    return BCEWithLogitsLossOfOutput(reduction)
