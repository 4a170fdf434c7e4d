"""Numba's on-disk kernel cache, keyed by the kernels' own sources.

Numba checks a cached kernel only against the file that defines it.  A kernel that calls or
inlines code from another file (the SIMD intrinsics of :mod:`engine.runtime.kernels.simd`, the fp16
helpers of :mod:`engine.quant._common`, ...) keeps its stale machine code when only that other file
changes, and silently computes the old arithmetic.  So every kernel cache lives in a directory
named after a hash of all kernel sources (:data:`KERNEL_DIRS`): any change to any of them starts a
fresh cache, and the caches of earlier sources are removed.

The directory is ``engine/__pycache__/numba-<hash>`` when the package is writable (where Numba
itself would put it), else ``<user cache>/kvant/numba-<hash>``.  ``NUMBA_CACHE_DIR``, when set,
wins and is left alone.  Importing this module configures Numba; both kernel option sets below come
from here, so every kernel module imports it before it defines a kernel.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

ENGINE = Path(__file__).resolve().parent
KERNEL_DIRS = ("quant", "runtime/kernels", "runtime/cuda")

# Kernel decorators: every kernel is cached on disk, releases the GIL, and never uses fastmath
# (the kernels must agree with their NumPy references to float rounding).
KERNEL = {"cache": True, "nogil": True}
INLINE = {"cache": True, "nogil": True, "inline": "always"}


def sources_hash(root: Path = ENGINE, dirs: tuple[str, ...] = KERNEL_DIRS) -> str:
    """A short hash of every ``.py`` file under ``root/dirs`` (paths and contents) and this file."""
    h = hashlib.sha256()
    files = sorted(p for d in dirs for p in (root / d).rglob("*.py"))
    for p in [*files, Path(__file__)]:
        h.update(str(p.relative_to(root) if p.is_relative_to(root) else p.name).encode())
        h.update(b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _user_cache() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "kvant"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "kvant"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvant"


def cache_dir(digest: str, parents: tuple[Path, ...] | None = None) -> Path:
    """Where kernels compiled from sources with this hash are cached (created if needed): the
    first writable of ``parents`` (the package's ``__pycache__``, then the user cache)."""
    for parent in parents or (ENGINE / "__pycache__", _user_cache()):
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if not os.access(parent, os.W_OK):
                continue
            path = parent / f"numba-{digest}"
            path.mkdir(exist_ok=True)
        except OSError:
            continue
        for old in parent.glob("numba-*"):  # caches of earlier sources
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        return path
    raise OSError("no writable directory for the kernel cache")


def configure() -> None:
    """Point Numba's cache at :func:`cache_dir` unless NUMBA_CACHE_DIR is set.  The environment
    variable is set too: Numba re-reads its configuration from the environment whenever a NUMBA_*
    variable changes (NUMBA_ENABLE_CUDASIM, say), which would otherwise drop a setting made only
    in ``numba.config``."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    # nothing writable: Numba's own choice (it warns and compiles every time)
    with contextlib.suppress(OSError):
        os.environ["NUMBA_CACHE_DIR"] = path = str(cache_dir(sources_hash()))
        from numba import config

        config.CACHE_DIR = path


@contextlib.contextmanager
def on_compile(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, call ``callback()`` once when Numba starts compiling a kernel on this
    thread: a kernel missing from the cache (a first run, or new kernel sources).  Loading a cached
    kernel does not count.  The callback runs inside Numba's compiler: it must not raise."""
    from numba.core import event

    thread = threading.get_ident()
    fired = False

    class _First(event.Listener):
        def on_start(self, ev) -> None:
            nonlocal fired
            if not fired and threading.get_ident() == thread:
                fired = True
                with contextlib.suppress(Exception):
                    callback()

        def on_end(self, ev) -> None:
            pass

    with event.install_listener("numba:compile", _First()):
        yield


configure()
