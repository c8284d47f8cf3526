"""KFAC and EKFAC: Kronecker-factored approximations of the GGN / Fisher of the mean loss.

KFAC (Martens & Grosse 2015; convolutions: Grosse & Martens 2016; weight sharing: Eschenhagen
et al. 2023) keeps one diagonal block per layer and approximates it by a Kronecker product,

    F_layer ≈ G ⊗ A,   acting on a direction M shaped like the layer's (d_out, d_in) weight as
    (G ⊗ A) vec(M) = vec(G M A)   (row-major vec, as PyTorch flattens parameters).

See :mod:`.kfac_factors` for the layers, the bias handling and the expand/reduce rows. Over the
operator's batches b (weights w_b as for every model operator, see :mod:`.model_operator`;
s = ``num_total_samples`` or 1) the factors are

    A = Σ_rows a aᵀ / (number of rows)           — the mean over every input row of the data,
    G = (s / Σ_b w_b) Σ_b w_b Σ_k Σ_rows g_k g_kᵀ,

where g_k are the output gradients of batch b's loss ℓ_b back-propagated from the columns x_k
of ``fisher_type`` (:mod:`._loss_columns`): the columns of the loss-Hessian square root
(``"type-2"``), M sampled gradients / √M (``"mc"``), the scaled gradient at the observed targets
(``"empirical"``), or none with G = I (``"forward-only"``, Benzing 2022). G carries the batch
weights, so a short last batch does not bias it, and A the row counts, so it does not depend on
the batching either; ``microbatch_size`` changes neither.

Why this normalisation: if every row shares the same output-gradient covariance Σ_k g gᵀ = Γ
(a single linear layer under MSE, without weight sharing), the exact block is Σ_rows Γ ⊗ a aᵀ
scaled by the batch weights, and G ⊗ A above equals it exactly, for any batching.

For the torch losses (through the :class:`~hessian_eigenthings.loss_fns.LossOfOutput` helpers)
these are the factors of curvlinops' ``KFACLinearOperator``; curvlinops weighs every sample
equally where we use the loss's batch weights (e.g. valid tokens), which coincide when each
sample carries the same number of loss terms.

The factors are computed lazily, by one pass over the data (a forward, then one batched backward
of the columns to the layer outputs; forward hooks record the layer inputs and outputs), at the
first product or call of :meth:`KFACOperator.compute_factors`; they are then cached — rebuild the
operator (or call ``compute_factors()``) when the model changes. The model's ``.grad`` fields
and train/eval flags are restored and the hooks removed, also if the loss raises.

EKFAC (George et al. 2018) keeps KFAC's eigenbasis Q_G ⊗ Q_A and re-fits the eigenvalues to
the second moments of the per-sample gradients in that basis, one more pass over the data:

    Λ_ij = (s / Σ_b w_b) Σ_b w_b Σ_k Σ_n ((Q_Gᵀ P_{k,n} Q_A)_ij)²,
    P_{k,n} = Σ_t g_{k,n,t} a_{n,t}ᵀ,

with P_{k,n} the exact per-sample gradient of column k (for a convolution, the sum over the
output locations — the per-sample gradient of the kernel — whatever ``kfac_approx``; with the
bias folded in, the bias gradient comes along as the last column). For layers without weight
sharing Λ is then exactly the diagonal of the layer's GGN block in the Kronecker eigenbasis (the
best approximation diagonal in that basis in Frobenius norm).

Cost. Factors: one forward and K backwards to the layer outputs per batch (K columns: the
output dimension per position for type-2, M for MC, 1 for empirical, 0 for forward-only; each
backward serves every sample and position at once), plus O(rows·d²) per layer for the factor
updates. Product: O(d_out·d_in·(d_out + d_in)) per layer and direction — no data, no model
calls. Memory: the factors, Σ (d_in² + d_out²), plus one backward's activations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend
from hessian_eigenthings.operators._data_pass import Chunk, accumulate_over_data, all_finite
from hessian_eigenthings.operators._loss_columns import (
    FISHER_TYPES,
    FisherType,
    McNoise,
    apply_hessian_sqrt,
    check_loss_for,
    empirical_column,
    onehots_along,
    position_axis,
)
from hessian_eigenthings.operators._sandwich import check_callable
from hessian_eigenthings.operators.base import CurvatureOperator
from hessian_eigenthings.operators.batching import resolve_batch_weight
from hessian_eigenthings.operators.ggn import ForwardFn, LossOfOutputFn
from hessian_eigenthings.operators.kfac_factors import (
    KFACApprox,
    KroneckerBlock,
    LayerTap,
    add_row_moments,
    eigen_correction,
    find_blocks,
    input_rows,
    output_gradients,
    output_rows,
)
from hessian_eigenthings.operators.model_operator import ModelCurvatureOperator
from hessian_eigenthings.param_utils import ParamFilter

if TYPE_CHECKING:
    from hessian_eigenthings.algorithms.result import EigenResult

__all__ = ["DampingMethod", "EKFACOperator", "KFACInverseOperator", "KFACOperator"]

DampingMethod: TypeAlias = Literal["exact", "heuristic"]

#: Output-space columns back-propagated together (``is_grads_batched``). Batching buys no time
#: on CPU (benchmarks/bench_kfac.py: equal on an MLP, slower on a CNN) and costs a copy of the
#: activations per column, so one at a time.
COLUMN_CHUNK = 1


@dataclass
class _Factors:
    """The numbers of one KFAC: per block A and G (blocks of one layer share G), eigenpairs
    and, for EKFAC, the corrected eigenvalues."""

    A: list[torch.Tensor]
    G: list[torch.Tensor]
    a_eigen: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    g_eigen: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    corrected: list[torch.Tensor] | None = None

    def eigen(self) -> None:
        """Eigendecompose every factor once (float64 ``eigh``; shared G factors once)."""
        if self.a_eigen is not None:
            return
        done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def eigh(F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if id(F) not in done:
                vals, vecs = torch.linalg.eigh(F.to(torch.float64))
                done[id(F)] = (vals.to(F.dtype), vecs.to(F.dtype))
            return done[id(F)]

        self.a_eigen = [eigh(A) for A in self.A]
        self.g_eigen = [eigh(G) for G in self.G]

    def spectrum(self, i: int) -> torch.Tensor:
        """Block i's (d_out, d_in) eigenvalues: λ_G λ_Aᵀ, or EKFAC's corrected ones."""
        if self.corrected is not None:
            return self.corrected[i]
        assert self.a_eigen is not None
        assert self.g_eigen is not None
        return torch.outer(self.g_eigen[i][0], self.a_eigen[i][0])


def _eigen_apply(
    Q_G: torch.Tensor, Q_A: torch.Tensor, scale: torch.Tensor, M: torch.Tensor
) -> torch.Tensor:
    """Q_G (scale ⊙ (Q_Gᵀ M Q_A)) Q_Aᵀ for the (m, d_out, d_in) block ``M``."""
    return Q_G @ ((Q_G.T @ M @ Q_A) * scale) @ Q_A.T


def _apply_blocks(
    blocks: Sequence[KroneckerBlock],
    params: Sequence[nn.Parameter],
    V: torch.Tensor,
    apply: Callable[[int, torch.Tensor], torch.Tensor],
    dtype: torch.dtype,
) -> torch.Tensor:
    """The (n, m) product of a block-diagonal operator: ``apply(i, M)`` maps block i's
    (m, d_out, d_in) directions; coordinates outside every block (none for KFAC) stay 0."""
    m = V.shape[1]
    rows = V.detach().T.contiguous()  # (m, n): each parameter's slice is a view
    offsets = [0]
    for p in params:
        offsets.append(offsets[-1] + p.numel())
    directions = [
        rows[:, offsets[i] : offsets[i + 1]].reshape(m, *p.shape) for i, p in enumerate(params)
    ]
    out = torch.zeros_like(rows)
    for i, blk in enumerate(blocks):
        KM = apply(i, blk.to_matrix(directions).to(dtype))
        for slot, piece in blk.from_matrix(KM):
            out[:, slot.offset : slot.offset + piece[0].numel()] = piece.reshape(m, -1)
    return out.T


class _ChunkLayers:
    """One chunk's recorded layer calls: input rows and output gradients per layer."""

    def __init__(self, tap: LayerTap, z: torch.Tensor, columns: torch.Tensor | None) -> None:
        self.tap = tap
        self.z = z
        self.columns = columns

    def input_rows(self, name: str) -> torch.Tensor | None:
        """(N, T, fan-in) rows of every call of layer ``name`` (calls concatenated along T).

        Built on demand and not kept: a convolution's unfolded patches can be large.
        """
        calls = self.tap.calls[name]
        if not calls:
            return None
        mod = self.tap.modules[name]
        return _cat_calls(name, [input_rows(mod, c.input) for c in calls])

    def block_rows(self, blk: KroneckerBlock, dtype: torch.dtype) -> torch.Tensor | None:
        """(N, T, d_in) rows of ``blk`` (layer rows, a constant 1 appended for the bias)."""
        x = self.input_rows(blk.module_name) if blk.weight is not None else None
        calls = self.tap.calls[blk.module_name]
        if not calls:
            return None
        if x is None:  # bias-only: the shape comes from the outputs
            g = _cat_calls(
                blk.module_name,
                [output_rows(blk.module, c.output.detach().unsqueeze(0))[0] for c in calls],
            )
            return torch.ones(*g.shape[:2], 1, dtype=dtype, device=g.device)
        return blk.rows(x.to(dtype), x.shape[0], x.shape[1])

    def gradient_chunks(self, dtype: torch.dtype) -> Iterator[dict[str, torch.Tensor]]:
        """Per column chunk: layer name → (K, N, T, d_out) output gradients, all calls."""
        if self.columns is None:
            return
        names = [name for name, calls in self.tap.calls.items() for _ in calls]
        outputs = [c.output for calls in self.tap.calls.values() for c in calls]
        for X in torch.split(self.columns, COLUMN_CHUNK):
            grads = output_gradients(self.z, outputs, X)
            per_layer: dict[str, list[torch.Tensor]] = {}
            for name, g in zip(names, grads, strict=True):
                mod = self.tap.modules[name]
                per_layer.setdefault(name, []).append(output_rows(mod, g.to(dtype)))
            yield {name: _cat_calls(name, parts, lead=1) for name, parts in per_layer.items()}


