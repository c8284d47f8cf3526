"""The abstract curvature operator every operator and algorithm shares."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch

from hessian_eigenthings.errors import InvalidArgumentError, OperatorTooLargeError

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator

__all__ = ["DENSE_SIZE_LIMIT", "CurvatureOperator"]

DENSE_SIZE_LIMIT = 2**14
"""Largest dimension :meth:`CurvatureOperator.to_dense` builds without an explicit ``max_size``.

2**14 = 16384 gives a 2 GiB float64 matrix and costs 16384 matvecs; beyond that use the
algorithms (``lanczos``, ``trace``, ``spectral_density``), or pass a larger ``max_size`` to
``to_dense`` if you mean it. The refusal happens before any product is computed.

Example:
    >>> import torch
    >>> from hessian_eigenthings.errors import OperatorTooLargeError
    >>> from hessian_eigenthings.operators import DENSE_SIZE_LIMIT, LambdaOperator
    >>> DENSE_SIZE_LIMIT
    16384
    >>> big = LambdaOperator(DENSE_SIZE_LIMIT + 1, lambda v: v)
    >>> try:
    ...     big.to_dense()
    ... except OperatorTooLargeError as err:
    ...     print("refused:", "max_size=16384" in str(err))
    refused: True
"""


class CurvatureOperator(ABC):
    """A symmetric n×n matrix A known only through products ``A @ v``.

    Subclasses implement :attr:`size`, :attr:`dtype`, :attr:`device` and :meth:`matvec`
    (v ↦ A v for an (n,) vector). On top of these the base class gives ``A @ v`` and
    ``A @ V`` (the latter through :meth:`matmat`, A V for an (n, m) block), :attr:`shape`,
    :meth:`check_vector`, :meth:`to_dense` and :meth:`to_scipy`.

    Cost: whatever the subclass's :meth:`matvec` costs; :meth:`matmat` defaults to one
    :meth:`matvec` per column (m products, plus the (n, m) output), and operators that can
    batch directions (one forward pass for several) override it. :meth:`to_dense` costs n
    matvecs and n² memory, and is refused above :data:`DENSE_SIZE_LIMIT`.

    Example:
        A diagonal operator written as a subclass (most users wrap a function with
        :class:`~hessian_eigenthings.operators.LambdaOperator` instead):

        >>> import torch
        >>> from hessian_eigenthings.operators import CurvatureOperator
        >>> class Diagonal(CurvatureOperator):
        ...     def __init__(self, d: torch.Tensor) -> None:
        ...         self.d = d
        ...     @property
        ...     def size(self) -> int:
        ...         return self.d.numel()
        ...     @property
        ...     def dtype(self) -> torch.dtype:
        ...         return self.d.dtype
        ...     @property
        ...     def device(self) -> torch.device:
        ...         return self.d.device
        ...     def matvec(self, v: torch.Tensor) -> torch.Tensor:
        ...         self.check_vector(v)
        ...         return self.d * v
        >>> A = Diagonal(torch.tensor([3.0, 2.0, 1.0]))
        >>> A.shape
        (3, 3)
        >>> A @ torch.ones(3)
        tensor([3., 2., 1.])
        >>> (A @ torch.eye(3, 2)).shape  # a block of m = 2 columns: two matvecs
        torch.Size([3, 2])
        >>> torch.equal(A.to_dense(), torch.diag(A.d))
        True
    """

    @property
    @abstractmethod
    def size(self) -> int:
        """The dimension n (number of selected parameters)."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The dtype of the vectors :meth:`matvec` accepts and returns."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """The device of the vectors :meth:`matvec` accepts and returns."""

    @abstractmethod
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Return ``A @ v`` for an (n,) tensor ``v`` of this operator's dtype and device."""

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``."""
        return (self.size, self.size)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Return ``A @ V`` for an (n, m) block of column vectors."""
        self.check_vector(V, "V", ndim=2)
        if V.shape[1] == 0:
            return V.clone()
        return torch.stack([self.matvec(V[:, j]) for j in range(V.shape[1])], dim=1)

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            return NotImplemented
        if x.ndim == 1:
            return self.matvec(x)
        if x.ndim == 2:
            return self.matmat(x)
        raise InvalidArgumentError(
            f"operator @ x needs an (n,) vector or an (n, m) block, got shape {tuple(x.shape)}"
        )

    def check_vector(self, v: Any, name: str = "v", *, ndim: int = 1) -> None:
        """Raise :class:`InvalidArgumentError` unless ``v`` fits this operator.

        ``ndim=1`` expects an (n,) vector, ``ndim=2`` an (n, m) block.
        """
        if not isinstance(v, torch.Tensor):
            raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        want = "(n,)" if ndim == 1 else "(n, m)"
        if v.ndim != ndim or v.shape[0] != self.size:
            raise InvalidArgumentError(
                f"{name} must have shape {want} with n = {self.size} (the operator size), "
                f"got {tuple(v.shape)}"
            )
        if v.dtype != self.dtype:
            raise InvalidArgumentError(
                f"{name} has dtype {v.dtype} but the operator works in {self.dtype}; "
                f"convert it with {name}.to({self.dtype})"
            )
        if v.device != self.device:
            raise InvalidArgumentError(
                f"{name} is on {v.device} but the operator is on {self.device}; "
                f"move it with {name}.to('{self.device}')"
            )

    def to_dense(self, *, max_size: int = DENSE_SIZE_LIMIT, chunk: int = 64) -> torch.Tensor:
        """The explicit n×n matrix, built from ``matmat`` on blocks of identity columns.

        Costs n matvecs and n² memory, so sizes above ``max_size`` are refused.
        """
        n = self.size
        if n > max_size:
            gib = n * n * torch.finfo(self.dtype).bits / 8 / 2**30
            raise OperatorTooLargeError(
                f"to_dense() would build a {n}×{n} matrix ({gib:.1f} GiB, {n} matvecs), above "
                f"max_size={max_size}; pass a larger max_size if you mean it, or use lanczos/"
                "trace/spectral_density instead"
            )
        cols = []
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            block = torch.zeros(n, stop - start, dtype=self.dtype, device=self.device)
            block[torch.arange(start, stop), torch.arange(stop - start)] = 1
            cols.append(self.matmat(block))
        return torch.cat(cols, dim=1)

    def to_scipy(self) -> LinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` computing the same products.

        NumPy inputs are converted to this operator's dtype and device; outputs come back as
        NumPy arrays (float32 for half-precision operators, which NumPy cannot hold).
        """
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32

        def _apply(x: Any) -> Any:
            t = torch.as_tensor(np.asarray(x), device=self.device).to(self.dtype)
            out = self.matvec(t.reshape(-1)) if t.ndim == 1 or t.shape[1] == 1 else None
            if out is None:
                out = self.matmat(t)
            elif t.ndim == 2:
                out = out.reshape(-1, 1)
            return (
                out.detach()
                .to("cpu", torch.float64 if np_dtype is np.float64 else torch.float32)
                .numpy()
            )

        return LinearOperator(
            shape=self.shape,
            matvec=_apply,
            matmat=_apply,
            rmatvec=_apply,
            rmatmat=_apply,
            dtype=np_dtype,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, dtype={self.dtype}, device={self.device})"
