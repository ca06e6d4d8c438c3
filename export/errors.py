"""The export's own error: a checkpoint that cannot be exported."""

from __future__ import annotations

from repository.errors import VaeError


class ExportError(VaeError):
    """The export was refused (parity, fp16 or verification failed); nothing was written."""