def _cat_calls(name: str, parts: list[torch.Tensor], lead: int = 0) -> torch.Tensor:
    """Concatenate the calls' rows along the position axis (all calls must see N samples)."""
    if len(parts) == 1:
        return parts[0]
    if len({p.shape[lead] for p in parts}) != 1:
        raise InvalidArgumentError(
            f"layer {name!r} is called several times per forward on different numbers of "
            "samples; KFAC treats repeated calls as weight sharing and needs them to agree"
        )
    return torch.cat(parts, dim=lead + 1)


class KFACOperator(ModelCurvatureOperator):
    """Kronecker-factored approximation of the GGN / Fisher of the mean loss (see the module
    docstring for the exact factors); with ``correct_eigenvalues=True``, EKFAC.

    K = diag(G₁ ⊗ A₁, …, G_L ⊗ A_L): one block per layer (two with
    ``separate_weight_and_bias``; the GGN's cross-layer blocks are dropped), acting on a
    layer's (d_out, d_in) weight direction M as G M A, with A the mean outer product of the
    layer's input rows (a constant 1 appended for a folded bias) and G the batch-weighted
    second moment of the back-propagated output gradients. Exact for a single linear layer
    without weight sharing under MSE, an approximation otherwise. Its eigenpairs come from the
    factors' eigendecompositions (:meth:`eigenvalues`, :meth:`eigendecomposition`) and damped
    inverses from :meth:`inverse`.

    Cost: the factors, built once at the first product (or :meth:`compute_factors`), take one
    pass over the data — a forward and C backwards to the layer outputs per batch (C = output
    dimension for ``"type-2"``, M for ``"mc"``, 1 for ``"empirical"``, 0 for
    ``"forward-only"``); EKFAC one more pass.
    A product then needs no data: O(d_out·d_in·(d_out + d_in)) per layer and direction.
    Memory: the factors, Σ (d_in² + d_out²).

    Args:
        model: the model; the selected parameters must be weights and biases of ``nn.Linear``
            and ``nn.Conv2d`` (``groups=1``) layers — anything else is refused by name.
        dataloader: an iterable of batches (iterated once or twice, when the factors are built).
        forward_fn: ``forward_fn(model, batch) -> output``.
        loss_of_output_fn: ``loss_of_output_fn(output, batch) -> scalar``, the batch's mean
            loss. ``"type-2"`` and ``"mc"`` need the
            :class:`~hessian_eigenthings.loss_fns.LossOfOutput` protocol (the loss-Hessian
            square root, sampled gradients), e.g. ``cross_entropy_loss_of_output()``.
        fisher_type: ``"type-2"`` (exact loss Hessian, default), ``"mc"`` (sampled labels),
            ``"empirical"`` (observed labels) or ``"forward-only"`` (G = I).
        mc_samples: label draws per sample for ``"mc"`` (must be 1 otherwise).
        kfac_approx: ``"expand"`` (default) or ``"reduce"`` for weight-sharing layers.
        separate_weight_and_bias: give biases their own block G ⊗ [1] instead of folding them
            into the weight block (default ``False``: folded, which keeps the weight-bias
            cross terms; curvlinops' default is ``True``).
        correct_eigenvalues: EKFAC — re-fit the eigenvalues in the Kronecker eigenbasis from
            per-sample gradients (one more pass over the data).
        seed: int, CPU generator or ``None``; fixes the ``"mc"`` draws bit for bit.

    The keyword arguments ``param_filter``, ``full_dataset``, ``num_batches``,
    ``microbatch_size``, ``num_total_samples`` and ``backend`` are those of every model operator
    (:class:`~hessian_eigenthings.operators.model_operator.ModelCurvatureOperator`).

    Example:
        A single linear layer under MSE: KFAC equals the GGN, and its eigenvalues (products of
        the factors' eigenvalues, no matvecs) are the GGN's. With a hidden layer it keeps only
        the two diagonal blocks (3·4 + 4 = 16 and 4·2 + 2 = 10 parameters):

        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import mse_loss_of_output, supervised_forward
        >>> from hessian_eigenthings.operators import GGNOperator, KFACOperator
        >>> _ = torch.manual_seed(0)
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> Y = torch.randn(5, 2, dtype=torch.float64)
        >>> args = (nn.Linear(3, 2).double(), [(X, Y)], supervised_forward, mse_loss_of_output())
        >>> kfac, ggn = KFACOperator(*args), GGNOperator(*args).to_dense()
        >>> [(tuple(A.shape), tuple(G.shape)) for A, G in kfac.factors]  # A: inputs and bias
        [((4, 4), (2, 2))]
        >>> torch.allclose(kfac.to_dense(), ggn)
        True
        >>> torch.allclose(kfac.eigenvalues(), torch.linalg.eigvalsh(ggn).flip(0))
        True
        >>> mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> dense = KFACOperator(mlp, [(X, Y)], supervised_forward, mse_loss_of_output()).to_dense()
        >>> dense.shape, int(torch.count_nonzero(dense[:16, 16:]))  # no cross-layer block
        (torch.Size([26, 26]), 0)
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
        kfac_approx: KFACApprox = "expand",
        separate_weight_and_bias: bool = False,
        correct_eigenvalues: bool = False,
        seed: int | torch.Generator | None = None,
        param_filter: ParamFilter | None = None,
        full_dataset: bool = True,
        num_batches: int | None = None,
        microbatch_size: int | None = None,
        num_total_samples: int | None = None,
        backend: LinAlgBackend | None = None,
    ) -> None:
        check_callable(forward_fn, "forward_fn", "forward_fn(model, batch) -> output tensor")
        check_callable(
            loss_of_output_fn, "loss_of_output_fn", "loss_of_output_fn(output, batch) -> scalar"
        )
        if fisher_type not in FISHER_TYPES:
            raise InvalidArgumentError(
                f"fisher_type must be one of {', '.join(map(repr, FISHER_TYPES))}, got "
                f"{fisher_type!r}"
            )
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise InvalidArgumentError(f"mc_samples must be a positive int, got {mc_samples!r}")
        if fisher_type != "mc" and mc_samples != 1:
            raise InvalidArgumentError(
                f"mc_samples={mc_samples} only applies to fisher_type='mc'; leave it at 1"
            )
        if kfac_approx not in ("expand", "reduce"):
            raise InvalidArgumentError(
                f"kfac_approx must be 'expand' or 'reduce', got {kfac_approx!r}"
            )
        if correct_eigenvalues and fisher_type == "forward-only":
            raise InvalidArgumentError(
                "correct_eigenvalues (EKFAC) needs output gradients; fisher_type='forward-only' "
                "has none — pick 'type-2', 'mc' or 'empirical'"
            )
        check_loss_for(loss_of_output_fn, fisher_type, type(self).__name__)
        super().__init__(
            model,
            dataloader,
            param_filter=param_filter,
            full_dataset=full_dataset,
            num_batches=num_batches,
            microbatch_size=microbatch_size,
            num_total_samples=num_total_samples,
            backend=backend,
        )
        self.forward_fn = forward_fn
        self.loss_of_output_fn = loss_of_output_fn
        self.fisher_type: FisherType = fisher_type
        self.mc_samples = mc_samples
        self.kfac_approx: KFACApprox = kfac_approx
        self.separate_weight_and_bias = bool(separate_weight_and_bias)
        self.correct_eigenvalues = bool(correct_eigenvalues)
        self.weight_fn = resolve_batch_weight(loss_of_output_fn, forward_fn)
        #: the Kronecker blocks, in flat-vector order
        self.blocks = find_blocks(
            self.model, self.space.names, self.params, separate_bias=self.separate_weight_and_bias
        )
        self._modules = {blk.module_name: blk.module for blk in self.blocks}
        self._noise = McNoise(seed) if fisher_type == "mc" else None
        self._factors: _Factors | None = None

    # -- factors ------------------------------------------------------------------------------

    def compute_factors(self) -> None:
        """(Re)compute the Kronecker factors (and EKFAC's eigenvalues) from the model now."""
        self._factors = self._build()

    @property
    def factors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(A, G)`` of every block, in :attr:`blocks` order (computed on first use)."""
        f = self._ready()
        return list(zip(f.A, f.G, strict=True))

    def _ready(self) -> _Factors:
        if self._factors is None:
            self._factors = self._build()
        return self._factors

    def _build(self, batches: Sequence[Any] | None = None) -> _Factors:
        factors = self._kronecker_factors(batches)
        if self.correct_eigenvalues:
            factors.eigen()
            factors.corrected = self._corrected_eigenvalues(factors, batches)
        return factors

    def _columns(self, z: torch.Tensor, chunk: Chunk) -> torch.Tensor | None:
        """The output-space columns of this chunk's loss (see :mod:`._loss_columns`)."""
        loss = self.loss_of_output_fn
        if self.fisher_type == "type-2":
            onehots = onehots_along(z, position_axis(loss, z))
            return apply_hessian_sqrt(loss, z, chunk.batch, onehots)
        if self.fisher_type == "mc":
            assert self._noise is not None
            return self._noise.gradients(loss, z, chunk, self.mc_samples)
        if self.fisher_type == "empirical":
            return empirical_column(loss, z, chunk.batch, chunk.weight)
        return None

    def _pass(
        self,
        on_chunk: Callable[[Chunk, _ChunkLayers], None],
        finite: Callable[[], bool],
        batches: Sequence[Any] | None,
        on_input: Callable[[str, nn.Module, torch.Tensor], None] | None = None,
    ) -> float:
        """Run the model on every chunk with the layers tapped (``on_input`` sees each layer
        call's input during the forward); return Σ weights."""
        tap = LayerTap(self._modules, on_input)
        backward = self.fisher_type != "forward-only"

        def visit(chunk: Chunk) -> None:
            tap.clear()
            try:
                with tap.installed(), torch.set_grad_enabled(backward):
                    z = self.forward_fn(self.model, chunk.batch)
                if not isinstance(z, torch.Tensor):
                    raise InvalidArgumentError(
                        f"forward_fn must return a torch.Tensor, got {type(z).__name__}"
                    )
                tap.check_unmodified()
                on_chunk(chunk, _ChunkLayers(tap, z, self._columns(z, chunk)))
            finally:
                tap.clear()

        return accumulate_over_data(self, visit, finite=finite, batches=batches)

    def _kronecker_factors(self, batches: Sequence[Any] | None) -> _Factors:
        dtype, device = self._accumulate_dtype(), self.device
        A_sum = [torch.zeros(b.d_in, b.d_in, dtype=dtype, device=device) for b in self.blocks]
        rows = [0] * len(self.blocks)
        G_sum = {
            blk.module_name: torch.zeros(blk.d_out, blk.d_out, dtype=dtype, device=device)
            for blk in self.blocks
        }
        expand = self.kfac_approx == "expand"
        weight_block = {b.module_name: i for i, b in enumerate(self.blocks) if b.weight is not None}
        pending: dict[int, list[torch.Tensor]] = {}  # reduce: each call's rows summed over T

        def on_input(name: str, module: nn.Module, x: torch.Tensor) -> None:
            # A's statistics are taken during the forward, so the (possibly large) unfolded
            # patches of one layer are freed before the next layer runs
            i = weight_block.get(name)
            if i is None:
                return
            r = input_rows(module, x).to(dtype)  # (N, T, fan-in)
            if expand:
                add_row_moments(
                    A_sum[i], r.reshape(-1, r.shape[-1]), self.blocks[i].bias is not None
                )
                rows[i] += r.shape[0] * r.shape[1]
            else:
                pending.setdefault(i, []).append(
                    torch.cat([r.sum(1), r.new_full((r.shape[0], 1), r.shape[1])], dim=1)
                )

        def on_chunk(chunk: Chunk, layers: _ChunkLayers) -> None:
            for i, parts in pending.items():  # reduce: ā_n = Σ_{calls, t} a / Σ_calls T
                total = _cat_calls(self.blocks[i].module_name, [p.unsqueeze(1) for p in parts])
                total = total.sum(1)
                mean = total[:, :-1] / total[:, -1:]
                add_row_moments(A_sum[i], mean, self.blocks[i].bias is not None)
                rows[i] += mean.shape[0]
            pending.clear()
            for grads in layers.gradient_chunks(dtype):
                for name, g in grads.items():
                    R = g.reshape(-1, g.shape[-1]) if expand else g.sum(2).reshape(-1, g.shape[-1])
                    G_sum[name].addmm_(R.T, R, alpha=chunk.weight)

        def finite() -> bool:
            return all_finite((*A_sum, *G_sum.values()))

        total = self._pass(on_chunk, finite, batches, on_input)
        scale = (self.num_total_samples or 1) / total
        G_of: dict[str, torch.Tensor] = {}
        for name, G in G_sum.items():
            if self.fisher_type == "forward-only":
                G_of[name] = torch.eye(G.shape[0], dtype=dtype, device=device)
            else:
                G_of[name] = G.mul_(scale)
        A = [
            S.div_(r) if blk.weight is not None and r > 0 else S
            for S, r, blk in zip(A_sum, rows, self.blocks, strict=True)
        ]
        for i, blk in enumerate(self.blocks):
            if blk.weight is None:
                A[i] = torch.ones(1, 1, dtype=dtype, device=device)
        return _Factors(A=A, G=[G_of[blk.module_name] for blk in self.blocks])

    def _corrected_eigenvalues(
        self, factors: _Factors, batches: Sequence[Any] | None
    ) -> list[torch.Tensor]:
        assert factors.a_eigen is not None
        assert factors.g_eigen is not None
        a_eigen, g_eigen = factors.a_eigen, factors.g_eigen
        dtype = self._accumulate_dtype()
        sums = [torch.zeros(b.d_out, b.d_in, dtype=dtype, device=self.device) for b in self.blocks]

        def on_chunk(chunk: Chunk, layers: _ChunkLayers) -> None:
            # rows rotated once per chunk; without weight sharing (T = 1) the squared rotated
            # gradients are summed over all columns first and multiplied once
            rotated = [
                None if r is None else r @ a_eigen[i][1]
                for i, r in enumerate(layers.block_rows(blk, dtype) for blk in self.blocks)
            ]
            squares: list[torch.Tensor | None] = [None] * len(self.blocks)
            for grads in layers.gradient_chunks(dtype):
                for i, blk in enumerate(self.blocks):
                    at = rotated[i]
                    if at is None or blk.module_name not in grads:
                        continue
                    gt = grads[blk.module_name] @ g_eigen[i][1]
                    if at.shape[1] == 1:
                        sq, prev = gt[:, :, 0].square().sum(0), squares[i]
                        squares[i] = sq if prev is None else prev.add_(sq)
                    else:
                        sums[i].add_(eigen_correction(gt, at), alpha=chunk.weight)
            for i, total in enumerate(squares):
                at = rotated[i]
                if total is not None and at is not None:
                    sums[i].addmm_(total.T, at[:, 0].square(), alpha=chunk.weight)

        def finite() -> bool:
            return all_finite(sums)

        total = self._pass(on_chunk, finite, batches)
        scale = (self.num_total_samples or 1) / total
        return [s.mul_(scale) for s in sums]

    # -- products -----------------------------------------------------------------------------

    def _product(self, factors: _Factors, V: torch.Tensor) -> torch.Tensor:
        dtype = factors.A[0].dtype if factors.A else V.dtype

        def apply(i: int, M: torch.Tensor) -> torch.Tensor:
            if factors.corrected is not None:
                assert factors.a_eigen is not None
                assert factors.g_eigen is not None
                Q_A, Q_G = factors.a_eigen[i][1], factors.g_eigen[i][1]
                return _eigen_apply(Q_G, Q_A, factors.corrected[i], M)
            return factors.G[i] @ M @ factors.A[i]

        return _apply_blocks(self.blocks, self.params, V, apply, dtype)

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        return self._product(self._ready(), V)

    def batch_matmat(self, batch: Any, V: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """Products with the KFAC built from ``batch`` alone (factors recomputed from it).

        The operator itself is *not* a weighted mean of these: its factors are statistics of
        the whole data, and products of means are not means of products.
        """
        factors = self._build([batch])
        flat = torch.cat([v.reshape(v.shape[0], -1) for v in V], dim=1).T
        out = self._product(factors, flat.to(self.dtype))
        return [
            col.T.reshape(v.shape)
            for col, v in zip(torch.split(out, [p.numel() for p in self.params]), V, strict=True)
        ]

    # -- spectra ------------------------------------------------------------------------------

    def _spectra(self) -> tuple[_Factors, list[torch.Tensor]]:
        factors = self._ready()
        factors.eigen()
        return factors, [factors.spectrum(i) for i in range(len(self.blocks))]

    def eigenvalues(self) -> torch.Tensor:
        """All n eigenvalues, largest first: products λ_G,i λ_A,j per block (EKFAC: the
        corrected Λ_ij). Costs the factor eigendecompositions, no products."""
        _, spectra = self._spectra()
        values = torch.cat([s.reshape(-1) for s in spectra])
        return torch.sort(values, descending=True).values.to(self.dtype)

    def eigendecomposition(self, k: int | None = None, *, which: str = "LA") -> EigenResult:
        """The k eigenpairs selected by ``which`` (``"LA"`` largest, ``"SA"`` smallest,
        ``"LM"`` largest magnitude), exactly, from the factors' eigendecompositions.

        The eigenvector of λ_G,i λ_A,j is the flat-parameter image of q_G,i q_A,jᵀ (the
        layer's weight matrix, with the bias as its last column when folded in). ``k=None``
        gives all n pairs (an n×n matrix: mind the size). ``residuals`` are ‖K x − λ x‖
        measured with k products; ``num_matvecs`` counts them.
        """
        from hessian_eigenthings.algorithms._common import check_k, check_which, which_order
        from hessian_eigenthings.algorithms.result import EigenResult

        which_ = check_which(which)
        n = self.size
        k = n if k is None else check_k(k, n)
        factors, spectra = self._spectra()
        assert factors.a_eigen is not None
        assert factors.g_eigen is not None
        values = torch.cat([s.reshape(-1) for s in spectra]).to("cpu", torch.float64)
        chosen = which_order(values, which_)[:k]
        starts = torch.tensor([0] + [s.numel() for s in spectra]).cumsum(0)
        X = torch.zeros(k, n, dtype=self.dtype, device=self.device)
        for i, blk in enumerate(self.blocks):
            lo, hi = int(starts[i]), int(starts[i + 1])
            rows = ((chosen >= lo) & (chosen < hi)).nonzero().reshape(-1)
            if rows.numel() == 0:
                continue
            local = (chosen[rows] - lo).to(self.device)
            q_g = factors.g_eigen[i][1][:, local // blk.d_in].T  # (r, d_out)
            q_a = factors.a_eigen[i][1][:, local % blk.d_in].T  # (r, d_in)
            mats = q_g.unsqueeze(2) * q_a.unsqueeze(1)
            for slot, piece in blk.from_matrix(mats):
                width = piece[0].numel()
                X[rows.to(self.device), slot.offset : slot.offset + width] = piece.reshape(
                    -1, width
                ).to(self.dtype)
        lam = values[chosen]
        KX = self.matmat(X.T.contiguous())
        residuals = (KX - X.T * lam.to(X)).norm(dim=0).to("cpu", torch.float64)
        return EigenResult(
            eigenvalues=lam.to(self.dtype),
            eigenvectors=X,
            residuals=residuals,
            iterations=0,
            converged=True,
            num_matvecs=k,
            note="exact, from the Kronecker factors' eigendecompositions",
        )

    def inverse(
        self, damping: float = 0.0, *, method: DampingMethod = "exact"
    ) -> KFACInverseOperator:
        """An operator applying the inverse of the damped approximation (see
        :class:`KFACInverseOperator` for ``method``)."""
        return KFACInverseOperator(self, damping, method=method)

    def __repr__(self) -> str:
        name = "EKFAC" if self.correct_eigenvalues else "KFAC"
        return (
            f"{type(self).__name__}({name}, size={self.size}, blocks={len(self.blocks)}, "
            f"fisher_type={self.fisher_type!r}, kfac_approx={self.kfac_approx!r}, "
            f"dtype={self.dtype})"
        )


class EKFACOperator(KFACOperator):
    """EKFAC: :class:`KFACOperator` with ``correct_eigenvalues=True`` (George et al. 2018).

    Same arguments as :class:`KFACOperator` (``fisher_type`` other than ``"forward-only"``).
    EKFAC keeps KFAC's eigenbasis Q_G ⊗ Q_A per layer and replaces the eigenvalues λ_G λ_Aᵀ
    by the second moments Λ of the per-sample gradients in that basis; for layers without
    weight sharing Λ is exactly the diagonal of the layer's GGN block in that basis, so each
    block keeps the GGN block's trace.

    Cost: KFAC's, plus one more pass over the data when the factors are built (a forward and
    C backwards per batch, C as for KFAC, and two rotations of each per-sample gradient);
    products cost what KFAC's cost.

    Example:
        The trace of EKFAC is the GGN's (the cross-layer blocks have none), KFAC's is not:

        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import mse_loss_of_output, supervised_forward
        >>> from hessian_eigenthings.operators import EKFACOperator, GGNOperator, KFACOperator
        >>> _ = torch.manual_seed(0)
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> Y = torch.randn(5, 2, dtype=torch.float64)
        >>> mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        >>> args = (mlp, [(X, Y)], supervised_forward, mse_loss_of_output())
        >>> ekfac, ggn = EKFACOperator(*args), GGNOperator(*args).to_dense()
        >>> ekfac.correct_eigenvalues
        True
        >>> torch.allclose(ekfac.eigenvalues().sum(), ggn.trace())
        True
        >>> torch.allclose(KFACOperator(*args).eigenvalues().sum(), ggn.trace())
        False
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
        kfac_approx: KFACApprox = "expand",
        separate_weight_and_bias: bool = False,
        seed: int | torch.Generator | None = None,
        param_filter: ParamFilter | None = None,
        full_dataset: bool = True,
        num_batches: int | None = None,
        microbatch_size: int | None = None,
        num_total_samples: int | None = None,
        backend: LinAlgBackend | None = None,
    ) -> None:
        super().__init__(
            model,
            dataloader,
            forward_fn,
            loss_of_output_fn,
            fisher_type=fisher_type,
            mc_samples=mc_samples,
            kfac_approx=kfac_approx,
            separate_weight_and_bias=separate_weight_and_bias,
            correct_eigenvalues=True,
            seed=seed,
            param_filter=param_filter,
            full_dataset=full_dataset,
            num_batches=num_batches,
            microbatch_size=microbatch_size,
            num_total_samples=num_total_samples,
            backend=backend,
        )


class KFACInverseOperator(CurvatureOperator):
    """(K + δ·I)⁻¹ for a KFAC / EKFAC operator K, applied exactly in the Kronecker eigenbasis.

    ``method="exact"`` (default) inverts the damped matrix itself, block by block:
    Q (Λ + δ)⁻¹ Qᵀ with Λ = λ_G λ_Aᵀ (EKFAC: the corrected eigenvalues), so that
    ``inverse @ (K @ v + δ v) == v`` to rounding. ``method="heuristic"`` is the factored damping
    of Martens & Grosse (2015, §6.3): (G + δ_G I)⁻¹ ⊗ (A + δ_A I)⁻¹ with δ_A = π√δ,
    δ_G = √δ/π, π² = (tr A / d_in) / (tr G / d_out) — cheaper to reason about as two factor
    inverses, but *not* the inverse of K + δI (it adds δ_G A ⊗ I + δ_A I ⊗ G + δ I); a
    bias-only block gets (G + δI)⁻¹. EKFAC supports only the exact method.

    Each product costs what a KFAC product costs plus two rotations per block; no data.
    ``damping=0`` needs a non-singular K (refused otherwise).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import mse_loss_of_output, supervised_forward
        >>> from hessian_eigenthings.operators import GGNOperator, KFACOperator
        >>> _ = torch.manual_seed(0)
        >>> X = torch.randn(5, 3, dtype=torch.float64)
        >>> Y = torch.randn(5, 2, dtype=torch.float64)
        >>> args = (nn.Linear(3, 2).double(), [(X, Y)], supervised_forward, mse_loss_of_output())
        >>> kfac = KFACOperator(*args)
        >>> inverse = kfac.inverse(damping=0.1)  # a KFACInverseOperator
        >>> v = torch.randn(8, dtype=torch.float64)
        >>> torch.allclose(inverse @ (kfac @ v + 0.1 * v), v)
        True
        >>> ggn = GGNOperator(*args).to_dense()  # here KFAC is exact: K = GGN
        >>> eye = torch.eye(8, dtype=torch.float64)
        >>> torch.allclose(inverse.to_dense(), torch.linalg.inv(ggn + 0.1 * eye))
        True
        >>> heuristic = kfac.inverse(damping=0.1, method="heuristic")
        >>> torch.allclose(heuristic @ v, inverse @ v)  # factored damping: not (K + δI)⁻¹
        False
    """

    def __init__(
        self, kfac: KFACOperator, damping: float = 0.0, *, method: DampingMethod = "exact"
    ) -> None:
        if isinstance(damping, bool) or not isinstance(damping, (int, float)):
            raise InvalidArgumentError(f"damping must be a float ≥ 0, got {damping!r}")
        damping = float(damping)
        if not (damping >= 0 and damping < float("inf")):
            raise InvalidArgumentError(f"damping must be a finite float ≥ 0, got {damping}")
        if method not in ("exact", "heuristic"):
            raise InvalidArgumentError(f"method must be 'exact' or 'heuristic', got {method!r}")
        if method == "heuristic" and kfac.correct_eigenvalues:
            raise InvalidArgumentError(
                "EKFAC has no factors to damp separately; use method='exact'"
            )
        self.kfac = kfac
        self.damping = damping
        self.method: DampingMethod = method
        factors, spectra = kfac._spectra()
        assert factors.a_eigen is not None
        assert factors.g_eigen is not None
        self._eig = list(zip(factors.g_eigen, factors.a_eigen, strict=True))
        self._scales = [
            self._inverse_scale(blk, spectra[i], factors.A[i], factors.G[i], i)
            for i, blk in enumerate(kfac.blocks)
        ]

    def _inverse_scale(
        self,
        blk: KroneckerBlock,
        spectrum: torch.Tensor,
        A: torch.Tensor,
        G: torch.Tensor,
        i: int,
    ) -> torch.Tensor:
        """Block i's (d_out, d_in) inverse eigenvalues."""
        delta = self.damping
        if self.method == "heuristic" and blk.weight is not None:
            lam_G, lam_A = self._eig[i][0][0], self._eig[i][1][0]
            mean_A, mean_G = float(A.trace()) / A.shape[0], float(G.trace()) / G.shape[0]
            pi = (mean_A / mean_G) ** 0.5 if mean_A > 0 and mean_G > 0 else 1.0
            damped = torch.outer(lam_G + delta**0.5 / pi, lam_A + pi * delta**0.5)
        else:
            damped = spectrum + delta
        tiny = torch.finfo(damped.dtype).eps * max(float(spectrum.abs().max()), 1e-300) * 10
        if float(damped.min()) <= tiny:
            raise InvalidArgumentError(
                f"the damped approximation is singular in block {blk.module_name!r} (smallest "
                f"damped eigenvalue {float(damped.min()):.3e}); pass damping > 0"
            )
        return 1.0 / damped

    @property
    def size(self) -> int:
        return self.kfac.size

    @property
    def dtype(self) -> torch.dtype:
        return self.kfac.dtype

    @property
    def device(self) -> torch.device:
        return self.kfac.device

    def _apply(self, V: torch.Tensor) -> torch.Tensor:
        def apply(i: int, M: torch.Tensor) -> torch.Tensor:
            (_, Q_G), (_, Q_A) = self._eig[i]
            return _eigen_apply(Q_G, Q_A, self._scales[i], M)

        dtype = self._scales[0].dtype if self._scales else V.dtype
        return _apply_blocks(self.kfac.blocks, self.kfac.params, V, apply, dtype)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.check_vector(v)
        return self._apply(v.unsqueeze(1))[:, 0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.check_vector(V, "V", ndim=2)
        return self._apply(V)

    def __repr__(self) -> str:
        return (
            f"KFACInverseOperator(size={self.size}, damping={self.damping}, method={self.method!r})"
        )
