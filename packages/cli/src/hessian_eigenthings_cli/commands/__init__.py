"""The CLI's own commands; each module provides ``SPEC``, a :class:`CommandSpec`."""
