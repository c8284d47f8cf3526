"""Explicit Hessian matrices of small models: of the model's outputs, or of a loss.

For parameters θ ∈ ℝⁿ (the named or all trainable parameters, flattened in
``model.named_parameters()`` order — the same layout as the operators' vectors):

* :func:`model_hessian_matrix` — ∂²f_o/∂θ² for every output entry o of ``model(*inputs)``,
  shape ``(*output.shape, n, n)``; e.g. a batch of 2 with 4 outputs and 8 parameters gives
  ``(2, 4, 8, 8)``.
* :func:`loss_hessian_matrix` — ∂²ℓ/∂θ² of ``criterion(model(*inputs), target)``, shape
  ``(n, n)``.
* ``diagonal=True`` returns only the diagonals (``(*output.shape, n)`` and ``(n,)``) without
  forming an n×n matrix; :func:`hessian_blocks` splits a matrix into ``{P: {Q: block}}`` by
  parameter name.

How: for a scalar s(θ) the Hessian is built as reverse-over-reverse, ``vjp(grad(s))`` applied
to the identity in chunks (what ``jacrev(grad(s))`` does). A model Hessian is that, vmapped
over the output basis vectors e with s(θ) = ⟨f(θ), e⟩. Cost: n (chunked) Hessian-vector
products per scalar, one more factor of the output size for model Hessians; memory n² per
scalar. On torch 2.15, ``torch.func.hessian`` and ``jacrev(jacrev(·))`` (and jacfwd/jacrev
compositions of the model's Jacobian) return wrong, non-symmetric blocks when a LayerNorm acts
on parameter-dependent activations; the construction used here agrees with plain double
backward there (``tests/core/test_dense.py``).

Parameters are swapped in with :func:`torch.func.functional_call`; weights tied under several
names are one parameter (as ``named_parameters()`` reports them) and every use counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vjp, vmap

from hessian_eigenthings.errors import InvalidArgumentError
from hessian_eigenthings.operators.model_state import check_model_modes

__all__ = ["hessian_blocks", "loss_hessian_matrix", "model_hessian_matrix"]

#: Hessian-vector products vmapped at once while assembling a matrix (bounds peak memory).
CHUNK = 256


def _as_inputs(inputs: Any) -> tuple[Any, ...]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, tuple | list):
        return tuple(inputs)
    raise InvalidArgumentError(
        "inputs must be a tensor or a tuple of tensors (the model's positional arguments), "
        f"got {type(inputs).__name__}"
    )


def _selected(model: nn.Module, params: Sequence[str] | None) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs in ``named_parameters()`` order; aliases map to one name."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    canonical = dict(model.named_parameters())
    if params is None:
        pairs = [(n, p) for n, p in canonical.items() if p.requires_grad]
        if not pairs:
            raise InvalidArgumentError(
                "the model has no trainable parameters; pass params=[...] to name some"
            )
        return pairs
    if isinstance(params, str) or not all(isinstance(n, str) for n in params):
        raise InvalidArgumentError(
            f"params must be a list of parameter names such as ['fc.weight'], got {params!r}"
        )
    first_name = {id(p): n for n, p in canonical.items()}
    every = dict(model.named_parameters(remove_duplicate=False))
    unknown = [n for n in params if n not in every]
    if unknown:
        raise InvalidArgumentError(
            f"params names {unknown} are not parameters of the model; its parameters are "
            f"{list(canonical)[:12]}"
        )
    wanted = {first_name[id(every[n])] for n in params}
    if len(wanted) != len(params):
        raise InvalidArgumentError(f"params lists a parameter more than once: {list(params)}")
    return [(n, p) for n, p in canonical.items() if n in wanted]


def _flat_function(
    model: nn.Module, params: Sequence[str] | None, fn: Callable[[Any], torch.Tensor]
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """``f(θ) = fn(model(*inputs) with the selected parameters set to θ)`` and θ itself."""
    pairs = _selected(model, params)
    check_model_modes(model, warned=[True])
    stochastic = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
    ]
    if stochastic:
        raise InvalidArgumentError(
            f"dropout module(s) {stochastic} are active, so the Hessian is random; call "
            "model.eval() first"
        )
    names = [n for n, _ in pairs]
    shapes = [p.shape for _, p in pairs]
    numels = [p.numel() for _, p in pairs]
    dtypes = {p.dtype for _, p in pairs}
    if len(dtypes) > 1:
        raise InvalidArgumentError(
            f"the selected parameters mix dtypes {sorted(map(str, dtypes))}; select one kind"
        )
    theta = torch.cat([p.detach().reshape(-1) for _, p in pairs])

    def f(flat: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(flat, numels)
        new = {n: t.view(s) for n, t, s in zip(names, pieces, shapes, strict=True)}
        return fn(lambda *args: functional_call(model, new, args))

    return f, theta


def _scalar_hessian(
    s: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, *, diagonal: bool
) -> torch.Tensor:
    """∇²s(θ) as (n, n), or its diagonal (n,), from chunks of reverse-over-reverse products."""
    n = theta.numel()
    hvp = vjp(grad(s), theta)[1]  # hvp(u) = ∇²s · u (the Hessian is symmetric)
    pieces = []
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        basis = torch.zeros(stop - start, n, dtype=theta.dtype, device=theta.device)
        rows = torch.arange(stop - start, device=theta.device)
        basis[rows, rows + start] = 1
        (block,) = vmap(hvp)(basis)
        pieces.append(block[rows, rows + start] if diagonal else block)
    return torch.cat(pieces)


def _check_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise InvalidArgumentError(f"{what} must be a tensor, got {type(value).__name__}")
    return value


def model_hessian_matrix(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    params: Sequence[str] | None = None,
    *,
    diagonal: bool = False,
) -> torch.Tensor:
    """The Hessian of every output entry of ``model(*inputs)`` with respect to parameters.

    Args:
        model: a module returning one tensor.
        inputs: a tensor, or a tuple of tensors passed as separate positional arguments.
        params: parameter names (``None``: every trainable parameter); rows and columns follow
            ``model.named_parameters()`` order.
        diagonal: return only the diagonals.

    Returns:
        ``(*output.shape, n, n)``, or ``(*output.shape, n)`` with ``diagonal=True``.

    Example:
        Two stacked scalar weights compute f(x) = w₂ w₁ x, whose Hessian in (w₁, w₂) is
        [[0, x], [x, 0]]:

        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.dense import model_hessian_matrix
        >>> model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
        >>> model = model.double()
        >>> x = torch.tensor([[3.0], [-1.0]], dtype=torch.float64)  # a batch of 2
        >>> H = model_hessian_matrix(model, x)
        >>> H.shape  # (batch, outputs, n, n)
        torch.Size([2, 1, 2, 2])
        >>> H[0, 0]
        tensor([[0., 3.],
                [3., 0.]], dtype=torch.float64)
        >>> model_hessian_matrix(model, x, diagonal=True).shape
        torch.Size([2, 1, 2])
    """
    args = _as_inputs(inputs)
    out_fn, theta = _flat_function(
        model, params, lambda call: _check_tensor(call(*args), "the model's output")
    )
    with torch.no_grad():
        out_shape = out_fn(theta).shape
    basis = torch.eye(out_shape.numel(), dtype=theta.dtype, device=theta.device)

    def entry_hessian(e: torch.Tensor) -> torch.Tensor:
        return _scalar_hessian(
            lambda t: (out_fn(t).reshape(-1) * e).sum(), theta, diagonal=diagonal
        )

    with torch.no_grad():  # torch.func still differentiates; no graph to unselected params
        H = vmap(entry_hessian)(basis)
    return H.reshape(*out_shape, *H.shape[1:])


def loss_hessian_matrix(
    model: nn.Module,
    criterion: Callable[[torch.Tensor, Any], torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    target: Any,
    params: Sequence[str] | None = None,
    *,
    diagonal: bool = False,
) -> torch.Tensor:
    """The Hessian of ``criterion(model(*inputs), target)`` with respect to parameters.

    Args:
        model: a module returning one tensor.
        criterion: ``criterion(output, target) -> scalar`` (e.g. ``torch.nn.MSELoss()``).
        inputs: a tensor, or a tuple of tensors passed as separate positional arguments.
        target: the criterion's second argument.
        params: parameter names (``None``: every trainable parameter), in
            ``model.named_parameters()`` order.
        diagonal: return only the diagonal.

    Returns:
        ``(n, n)``, or ``(n,)`` with ``diagonal=True``.

    Example:
        The mean squared error of a linear model has the Hessian (2/N) XᵀX:

        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.dense import loss_hessian_matrix
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(2, 1).double()
        >>> X = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> H = loss_hessian_matrix(model, nn.MSELoss(), X, y, params=["weight"])
        >>> torch.allclose(H, 2 / 4 * X.T @ X)
        True
        >>> loss_hessian_matrix(model, nn.MSELoss(), X, y).shape  # weight and bias
        torch.Size([3, 3])
    """
    args = _as_inputs(inputs)

    def loss(call: Callable[..., Any]) -> torch.Tensor:
        value = _check_tensor(criterion(call(*args), target), "criterion's result")
        if value.ndim != 0:
            raise InvalidArgumentError(
                f"criterion must return a scalar, got shape {tuple(value.shape)}; use a "
                "mean- or sum-reduced loss"
            )
        return value

    f, theta = _flat_function(model, params, loss)
    with torch.no_grad():  # torch.func still differentiates; no graph to unselected params
        return _scalar_hessian(f, theta, diagonal=diagonal)


def hessian_blocks(
    matrix: torch.Tensor, model: nn.Module, params: Sequence[str] | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """Split ``(..., n, n)`` Hessians into named blocks ``blocks[P][Q]`` of shape
    ``(..., *P.shape, *Q.shape)``.

    ``model`` and ``params`` must be those the matrix was built with (or the operator's
    selection, for ``operator.to_dense()``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from hessian_eigenthings.dense import hessian_blocks, loss_hessian_matrix
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Linear(2, 1).double()  # weight (1, 2), bias (1,)
        >>> X = torch.randn(4, 2, dtype=torch.float64)
        >>> y = torch.randn(4, 1, dtype=torch.float64)
        >>> blocks = hessian_blocks(loss_hessian_matrix(model, nn.MSELoss(), X, y), model)
        >>> blocks["weight"]["weight"].shape, blocks["weight"]["bias"].shape
        (torch.Size([1, 2, 1, 2]), torch.Size([1, 2, 1]))
        >>> blocks["bias"]["bias"]  # ∂²/∂b² of the mean of (x·w + b − y)² is 2
        tensor([[2.]], dtype=torch.float64)
    """
    pairs = _selected(model, params)
    n = sum(p.numel() for _, p in pairs)
    if matrix.ndim < 2 or matrix.shape[-2:] != (n, n):
        raise InvalidArgumentError(
            f"matrix must end in ({n}, {n}) for these parameters, got {tuple(matrix.shape)}"
        )
    lead = matrix.shape[:-2]
    offsets = [0]
    for _, p in pairs:
        offsets.append(offsets[-1] + p.numel())
    out: dict[str, dict[str, torch.Tensor]] = {}
    for i, (name_p, p) in enumerate(pairs):
        row = matrix[..., offsets[i] : offsets[i + 1], :]
        out[name_p] = {
            name_q: row[..., offsets[j] : offsets[j + 1]].reshape(*lead, *p.shape, *q.shape)
            for j, (name_q, q) in enumerate(pairs)
        }
    return out
