"""Dense float64 oracles built with torch.func, each guarded by a symmetry and a
finite-difference check (torch.func.hessian is wrong for LayerNorm's affine weight on this
torch, so the Hessian is built as jacrev(grad(f)))."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev

from tests.core.zoo import Batch, Case


def selected(model: nn.Module, names: Sequence[str] | None = None) -> list[str]:
    """Trainable parameter names in named_parameters() order (optionally a subset)."""
    out = [n for n, p in model.named_parameters() if p.requires_grad]
    return out if names is None else [n for n in out if n in set(names)]


def _flat_fn(
    model: nn.Module,
    names: list[str],
    fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    numels = [params[n].numel() for n in names]
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(flat: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(flat, numels)
        new = {n: t.view(s) for n, t, s in zip(names, pieces, shapes, strict=True)}
        return fn(model, new)

    return f, theta


def _check_hessian(
    f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, H: torch.Tensor
) -> None:
    assert torch.allclose(H, H.T, rtol=0, atol=1e-10 * max(1.0, H.abs().max().item())), (
        "oracle not symmetric"
    )
    g = torch.Generator().manual_seed(123)
    v = torch.randn(theta.shape, generator=g, dtype=theta.dtype)
    v = v / v.norm()
    eps = 1e-5
    gf = grad(f)
    fd = (gf(theta + eps * v) - gf(theta - eps * v)) / (2 * eps)
    err = (fd - H @ v).norm() / max((H @ v).norm().item(), 1e-12)
    assert err < 1e-6, f"oracle disagrees with finite differences (rel err {err:.2e})"


def dense_hessian(
    case: Case, names: Sequence[str] | None = None, batch: Batch | None = None
) -> torch.Tensor:
    """Hessian of the loss on ``batch`` (default: all data concatenated) w.r.t. ``names``."""
    data = case.full_batch if batch is None else batch
    sel = selected(case.model, names)

    def loss(model: nn.Module, new: dict[str, torch.Tensor]) -> torch.Tensor:
        return case.loss_of_output(functional_call(model, new, (data[0],)), data)

    f, theta = _flat_fn(case.model, sel, loss)
    H = jacrev(grad(f))(theta)
    _check_hessian(f, theta, H)
    return H


def dense_hessian_of(
    model: nn.Module,
    loss: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Hessian of any ``loss(model, params_dict)`` (call ``functional_call(model, params_dict,
    ...)`` inside) w.r.t. the trainable parameters ``names``, guarded like :func:`dense_hessian`."""
    f, theta = _flat_fn(model, selected(model, names), loss)
    H = jacrev(grad(f))(theta)
    _check_hessian(f, theta, H)
    return H


def dense_ggn(case: Case, names: Sequence[str] | None = None) -> torch.Tensor:
    """Jᵀ H_ℓ J on all data: J the Jacobian of the (flattened) outputs, H_ℓ the loss Hessian."""
    data = case.full_batch
    sel = selected(case.model, names)
    f_out, theta = _flat_fn(
        case.model, sel, lambda m, new: functional_call(m, new, (data[0],)).reshape(-1)
    )
    J = jacrev(f_out)(theta)
    out = f_out(theta).detach()
    shape = case.model(data[0]).shape

    def loss_of_flat(o: torch.Tensor) -> torch.Tensor:
        return case.loss_of_output(o.view(shape), data)

    H_loss = jacrev(grad(loss_of_flat))(out)
    _check_hessian(loss_of_flat, out, H_loss)
    G = J.T @ H_loss @ J
    assert torch.allclose(G, G.T, rtol=0, atol=1e-12 * max(1.0, G.abs().max().item()))
    return G


def per_sample_gradients(case: Case, names: Sequence[str] | None = None) -> torch.Tensor:
    """(N, n) gradients of each sample's loss (computed one sample at a time: an oracle)."""
    x, y = case.full_batch
    sel = selected(case.model, names)
    rows = []
    for i in range(x.shape[0]):
        sample = (x[i : i + 1], y[i : i + 1])

        def loss(model: nn.Module, new: dict[str, torch.Tensor], s: Batch = sample) -> torch.Tensor:
            return case.loss_of_output(functional_call(model, new, (s[0],)), s)

        f, theta = _flat_fn(case.model, sel, loss)
        rows.append(grad(f)(theta))
    return torch.stack(rows)


def dense_empirical_fisher(case: Case, names: Sequence[str] | None = None) -> torch.Tensor:
    """(1/N) Σᵢ gᵢ gᵢᵀ with gᵢ the gradient of sample i's loss."""
    G = per_sample_gradients(case, names)
    return G.T @ G / G.shape[0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / max(‖b‖, tiny)."""
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


def dense_loss_hessian(
    loss_of_output: Callable[[torch.Tensor, Batch], torch.Tensor],
    output: torch.Tensor,
    batch: Batch,
) -> torch.Tensor:
    """(K, K) Hessian of ``loss_of_output(·, batch)`` at ``output`` (K = output.numel()),
    by jacrev(grad) on the flattened output, guarded like :func:`dense_hessian`."""
    shape = output.shape

    def f(flat: torch.Tensor) -> torch.Tensor:
        return loss_of_output(flat.view(shape), batch)

    flat = output.detach().reshape(-1)
    H = jacrev(grad(f))(flat)
    _check_hessian(f, flat, H)
    return H
