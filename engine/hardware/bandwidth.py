"""A short memory-bandwidth probe, cached per machine.

:func:`measure_bandwidth` sums a ~256 MiB buffer of ``uint64`` a few times, with one
thread and with all usable threads, and keeps the best pass of each. With the default
settings it costs well under a second (plus a one-off numba compile of ~0.5 s that numba
caches on disk). :func:`cached_bandwidth` stores the result in a JSON file under
``KvantPaths.cache`` keyed by :func:`bandwidth_cache_key`, so it is measured once per
machine unless asked to refresh.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import HardwareError
from engine.hardware.units import MIB

DEFAULT_BUFFER_BYTES = 256 * MIB
DEFAULT_REPEATS = 5
#: Seconds the timed passes may take in all (each measurement gets at least one pass).
DEFAULT_TIME_BUDGET_S = 1.0
#: The smallest buffer the probe uses, whatever it is asked.
MIN_BUFFER_BYTES = 64 * 1024
CACHE_FILE_NAME = "hardware-bandwidth.json"
CACHE_FORMAT = 1

#: A bandwidth measurement with no arguments, injectable into :func:`cached_bandwidth`.
BandwidthProbe = Callable[[], "BandwidthInfo"]


@dataclass(frozen=True, slots=True)
class BandwidthInfo:
    """Measured memory read bandwidth in bytes per second (best pass of ``repeats``).

    ``repeats`` is the number of timed passes actually made (the time budget can cut
    them short); ``method`` is ``"numba"`` (vectorised kernel) or ``"numpy"`` (fallback);
    ``measured_at`` is an ISO-8601 UTC time; ``cached`` says whether this came from the
    cache file rather than a fresh measurement.
    """

    single_thread_bytes_per_s: int
    all_threads_bytes_per_s: int
    threads: int
    buffer_bytes: int
    repeats: int
    method: str
    measured_at: str
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "single_thread_bytes_per_s": self.single_thread_bytes_per_s,
            "all_threads_bytes_per_s": self.all_threads_bytes_per_s,
            "single_thread_gb_per_s": round(self.single_thread_bytes_per_s / 1e9, 2),
            "all_threads_gb_per_s": round(self.all_threads_bytes_per_s / 1e9, 2),
            "threads": self.threads,
            "buffer_bytes": self.buffer_bytes,
            "repeats": self.repeats,
            "method": self.method,
            "measured_at": self.measured_at,
            "cached": self.cached,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, cached: bool = False) -> BandwidthInfo:
        """Rebuild from :meth:`to_dict` output; raises KeyError/TypeError/ValueError if malformed."""
        info = cls(
            single_thread_bytes_per_s=int(data["single_thread_bytes_per_s"]),
            all_threads_bytes_per_s=int(data["all_threads_bytes_per_s"]),
            threads=int(data["threads"]),
            buffer_bytes=int(data["buffer_bytes"]),
            repeats=int(data["repeats"]),
            method=str(data["method"]),
            measured_at=str(data["measured_at"]),
            cached=cached,
        )
        if info.single_thread_bytes_per_s <= 0 or info.all_threads_bytes_per_s <= 0 or info.threads < 1:
            raise ValueError("non-positive bandwidth in cache entry")
        return info


def bandwidth_cache_key(cpu_model: str, physical_cores: int, logical_cores: int, ram_total_bytes: int) -> str:
    """The per-machine cache key: CPU model, core counts and total RAM."""
    return f"{cpu_model} | {physical_cores}c/{logical_cores}t | {ram_total_bytes} B"


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _summer() -> tuple[Callable[[np.ndarray], int], str]:
    """The vectorised numba read-sum kernel, or numpy's reduction if numba is unusable."""
    try:
        from engine.hardware._kernels import read_sum

        read_sum(np.ones(8, dtype=np.uint64))  # compile, or load numba's on-disk cache
    except Exception:  # numba missing or unable to compile here: numpy also releases the GIL
        return (lambda a: int(np.add.reduce(a))), "numpy"
    return (lambda a: int(read_sum(a))), "numba"


