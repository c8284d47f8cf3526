"""The base of the operators of the form Σ_b w_b J_bᵀ M_b J_b / Σ_b w_b (GGN, Fisher family).

J_b is the Jacobian of z = fn(model, batch) with respect to the selected parameters (see
:mod:`._jacobian`) and M_b an output-space matrix that the subclass applies in
:meth:`SandwichOperator.output_matmat`. The per-batch product is J V by forward mode, M (J V),
then Jᵀ(·) by a backward: with ``jvp="separate"`` (default) about 2–2.3× a gradient's time
and a training step's peak memory; with ``jvp="shared"`` about 1.5–2.1× the time and up to
~2.7× the memory (see :mod:`._jacobian`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, Literal, TypeAlias

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import LinAlgBackend
from hessian_eigenthings.operators._jacobian import (
    Blocks,
    Linearization,
    ModelFunction,
    ModelJacobian,
)
from hessian_eigenthings.operators.model_operator import ModelCurvatureOperator, ProductSink
from hessian_eigenthings.param_utils import ParamFilter

__all__ = ["JvpPass", "SandwichOperator", "check_callable"]

#: ``"separate"``: J V by its own no-grad forward-mode pass (memory of a training step);
#: ``"shared"``: that pass also records the graph for Jᵀ (one forward less, more memory).
JvpPass: TypeAlias = Literal["separate", "shared"]


def check_callable(fn: Any, name: str, signature: str) -> None:
    if not callable(fn):
        raise InvalidArgumentError(
            f"{name} must be a callable {signature}, got {type(fn).__name__}"
        )


class SandwichOperator(ModelCurvatureOperator):
    """Jᵀ M J per batch, for z = ``fn(model, batch)``; subclasses supply M's product."""

    def __init__(
        self,
        model: nn.Module,
        dataloader: Any,
        fn: ModelFunction,
        what: str,
        *,
        param_filter: ParamFilter | None,
        full_dataset: bool,
        num_batches: int | None,
        microbatch_size: int | None,
        num_total_samples: int | None,
        backend: LinAlgBackend | None,
        process_group: Any,
        jvp: JvpPass = "separate",
        reuse_graph: bool = False,
    ) -> None:
        if jvp not in ("separate", "shared"):
            raise InvalidArgumentError(
                f"jvp must be 'separate' (memory of a training step) or 'shared' (one forward "
                f"less, more memory), got {jvp!r}"
            )
        super().__init__(
            model,
            dataloader,
            param_filter=param_filter,
            full_dataset=full_dataset,
            num_batches=num_batches,
            microbatch_size=microbatch_size,
            num_total_samples=num_total_samples,
            backend=backend,
            process_group=process_group,
            reuse_graph=reuse_graph,
        )
        self.jacobian = ModelJacobian(self.model, fn, self.space.names, self.params, what)
        self.jvp: JvpPass = jvp
        self.batch_index = 0

    def iter_batches(self) -> Iterator[Any]:
        for index, batch in enumerate(super().iter_batches()):
            self.batch_index = index  # for error messages naming the batch
            yield batch

    @abstractmethod
    def output_matmat(self, z: torch.Tensor, batch: Any, U: torch.Tensor) -> torch.Tensor:
        """M U[j] for the (m, *z.shape) directions ``U`` at the output ``z`` (detached)."""

    def batch_cotangents(
        self, batch: Any, V: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z with its graph, M J V): the backward's start and its (m, *z.shape) cotangents."""
        z, JV, graph = self.jacobian.jvp(batch, V, shared=self.jvp == "shared")
        MJV = self._output_product(z, batch, JV)
        del JV, z  # output-sized: not alive during the backward that follows
        out = graph if graph is not None else self.jacobian.output(batch)
        return out, MJV.to(out.dtype)

    def _output_product(self, z: torch.Tensor, batch: Any, JV: torch.Tensor) -> torch.Tensor:
        MJV = self.output_matmat(z, batch, JV)
        if MJV.shape != JV.shape:
            raise InvalidArgumentError(
                f"the output-space product of batch {self.batch_index} has shape "
                f"{tuple(MJV.shape[1:])}, but the output has shape {tuple(z.shape)}"
            )
        return MJV

    def batch_linearize(self, batch: Any) -> Linearization:
        """z with the graphs of J v and Jᵀ u (kept for ``reuse_graph``): later products are
        a backward for J V and one for Jᵀ(M J V), with no forward pass."""
        return self.jacobian.linearize(self.jacobian.output(batch))

    def linearized_accumulate(
        self, lin: Linearization, batch: Any, V: Sequence[torch.Tensor], sink: ProductSink
    ) -> None:
        MJV = self._output_product(lin.z, batch, lin.jvp(V))
        self.jacobian.vjp_into(lin.out, MJV.to(lin.out.dtype), sink, retain=True)

    def batch_matmat(self, batch: Any, V: Sequence[torch.Tensor]) -> Blocks:
        return self.jacobian.vjp(*self.batch_cotangents(batch, V))

    def batch_accumulate(self, batch: Any, V: Sequence[torch.Tensor], sink: ProductSink) -> None:
        # the backward streams each parameter's block into the sum (see ModelJacobian.vjp_into)
        with sink.recording_graph():
            out, W = self.batch_cotangents(batch, V)
        self.jacobian.vjp_into(out, W, sink)
