"""hessian-eigenthings-triton: a Triton kernel for the cross-entropy loss-Hessian-vector product.

Installing the package registers the ``triton`` backend of
:func:`hessian_eigenthings.loss_fns.ce_hvp` through the plugin entry point
(:mod:`hessian_eigenthings_triton.plugin`); the kernel lives in
:mod:`hessian_eigenthings_triton.kernel`. Importing this package does not import triton.
"""
