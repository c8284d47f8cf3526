"""Output-space columns whose outer products stand for the loss Hessian (KFAC, GGN diagonal).

The GGN of a batch is Jᵀ H_ℓ J. Writing H_ℓ (or an estimate of it) as Σ_k x_k x_kᵀ turns every
Gauss-Newton statistic into back-propagated columns Jᵀ x_k. The ``fisher_type`` decides the
columns, all built from the :class:`~hessian_eigenthings.loss_fns.LossOfOutput` protocol:

``"type-2"``  x_k = S e_k, columns of the loss-Hessian square root (S Sᵀ = H_ℓ): exact.
``"mc"``      x_m = g_m / √M, the loss's sampled output gradients (E[g gᵀ] = H_ℓ per sample).
``"empirical"`` one column, ∇_f ℓ / √c with the observed targets: the gradient of the *sum* of
              the loss's terms times √c (c = 1/w for the mean reduction over w terms, 1 for the
              sum), i.e. scaled exactly like the sampled gradients, so that its outer product
              replaces H_ℓ the way the MC samples do.
``"forward-only"`` no columns (KFAC then uses an identity gradient factor).

Because S, H_ℓ and the sampled gradients are block-diagonal over the samples of a batch,
one-hot directions repeated in every sample give every sample's columns in one tensor.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeAlias

import torch

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.operators._data_pass import Chunk
from hessian_eigenthings.operators._jacobian import is_vmap_failure

__all__ = [
    "FISHER_TYPES",
    "FisherType",
    "McNoise",
    "apply_hessian_sqrt",
    "check_loss_for",
    "empirical_column",
    "onehots_along",
    "onehots_per_sample",
    "position_axis",
]

FisherType: TypeAlias = Literal["type-2", "mc", "empirical", "forward-only"]
FISHER_TYPES: tuple[str, ...] = ("type-2", "mc", "empirical", "forward-only")

_NEEDS: dict[str, tuple[str, ...]] = {
    "type-2": ("hessian_sqrt_matmul",),
    "mc": ("noise_shape", "sample_gradients"),
    "empirical": (),
    "forward-only": (),
}
_GOLDEN = 0x9E3779B97F4A7C15  # spreads the per-batch seeds over the seed space


def check_loss_for(loss: Any, fisher_type: str, what: str) -> None:
    """Raise unless ``loss`` carries what ``fisher_type`` needs (``what`` names the caller)."""
    missing = [a for a in _NEEDS[fisher_type] if not callable(getattr(loss, a, None))]
    if missing:
        raise InvalidArgumentError(
            f"{what} with fisher_type={fisher_type!r} needs a loss_of_output_fn carrying "
            f"{', '.join(missing)} (the LossOfOutput protocol): use cross_entropy_loss_of_output()"
            ", mse_loss_of_output(), bce_with_logits_loss_of_output() or "
            "supervised_loss_of_output(<torch criterion>); a plain loss callable only supports "
            "fisher_type='empirical' and 'forward-only'"
        )


def position_axis(loss: Any, output: torch.Tensor) -> int | None:
    """The axis holding one position's outputs (classes for cross-entropy, the last axis for
    element-wise losses); ``None`` when the output has no axis besides the samples."""
    if getattr(loss, "class_dim", None) == "torch" and output.ndim > 2:
        return 1
    return output.ndim - 1 if output.ndim >= 2 else None


def onehots_along(output: torch.Tensor, axis: int | None) -> torch.Tensor:
    """(C, *output.shape): direction c is 1 at index c of ``axis`` in every position.

    With ``axis=None`` a single all-ones direction.
    """
    if axis is None:
        return torch.ones_like(output).unsqueeze(0)
    c = output.shape[axis]
    shape = [1] * output.ndim
    shape[axis] = c
    eye = torch.eye(c, dtype=output.dtype, device=output.device)
    return eye.reshape(c, *shape).expand(c, *output.shape).contiguous()


def onehots_per_sample(output: torch.Tensor) -> torch.Tensor:
    """(D, *output.shape) with D = one sample's output size: direction d is 1 at element d of
    every sample (dimension 0 of ``output`` holds the samples)."""
    n, inner = output.shape[0], output.shape[1:]
    d = inner.numel()
    eye = torch.eye(d, dtype=output.dtype, device=output.device)
    return eye.reshape(d, 1, *inner).expand(d, n, *inner).contiguous()


def apply_hessian_sqrt(
    loss: Any, output: torch.Tensor, batch: Any, directions: torch.Tensor
) -> torch.Tensor:
    """S x for each of the (K, *output.shape) ``directions`` (vmapped; a loop if vmap fails)."""
    z = output.detach()

    def one(x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = loss.hessian_sqrt_matmul(z, batch, x)
        return out

    try:
        out: torch.Tensor = torch.vmap(one)(directions)
        return out
    except (RuntimeError, NotImplementedError) as err:
        if not is_vmap_failure(err):
            raise
    return torch.stack([one(x) for x in directions])


def empirical_column(loss: Any, output: torch.Tensor, batch: Any, weight: float) -> torch.Tensor:
    """(1, *output.shape): ∇_f ℓ at the observed targets, times √w for a mean reduction."""
    z = output.detach().requires_grad_(True)
    with torch.enable_grad():
        value = loss(z, batch)
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            raise InvalidArgumentError(
                "loss_of_output_fn must return a scalar tensor (the batch's mean loss); "
                "reduce it with .mean()"
            )
        if not value.requires_grad:
            return torch.zeros_like(z).unsqueeze(0)
        (g,) = torch.autograd.grad(value, z)
    scale = 1.0 if getattr(loss, "reduction", "mean") == "sum" else math.sqrt(weight)
    return (g * scale).unsqueeze(0)


class McNoise:
    """Uniform draws for Monte-Carlo output gradients, fixed per batch.

    Batch b's (M, N_b, ...) draws come from a CPU generator seeded from the base seed and b,
    drawn for the whole batch so that microbatch chunks slice the same draws.
    """

    def __init__(self, seed: int | torch.Generator | None) -> None:
        from hessian_eigenthings.linalg import make_generator

        gen = make_generator(seed)
        self.base_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        self._cache: tuple[int, torch.Tensor] | None = None

    def gradients(
        self, loss: Any, output: torch.Tensor, chunk: Chunk, mc_samples: int
    ) -> torch.Tensor:
        """(M, *output.shape) sampled output gradients divided by √M, for this chunk."""
        z = output.detach()
        shape = tuple(loss.noise_shape(z.shape))
        rows = chunk.stop - chunk.start
        if not shape or shape[0] != rows:
            raise InvalidArgumentError(
                "Monte-Carlo sampling draws labels per sample: forward_fn's output must have the "
                f"batch's {rows} samples on dimension 0, got output shape {tuple(z.shape)} for "
                f"batch {chunk.index}"
            )
        full = (mc_samples, chunk.batch_size, *shape[1:])
        if self._cache is None or self._cache[0] != chunk.index or self._cache[1].shape != full:
            seed = (self.base_seed + _GOLDEN * (chunk.index + 1)) % 2**63
            gen = torch.Generator().manual_seed(seed)
            self._cache = (chunk.index, torch.rand(full, generator=gen, dtype=torch.float64))
        uniforms = self._cache[1][:, chunk.start : chunk.stop].to(z.device)
        g: torch.Tensor = loss.sample_gradients(z, chunk.batch, uniforms)
        return g / math.sqrt(mc_samples)
