"""One call that describes the whole machine: :func:`detect`."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from typing import Any

from engine.errors import HardwareError
from engine.hardware import bandwidth as _bandwidth
from engine.hardware.bandwidth import (
    CACHE_FILE_NAME,
    DEFAULT_BUFFER_BYTES,
    MIN_BUFFER_BYTES,
    BandwidthInfo,
    BandwidthProbe,
    bandwidth_cache_key,
    cached_bandwidth,
)
from engine.hardware.cpu import CpuInfo, detect_cpu
from engine.hardware.gpu import GpuInfo, NvmlApi, detect_gpus
from engine.hardware.memory import (
    DiskInfo,
    MemoryInfo,
    UnifiedMemoryInfo,
    detect_disk,
    detect_memory,
    detect_unified_memory,
)
from engine.paths import KvantPaths


@dataclass(frozen=True, slots=True)
class HardwareInfo:
    """Everything Kvant knows about this machine.

    ``gpus`` is empty and ``gpu_note`` says why when there is no usable NVIDIA GPU;
    ``unified_memory`` is set on Apple silicon only; ``bandwidth`` is None (and
    ``bandwidth_note`` says why) when it was skipped or could not be measured.
    """

    system: str
    machine: str
    cpu: CpuInfo
    memory: MemoryInfo
    disk: DiskInfo
    gpus: tuple[GpuInfo, ...]
    gpu_note: str
    unified_memory: UnifiedMemoryInfo | None
    bandwidth: BandwidthInfo | None
    bandwidth_note: str = ""

    @property
    def total_vram_bytes(self) -> int:
        return sum(g.total_vram_bytes for g in self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "machine": self.machine,
            "cpu": self.cpu.to_dict(),
            "memory": self.memory.to_dict(),
            "disk": self.disk.to_dict(),
            "gpus": [g.to_dict() for g in self.gpus],
            "gpu_note": self.gpu_note,
            "unified_memory": None if self.unified_memory is None else self.unified_memory.to_dict(),
            "bandwidth": None if self.bandwidth is None else self.bandwidth.to_dict(),
            "bandwidth_note": self.bandwidth_note,
        }


def _probe_buffer_bytes(available_bytes: int) -> int:
    # Never take more than an eighth of the memory that is free right now.
    return max(MIN_BUFFER_BYTES, min(DEFAULT_BUFFER_BYTES, available_bytes // 8))


def detect(
    paths: KvantPaths | None = None,
    *,
    nvml: NvmlApi | None = None,
    bandwidth: bool = True,
    refresh: bool = False,
    bandwidth_probe: BandwidthProbe | None = None,
) -> HardwareInfo:
    """Describe this machine.

    ``paths`` (default ``KvantPaths.default()``) gives the models folder whose disk is
    measured and the cache folder for the bandwidth result. ``nvml`` replaces the real
    NVML (tests pass a fake). ``bandwidth=False`` skips the probe; ``refresh=True``
    re-measures instead of using the cached value; ``bandwidth_probe`` replaces the
    measurement itself. Raises :class:`HardwareError` only when memory, cores or disk
    space cannot be read at all.
    """
    paths = KvantPaths.default() if paths is None else paths
    cpu = detect_cpu()
    memory = detect_memory()
    disk = detect_disk(paths.models)
    scan = detect_gpus(nvml)

    bw: BandwidthInfo | None = None
    note = ""
    if not bandwidth:
        note = "not measured (skipped on request)"
    else:
        probe = bandwidth_probe
        if probe is None:
            threads = cpu.usable_threads
            buffer_bytes = _probe_buffer_bytes(memory.available_bytes)

            def probe() -> BandwidthInfo:
                return _bandwidth.measure_bandwidth(threads=threads, buffer_bytes=buffer_bytes)

        key = bandwidth_cache_key(cpu.model_name, cpu.physical_cores, cpu.logical_cores, memory.total_bytes)
        try:
            bw = cached_bandwidth(paths.cache / CACHE_FILE_NAME, key, refresh=refresh, measure=probe)
        except HardwareError as err:
            note = f"could not be measured: {err}"

    return HardwareInfo(
        system=sys.platform,
        machine=platform.machine(),
        cpu=cpu,
        memory=memory,
        disk=disk,
        gpus=scan.gpus,
        gpu_note=scan.note,
        unified_memory=detect_unified_memory(memory.total_bytes),
        bandwidth=bw,
        bandwidth_note=note,
    )
