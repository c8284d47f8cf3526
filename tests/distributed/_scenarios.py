"""What each rank runs (see ``_launch.py``); each function returns a dict of results."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from hessian_eigenthings.algorithms import lanczos
from hessian_eigenthings.linalg import DistributedBackend, make_generator
from tests.distributed import _cases as C

Result = dict[str, Any]


def _slice(global_vec: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    start = sum(sizes[:rank])
    return global_vec[..., start : start + sizes[rank]]


def backend(rank: int, world_size: int, *, sizes: list[int], chunk: int) -> Result:
    """Reductions and random draws of DistributedBackend on slices of known global vectors."""
    n = sum(sizes)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, generator=g, dtype=C.DTYPE), torch.randn(n, generator=g, dtype=C.DTYPE)
    basis = torch.randn(4, n, generator=g, dtype=C.DTYPE)
    V = torch.randn(n, 3, generator=g, dtype=C.DTYPE)
    be = DistributedBackend()
    streamed = DistributedBackend(random_chunk=chunk)
    out: Result = {
        "dot": be.dot(_slice(a, sizes, rank), _slice(b, sizes, rank)),
        "dot32": be.dot(_slice(a, sizes, rank).float(), _slice(b, sizes, rank).float()),
        "norm": be.norm(_slice(a, sizes, rank)),
        "inner_vec": be.inner(_slice(basis, sizes, rank), _slice(a, sizes, rank)),
        "inner_mat": be.inner(_slice(basis, sizes, rank), _slice(V.T, sizes, rank).T),
        "total_size": be.total_size(sizes[rank]),
    }
    gen = make_generator(5)
    out["rand_gauss"] = be.random((2, sizes[rank]), generator=gen, dtype=C.DTYPE, device="cpu")
    out["rand_rade"] = be.random(
        (3, sizes[rank]),
        generator=gen,
        dtype=torch.float32,
        device="cpu",
        distribution="rademacher",
    )
    out["rand_1d"] = be.random(sizes[rank], generator=gen, dtype=C.DTYPE, device="cpu")
    out["rand_none"] = be.random((0, sizes[rank]), generator=gen, dtype=C.DTYPE, device="cpu")
    out["after_full"] = torch.randn(1, generator=gen)  # generators stay in step
    gen = make_generator(5)
    out["stream64"] = streamed.random((2, sizes[rank]), generator=gen, dtype=C.DTYPE, device="cpu")
    out["stream32"] = streamed.random(
        (3, sizes[rank]), generator=gen, dtype=torch.float32, device="cpu"
    )
    out["after_stream"] = torch.randn(1, generator=gen)
    return out


def _params_snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(model: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    after = list(model.parameters())
    return all(torch.equal(p.detach(), q) for p, q in zip(after, before, strict=True)) and all(
        p.grad is None for p in after
    )


#: Seed of the Monte-Carlo Fisher under DDP (each rank derives its own from it).
MC_SEED = 3


def ddp(rank: int, world_size: int) -> Result:
    """Every DDP operator's products (plain and DDP-wrapped models, unequal shards), the naive
    in-graph all-reduce for comparison, Lanczos and trace, and a rank whose loss raises."""
    from torch.nn.parallel import DistributedDataParallel

    from hessian_eigenthings.algorithms import trace
    from hessian_eigenthings.loss_fns import cross_entropy_loss_of_output
    from hessian_eigenthings.operators import (
        DDPEmpiricalFisherOperator,
        DDPFisherOperator,
        DDPGGNOperator,
        DDPHessianOperator,
    )

    data = C.shards()[rank]
    model = C.classifier()
    before = _params_snapshot(model)
    op = DDPHessianOperator(model, data, C.loss_fn)
    V = C.directions(op.size)
    out: Result = {"autograd": op.matmat(V), "matvec": op.matvec(V[:, 0])}
    wrapped = DistributedDataParallel(C.classifier())
    out["wrapped"] = DDPHessianOperator(wrapped, data, C.loss_fn).matmat(V)
    fd = DDPHessianOperator(model, data, C.loss_fn, method="finite_difference")
    out["fd"] = fd.matmat(V)
    out["microbatched"] = DDPHessianOperator(model, data, C.loss_fn, microbatch_size=3).matmat(V)
    out["naive_in_graph"] = _naive_in_graph_allreduce(model, data, V[:, 0])
    res = lanczos(op, k=5, seed=0)
    out["lanczos_values"], out["lanczos_vectors"] = res.eigenvalues, res.eigenvectors
    out["trace"] = trace(op, 30, seed=0).estimate
    # no seed: each rank seeds its own generator; the operator's backend must share the draws
    unseeded = lanczos(op, k=5)
    out["unseeded_values"], out["unseeded_vectors"] = unseeded.eigenvalues, unseeded.eigenvectors
    out["unseeded_trace"] = trace(op, 30).estimate

    ce = cross_entropy_loss_of_output(fused="eager")
    out["ggn"] = DDPGGNOperator(model, data, C.forward_fn, ce).matmat(V)
    out["ggn_wrapped"] = DDPGGNOperator(wrapped, data, C.forward_fn, ce).matmat(V)
    out["ggn_autograd"] = DDPGGNOperator(
        model, data, C.forward_fn, C.loss_of_output, loss_hvp="autograd"
    ).matmat(V)
    out["ef"] = DDPEmpiricalFisherOperator(
        model, data, loss_fn=C.per_sample_losses, per_sample=True
    ).matmat(V)
    out["ef_wrapped"] = DDPEmpiricalFisherOperator(
        wrapped, data, loss_fn=C.per_sample_losses, per_sample=True
    ).matmat(V)
    out["fisher"] = DDPFisherOperator(wrapped, data, C.forward_fn, ce).matmat(V)
    mc = {"fisher_type": "mc", "mc_samples": 2, "seed": MC_SEED}
    out["fisher_mc"] = DDPFisherOperator(model, data, C.forward_fn, ce, **mc).matmat(V)
    out["fisher_mc_again"] = DDPFisherOperator(model, data, C.forward_fn, ce, **mc).matmat(V)
    try:
        DDPHessianOperator(model, data, C.loss_fn, backend=DistributedBackend())
        out["backend_error"] = None
    except Exception as err:
        out["backend_error"] = (type(err).__name__, str(err))
    out["unchanged"] = _unchanged(model, before)
    out.update(_failure(rank, model, V[:, 0]))
    return out


def _failure(rank: int, model: torch.nn.Module, v: torch.Tensor) -> Result:
    """Rank 1's loss raises: every rank must get an error, promptly, and stay usable."""
    from hessian_eigenthings.operators import DDPHessianOperator

    def flaky(model: torch.nn.Module, batch: C.Batch) -> torch.Tensor:
        if rank == 1:
            raise ValueError("loss exploded on rank 1")
        return C.loss_fn(model, batch)

    before = _params_snapshot(model)
    op = DDPHessianOperator(model, C.shards()[rank], flaky)
    start = time.monotonic()
    try:
        op.matvec(v)
        error = None
    except Exception as err:
        error = (type(err).__name__, str(err))
    elapsed = time.monotonic() - start
    # the group is still in step: a correct product afterwards works on every rank
    after = DDPHessianOperator(model, C.shards()[rank], C.loss_fn).matvec(v)
    return {
        "error": error,
        "elapsed": elapsed,
        "after_failure": after,
        "unchanged_after_failure": _unchanged(model, before),
    }


