"""An operator defined by a Python function."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.operators.base import CurvatureOperator

__all__ = ["LambdaOperator"]


class LambdaOperator(CurvatureOperator):
    """A :class:`CurvatureOperator` whose product is ``matvec(v)``.

    The operator is the n×n matrix A with A v = ``matvec(v)``; ``LambdaOperator(size=1000,
    matvec=lambda v: 2.0 * v)`` is 2·I on R¹⁰⁰⁰. The function must represent a symmetric
    matrix; the algorithms rely on it. An optional ``matmat`` serves (n, m) blocks in one call
    (otherwise a block costs m calls of ``matvec``). Inputs are checked (shape, dtype, device)
    before the function is called, and its output's shape after.

    Cost: one call of the function per product, nothing else; no memory besides its output.

    Args:
        size: the dimension n (a positive int).
        matvec: ``matvec(v) -> A v`` for an (n,) tensor.
        matmat: optional ``matmat(V) -> A V`` for an (n, m) tensor.
        dtype: the vectors' dtype (default: ``torch.get_default_dtype()``).
        device: the vectors' device (default CPU).

    Example:
        >>> import torch
        >>> from hessian_eigenthings.operators import LambdaOperator
        >>> d = torch.tensor([4.0, 1.0, 0.5], dtype=torch.float64)
        >>> A = LambdaOperator(3, lambda v: d * v, matmat=lambda V: d[:, None] * V,
        ...                    dtype=torch.float64)
        >>> A.size, A.dtype
        (3, torch.float64)
        >>> A @ torch.ones(3, dtype=torch.float64)
        tensor([4.0000, 1.0000, 0.5000], dtype=torch.float64)
        >>> torch.equal(A.to_dense(), torch.diag(d))
        True
    """

    def __init__(
        self,
        size: int,
        matvec: Callable[[torch.Tensor], torch.Tensor],
        *,
        matmat: Callable[[torch.Tensor], torch.Tensor] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidArgumentError(f"size must be a positive int, got {size!r}")
        if not callable(matvec):
            raise InvalidArgumentError("matvec must be a callable taking an (n,) tensor")
        self._size = size
        self._matvec = matvec
        self._matmat = matmat
        self._dtype = dtype if dtype is not None else torch.get_default_dtype()
        self._device = torch.device(device)

    @property
    def size(self) -> int:
        return self._size

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.check_vector(v)
        return self._checked(self._matvec(v), (self._size,), "matvec")

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        if self._matmat is None:
            return super().matmat(V)
        self.check_vector(V, "V", ndim=2)
        return self._checked(self._matmat(V), tuple(V.shape), "matmat")

    def _checked(self, out: torch.Tensor, shape: tuple[int, ...], what: str) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidArgumentError(
                f"the {what} function of this LambdaOperator returned {got}, expected a tensor of "
                f"shape {shape}"
            )
        return out.to(self._dtype)
