"""User-facing errors: each carries one sentence that names the file, field or value at fault."""

from __future__ import annotations


class LatentLabError(Exception):
    """An error the user caused or can fix; its message is shown as one line, no traceback."""


class StoreError(LatentLabError):
    """An activation store is missing, damaged, incompatible or from a newer format."""


class ModelError(LatentLabError):
    """A model spec cannot be resolved or loaded."""


class HookError(LatentLabError):
    """A hook point name is unknown for the model at hand."""


class SourceError(LatentLabError):
    """A data source cannot be read."""