def _ones_buffer(n_bytes: int) -> np.ndarray:
    """A uint64 buffer of ones, freed when the array is dropped.

    It is an anonymous mmap with transparent huge pages where the OS offers them:
    first-touching 256 MiB of 4 KiB pages can cost more than the whole measurement.
    """
    try:
        try:
            mapping = mmap.mmap(-1, n_bytes)
            if hasattr(mmap, "MADV_HUGEPAGE"):
                with contextlib.suppress(OSError):
                    mapping.madvise(mmap.MADV_HUGEPAGE)
            buf = np.frombuffer(mapping, dtype=np.uint64)  # the array keeps the mapping alive
        except (OSError, ValueError):
            buf = np.empty(n_bytes // 8, dtype=np.uint64)
        buf.fill(1)
    except MemoryError as err:
        raise HardwareError(f"not enough memory for the {n_bytes // MIB} MiB bandwidth probe buffer") from err
    return buf


def measure_bandwidth(
    *,
    threads: int | None = None,
    buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    repeats: int = DEFAULT_REPEATS,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
) -> BandwidthInfo:
    """Measure read bandwidth now (no cache). Raises :class:`HardwareError` if it cannot."""
    threads = max(1, threads if threads is not None else default_threads())
    repeats = max(1, repeats)
    n_bytes = max(MIN_BUFFER_BYTES, buffer_bytes, 8 * threads) // 8 * 8
    summer, method = _summer()

    buf = _ones_buffer(n_bytes)
    try:
        expected = buf.shape[0]
        if summer(buf) != expected:  # warm-up pass doubles as a self-check
            raise HardwareError("the memory-bandwidth probe read back a wrong sum")
        start = time.perf_counter()

        def out_of_time() -> bool:
            return time.perf_counter() - start > time_budget_s

        best_single = float("inf")
        passes = 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            summer(buf)
            best_single = min(best_single, time.perf_counter() - t0)
            passes += 1
            if out_of_time():
                break

        best_all = best_single
        if threads > 1:
            best_all = float("inf")
            multi_passes = 0
            chunks = np.array_split(buf, threads)
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kvant-bw") as pool:
                list(pool.map(summer, chunks))  # start the workers before timing
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    total = sum(pool.map(summer, chunks))
                    best_all = min(best_all, time.perf_counter() - t0)
                    if total != expected:
                        raise HardwareError("the memory-bandwidth probe read back a wrong sum")
                    multi_passes += 1
                    if out_of_time():
                        break
            del chunks
            passes = min(passes, multi_passes)
    finally:
        del buf

    return BandwidthInfo(
        single_thread_bytes_per_s=max(1, int(n_bytes / max(best_single, 1e-9))),
        all_threads_bytes_per_s=max(1, int(n_bytes / max(best_all, 1e-9))),
        threads=threads,
        buffer_bytes=n_bytes,
        repeats=passes,
        method=method,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _read_entries(cache_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_entry(cache_file: Path, key: str, info: BandwidthInfo) -> bool:
    """Store ``info`` under ``key`` atomically; False (not an error) if the cache is unwritable."""
    entries = _read_entries(cache_file)
    record = info.to_dict()
    record.pop("cached", None)
    entries[key] = record
    payload = json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=2, ensure_ascii=False)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".bandwidth-", suffix=".tmp", dir=cache_file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
            os.replace(tmp, cache_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return False
    return True


def cached_bandwidth(
    cache_file: Path,
    key: str,
    *,
    refresh: bool = False,
    measure: BandwidthProbe = measure_bandwidth,
) -> BandwidthInfo:
    """The cached measurement for ``key`` (``cached=True``), else measure and store it.

    ``refresh`` always re-measures. A missing, corrupt or unwritable cache file only means
    measuring again; it is never an error.
    """
    if not refresh:
        entry = _read_entries(cache_file).get(key)
        if isinstance(entry, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                return BandwidthInfo.from_dict(entry, cached=True)
    info = measure()
    _write_entry(cache_file, key, info)
    return info
