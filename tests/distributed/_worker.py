"""The ranks of a distributed test: ``python -m tests.distributed._worker SCENARIO ...``.

This process imports torch and the library once, then forks one process per rank (fork keeps
the imports, which dominate the start-up time); each rank joins the gloo group through a
``file://`` rendezvous, runs the scenario and saves its result with ``torch.save``.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tests.distributed import _scenarios


def _rank(
    rank: int, scenario: str, world_size: int, out: str, pg_timeout: float, args: Any
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{Path(out) / 'rendezvous'}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=pg_timeout),
    )
    start = time.perf_counter()
    result = getattr(_scenarios, scenario)(rank, world_size, **args)
    result["_seconds"] = time.perf_counter() - start  # the scenario alone, without start-up
    torch.save(result, Path(out) / f"rank{rank}.pt")
    if result.get("_skip_teardown"):
        return  # the group is broken on purpose (a rank died): just exit
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    scenario, world_size, out, pg_timeout, args = sys.argv[1:6]
    # Import once here, before forking, what the scenarios would otherwise import in every rank
    # (fully_shard lazily imports torch._dynamo: seconds per process).
    import torch._dynamo
    import torch.distributed.fsdp
    import torch.distributed.nn.functional
    import torch.distributed.tensor

    torch.multiprocessing.start_processes(
        _rank,
        args=(scenario, int(world_size), out, float(pg_timeout), json.loads(args)),
        nprocs=int(world_size),
        start_method="fork",
    )


if __name__ == "__main__":
    main()
