"""System memory, swap, free disk at the models folder and Apple-silicon unified memory."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from engine.errors import HardwareError
from engine.hardware.units import gib

#: Share of unified memory macOS lets the GPU use by default. An estimate: Metal's
#: ``recommendedMaxWorkingSetSize`` is about two thirds of RAM on small Macs and about
#: three quarters on large ones, and the user can raise it (``iogpu.wired_limit_mb``).
APPLE_GPU_BUDGET_FRACTION = 0.70


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """RAM and swap in bytes, as the OS reports them right now."""

    total_bytes: int
    available_bytes: int
    swap_total_bytes: int
    swap_free_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_bytes": self.total_bytes,
            "available_bytes": self.available_bytes,
            "swap_total_bytes": self.swap_total_bytes,
            "swap_free_bytes": self.swap_free_bytes,
            "total_gib": gib(self.total_bytes),
            "available_gib": gib(self.available_bytes),
            "swap_total_gib": gib(self.swap_total_bytes),
            "swap_free_gib": gib(self.swap_free_bytes),
        }


@dataclass(frozen=True, slots=True)
class DiskInfo:
    """Space on the file system that holds ``path`` (the models folder).

    When ``path`` does not exist yet the numbers are those of ``measured_path``, its
    nearest existing parent, which is where the folder will be created.
    """

    path: Path
    measured_path: Path
    total_bytes: int
    free_bytes: int

    @property
    def path_exists(self) -> bool:
        return self.path == self.measured_path

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "measured_path": str(self.measured_path),
            "path_exists": self.path_exists,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "total_gib": gib(self.total_bytes),
            "free_gib": gib(self.free_bytes),
        }


@dataclass(frozen=True, slots=True)
class UnifiedMemoryInfo:
    """Apple-silicon unified memory: the GPU shares RAM with the CPU.

    ``gpu_budget_bytes`` is an *estimate* (:data:`APPLE_GPU_BUDGET_FRACTION` of RAM) of how
    much of it Metal lets the GPU use; it is not measured.
    """

    total_bytes: int
    gpu_budget_bytes: int
    budget_fraction: float = APPLE_GPU_BUDGET_FRACTION
    note: str = (
        "estimate: macOS lets the GPU use about 65-75% of unified memory by default "
        "(raise it with sysctl iogpu.wired_limit_mb)"
    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_bytes": self.total_bytes,
            "gpu_budget_bytes": self.gpu_budget_bytes,
            "total_gib": gib(self.total_bytes),
            "gpu_budget_gib": gib(self.gpu_budget_bytes),
            "budget_fraction": self.budget_fraction,
            "estimate": True,
            "note": self.note,
        }


def detect_memory() -> MemoryInfo:
    """RAM and swap now. Raises :class:`HardwareError` if the OS will not say."""
    try:
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
    except Exception as err:  # psutil raises assorted OS errors on exotic systems
        raise HardwareError(f"could not read the amount of memory: {err}") from err
    if vm.total <= 0:
        raise HardwareError("could not read the amount of memory: the OS reported 0 bytes of RAM")
    return MemoryInfo(
        total_bytes=int(vm.total),
        available_bytes=int(vm.available),
        swap_total_bytes=int(sw.total),
        swap_free_bytes=int(sw.free),
    )


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent."""
    path = Path(path).expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    raise HardwareError(f"no part of {path} exists, so its free disk space cannot be measured")


def detect_disk(path: Path) -> DiskInfo:
    """Free space where ``path`` lives (or will live). Raises :class:`HardwareError` on failure."""
    path = Path(path).expanduser().absolute()
    measured = nearest_existing(path)
    try:
        usage = psutil.disk_usage(str(measured))
    except (OSError, psutil.Error) as err:
        raise HardwareError(f"could not read the free disk space at {measured}: {err}") from err
    return DiskInfo(
        path=path, measured_path=measured, total_bytes=int(usage.total), free_bytes=int(usage.free)
    )


def detect_unified_memory(
    total_bytes: int, *, system: str | None = None, machine: str | None = None
) -> UnifiedMemoryInfo | None:
    """Unified memory on Apple silicon (darwin + arm64), else None."""
    system = sys.platform if system is None else system
    machine = platform.machine() if machine is None else machine
    if system != "darwin" or machine.lower() != "arm64":
        return None
    return UnifiedMemoryInfo(
        total_bytes=total_bytes, gpu_budget_bytes=int(total_bytes * APPLE_GPU_BUDGET_FRACTION)
    )
