"""The library: the models Kvant knows about, kept in one JSON file written atomically."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ModelError


@dataclass(frozen=True, slots=True)
class LibraryEntry:
    """One registered model. ``path`` is its first (or only) GGUF file."""

    id: str
    name: str
    path: str
    source: str  # "default", "download", "convert", "import"
    size: int
    added: float = field(default_factory=time.time)
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Library:
    """Registered models, loaded from and saved to ``library.json``."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self._entries: dict[str, LibraryEntry] = {}
        if file.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            entries = [LibraryEntry(**e) for e in data.get("models", [])]
        except (OSError, ValueError, TypeError) as err:
            # keep the unreadable file for the user instead of overwriting it later
            backup = self.file.with_name(self.file.name + f".broken-{int(time.time())}")
            self.file.replace(backup)
            raise ModelError(
                f"the library file {self.file} could not be read ({err}); it was moved to {backup.name} "
                "and a new, empty library started"
            ) from None
        self._entries = {e.id: e for e in entries}

    def save(self) -> None:
        payload = {"version": 1, "models": [e.to_dict() for e in self._entries.values()]}
        atomic_write_text(self.file, json.dumps(payload, indent=2, ensure_ascii=False))

    def entries(self) -> list[LibraryEntry]:
        return sorted(self._entries.values(), key=lambda e: e.added)

    def get(self, id_or_name: str) -> LibraryEntry | None:
        if id_or_name in self._entries:
            return self._entries[id_or_name]
        for e in self._entries.values():
            if e.name == id_or_name or Path(e.path).name == id_or_name:
                return e
        return None

    def add(self, entry: LibraryEntry) -> LibraryEntry:
        self._entries[entry.id] = entry
        self.save()
        return entry

    def remove(self, id_: str) -> None:
        if self._entries.pop(id_, None) is None:
            raise ModelError(f"no model with id {id_!r} in the library")
        self.save()


def register_file(library: Library, path: Path, source: str = "import") -> LibraryEntry:
    """Add a GGUF file the user opened to the library (validating its header first)."""
    from engine.gguf import read_model_info

    info = read_model_info(path)
    first = Path(info.shards[0])
    existing = next((e for e in library.entries() if Path(e.path) == first), None)
    if existing is not None:
        return existing
    entry_id = first.name.removesuffix(".gguf")
    if library.get(entry_id) is not None:
        entry_id = f"{entry_id}-{uuid.uuid4().hex[:6]}"
    return library.add(
        LibraryEntry(id=entry_id, name=info.name, path=str(first), source=source, size=info.file_size)
    )
