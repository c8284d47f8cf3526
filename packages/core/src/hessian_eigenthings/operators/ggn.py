"""The generalized Gauss-Newton matrix of the dataset-mean loss.

For a batch with model output f = forward_fn(model, batch) and loss ℓ(f) =
loss_of_output_fn(f, batch),

    G_b = J_bᵀ H_ℓ J_b,   J_b = ∂f/∂θ,   H_ℓ = ∇²_f ℓ,

and the operator is the engine's weighted mean s · Σ_b w_b G_b / Σ_b w_b (see
:mod:`.model_operator`). G is the Hessian with the second derivatives of the model dropped:
positive semi-definite whenever H_ℓ is (convex losses), equal to the Hessian for a model linear
in θ, and equal to the true Fisher for cross-entropy, MSE and BCE-with-logits
(:class:`~hessian_eigenthings.operators.fisher.FisherOperator`).

One product per batch (see :mod:`._jacobian`): J V exactly by forward-mode AD (never finite
differences), H_ℓ (J V) in output space, then Jᵀ(·) by one forward with graph and one backward.
The loss-Hessian product comes from (``loss_hvp``):

``"analytical"`` (default) — the loss's closed form, ``loss_of_output_fn.hvp(output, batch,
    u)``, carried by the helpers (``cross_entropy_loss_of_output``, ``mse_loss_of_output``,
    ``bce_with_logits_loss_of_output``, ``supervised_loss_of_output`` of a torch criterion, the
    HF and TLens helpers). O(output) time, no graph through the loss; for cross-entropy the fused
    CE-HVP backends keep it to one (N, V) buffer. A loss without ``.hvp`` (a custom loss) falls
    back to ``"autograd"``; :attr:`GGNOperator.effective_loss_hvp` says which is used.
``"autograd"`` — any twice-differentiable loss: a ``create_graph`` gradient of ℓ with respect
    to the (detached) output, differentiated once more per direction. Memory: the loss's graph
    twice over, which for a large-vocabulary softmax is several (N, V) tensors.

Cost per product (measured on CPU, ``benchmarks/bench_operators.py``): about 2–2.3× a gradient
with peak memory about one training step's (``jvp="separate"``, the default), or 1.5–2.1× a
gradient with up to ~2.7× its memory (``jvp="shared"``, which records the backward graph during
the forward-mode pass). For m directions (``matmat``) one graph forward is shared and the
forward-mode pass and the backward run once per direction.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias, cast

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend
from hessian_eigenthings.operators._jacobian import ModelFunction
from hessian_eigenthings.operators._sandwich import JvpPass, SandwichOperator, check_callable
from hessian_eigenthings.operators.batching import resolve_batch_weight
from hessian_eigenthings.param_utils import ParamFilter

__all__ = ["ForwardFn", "GGNOperator", "LossHvp", "LossOfOutputFn", "loss_hessian_matmat"]

#: ``forward_fn(model, batch) -> output``
ForwardFn: TypeAlias = ModelFunction
#: ``loss_of_output_fn(output, batch) -> 0-d tensor``
LossOfOutputFn: TypeAlias = Any
LossHvp: TypeAlias = Literal["analytical", "autograd"]


def loss_hessian_matmat(
    loss_of_output_fn: Any, z: torch.Tensor, batch: Any, U: torch.Tensor, batch_index: int
) -> torch.Tensor:
    """H_ℓ U[j] by double backward of ``loss_of_output_fn`` at the output ``z``."""
    zg = z.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_of_output_fn(zg, batch)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InvalidArgumentError(
                f"loss_of_output_fn must return a scalar tensor (the batch's mean loss); got "
                f"{shape} for batch {batch_index} — reduce it with .mean()"
            )
        if not loss.requires_grad:  # constant in the output
            return torch.zeros_like(U)
        (g,) = torch.autograd.grad(loss, zg, create_graph=True)
    if not g.requires_grad:  # linear in the output: zero Hessian
        return torch.zeros_like(U)
    cols = [
        torch.autograd.grad(g, zg, u, retain_graph=j < len(U) - 1, allow_unused=True)[0]
        for j, u in enumerate(U)
    ]
    return torch.stack([torch.zeros_like(z) if c is None else c for c in cols])


class GGNOperator(SandwichOperator):
    """Generalized Gauss-Newton matrix Jᵀ H_ℓ J of the mean loss over the dataloader.

    G = s · Σ_b w_b J_bᵀ H_ℓ,b J_b / Σ_b w_b, with J_b the Jacobian of batch b's output with
    respect to the selected parameters and H_ℓ,b the loss's Hessian in output space. G is
    positive semi-definite for convex losses and equals the Hessian when the model is linear
    in θ (see the module docstring).

    Cost per product and batch: a forward-mode pass for J V, the O(output) loss-Hessian
    product (``"analytical"``), then a forward with graph and a backward for Jᵀ(·) — about
    2–2.3× a gradient with ``jvp="separate"``, at a training step's peak memory;
    ``jvp="shared"`` saves the extra forward for up to ~2.7× a gradient's memory.

    Args:
        model: the model; its selected parameters span the operator's vector space.
        dataloader: an iterable of batches (re-iterated for every product).
        forward_fn: ``forward_fn(model, batch) -> output`` (e.g.
            :func:`~hessian_eigenthings.loss_fns.supervised_forward`).
        loss_of_output_fn: ``loss_of_output_fn(output, batch) -> scalar``, the batch's mean
            loss. With a ``.hvp(output, batch, u)`` attribute the analytical path is used; a
            ``batch_weight(batch)`` attribute (on it or on ``forward_fn``) sets the batch
            weights (e.g. valid tokens), otherwise batches weigh their number of samples.
        loss_hvp: ``"analytical"`` (default; falls back to autograd for a loss without
            ``.hvp``) or ``"autograd"``; see the module docstring.
        jvp: ``"separate"`` (default: J V by its own no-grad forward-mode pass; peak memory
            of a training step) or ``"shared"`` (that pass also records the graph for Jᵀ: one
            forward less per product, but up to ~2.7× a gradient's memory).

    The keyword arguments ``param_filter``, ``full_dataset``, ``num_batches``,
    ``microbatch_size``, ``num_total_samples``, ``backend``, ``process_group`` and
    ``reuse_graph`` are those of every model operator
    (:class:`~hessian_eigenthings.operators.model_operator.ModelCurvatureOperator`).

    Example:
        For a bias-free linear model under the mean squared error the GGN equals the Hessian,
        the closed form (2 / (N K)) · I_K ⊗ XᵀX for N samples and K outputs; for a network with
        a nonlinearity it is still positive semi-definite:

        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import mse_loss_of_output, supervised_forward
        >>> from hessian_eigenthings.operators import GGNOperator
        >>> _ = torch.manual_seed(0)
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> Y = torch.randn(5, 2, dtype=torch.float64)
        >>> linear = nn.Linear(3, 2, bias=False).double()
        >>> G = GGNOperator(linear, [(X, Y)], supervised_forward, mse_loss_of_output())
        >>> G.size, G.effective_loss_hvp
        (6, 'analytical')
        >>> closed_form = 2 / (5 * 2) * torch.kron(torch.eye(2, dtype=torch.float64), X.T @ X)
        >>> torch.allclose(G.to_dense(), closed_form)
        True
        >>> mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> G2 = GGNOperator(mlp, [(X, Y)], supervised_forward, mse_loss_of_output())
        >>> G2.size  # 3·4 + 4 + 4·2 + 2
        26
        >>> bool(torch.linalg.eigvalsh(G2.to_dense()).min() > -1e-12)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        dataloader: Any,
        forward_fn: ForwardFn,
        loss_of_output_fn: LossOfOutputFn,
        *,
        loss_hvp: LossHvp = "analytical",
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
        if loss_hvp not in ("analytical", "autograd"):
            raise InvalidArgumentError(
                f"loss_hvp must be 'analytical' (closed-form loss Hessian, falling back to "
                f"autograd for losses without .hvp) or 'autograd', got {loss_hvp!r}"
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
        self.loss_hvp: LossHvp = loss_hvp
        has_hvp = callable(getattr(loss_of_output_fn, "hvp", None))
        #: the loss-Hessian path in use: ``"analytical"`` only if asked for and available
        self.effective_loss_hvp: LossHvp = (
            "analytical" if loss_hvp == "analytical" and has_hvp else "autograd"
        )
        self.weight_fn = resolve_batch_weight(loss_of_output_fn, forward_fn)

    def output_matmat(self, z: torch.Tensor, batch: Any, U: torch.Tensor) -> torch.Tensor:
        if self.effective_loss_hvp == "autograd":
            return loss_hessian_matmat(self.loss_of_output_fn, z, batch, U, self.batch_index)
        hvp = self.loss_of_output_fn.hvp
        return torch.stack([cast(torch.Tensor, hvp(z, batch, u)) for u in U])
