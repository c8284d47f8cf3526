"""hessian-eigenthings-triton: a Triton kernel for the cross-entropy loss-Hessian-vector product.

Installing the package registers the ``triton`` backend of
:func:`hessian_eigenthings.loss_fns.ce_hvp` through the plugin entry point
(:mod:`hessian_eigenthings_triton.plugin`), so ``fused="auto"`` picks the kernel for CUDA
tensors. This namespace exports the backend's pieces: its product :func:`triton_fn`, its
availability test :func:`supports` and its :data:`PRIORITY`. The kernel itself lives in
:mod:`hessian_eigenthings_triton.kernel`. Importing this package does not import triton.
"""

from __future__ import annotations

from hessian_eigenthings_triton.plugin import PRIORITY, interpret_requested, supports, triton_fn

__version__ = "0.1.0"

__all__ = ["PRIORITY", "__version__", "interpret_requested", "supports", "triton_fn"]