def _naive_in_graph_allreduce(
    model: torch.nn.Module, data: list[C.Batch], v: torch.Tensor
) -> torch.Tensor:
    """What an autograd-aware all-reduce of the gradient inside the graph gives: the
    Hessian-vector product of the dataset mean, multiplied by the world size."""
    import torch.distributed.nn.functional as dist_nn

    params = list(model.parameters())
    weights = torch.tensor([float(sum(b[0].shape[0] for b in data))], dtype=C.DTYPE)
    dist.all_reduce(weights)
    loss = sum(C.loss_fn(model, b) * b[0].shape[0] for b in data) / weights[0]
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = dist_nn.all_reduce(torch.cat([g.reshape(-1) for g in grads]))
    hv = torch.autograd.grad(flat @ v, params)
    product = torch.cat([h.reshape(-1) for h in hv]).detach()
    dist.all_reduce(product)
    return product


#: The FSDP model: 212 parameters, 106 on each of 2 ranks (every layer splits evenly).
WIDE = (8, 16, 4)


def _fully_sharded() -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    model = C.classifier(WIDE)
    fully_shard(model[0])
    fully_shard(model[2])
    fully_shard(model)
    return model


def _global_indices(model: torch.nn.Module) -> torch.Tensor:
    """For each entry of this rank's slice, its index in the single-process parameter vector."""
    from torch.distributed.tensor import distribute_tensor

    out, offset = [], 0
    for p in model.parameters():
        index = torch.arange(offset, offset + p.numel(), dtype=C.DTYPE).reshape(p.shape)
        out.append(distribute_tensor(index, p.device_mesh, p.placements).to_local().reshape(-1))
        offset += p.numel()
    return torch.cat(out).long()


