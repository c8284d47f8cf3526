"""TransformerLens integration for hessian-eigenthings.

* Loss helpers in each operator's shape: :func:`tlens_loss` (HessianOperator),
  :func:`tlens_forward` + :func:`tlens_loss_of_output` (GGN and Fisher operators). They are
  also reachable as ``hessian_eigenthings.tlens_loss`` etc. once this plugin is installed.
* TransformerLens names for any TransformerLens model (:func:`tlens_names`) and filters on
  them (:func:`tlens_param_filter`), so ``"blocks.*.attn"`` selects a ``TransformerBridge``'s
  attention parameters although its raw parameter names differ. The plugin hands these names
  to the core (:func:`tlens_param_namer`), so ``match_names("blocks.*.attn")`` works as well.
* Per-component curvature: :func:`component_operators`, :func:`component_spectra`.
* Config-built models and token files for the CLI (``--tlens``, ``--tlens-tokens``).

Supports TransformerLens ≥ 4 (``TransformerBridge``) and older releases
(``HookedTransformer``). Importing this package does not import transformer_lens.
"""

from hessian_eigenthings_tlens.batches import IGNORE_INDEX, TokenBatch, next_token_targets
from hessian_eigenthings_tlens.components import (
    ComponentSpec,
    component_operators,
    component_spectra,
)
from hessian_eigenthings_tlens.loaders import (
    load_tlens_model,
    load_token_batches,
    read_tlens_config,
)
from hessian_eigenthings_tlens.losses import (
    TLensCrossEntropy,
    TLensForward,
    TLensLoss,
    tlens_forward,
    tlens_loss,
    tlens_loss_of_output,
)
from hessian_eigenthings_tlens.models import build_tlens_model, tlens_version
from hessian_eigenthings_tlens.names import (
    TLensParamNames,
    tlens_names,
    tlens_param_filter,
    tlens_param_namer,
)

__version__ = "0.1.0"
"""The version of the ``hessian-eigenthings-tlens`` distribution.

Example:
    >>> from importlib.metadata import version
    >>> import hessian_eigenthings_tlens
    >>> hessian_eigenthings_tlens.__version__ == version("hessian-eigenthings-tlens")
    True
"""

__all__ = [
    "IGNORE_INDEX",
    "ComponentSpec",
    "TLensCrossEntropy",
    "TLensForward",
    "TLensLoss",
    "TLensParamNames",
    "TokenBatch",
    "__version__",
    "build_tlens_model",
    "component_operators",
    "component_spectra",
    "load_tlens_model",
    "load_token_batches",
    "next_token_targets",
    "read_tlens_config",
    "tlens_forward",
    "tlens_loss",
    "tlens_loss_of_output",
    "tlens_names",
    "tlens_param_filter",
    "tlens_param_namer",
    "tlens_version",
]
