"""Hardware detection: CPU, memory, disk, NVIDIA GPUs, Apple unified memory, bandwidth.

Use :func:`detect` for everything at once; the ``detect_*`` functions answer one
question each. Every result is a frozen dataclass with ``to_dict()`` (JSON-ready).
"""

from engine.hardware.bandwidth import (
    BandwidthInfo,
    BandwidthProbe,
    bandwidth_cache_key,
    cached_bandwidth,
    measure_bandwidth,
)
from engine.hardware.cpu import KNOWN_FEATURES, CpuInfo, detect_cpu
from engine.hardware.detect import HardwareInfo, detect
from engine.hardware.gpu import GpuInfo, GpuScan, NvmlApi, PynvmlAdapter, detect_gpus
from engine.hardware.memory import (
    APPLE_GPU_BUDGET_FRACTION,
    DiskInfo,
    MemoryInfo,
    UnifiedMemoryInfo,
    detect_disk,
    detect_memory,
    detect_unified_memory,
)

__all__ = [
    "APPLE_GPU_BUDGET_FRACTION",
    "KNOWN_FEATURES",
    "BandwidthInfo",
    "BandwidthProbe",
    "CpuInfo",
    "DiskInfo",
    "GpuInfo",
    "GpuScan",
    "HardwareInfo",
    "MemoryInfo",
    "NvmlApi",
    "PynvmlAdapter",
    "UnifiedMemoryInfo",
    "bandwidth_cache_key",
    "cached_bandwidth",
    "detect",
    "detect_cpu",
    "detect_disk",
    "detect_gpus",
    "detect_memory",
    "detect_unified_memory",
    "measure_bandwidth",
]
