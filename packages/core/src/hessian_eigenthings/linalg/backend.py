"""Vector arithmetic used by every algorithm.

Algorithms never call ``torch.dot`` or ``torch.linalg.norm`` on operator-sized vectors
directly; they go through a :class:`LinAlgBackend`. On one device the backend is plain torch
(:class:`SingleDeviceBackend`); a distributed backend overrides the reductions (``dot``,
``norm``, ``inner``) with an all-reduce over a process group, so the same algorithm runs on
vectors whose entries are sharded across ranks.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from hessian_eigenthings.linalg.random import Distribution, random_vectors

__all__ = ["LinAlgBackend", "SingleDeviceBackend"]


@runtime_checkable
class LinAlgBackend(Protocol):
    """The operations algorithms need on operator-sized vectors.

    Reductions (``dot``, ``norm``, ``inner``) return 0-d or small tensors on the vectors'
    device; everything else is elementwise and stays local to the caller's shard.

    Example:
        Every algorithm takes a ``backend=`` (default :class:`SingleDeviceBackend`); any object
        with these methods qualifies:

        >>> import torch
        >>> from hessian_eigenthings import LambdaOperator, LinAlgBackend, SingleDeviceBackend
        >>> from hessian_eigenthings import lanczos
        >>> backend = SingleDeviceBackend()
        >>> isinstance(backend, LinAlgBackend)
        True
        >>> basis = torch.eye(2, 3)  # two orthonormal rows
        >>> backend.inner(basis, torch.tensor([3.0, 4.0, 5.0]))
        tensor([3., 4.])
        >>> d = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
        >>> op = LambdaOperator(3, lambda v: d * v, dtype=torch.float64)
        >>> lanczos(op, k=1, backend=backend, seed=0).eigenvalues
        tensor([3.], dtype=torch.float64)
    """

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """⟨a, b⟩ over the whole (possibly sharded) vector, as a 0-d tensor."""
        ...

    def norm(self, v: torch.Tensor) -> torch.Tensor:
        """‖v‖₂ over the whole vector, as a 0-d tensor."""
        ...

    def inner(self, basis: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``basis @ v`` for a (k, n) basis and an (n,) or (n, m) ``v``: k (or k×m) dot products."""
        ...

    def axpy(self, alpha: float | torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return ``alpha * x + y`` (a new tensor)."""
        ...

    def scale(self, v: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        """Return ``alpha * v`` (a new tensor)."""
        ...

    def random(
        self,
        shape: int | tuple[int, ...],
        *,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device | str,
        distribution: Distribution = "gaussian",
    ) -> torch.Tensor:
        """Random vectors of the local ``shape`` from ``generator`` (see ``random_vectors``)."""
        ...

    def total_size(self, local_size: int) -> int:
        """The global dimension of vectors whose local part has ``local_size`` entries.

        Algorithms size Krylov bases and check ``k`` against this, so every rank of a sharded
        run plans the same iterations.
        """
        ...


class SingleDeviceBackend:
    """:class:`LinAlgBackend` for vectors that live whole on one device (CPU or one GPU).

    Reductions accumulate in at least float32, so bf16/fp16 vectors give float32 results.

    Example:
        >>> import torch
        >>> from hessian_eigenthings import SingleDeviceBackend
        >>> backend = SingleDeviceBackend()
        >>> a = torch.tensor([1.0, 2.0, 2.0])
        >>> backend.dot(a, a), backend.norm(a)
        (tensor(9.), tensor(3.))
        >>> backend.axpy(2.0, a, torch.ones(3))  # 2·a + 1
        tensor([3., 5., 5.])
        >>> backend.dot(a.half(), a.half()).dtype  # half precision accumulates in float32
        torch.float32
        >>> backend.total_size(3)  # nothing is sharded
        3
    """

    @staticmethod
    def _acc(t: torch.Tensor) -> torch.Tensor:
        return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t

    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.dot(self._acc(a).reshape(-1), self._acc(b).reshape(-1))

    def norm(self, v: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.linalg.vector_norm(self._acc(v))
        return out

    def inner(self, basis: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._acc(basis) @ self._acc(v)

    def axpy(self, alpha: float | torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if isinstance(alpha, torch.Tensor):
            return y + alpha * x
        return torch.add(y, x, alpha=alpha)

    def scale(self, v: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        return v * alpha

    def total_size(self, local_size: int) -> int:
        return local_size

    def random(
        self,
        shape: int | tuple[int, ...],
        *,
        generator: torch.Generator,
        dtype: torch.dtype,
        device: torch.device | str,
        distribution: Distribution = "gaussian",
    ) -> torch.Tensor:
        return random_vectors(
            shape, generator=generator, dtype=dtype, device=device, distribution=distribution
        )
