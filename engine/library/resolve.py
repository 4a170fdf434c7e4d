"""Turn what a user typed (a path, a library id or name, "default") into a model file."""

from __future__ import annotations

from pathlib import Path

from engine.errors import ModelError
from engine.library.store import Library
from engine.paths import KvantPaths


def resolve_model(spec: str, paths: KvantPaths) -> Path:
    p = Path(spec).expanduser()
    if p.exists():
        return p
    from engine.library.default_model import DEFAULT_MODEL_ID

    library = Library(paths.library_file) if paths.library_file.exists() else None
    key = DEFAULT_MODEL_ID if spec == "default" else spec
    entry = library.get(key) if library is not None else None
    if entry is not None:
        if not Path(entry.path).exists():
            raise ModelError(f"{entry.name} is in the library but its file is gone: {entry.path}")
        return Path(entry.path)
    hint = " (run `python main.py setup` to prepare the default model)" if spec == "default" else ""
    raise ModelError(f"no model file or library entry named {spec!r}{hint}")