def _local_shards(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.to_local().detach().clone() for p in model.parameters()]


def fsdp(rank: int, world_size: int) -> Result:
    """FSDP2 finite-difference products on local shards, and the algorithms on top of them."""
    from torch.distributed.fsdp import FSDPModule

    from hessian_eigenthings.algorithms import spectral_density, trace
    from hessian_eigenthings.operators import FSDPHessianOperator

    model = _fully_sharded()
    data = C.shards(WIDE[0], WIDE[2])[rank]
    op = FSDPHessianOperator(model, data, C.loss_fn)
    idx = _global_indices(model)
    V = C.directions(op.global_size)[idx]
    before = _local_shards(model)
    out: Result = {"idx": idx, "size": op.size, "matmat": op.matmat(V)}
    micro = FSDPHessianOperator(model, data, C.loss_fn, microbatch_size=3)
    out["microbatched"] = micro.matvec(V[:, 0].contiguous())
    out["zero"] = op.matvec(torch.zeros(op.size, dtype=C.DTYPE))
    out["unchanged"] = all(
        torch.equal(a, b) for a, b in zip(before, _local_shards(model), strict=True)
    ) and all(p.grad is None for p in model.parameters())
    res = lanczos(op, k=5, seed=0)
    out["lanczos_values"], out["lanczos_converged"] = res.eigenvalues, res.converged
    out["lanczos_vectors"] = res.eigenvectors
    out["trace"] = trace(op, 30, seed=0).estimate
    density = spectral_density(op, num_runs=2, lanczos_steps=12, seed=0)
    out["density_nodes"] = torch.cat(density.nodes)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # FSDP now sums instead of averaging
    out["divide_factor_1"] = FSDPHessianOperator(model, data, C.loss_fn).matvec(
        V[:, 0].contiguous()
    )
    return out


def fsdp_failure(rank: int, world_size: int) -> Result:
    """FSDP errors: an unsharded model and an empty shard are refused, a non-finite product
    raises on every rank, and a loss that raises mid-sweep on one rank ends the product on
    every rank within bounded time."""
    from hessian_eigenthings.operators import FSDPHessianOperator

    model = _fully_sharded()
    before = _local_shards(model)
    data = C.shards(WIDE[0], WIDE[2])[rank]
    out: Result = {"_skip_teardown": True}
    try:
        FSDPHessianOperator(C.classifier(WIDE), data, C.loss_fn)  # not sharded
        out["plain_error"] = None
    except Exception as err:
        out["plain_error"] = (type(err).__name__, str(err))
    empty = FSDPHessianOperator(model, data if rank == 0 else [], C.loss_fn)
    v = torch.ones(empty.size, dtype=C.DTYPE)
    try:
        empty.to_dense()
        out["dense_error"] = None
    except Exception as err:
        out["dense_error"] = (type(err).__name__, str(err))
    try:
        empty.matvec(v)
        out["empty_error"] = None
    except Exception as err:
        out["empty_error"] = (type(err).__name__, str(err))
    poisoned = [(x.clone().fill_(float("nan")) if rank == 1 else x, y) for x, y in data]
    try:
        FSDPHessianOperator(model, poisoned, C.loss_fn).matvec(v)
        out["nan_error"] = None
    except Exception as err:
        out["nan_error"] = (type(err).__name__, str(err))
    calls = [0]

    def flaky(model: torch.nn.Module, batch: C.Batch) -> torch.Tensor:
        calls[0] += 1
        if rank == 1 and calls[0] == 2:
            raise ValueError("loss exploded on rank 1")
        return C.loss_fn(model, batch)

    op = FSDPHessianOperator(model, data, flaky)
    start = time.monotonic()
    try:
        op.matvec(v)
        out["error"] = None
    except Exception as err:
        out["error"] = (type(err).__name__, str(err))
    out["elapsed"] = time.monotonic() - start
    out["unchanged"] = all(
        torch.equal(a, b) for a, b in zip(before, _local_shards(model), strict=True)
    )
    return out
