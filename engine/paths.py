"""Where Kvant keeps its files.

Everything lives under one per-user folder, ``KVANT_HOME`` when set, else the
platform's user-data directory (``%LOCALAPPDATA%\\Kvant``, ``~/Library/Application
Support/Kvant``, ``$XDG_DATA_HOME/kvant`` or ``~/.local/share/kvant``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


def _platform_data_dir() -> Path:
    home = Path.home()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / "Kvant"
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / "Kvant"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else home / ".local" / "share") / "kvant"


@dataclass(frozen=True, slots=True)
class KvantPaths:
    """The folders Kvant uses; create them with :meth:`ensure`."""

    home: Path

    @classmethod
    def default(cls, env: dict[str, str] | None = None) -> KvantPaths:
        env = os.environ if env is None else env
        override = env.get("KVANT_HOME")
        return cls(Path(override).expanduser() if override else _platform_data_dir())

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    @property
    def library_file(self) -> Path:
        return self.home / "library.json"

    def ensure(self) -> KvantPaths:
        for folder in (self.home, self.models, self.cache):
            folder.mkdir(parents=True, exist_ok=True)
        return self
