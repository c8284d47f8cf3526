"""Hessian eigenvalues of a data-parallel model, on 2 CPU processes (gloo).

    torchrun --nproc_per_node=2 examples/ddp_hessian.py    # torchrun starts the processes
    python examples/ddp_hessian.py                          # the script starts 2 itself

Each rank trains a DistributedDataParallel model for a few steps on its shard of the data,
then computes the top Hessian eigenvalues and the trace of the Hessian of the mean loss over
*all* ranks' data with DDPHessianOperator (one all-reduce per product). The same model is
then sharded with FSDP2 (fully_shard) and the top eigenvalues are recomputed from the local
parameter shards with finite differences (FSDPHessianOperator + DistributedBackend). Every
rank gets the same numbers; rank 0 prints them.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from hessian_eigenthings import DDPHessianOperator, FSDPHessianOperator, lanczos, trace

WORLD_SIZE = 2


def make_model() -> nn.Module:
    torch.manual_seed(0)  # every rank starts from the same weights
    return nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 4))


def make_dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 10, generator=g)
    y = (x[:, :4] + 0.3 * torch.randn(600, 4, generator=g)).argmax(dim=1)
    return TensorDataset(x, y)


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def run(rank: int, world_size: int) -> None:
    dataset = make_dataset()
    # Each rank reads its own shard (300 samples here); no shuffling, so every product sees
    # the same batches.
    sampler = DistributedSampler(dataset, world_size, rank, shuffle=False)
    loader = DataLoader(dataset, batch_size=128, sampler=sampler)

    model = DistributedDataParallel(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        for batch in loader:
            opt.zero_grad()
            loss_fn(model, batch).backward()  # DDP averages the gradients over the ranks
            opt.step()

    # The operator unwraps DDP and all-reduces each finished product, so this is the Hessian
    # of the mean loss over all 600 samples. Vectors are replicated on every rank.
    hessian = DDPHessianOperator(model, loader, loss_fn)
    top = lanczos(hessian, k=5, seed=0)
    tr = trace(hessian, 60, seed=0)

    # Every rank ran the same algorithm on the same products: identical answers.
    everyone = [torch.empty_like(top.eigenvalues) for _ in range(world_size)]
    dist.all_gather(everyone, top.eigenvalues)
    assert all(torch.equal(e, top.eigenvalues) for e in everyone)

    # FSDP2: shard the trained weights over the ranks. Autograd HVPs do not go through
    # fully_shard, finite differences of two gradients do; vectors are the local shards.
    sharded = make_model()
    sharded.load_state_dict(model.module.state_dict())
    for layer in (sharded[0], sharded[2]):
        fully_shard(layer)
    fully_shard(sharded)
    fd_hessian = FSDPHessianOperator(sharded, loader, loss_fn)
    fd_top = lanczos(fd_hessian, k=3, seed=0)  # uses fd_hessian.backend: DistributedBackend

    if rank == 0:
        print(f"Hessian of the mean loss over {len(dataset)} samples on {world_size} ranks")
        print(f"  {hessian.size} parameters, {top.num_matvecs} products, converged={top.converged}")
        print("  top-5 eigenvalues (DDP, exact HVPs):", [f"{v:.6f}" for v in top.eigenvalues])
        print(f"  trace ≈ {tr.estimate:.4f} ± {tr.stderr:.4f} (Hutch++, {tr.num_matvecs} products)")
        print(
            f"  top-3 eigenvalues (FSDP, finite differences, {fd_hessian.size} of "
            f"{fd_hessian.global_size} entries per rank):",
            [f"{v:.6f}" for v in fd_top.eigenvalues],
        )
        gap = (fd_top.eigenvalues - top.eigenvalues[:3]).abs().max() / top.eigenvalues[0].abs()
        print(f"  DDP vs FSDP: max relative difference {gap:.1e} (finite-difference error)")


def _spawned(rank: int, world_size: int, rendezvous: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size
    )
    try:
        run(rank, world_size)
        dist.barrier()  # every rank is done before the group is torn down
    finally:
        dist.destroy_process_group()


def main() -> None:
    if "RANK" in os.environ:  # started by torchrun: it set RANK, WORLD_SIZE, MASTER_ADDR, ...
        dist.init_process_group("gloo")
        try:
            run(dist.get_rank(), dist.get_world_size())
            dist.barrier()
        finally:
            dist.destroy_process_group()
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # two processes share the cores
    with tempfile.TemporaryDirectory() as tmp:
        # fork (where available): the workers inherit the imported modules instead of
        # importing torch again
        methods = multiprocessing.get_all_start_methods()
        torch.multiprocessing.start_processes(
            _spawned,
            args=(WORLD_SIZE, os.path.join(tmp, "rendezvous")),
            nprocs=WORLD_SIZE,
            start_method="fork" if "fork" in methods else "spawn",
        )


if __name__ == "__main__":
    sys.exit(main())
