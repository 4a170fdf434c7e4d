"""Kvant's one error hierarchy.

Every error the engine raises on purpose derives from :class:`KvantError`, so a caller
(the CLI, the GUI worker) can catch one type and show ``str(err)``, which is always a
complete sentence that says what went wrong and where.
"""

from __future__ import annotations


class KvantError(Exception):
    """Base class of every error Kvant raises on purpose."""


class Cancelled(KvantError):
    """A long operation stopped because its cancel token was set."""


class GGUFError(KvantError):
    """A GGUF file is malformed, truncated, hostile or cannot be written."""


class QuantError(KvantError):
    """Quantization or dequantization was asked something it cannot do."""


class HardwareError(KvantError):
    """Hardware detection failed in a way that is not a normal "not present" result."""


class ModelError(KvantError):
    """A model cannot be found, registered or loaded."""


class DiskSpaceError(KvantError):
    """There is not enough free disk space for an operation; nothing was written."""


class TemplateError(KvantError):
    """A chat template is malformed, unsafe, or cannot render the given messages."""
