"""The pluggy markers. The project name is also the entry-point group and the registry name."""

from __future__ import annotations

import pluggy

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "hessian_eigenthings"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorate a plugin's hook functions with this: ``@hookimpl def register_loss_fns(register): ...``
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
