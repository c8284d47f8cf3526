"""The diagonal of the GGN (= type-2 Fisher), exactly or by Monte-Carlo sampling.

With the loss-Hessian square root S (S Sᵀ = H_ℓ, block-diagonal over the samples of a batch),
a batch's GGN is Σ_n Σ_k (J_nᵀ s_{n,k})(J_nᵀ s_{n,k})ᵀ, where J_n is the Jacobian of sample n's
output and s_{n,k} the k-th column of S's block for sample n. Its diagonal is therefore

    diag G_b = Σ_n Σ_k (J_nᵀ s_{n,k})²   (element-wise square),

and the operator's diagonal is the engine's weighted mean s · Σ_b w_b diag G_b / Σ_b w_b (the
same data, batch weights and ``num_total_samples`` as :class:`~.ggn.GGNOperator`; see
:mod:`.model_operator`). Unlike a product, a diagonal needs the squares *per sample*: the
columns of different samples cannot be summed before squaring.

``method="exact"`` — D columns per sample, D = one sample's output size (classes × positions):
    the loss's ``hessian_sqrt_matmul`` applied to one-hot directions gives all samples' k-th
    columns at once; each sample's vector-Jacobian products are taken with
    ``torch.func.vjp`` inside ``vmap`` over the D columns and ``vmap`` over the samples — no
    Python loop over either. Cost ≈ D backward passes of the batch plus a forward; memory
    ≈ N·D parameter-sized per-sample gradients per chunk (bound it with ``microbatch_size``).
``method="mc"`` — M = ``mc_samples`` sampled output gradients g_m (E[g gᵀ] = H_ℓ per sample,
    the Fisher's label sampling), diag ≈ (1/M) Σ_m Σ_n (J_nᵀ g_{m,n})²: unbiased, relative error
    ∝ 1/√M, cost M backward passes instead of D. Draws are fixed by ``seed`` per batch (and do
    not depend on ``microbatch_size``).

A model that cannot be vmapped over its samples (e.g. ``nn.LSTM``) falls back, for the rest of
the call, to one ordinary backward (batched over the columns) per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap
from torch.utils import _pytree as pytree

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.operators._data_pass import Chunk, accumulate_over_data, all_finite
from hessian_eigenthings.operators._jacobian import ModelJacobian
from hessian_eigenthings.operators._loss_columns import (
    McNoise,
    apply_hessian_sqrt,
    check_loss_for,
    onehots_per_sample,
)
from hessian_eigenthings.operators.ggn import ForwardFn, GGNOperator, LossOfOutputFn
from hessian_eigenthings.param_utils import ParamFilter

__all__ = ["ggn_diagonal"]


def ggn_diagonal(
    model: nn.Module,
    dataloader: Any,
    forward_fn: ForwardFn,
    loss_of_output_fn: LossOfOutputFn,
    *,
    method: Literal["exact", "mc"] = "exact",
    mc_samples: int = 1,
    seed: int | torch.Generator | None = None,
    param_filter: ParamFilter | None = None,
    full_dataset: bool = True,
    num_batches: int | None = None,
    microbatch_size: int | None = None,
    num_total_samples: int | None = None,
) -> torch.Tensor:
    """The diagonal of the GGN of the mean loss, an (n,) tensor in the parameters' dtype.

    diag G = s · Σ_b w_b Σ_n Σ_k (J_nᵀ s_{n,k})² / Σ_b w_b (element-wise squares), with J_n the
    Jacobian of sample n's output and s_{n,k} the columns of the loss-Hessian square root
    (see the module docstring); the same matrix as
    :class:`~hessian_eigenthings.operators.GGNOperator`'s diagonal, without n products.

    Cost: ``"exact"`` — a forward and D backward passes per batch (D = one sample's output
    size), memory about N·D per-sample gradients per (micro)batch chunk (bound it with
    ``microbatch_size``); ``"mc"`` — M = ``mc_samples`` backward passes instead of D, unbiased
    with relative error ∝ 1/√M. The first call in a process also pays a one-time import of
    ``torch._dynamo`` (by ``torch.func.vjp`` under ``vmap``), a few seconds.

    Args:
        model: as for :class:`~hessian_eigenthings.operators.ggn.GGNOperator`.
        dataloader: as for :class:`~hessian_eigenthings.operators.ggn.GGNOperator`.
        forward_fn: as for :class:`~hessian_eigenthings.operators.ggn.GGNOperator`; the
            output's dimension 0 must index samples.
        loss_of_output_fn: as for :class:`~hessian_eigenthings.operators.ggn.GGNOperator`,
            carrying the :class:`~hessian_eigenthings.loss_fns.LossOfOutput` protocol
            (``hessian_sqrt_matmul`` for ``"exact"``, ``sample_gradients`` for ``"mc"``), e.g.
            ``cross_entropy_loss_of_output()``.
        method: ``"exact"`` (one backward per output dimension) or ``"mc"`` (``mc_samples``
            sampled gradients per sample).
        mc_samples: gradient draws per sample for ``"mc"``.
        seed: int, CPU generator or ``None``; fixes the ``"mc"`` draws bit for bit.

    The keyword arguments ``param_filter``, ``full_dataset``, ``num_batches``,
    ``microbatch_size`` and ``num_total_samples`` are those of every model operator.

    Returns:
        The (n,) diagonal, in the parameters' dtype and on their device.

    Example:
        For a bias-free linear model under the mean squared error (N samples, K outputs) the
        diagonal is (2 / (N K)) Σ_n x_{n,j}² for every weight W_{k,j}:

        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import mse_loss_of_output, supervised_forward
        >>> from hessian_eigenthings.operators import GGNOperator, ggn_diagonal
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 2, bias=False).double()
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> Y = torch.randn(5, 2, dtype=torch.float64)
        >>> d = ggn_diagonal(model, [(X, Y)], supervised_forward, mse_loss_of_output())
        >>> d.shape
        torch.Size([6])
        >>> torch.allclose(d, 2 / (5 * 2) * X.pow(2).sum(0).repeat(2))
        True
        >>> mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> args = (mlp, [(X, Y)], supervised_forward, mse_loss_of_output())
        >>> torch.allclose(ggn_diagonal(*args), GGNOperator(*args).to_dense().diagonal())
        True
    """
    if method not in ("exact", "mc"):
        raise InvalidArgumentError(f"method must be 'exact' or 'mc', got {method!r}")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise InvalidArgumentError(f"mc_samples must be a positive int, got {mc_samples!r}")
    check_loss_for(loss_of_output_fn, "type-2" if method == "exact" else "mc", "ggn_diagonal")
    engine = GGNOperator(
        model,
        dataloader,
        forward_fn,
        loss_of_output_fn,
        param_filter=param_filter,
        full_dataset=full_dataset,
        num_batches=num_batches,
        microbatch_size=microbatch_size,
        num_total_samples=num_total_samples,
    )
    jac = engine.jacobian
    noise = McNoise(seed) if method == "mc" else None
    acc = [torch.zeros_like(p, dtype=engine._accumulate_dtype()) for p in engine.params]
    vmap_ok = [True]

    def visit(chunk: Chunk) -> None:
        with torch.no_grad():
            z = jac.check_output(forward_fn(engine.model, chunk.batch))
        if z.ndim == 0 or z.shape[0] != chunk.stop - chunk.start:
            raise InvalidArgumentError(
                f"ggn_diagonal needs forward_fn's output to hold the batch's "
                f"{chunk.stop - chunk.start} samples on dimension 0, got shape {tuple(z.shape)} "
                f"for batch {chunk.index}"
            )
        if noise is None:
            X = apply_hessian_sqrt(loss_of_output_fn, z, chunk.batch, onehots_per_sample(z))
        else:
            X = noise.gradients(loss_of_output_fn, z, chunk, mc_samples)
        squares = _per_sample_squares(jac, chunk.batch, X.to(z.dtype), vmap_ok)
        for a, s in zip(acc, squares, strict=True):
            a.add_(s.to(a.dtype), alpha=chunk.weight)

    def finite() -> bool:
        return all_finite(acc)

    total = accumulate_over_data(engine, visit, finite=finite)
    scale = (engine.num_total_samples or 1) / total
    return torch.cat([a.reshape(-1) for a in acc]).mul_(scale).to(engine.dtype)


def _per_sample_squares(
    jac: ModelJacobian, batch: Any, X: torch.Tensor, vmap_ok: list[bool]
) -> list[torch.Tensor]:
    """Σ_n Σ_k (J_nᵀ X[k, n])², per parameter, for the (K, N, ...) columns ``X``."""
    if vmap_ok[0]:
        try:
            return _vmapped_squares(jac, batch, X)
        except (RuntimeError, NotImplementedError, ValueError) as err:
            # vmap failures do not always say so (nn.LSTM reports a shape mismatch): fall back,
            # and let the per-sample loop raise again if the error is the model's own
            if isinstance(err, (InvalidArgumentError, torch.OutOfMemoryError)):
                raise
            vmap_ok[0] = False
    return _looped_squares(jac, batch, X)


def _split_leaves(batch: Any, n: int) -> tuple[list[Any], Any, list[bool]]:
    leaves, spec = pytree.tree_flatten(batch)
    split = [isinstance(t, torch.Tensor) and t.ndim > 0 and t.shape[0] == n for t in leaves]
    return leaves, spec, split


def _vmapped_squares(jac: ModelJacobian, batch: Any, X: torch.Tensor) -> list[torch.Tensor]:
    n = X.shape[1]
    leaves, spec, split = _split_leaves(batch, n)
    per_sample = [t for t, s in zip(leaves, split, strict=True) if s]
    primals = tuple(p.detach() for p in jac.params)

    def one(params: tuple[torch.Tensor, ...], rows: list[torch.Tensor], cols: torch.Tensor) -> Any:
        it = iter(rows)
        single = [next(it).unsqueeze(0) if s else t for t, s in zip(leaves, split, strict=True)]
        sample = pytree.tree_unflatten(single, spec)

        def out_of(p: tuple[torch.Tensor, ...]) -> torch.Tensor:
            swapped = dict(zip(jac.keys, p, strict=True))
            return jac.check_output(functional_call(jac.module, swapped, (sample,)))[0]

        pullback = vjp(out_of, params)[1]
        (grads,) = vmap(pullback)(cols)
        return tuple(g.square().sum(0) for g in grads)

    with torch.no_grad():
        squares = vmap(one, in_dims=(None, 0, 1))(primals, per_sample, X)
    return [s.sum(0) for s in squares]


def _looped_squares(jac: ModelJacobian, batch: Any, X: torch.Tensor) -> list[torch.Tensor]:
    """The fallback for models vmap cannot batch: one backward (over K columns) per sample."""
    n = X.shape[1]
    leaves, spec, split = _split_leaves(batch, n)
    out = [torch.zeros_like(p) for p in jac.params]
    for i in range(n):
        single = [t[i : i + 1] if s else t for t, s in zip(leaves, split, strict=True)]
        sample = pytree.tree_unflatten(single, spec)
        with torch.enable_grad():
            z = jac.output(sample)
            blocks: Sequence[torch.Tensor | None] = jac.vjp(z, X[:, i : i + 1])
        for o, b in zip(out, blocks, strict=True):
            if b is not None:
                o.add_(b.detach().square().sum(0))
    return out
