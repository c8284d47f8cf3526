"""Example plugin: the batch-gradient outer-product operator."""

from eigenthings_gop.operator import GradientOuterProductOperator

__all__ = ["GradientOuterProductOperator"]
