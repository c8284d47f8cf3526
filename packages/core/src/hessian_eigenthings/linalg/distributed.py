"""A :class:`LinAlgBackend` for operator-sized vectors sharded across the ranks of a group.

Each rank holds a contiguous slice of every vector (for FSDP: the local shards of the
selected parameters, concatenated). Elementwise operations (``axpy``, ``scale``) stay local;
the reductions (``dot``, ``norm``, ``inner``) compute a local partial and combine the partials
of all ranks.

Determinism. The partials are exchanged with one ``all_gather`` (not an ``all_reduce``) and
summed in float64 in rank order on every rank, so every rank gets bit-identical values, which
do not depend on the collective's internal reduction order. That is what keeps the ranks of a
Lanczos run in lock step: every branch the algorithm takes depends only on reduced values. The
price is ``world_size × k`` values gathered instead of ``k`` reduced, nothing for the k ≤ a few
hundred dot products an algorithm reduces at once.

Cost of a reduction: the local work (``O(n_local · k)``) plus one collective of
``world_size · k`` floats, latency-bound. One Lanczos step with full reorthogonalisation does a
handful of them.

Random vectors. :meth:`DistributedBackend.random` returns this rank's slice of a *global*
random vector that does not depend on the world size, so a run on 2 ranks starts from the same
vectors as on 8 (or 1). By default every rank draws the whole global block from the generator
and keeps its slice, which makes the vector bit-identical to what
:class:`~hessian_eigenthings.linalg.SingleDeviceBackend` draws for the same seed, at
``O(N)`` time and a transient ``O(N)`` CPU buffer per rank (N = the global length). With
``random_chunk=c`` the global vector is instead defined as consecutive draws of ``c`` entries
each; every rank still consumes the whole stream (``O(N)`` time, which also keeps the
generators of all ranks in the same state) but holds only ``c`` entries at a time. The chunked
vector is world-size independent too, but not equal to the single-device draw.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.linalg.random import Distribution, random_vectors

__all__ = ["DistributedBackend"]

_HALF = (torch.float16, torch.bfloat16)


def require_initialized(what: str) -> None:
    """Raise a clear error unless ``torch.distributed`` is available and initialised."""
    import torch.distributed as dist

    if not dist.is_available():
        raise InvalidArgumentError(
            f"{what} needs torch.distributed, which this PyTorch build does not provide"
        )
    if not dist.is_initialized():
        raise InvalidArgumentError(
            f"{what} needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group(...) first (torchrun sets up the "
            "environment it reads)"
        )


class DistributedBackend:
    """:class:`~hessian_eigenthings.linalg.LinAlgBackend` for vectors sharded over a group.

    Args:
        process_group: the ranks that each hold one slice of every vector (default: the
            default, WORLD, group). ``torch.distributed`` must be initialised.
        random_chunk: ``None`` (default) draws every random vector whole and slices it (equal
            to the single-device draw, O(N) transient memory per rank); an int streams it in
            chunks of that many entries (O(chunk) memory; see the module docstring).

    Use it only for *sharded* vectors. Vectors replicated on every rank (a DDP operator's)
    must use a :class:`~hessian_eigenthings.linalg.SingleDeviceBackend`: summing their dot
    products over the ranks would multiply them by the world size. All ranks must call the
    backend's methods in the same order (they are collectives).

    Example:
        Under ``torchrun`` every rank passes its own slice; a one-process group shows the calls:

        >>> import torch
        >>> import torch.distributed as dist
        >>> from hessian_eigenthings.linalg import (
        ...     DistributedBackend, SingleDeviceBackend, make_generator)
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> backend = DistributedBackend()
        >>> backend
        DistributedBackend(rank=0, world_size=1)
        >>> backend.norm(torch.tensor([3.0, 4.0]))  # over the slices of every rank
        tensor(5.)
        >>> backend.total_size(2)
        2
        >>> kw = dict(dtype=torch.float64, device="cpu")
        >>> x = backend.random(4, generator=make_generator(0), **kw)
        >>> y = SingleDeviceBackend().random(4, generator=make_generator(0), **kw)
        >>> torch.equal(x, y)  # the slice of the same vector a single device draws
        True
        >>> dist.destroy_process_group()
    """

    def __init__(self, process_group: Any = None, *, random_chunk: int | None = None) -> None:
        import torch.distributed as dist

        require_initialized("DistributedBackend")
        if random_chunk is not None and (
            isinstance(random_chunk, bool) or not isinstance(random_chunk, int) or random_chunk < 1
        ):
            raise InvalidArgumentError(
                f"random_chunk must be a positive int or None, got {random_chunk!r}"
            )
        self.process_group = process_group if process_group is not None else dist.group.WORLD
        self.world_size = dist.get_world_size(self.process_group)
        self.rank = dist.get_rank(self.process_group)
        self.random_chunk = random_chunk

    # -- the collective -----------------------------------------------------------------

    def _gather(self, local: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of ``local`` (same shape on all ranks), in rank order."""
        import torch.distributed as dist

        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local, group=self.process_group)
        return parts

    def _sum(self, partial: torch.Tensor) -> torch.Tensor:
        """Σ over ranks of ``partial``, in float64 and rank order, identical on every rank."""
        parts = self._gather(partial.detach().to(torch.float64).reshape(-1))
        total = parts[0].clone()
        for p in parts[1:]:
            total.add_(p)
        return total.reshape(partial.shape)

    def _comm_device(self) -> torch.device:
        """Where small bookkeeping tensors must live for this group's collectives."""
        import torch.distributed as dist

        if dist.get_backend(self.process_group) == "nccl":  # NCCL moves CUDA tensors only
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    @staticmethod
    def _acc(t: torch.Tensor) -> torch.Tensor:
        return t.float() if t.dtype in _HALF else t

    def total_size(self, local_size: int) -> int:
        """The global length N of vectors whose local slices have ``local_size`` entries."""
        sizes = self._gather(
            torch.tensor([local_size], dtype=torch.int64, device=self._comm_device())
        )
        return int(sum(int(s.item()) for s in sizes))

    # -- LinAlgBackend ------------------------------------------------------------------

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self._acc(a), self._acc(b)
        local = torch.dot(a.reshape(-1), b.reshape(-1))
        return self._sum(local).to(local.dtype)

    def norm(self, v: torch.Tensor) -> torch.Tensor:
        v = self._acc(v)
        # Squares are summed in float64, so a large local norm cannot overflow in float32.
        local = torch.linalg.vector_norm(v).to(torch.float64).square()
        return self._sum(local).sqrt().to(v.dtype)

    def inner(self, basis: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        local = self._acc(basis) @ self._acc(v)
        return self._sum(local).to(local.dtype)

    def axpy(self, alpha: float | torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if isinstance(alpha, torch.Tensor):
            return y + alpha * x
        return torch.add(y, x, alpha=alpha)

    def scale(self, v: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        return v * alpha

    def random(
        self,
        shape: int | tuple[int, ...],
        *,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device | str,
        distribution: Distribution = "gaussian",
    ) -> torch.Tensor:
        """This rank's slice (along the last dimension) of global random vectors.

        ``shape`` is the local shape; its last dimension is this rank's slice length, the
        leading dimensions (e.g. the number of vectors) must agree on every rank.
        """
        size = (shape,) if isinstance(shape, int) else tuple(shape)
        if not size:
            raise InvalidArgumentError("shape must have at least one (the sharded) dimension")
        lead, local_n = size[:-1], size[-1]
        lead_numel = math.prod(lead)
        info = self._gather(
            torch.tensor([lead_numel, local_n], dtype=torch.int64, device=self._comm_device())
        )
        if any(int(i[0].item()) != lead_numel for i in info):
            raise InvalidArgumentError(
                "random(): the ranks asked for different numbers of vectors "
                f"({[int(i[0].item()) for i in info]}); all ranks must call the backend in "
                "the same order with the same leading dimensions"
            )
        sizes = [int(i[1].item()) for i in info]
        offset, total = sum(sizes[: self.rank]), sum(sizes)
        if self.random_chunk is None:
            full = random_vectors(
                (*lead, total),
                generator=generator,
                dtype=dtype,
                device="cpu",
                distribution=distribution,
            )
            mine = full[..., offset : offset + local_n].clone()
        else:
            flat = self._streamed(
                lead_numel, total, offset, local_n, generator, dtype, distribution
            )
            mine = flat.reshape(*lead, local_n)
        return mine.to(device=device, dtype=dtype)

    def _streamed(
        self,
        rows: int,
        total: int,
        offset: int,
        local_n: int,
        generator: torch.Generator,
        dtype: torch.dtype,
        distribution: Distribution,
    ) -> torch.Tensor:
        """This rank's columns of a (rows, total) block defined as consecutive chunk draws
        (drawn in float64 for float64 requests, float32 otherwise, as ``random_vectors``)."""
        chunk = self.random_chunk
        assert chunk is not None
        draw_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        out = torch.empty(rows, local_n, dtype=draw_dtype)
        length = rows * total
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            piece = random_vectors(
                stop - start,
                generator=generator,
                dtype=draw_dtype,
                device="cpu",
                distribution=distribution,
            )
            for r in range(start // total, (stop - 1) // total + 1):
                lo = max(start, r * total + offset)
                hi = min(stop, r * total + offset + local_n)
                if lo < hi:
                    col = lo - r * total - offset
                    out[r, col : col + hi - lo] = piece[lo - start : hi - start]
        return out

    def __repr__(self) -> str:
        return f"DistributedBackend(rank={self.rank}, world_size={self.world_size})"
