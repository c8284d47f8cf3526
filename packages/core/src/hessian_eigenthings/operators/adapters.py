"""Turn what users pass to an algorithm (an operator, a dense tensor, a SciPy operator) into a
:class:`CurvatureOperator`."""

from __future__ import annotations

from typing import Any

import torch

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.operators.base import CurvatureOperator
from hessian_eigenthings.operators.lambda_operator import LambdaOperator

__all__ = ["as_operator"]


def as_operator(obj: Any) -> CurvatureOperator:
    """Return ``obj`` as a :class:`CurvatureOperator`.

    Accepts a :class:`CurvatureOperator` (returned unchanged), a square 2-D ``torch.Tensor``
    (products are ``A @ v``, in the tensor's dtype and on its device), or anything with
    ``shape`` and ``matvec`` such as a ``scipy.sparse.linalg.LinearOperator`` or a NumPy array
    (wrapped in float64 on the CPU). The matrix is assumed symmetric, as the algorithms need.

    Cost: free to build; a product costs what the wrapped object's costs (n² for a dense
    tensor), plus a NumPy round trip for SciPy operators. No copy of a dense matrix is made.

    Args:
        obj: the operator, matrix or SciPy linear operator.

    Returns:
        A :class:`CurvatureOperator` with the same products.

    Raises:
        InvalidArgumentError: ``obj`` is none of these, or not square.

    Example:
        >>> import numpy as np
        >>> import torch
        >>> from hessian_eigenthings.operators import as_operator
        >>> A = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
        >>> op = as_operator(A)
        >>> op.size, op.dtype
        (2, torch.float32)
        >>> torch.equal(op @ torch.tensor([1.0, -1.0]), A @ torch.tensor([1.0, -1.0]))
        True
        >>> as_operator(op) is op
        True
        >>> sp = as_operator(np.diag([3.0, 1.0]))  # NumPy / SciPy: float64 on the CPU
        >>> sp @ torch.ones(2, dtype=torch.float64)
        tensor([3., 1.], dtype=torch.float64)
    """
    if isinstance(obj, CurvatureOperator):
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.ndim != 2 or obj.shape[0] != obj.shape[1]:
            raise InvalidArgumentError(
                f"a dense operator must be a square 2-D tensor, got shape {tuple(obj.shape)}"
            )
        A = obj
        return LambdaOperator(
            size=A.shape[0],
            matvec=lambda v: A @ v,
            matmat=lambda V: A @ V,
            dtype=A.dtype,
            device=A.device,
        )
    shape = getattr(obj, "shape", None)
    if shape is not None and len(shape) == 2 and shape[0] == shape[1]:
        import numpy as np
        from scipy.sparse.linalg import aslinearoperator

        lin = aslinearoperator(obj)

        def _mv(v: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.asarray(lin.matvec(v.numpy()), dtype=np.float64).reshape(-1))

        def _mm(V: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(np.asarray(lin.matmat(V.numpy()), dtype=np.float64))

        return LambdaOperator(size=int(shape[0]), matvec=_mv, matmat=_mm, dtype=torch.float64)
    raise InvalidArgumentError(
        "operator must be a CurvatureOperator, a square torch.Tensor or a square "
        f"scipy.sparse.linalg.LinearOperator, got {type(obj).__name__}"
    )
