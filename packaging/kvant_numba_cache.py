"""A Numba cache locator for the frozen app (named in ``NUMBA_CACHE_LOCATOR_CLASSES``).

Numba keys its on-disk cache by the absolute folder of each kernel's source file and, in a frozen
app, by the executable's stamp. Both are wrong for an installed bundle: an AppImage is mounted at a
new ``/tmp/.mount_*`` path on every launch (so the cache would never hit), and the executable stays
byte-identical when only the kernels' sources (shipped as ``.py`` next to it) change (so a stale
cache could be used). This locator files the cache under ``NUMBA_CACHE_DIR`` by the source's path
*inside the bundle*, stamped with the source's own content hash.

Imported by Numba only (it imports Numba); the frozen entry never imports it itself.
"""

from __future__ import annotations

import hashlib
import os
import sys

from numba.core import config
from numba.core.caching import _CacheLocator


def _bundle_root() -> str | None:
    root = getattr(sys, "_MEIPASS", None)
    return os.path.abspath(root) if root else None


class BundleCacheLocator(_CacheLocator):
    """Cache files for kernels whose source lies inside the PyInstaller bundle."""

    def __init__(self, py_func, py_file: str, rel_dir: str) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(config.CACHE_DIR, "bundle", rel_dir)

    def get_cache_path(self) -> str:
        return self._cache_path

    def get_source_stamp(self):
        with open(self._py_file, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()

    def get_disambiguator(self) -> str:
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file: str):
        root = _bundle_root()
        if not root or not config.CACHE_DIR or not os.path.isfile(py_file):
            return None
        rel_dir = os.path.relpath(os.path.dirname(os.path.abspath(py_file)), root)
        if rel_dir.startswith(os.pardir) or os.path.isabs(rel_dir):
            return None
        self = cls(py_func, py_file, rel_dir)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self
