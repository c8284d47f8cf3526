"""Reproducible random vectors.

Randomness is always drawn on the CPU from a CPU ``torch.Generator`` and then moved to the
requested device and dtype. That makes results bit-identical across devices for a given seed,
and lets a CPU generator serve CUDA tensors (``torch.randn(..., device="cuda",
generator=cpu_gen)`` is an error in torch).
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch

from hessian_eigenthings.errors import InvalidArgumentError

__all__ = ["Distribution", "SeedLike", "make_generator", "random_vectors"]

Distribution: TypeAlias = Literal["gaussian", "rademacher"]
"""Entries of random vectors: standard normal (``"gaussian"``) or ±1 with equal probability
(``"rademacher"``, the lower-variance choice for Hutchinson-type trace estimates).

Example:
    >>> import torch
    >>> from hessian_eigenthings.linalg import make_generator, random_vectors
    >>> v = random_vectors(1000, generator=make_generator(0), dtype=torch.float64,
    ...                    device="cpu", distribution="rademacher")
    >>> sorted(set(v.tolist()))
    [-1.0, 1.0]
"""
SeedLike: TypeAlias = "int | torch.Generator | None"
"""What ``seed`` arguments accept; see :func:`make_generator`."""


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU generator from ``seed``.

    ``None`` draws a fresh non-deterministic seed; an ``int`` gives a reproducible stream; a
    generator is returned as is (it must be a CPU generator).

    Example:
        >>> import torch
        >>> from hessian_eigenthings import make_generator
        >>> a, b = make_generator(0), make_generator(0)
        >>> torch.equal(torch.randn(3, generator=a), torch.randn(3, generator=b))
        True
        >>> g = torch.Generator().manual_seed(1)
        >>> make_generator(g) is g  # a CPU generator is used as it is
        True
    """
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise InvalidArgumentError(
                f"generator must be a CPU torch.Generator, got one on {seed.device}; "
                "create it with torch.Generator() (randomness is drawn on the CPU and moved)"
            )
        return seed
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    elif isinstance(seed, int) and not isinstance(seed, bool):
        gen.manual_seed(seed)
    else:
        raise InvalidArgumentError(
            f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}"
        )
    return gen


def random_vectors(
    shape: int | tuple[int, ...],
    *,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device | str,
    distribution: Distribution = "gaussian",
) -> torch.Tensor:
    """Gaussian or Rademacher (±1) entries of ``shape``, drawn on the CPU, returned on ``device``.

    Draws in float64 for float64 requests and in float32 otherwise, so half-precision requests
    are rounded from a float32 draw.

    Example:
        >>> import torch
        >>> from hessian_eigenthings.linalg import make_generator, random_vectors
        >>> kw = dict(generator=make_generator(0), device="cpu")
        >>> v = random_vectors((2, 5), dtype=torch.float16, **kw)
        >>> v.shape, v.dtype
        (torch.Size([2, 5]), torch.float16)
        >>> w = random_vectors((2, 5), dtype=torch.float32, generator=make_generator(0),
        ...                    device="cpu")
        >>> torch.equal(v, w.half())  # rounded from the same float32 draw
        True
    """
    size = (shape,) if isinstance(shape, int) else tuple(shape)
    draw_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    if distribution == "gaussian":
        out = torch.randn(size, generator=generator, dtype=draw_dtype)
    elif distribution == "rademacher":
        out = torch.randint(0, 2, size, generator=generator).to(draw_dtype).mul_(2).sub_(1)
    else:
        raise InvalidArgumentError(
            f"distribution must be 'gaussian' or 'rademacher', got {distribution!r}"
        )
    return out.to(device=device, dtype=dtype)
