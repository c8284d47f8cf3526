"""HuggingFace Transformers integration for hessian-eigenthings.

Loss helpers for causal and encoder-decoder LMs in the shapes the curvature operators take
(``hf_lm_loss`` for :class:`~hessian_eigenthings.HessianOperator`; ``hf_lm_forward`` with
``hf_lm_loss_of_output`` / ``hf_lm_shifted_ce`` for the GGN and Fisher operators), each
weighting batches by their number of valid tokens and running SDPA attention on a twice
differentiable backend; and CLI loaders for local checkpoints, configs and token files.
"""

from hessian_eigenthings_hf.attention import attention_implementations, differentiable_attention
from hessian_eigenthings_hf.losses import (
    LMForward,
    ModelLoss,
    TokenCrossEntropy,
    hf_lm_forward,
    hf_lm_loss,
    hf_lm_loss_of_output,
    hf_lm_shifted_ce,
    hf_seq2seq_forward,
    hf_seq2seq_loss,
    hf_seq2seq_loss_of_output,
)
from hessian_eigenthings_hf.targets import IGNORE_INDEX, causal_lm_targets, seq2seq_targets

__version__ = "0.1.0"
"""The version of the ``hessian-eigenthings-hf`` distribution.

Example:
    >>> from importlib.metadata import version
    >>> import hessian_eigenthings_hf
    >>> hessian_eigenthings_hf.__version__ == version("hessian-eigenthings-hf")
    True
"""

__all__ = [
    "IGNORE_INDEX",
    "LMForward",
    "ModelLoss",
    "TokenCrossEntropy",
    "__version__",
    "attention_implementations",
    "causal_lm_targets",
    "differentiable_attention",
    "hf_lm_forward",
    "hf_lm_loss",
    "hf_lm_loss_of_output",
    "hf_lm_shifted_ce",
    "hf_seq2seq_forward",
    "hf_seq2seq_loss",
    "hf_seq2seq_loss_of_output",
    "seq2seq_targets",
]
