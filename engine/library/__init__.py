"""Local models: the library file, the default model, resolving names to files."""

from engine.library.default_model import (
    DEFAULT_MODEL_ID,
    DEFAULT_MODEL_NAME,
    default_model_path,
    ensure_default_model,
)
from engine.library.resolve import resolve_model
from engine.library.store import Library, LibraryEntry, atomic_write_text, register_file

__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_MODEL_NAME",
    "Library",
    "LibraryEntry",
    "atomic_write_text",
    "default_model_path",
    "ensure_default_model",
    "register_file",
    "resolve_model",
]
