"""The true Fisher information of the model's predictive distribution.

When ℓ(f, y) = −log p(y | f) is a negative log-likelihood of the model output f, the Fisher of
a batch is the expected outer product of the score over labels drawn from the model itself,

    F_b = J_bᵀ E_{ŷ ~ p(·|f)}[∇_f ℓ(f, ŷ) ∇_f ℓ(f, ŷ)ᵀ] J_b = J_bᵀ H_ℓ J_b,

the last step holding for cross-entropy, MSE (Gaussian likelihood) and BCE-with-logits, whose
output Hessians do not depend on the label. The operator is the engine's weighted mean over
batches, like the GGN. Two ways to compute it (``fisher_type``):

``"type-2"`` (default) — exact, through the loss-Hessian square root S (S Sᵀ = H_ℓ, see
    :mod:`hessian_eigenthings.loss_fns.loss_of_output`): F_b V = Jᵀ S (Sᵀ (J V)). Because
    S Sᵀ = H_ℓ this *is* the GGN of the same loss (:class:`~.ggn.GGNOperator`, which for
    cross-entropy uses the fused CE-HVP backends and is the faster route to the same matrix);
    the two are computed independently and agree to rounding.
``"mc"`` — the Monte-Carlo Fisher: M = ``mc_samples`` label draws ŷ_m per sample from the
    model's predictive distribution (categorical for cross-entropy, Gaussian for MSE, Bernoulli
    for BCE) give output gradients g_m scaled so that E[g_m gₘᵀ] = H_ℓ blockwise, and

        F̂_b V = Jᵀ Σᵢ (1/M) Σ_m g_{m,i} (g_{m,i}ᵀ (J V)_i)

    with i running over the samples of the batch (index i of the output's dimension 0; the
    outer products are per sample, so samples do not interfere). Its error decreases like
    1/√M. The draws are fixed for the operator's lifetime — it is one matrix, so Lanczos and
    friends work: batch b's uniform draws come from a CPU generator seeded from ``seed`` and b,
    drawn for the whole batch (so ``microbatch_size`` does not change them) and regenerated
    bit for bit whenever the batch comes round again (only the current batch's draws are
    kept: M × the batch's output size without the class dimension, in float64).

Cost: like the GGN, about 2× a gradient per product plus O(M · output size) for the samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, TypeAlias

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend, make_generator
from hessian_eigenthings.operators._jacobian import Linearization
from hessian_eigenthings.operators._sandwich import JvpPass, SandwichOperator, check_callable
from hessian_eigenthings.operators.batching import batch_leading_size, resolve_batch_weight
from hessian_eigenthings.operators.ggn import ForwardFn, LossOfOutputFn
from hessian_eigenthings.operators.model_operator import ProductSink
from hessian_eigenthings.param_utils import ParamFilter

__all__ = ["FisherOperator", "FisherType"]

FisherType: TypeAlias = Literal["type-2", "mc"]

_NEEDS = {
    "type-2": ("hessian_sqrt_matmul",),
    "mc": ("noise_shape", "sample_gradients"),
}
_GOLDEN = 0x9E3779B97F4A7C15  # spreads the per-batch seeds over the seed space


class FisherOperator(SandwichOperator):
    """True Fisher information Jᵀ E[g gᵀ] J of the model's predictive distribution.

    F = s · Σ_b w_b J_bᵀ E_ŷ[g gᵀ] J_b / Σ_b w_b, with g = ∇_f ℓ(f, ŷ) the output gradient at
    labels ŷ drawn from the model's own predictive distribution. For cross-entropy, MSE and
    BCE-with-logits E[g gᵀ] = H_ℓ, so the exact (``"type-2"``) Fisher equals the GGN; ``"mc"``
    replaces the expectation by ``mc_samples`` fixed draws per sample (error ∝ 1/√M).

    Cost per product and batch: as the GGN's — a forward-mode pass for J V, O(output) work in
    output space (two square-root products for ``"type-2"``, O(M · output) for ``"mc"``) and a
    forward and backward for Jᵀ(·), about 2× a gradient; memory a training step's
    (``jvp="separate"``) plus, for ``"mc"``, the batch's M draws.

    Args:
        model: the model; its selected parameters span the operator's vector space.
        dataloader: an iterable of batches (re-iterated for every product).
        forward_fn: ``forward_fn(model, batch) -> output``.
        loss_of_output_fn: the negative log-likelihood as a loss of the output, carrying the
            Fisher methods of :class:`~hessian_eigenthings.loss_fns.LossOfOutput`:
            :func:`~hessian_eigenthings.loss_fns.cross_entropy_loss_of_output`,
            :func:`~hessian_eigenthings.loss_fns.mse_loss_of_output`,
            :func:`~hessian_eigenthings.loss_fns.bce_with_logits_loss_of_output`, or
            :func:`~hessian_eigenthings.loss_fns.supervised_loss_of_output` of the matching
            torch criterion.
        fisher_type: ``"type-2"`` (exact, default) or ``"mc"`` (sampled labels).
        mc_samples: label draws per sample for ``"mc"``.
        seed: an int, a CPU ``torch.Generator`` (one draw is taken from it here) or ``None``
            (fresh randomness); fixes the ``"mc"`` draws bit for bit.
        jvp: ``"separate"`` (default: J V by its own no-grad forward-mode pass; peak memory
            of a training step) or ``"shared"`` (that pass also records the graph for Jᵀ: one
            forward less per product, but up to ~2.7× a gradient's memory).

    The keyword arguments ``param_filter``, ``full_dataset``, ``num_batches``,
    ``microbatch_size``, ``num_total_samples``, ``backend``, ``process_group`` and
    ``reuse_graph`` are those of every model operator
    (:class:`~hessian_eigenthings.operators.model_operator.ModelCurvatureOperator`).

    Example:
        Under the mean squared error the exact Fisher is the GGN; the Monte-Carlo Fisher is one
        fixed matrix per seed whose error shrinks like 1/√M:

        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import mse_loss_of_output, supervised_forward
        >>> from hessian_eigenthings.operators import FisherOperator, GGNOperator
        >>> _ = torch.manual_seed(0)
        >>> X = torch.randn(8, 3, dtype=torch.float64)
        >>> Y = torch.randn(8, 2, dtype=torch.float64)
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> data, mse = [(X, Y)], mse_loss_of_output()
        >>> fisher = FisherOperator(model, data, supervised_forward, mse)
        >>> ggn = GGNOperator(model, data, supervised_forward, mse).to_dense()
        >>> torch.allclose(fisher.to_dense(), ggn)
        True
        >>> def mc_error(m):
        ...     mc = FisherOperator(model, data, supervised_forward, mse, fisher_type="mc",
        ...                         mc_samples=m, seed=0)
        ...     return float(torch.linalg.norm(mc.to_dense() - ggn) / torch.linalg.norm(ggn))
        >>> mc_error(16) == mc_error(16)  # the same seed gives the same draws, bit for bit
        True
        >>> mc_error(1024) < mc_error(16) / 4  # 64× the samples: ~8× smaller error
        True
    """

    def __init__(
        self,
        model: nn.Module,
        dataloader: Any,
        forward_fn: ForwardFn,
        loss_of_output_fn: LossOfOutputFn,
        *,
        fisher_type: FisherType = "type-2",
        mc_samples: int = 1,
        seed: int | torch.Generator | None = None,
        param_filter: ParamFilter | None = None,
        full_dataset: bool = True,
        num_batches: int | None = None,
        microbatch_size: int | None = None,
        num_total_samples: int | None = None,
        backend: LinAlgBackend | None = None,
        process_group: Any = None,
        jvp: JvpPass = "separate",
        reuse_graph: bool = False,
    ) -> None:
        check_callable(forward_fn, "forward_fn", "forward_fn(model, batch) -> output tensor")
        check_callable(
            loss_of_output_fn, "loss_of_output_fn", "loss_of_output_fn(output, batch) -> scalar"
        )
        if fisher_type not in _NEEDS:
            raise InvalidArgumentError(
                f"fisher_type must be 'type-2' (exact) or 'mc' (sampled labels), got "
                f"{fisher_type!r} (the empirical Fisher, with the observed labels, is "
                "EmpiricalFisherOperator)"
            )
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise InvalidArgumentError(f"mc_samples must be a positive int, got {mc_samples!r}")
        needs = _NEEDS[fisher_type]
        missing = [a for a in needs if not callable(getattr(loss_of_output_fn, a, None))]
        if missing:
            raise InvalidArgumentError(
                f"fisher_type={fisher_type!r} needs a likelihood loss carrying {', '.join(missing)}"
                " — the true Fisher is defined for cross-entropy, MSE and BCE-with-logits: use "
                "cross_entropy_loss_of_output(), mse_loss_of_output(), "
                "bce_with_logits_loss_of_output() or supervised_loss_of_output(<torch "
                "criterion>). For another loss use GGNOperator."
            )
        super().__init__(
            model,
            dataloader,
            forward_fn,
            "forward_fn",
            param_filter=param_filter,
            full_dataset=full_dataset,
            num_batches=num_batches,
            microbatch_size=microbatch_size,
            num_total_samples=num_total_samples,
            backend=backend,
            process_group=process_group,
            reuse_graph=reuse_graph,
            jvp=jvp,
        )
        self.forward_fn = forward_fn
        self.loss_of_output_fn = loss_of_output_fn
        self.fisher_type: FisherType = fisher_type
        self.mc_samples = mc_samples
        self.weight_fn = resolve_batch_weight(loss_of_output_fn, forward_fn)
        gen = make_generator(seed)
        self._base_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        self._rows: torch.Tensor | None = None
        self._total = 0
        self._index = 0
        self._noise: tuple[int, torch.Tensor] | None = None  # (batch index, uniforms)

    # -- batches carry their index and row numbers (MC only) -----------------------------------

    def iter_batches(self) -> Iterator[Any]:
        for batch in super().iter_batches():
            if self.fisher_type != "mc":
                yield batch
                continue
            # (index, size, row numbers, batch): the engine's microbatch split slices the row
            # numbers along with the batch, so each chunk knows which draws are its own
            n = batch_leading_size(batch)
            yield (torch.tensor(self.batch_index), torch.tensor(n), torch.arange(n), batch)

    def batch_weight(self, batch: Any) -> float:
        return super().batch_weight(batch[3] if self.fisher_type == "mc" else batch)

    def _inner(self, batch: Any) -> Any:
        """The model's batch (MC: unwrapped, with its index and rows noted for the draws)."""
        if self.fisher_type != "mc":
            return batch
        index, n, rows, inner = batch
        self._rows = rows
        self._total = int(n)
        self._index = int(index)
        return inner

    def batch_cotangents(
        self, batch: Any, V: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return super().batch_cotangents(self._inner(batch), V)
        finally:
            self._rows = None  # this chunk's; nothing of a product outlives it

    def batch_linearize(self, batch: Any) -> Linearization:
        return super().batch_linearize(self._inner(batch))

    def linearized_accumulate(
        self, lin: Linearization, batch: Any, V: Sequence[torch.Tensor], sink: ProductSink
    ) -> None:
        try:
            super().linearized_accumulate(lin, self._inner(batch), V, sink)
        finally:
            self._rows = None

    # -- output space ----------------------------------------------------------------------------

    def output_matmat(self, z: torch.Tensor, batch: Any, U: torch.Tensor) -> torch.Tensor:
        loss = self.loss_of_output_fn
        if self.fisher_type == "type-2":
            sqrt = loss.hessian_sqrt_matmul
            return torch.stack([sqrt(z, batch, sqrt(z, batch, u, transpose=True)) for u in U])
        g = loss.sample_gradients(z, batch, self._uniforms(z))  # (M, *z.shape)
        k, m, n = U.shape[0], g.shape[0], z.shape[0]
        gf = g.reshape(m, n, -1).to(U.dtype)
        coeff = torch.einsum("mnr,knr->kmn", gf, U.reshape(k, n, -1))  # gₘᵢᵀ (J v)ᵢ
        out: torch.Tensor = torch.einsum("kmn,mnr->knr", coeff, gf)
        return out.reshape(U.shape).div(m)

    def _uniforms(self, z: torch.Tensor) -> torch.Tensor:
        """This chunk's rows of its batch's (M, N, ...) uniform draws."""
        rows = self._rows
        assert rows is not None
        shape = tuple(self.loss_of_output_fn.noise_shape(z.shape))
        if not shape or shape[0] != rows.numel():
            raise InvalidArgumentError(
                f"the MC Fisher samples labels per sample: forward_fn's output must have the "
                f"batch's {rows.numel()} samples on dimension 0, got output shape "
                f"{tuple(z.shape)} for batch {self._index}"
            )
        full = (self.mc_samples, self._total, *shape[1:])
        if self._noise is None or self._noise[0] != self._index or self._noise[1].shape != full:
            seed = (self._base_seed + _GOLDEN * (self._index + 1)) % 2**63
            gen = torch.Generator().manual_seed(seed)
            self._noise = (self._index, torch.rand(full, generator=gen, dtype=torch.float64))
        return self._noise[1][:, rows].to(z.device)
