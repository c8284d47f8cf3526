"""Data-parallel curvature operators: each rank iterates its own shard of the data.

Design. Every model operator already takes ``process_group=``: the engine
(:class:`~hessian_eigenthings.operators.model_operator.ModelCurvatureOperator`) accumulates
the rank's weighted per-batch products, then does one small all-reduce of (total weight, batch
count, failure flag) and one all-reduce of the finished n×m product. The result is

    A = s · Σ_r Σ_b w_rb A_rb / Σ_r Σ_b w_rb,

the single-process operator on the union of the shards, whatever the shard sizes and batch
counts. The ``DDP*`` classes here are conveniences with the reference library's names: they
default ``process_group`` to the default (WORLD) group and refuse to start when
``torch.distributed`` is not initialised.

Why no autograd-aware all-reduce. The reduction happens on the finished product, outside any
autograd graph. An all-reduce placed inside the graph (after the first gradient, before the
second backward) is differentiated too: its backward is another all-reduce, so the product
comes out ``world_size`` times too large. A DistributedDataParallel-wrapped model is unwrapped
(its ``.module`` is used), so DDP's gradient hooks never fire either: products use
``torch.autograd.grad``, which does not accumulate into ``.grad``.

Cost per product: the local batches' work plus one all-reduce of 3 float64 values and one of
n·m values in the operator's dtype. Vectors are replicated: every rank passes the same v and
gets the same A v, so algorithms use an ordinary single-device backend (the default) and,
given the same seed, take identical steps on every rank.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg import DistributedBackend, LinAlgBackend, make_generator
from hessian_eigenthings.operators.distributed._group import default_group, rank_seed
from hessian_eigenthings.operators.empirical_fisher import EmpiricalFisherOperator
from hessian_eigenthings.operators.fisher import FisherOperator
from hessian_eigenthings.operators.ggn import GGNOperator
from hessian_eigenthings.operators.hessian import HessianOperator, HvpMethod, LossFn
from hessian_eigenthings.param_utils import ParamFilter

__all__ = [
    "DDPEmpiricalFisherOperator",
    "DDPFisherOperator",
    "DDPGGNOperator",
    "DDPHessianOperator",
]


class _DataParallel:
    """Mixin: ``process_group`` defaults to the default group, which must be initialised.

    The attribute is set after the operator's own constructor, and the engine reads it at
    product time.
    """

    process_group: Any

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        group = default_group(process_group, type(self).__name__)
        if isinstance(kwargs.get("backend"), DistributedBackend):
            raise InvalidArgumentError(
                f"{type(self).__name__} works on vectors replicated on every rank, so its "
                "backend must reduce locally: drop backend=DistributedBackend(...) (summing "
                "replicated dot products over the ranks multiplies them by the world size). "
                "DistributedBackend is for sharded vectors (FSDPHessianOperator)"
            )
        # the engine then defaults the backend to a ReplicatedBackend of the group
        kwargs["process_group"] = group
        super().__init__(*args, **kwargs)


class DDPHessianOperator(_DataParallel, HessianOperator):
    """:class:`~hessian_eigenthings.operators.HessianOperator` over the union of the ranks' data.

    Arguments as for :class:`~hessian_eigenthings.operators.HessianOperator`; ``model`` may be
    wrapped in ``DistributedDataParallel`` and ``dataloader`` yields this rank's shard (e.g.
    through a ``DistributedSampler`` without shuffling). ``process_group`` defaults to the
    default group. Every rank must compute the same products in the same order (each is a
    collective).

    The operator is H = s · Σ_r Σ_b w_rb ∇²L_rb / Σ_r Σ_b w_rb over every rank r's batches b:
    the single-process Hessian of the union of the shards, whatever their sizes. Vectors are
    replicated (every rank passes the same v and gets the same H v).

    Cost per product: the local batches' Hessian-vector products (as
    :class:`~hessian_eigenthings.operators.HessianOperator`), then one all-reduce of 3 float64
    values and one of the n·m product values.

    Example:
        A one-process group (``torchrun`` sets up real ones) reproduces the plain operator:

        >>> import torch
        >>> import torch.distributed as dist
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import supervised_loss
        >>> from hessian_eigenthings.operators import DDPHessianOperator, HessianOperator
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 2).double()
        >>> X, Y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
        >>> data = [(X, Y)]
        >>> v = torch.randn(8, dtype=torch.float64)
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> try:
        ...     ddp = DDPHessianOperator(model, data, supervised_loss(F.mse_loss))
        ...     plain = HessianOperator(model, data, supervised_loss(F.mse_loss))
        ...     print(ddp.size, torch.allclose(ddp @ v, plain @ v))
        ... finally:
        ...     dist.destroy_process_group()
        8 True
    """

    def __init__(
        self,
        model: nn.Module,
        dataloader: Any,
        loss_fn: LossFn,
        *,
        param_filter: ParamFilter | None = None,
        full_dataset: bool = True,
        num_batches: int | None = None,
        microbatch_size: int | None = None,
        num_total_samples: int | None = None,
        method: HvpMethod = "autograd",
        fd_eps: float | None = None,
        backend: LinAlgBackend | None = None,
        process_group: Any = None,
    ) -> None:
        super().__init__(
            model,
            dataloader,
            loss_fn,
            param_filter=param_filter,
            full_dataset=full_dataset,
            num_batches=num_batches,
            microbatch_size=microbatch_size,
            num_total_samples=num_total_samples,
            method=method,
            fd_eps=fd_eps,
            backend=backend,
            process_group=process_group,
        )


class DDPGGNOperator(_DataParallel, GGNOperator):
    """:class:`~hessian_eigenthings.operators.GGNOperator` over the union of the ranks' data.

    Same arguments, plus ``process_group`` (default: the default group). The operator is
    G = s · Σ_r Σ_b w_rb J_rbᵀ H_ℓ,rb J_rb / Σ_r Σ_b w_rb over every rank r's batches b, the
    single-process GGN of the union of the shards; vectors are replicated.

    Cost per product: the local batches' GGN products (about 2× a gradient each), then one
    all-reduce of 3 float64 values and one of the n·m product values.

    Example:
        A one-process group (``torchrun`` sets up real ones) reproduces the plain operator:

        >>> import torch
        >>> import torch.distributed as dist
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import mse_loss_of_output, supervised_forward
        >>> from hessian_eigenthings.operators import DDPGGNOperator, GGNOperator
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 2).double()
        >>> X, Y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
        >>> data = [(X, Y)]
        >>> args = (model, data, supervised_forward, mse_loss_of_output())
        >>> v = torch.randn(8, dtype=torch.float64)
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> try:
        ...     print(torch.allclose(DDPGGNOperator(*args) @ v, GGNOperator(*args) @ v))
        ... finally:
        ...     dist.destroy_process_group()
        True
    """


class DDPEmpiricalFisherOperator(_DataParallel, EmpiricalFisherOperator):
    """:class:`~hessian_eigenthings.operators.EmpiricalFisherOperator` over the union of the
    ranks' data (per-sample gradients of every rank's samples).

    Same arguments, plus ``process_group`` (default: the default group). The operator is
    (s / N) Σᵢ gᵢ gᵢᵀ over the N samples of all ranks together; vectors are replicated.

    Cost per product: the local batches' empirical-Fisher products (about 2–3× a gradient
    each), then one all-reduce of 3 float64 values and one of the n·m product values.

    Example:
        A one-process group (``torchrun`` sets up real ones) reproduces the plain operator:

        >>> import torch
        >>> import torch.distributed as dist
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import supervised_per_sample_loss
        >>> from hessian_eigenthings.operators import (
        ...     DDPEmpiricalFisherOperator, EmpiricalFisherOperator)
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 2).double()
        >>> X, Y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
        >>> data = [(X, Y)]
        >>> args = (model, data, supervised_per_sample_loss(F.mse_loss))
        >>> v = torch.randn(8, dtype=torch.float64)
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> try:
        ...     ddp = DDPEmpiricalFisherOperator(*args)
        ...     print(torch.allclose(ddp @ v, EmpiricalFisherOperator(*args) @ v))
        ... finally:
        ...     dist.destroy_process_group()
        True
    """


class DDPFisherOperator(_DataParallel, FisherOperator):
    """:class:`~hessian_eigenthings.operators.FisherOperator` over the union of the ranks' data.

    Same arguments, plus ``process_group`` (default: the default group). With
    ``fisher_type="mc"`` every rank must sample *different* labels for its batches, yet
    reproducibly: an int ``seed`` becomes ``rank_seed(seed, rank)`` on each rank (a splitmix64
    mix of the two, see :func:`~hessian_eigenthings.operators.distributed.rank_seed`);
    a ``torch.Generator`` gives one draw (the same on every rank if the generators agree),
    which is then mixed with the rank the same way; ``None`` draws fresh randomness on every
    rank. The samples therefore depend on the rank a batch lives on: the MC Fisher of a
    given seed is reproducible for a fixed sharding of the data, not across world sizes.
    ``fisher_type="type-2"`` is exact and uses no randomness.

    The operator is F = s · Σ_r Σ_b w_rb J_rbᵀ E[g gᵀ] J_rb / Σ_r Σ_b w_rb over every rank r's
    batches b (the expectation exact or sampled, as for
    :class:`~hessian_eigenthings.operators.FisherOperator`); vectors are replicated.

    Cost per product: the local batches' Fisher products (about 2× a gradient each), then one
    all-reduce of 3 float64 values and one of the n·m product values.

    Example:
        On a one-process group (``torchrun`` sets up real ones) rank 0 draws with
        ``rank_seed(seed, 0)``:

        >>> import torch
        >>> import torch.distributed as dist
        >>> from torch import nn
        >>> from hessian_eigenthings.loss_fns import mse_loss_of_output, supervised_forward
        >>> from hessian_eigenthings.operators import DDPFisherOperator, FisherOperator
        >>> from hessian_eigenthings.operators.distributed import rank_seed
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(3, 2).double()
        >>> X, Y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
        >>> data = [(X, Y)]
        >>> args = (model, data, supervised_forward, mse_loss_of_output())
        >>> v = torch.randn(8, dtype=torch.float64)
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> try:
        ...     exact = DDPFisherOperator(*args)
        ...     print(torch.allclose(exact @ v, FisherOperator(*args) @ v))
        ...     mc = DDPFisherOperator(*args, fisher_type="mc", mc_samples=4, seed=7)
        ...     same = FisherOperator(*args, fisher_type="mc", mc_samples=4, seed=rank_seed(7, 0))
        ...     print(torch.equal(mc @ v, same @ v))
        ... finally:
        ...     dist.destroy_process_group()
        True
        True
    """

    def __init__(
        self,
        *args: Any,
        seed: int | torch.Generator | None = None,
        process_group: Any = None,
        **kwargs: Any,
    ) -> None:
        import torch.distributed as dist

        group = default_group(process_group, type(self).__name__)
        if isinstance(seed, torch.Generator):
            seed = int(torch.randint(0, 2**62, (1,), generator=make_generator(seed)))
        if seed is not None:
            seed = rank_seed(seed, dist.get_rank(group))
        super().__init__(*args, seed=seed, process_group=group, **kwargs)
