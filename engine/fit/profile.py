"""The machine a plan is made for: :class:`HardwareProfile`.

Built from :func:`engine.hardware.detect` (:meth:`HardwareProfile.from_hardware_info`) or
from numbers a user types (:meth:`HardwareProfile.custom`), so anyone can ask what would fit
on another machine. Bandwidths are bytes per second.

Assumptions, stated once:
- GPU memory bandwidth is not reported by NVML; it is looked up by GPU name in
  :data:`GPU_BANDWIDTH` (vendor datasheets), else :data:`DEFAULT_GPU_BANDWIDTH`.
- CPU memory bandwidth is the measured all-threads read bandwidth when there is one, else
  :data:`DEFAULT_CPU_BANDWIDTH`.
- Disk read speed for weights paged through mmap: :data:`DEFAULT_DISK_BANDWIDTH` (a typical
  PCIe 3/4 NVMe drive's sequential read); page-fault reads can be slower.
- Apple unified memory: one "GPU" whose budget is Metal's working-set estimate
  (:data:`engine.hardware.APPLE_GPU_BUDGET_FRACTION` of RAM), sharing RAM with the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from engine.errors import KvantError

GB = 1_000_000_000
GIB = 1 << 30

#: Peak memory bandwidth by GPU model (bytes/s), from the vendors' datasheets. Matched as a
#: case-insensitive substring of the NVML name, longest key first.
GPU_BANDWIDTH: Mapping[str, int] = MappingProxyType(
    {
        "H200": 4_800 * GB,
        "H100 PCIe": 2_000 * GB,
        "H100 NVL": 3_900 * GB,
        "H100": 3_350 * GB,  # SXM5
        "GH200": 4_000 * GB,
        "B200": 8_000 * GB,
        "A100-SXM4-80GB": 2_039 * GB,
        "A100 80GB PCIe": 1_935 * GB,
        "A100": 1_555 * GB,
        "A10G": 600 * GB,
        "A10": 600 * GB,
        "L40S": 864 * GB,
        "L40": 864 * GB,
        "L4": 300 * GB,
        "T4": 320 * GB,
        "V100": 900 * GB,
        "RTX 5090": 1_792 * GB,
        "RTX 5080": 960 * GB,
        "RTX 4090": 1_008 * GB,
        "RTX 4080": 717 * GB,
        "RTX 4070 Ti": 504 * GB,
        "RTX 4070": 504 * GB,
        "RTX 4060 Ti": 288 * GB,
        "RTX 4060": 272 * GB,
        "RTX 3090": 936 * GB,
        "RTX 3080": 760 * GB,
        "RTX 3070": 448 * GB,
        "RTX 3060": 360 * GB,
        "RTX A6000": 768 * GB,
        "RTX 6000 Ada": 960 * GB,
    }
)
DEFAULT_GPU_BANDWIDTH = 300 * GB
DEFAULT_CPU_BANDWIDTH = 20 * GB
DEFAULT_DISK_BANDWIDTH = 3 * GB


def gpu_bandwidth_for(name: str) -> int | None:
    low = name.lower()
    for key in sorted(GPU_BANDWIDTH, key=len, reverse=True):
        if key.lower() in low:
            return GPU_BANDWIDTH[key]
    return None


@dataclass(frozen=True, slots=True)
class GpuProfile:
    name: str
    vram_total_bytes: int
    vram_free_bytes: int
    bandwidth_bytes_per_s: int
    bandwidth_assumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vram_total_bytes": self.vram_total_bytes,
            "vram_free_bytes": self.vram_free_bytes,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "bandwidth_assumed": self.bandwidth_assumed,
        }


@dataclass(frozen=True, slots=True)
class HardwareProfile:
    """Memory, GPUs, disk and bandwidths of one machine (real or hypothetical)."""

    ram_total_bytes: int
    ram_available_bytes: int
    gpus: tuple[GpuProfile, ...] = ()
    disk_free_bytes: int | None = None
    cpu_bandwidth_bytes_per_s: int = DEFAULT_CPU_BANDWIDTH
    disk_bandwidth_bytes_per_s: int = DEFAULT_DISK_BANDWIDTH
    unified_memory: bool = False
    name: str = "this machine"
    assumptions: tuple[str, ...] = field(default=())
    cpu_threads: int | None = None  # known for a detected machine: enables the CPU compute bound

    def __post_init__(self) -> None:
        if self.ram_total_bytes <= 0 or self.ram_available_bytes < 0:
            raise KvantError("a hardware profile needs a positive amount of RAM")
        if self.cpu_bandwidth_bytes_per_s <= 0 or self.disk_bandwidth_bytes_per_s <= 0:
            raise KvantError("memory and disk bandwidths must be positive")

    @property
    def key(self) -> str:
        """Stable identity of the machine for calibration records."""
        gpus = "+".join(f"{g.name}/{round(g.vram_total_bytes / GIB)}G" for g in self.gpus) or "nogpu"
        return f"{self.name}|ram{round(self.ram_total_bytes / GIB)}G|{gpus}"

    @property
    def vram_free_bytes(self) -> int:
        return sum(g.vram_free_bytes for g in self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ram_total_bytes": self.ram_total_bytes,
            "ram_available_bytes": self.ram_available_bytes,
            "gpus": [g.to_dict() for g in self.gpus],
            "disk_free_bytes": self.disk_free_bytes,
            "cpu_bandwidth_bytes_per_s": self.cpu_bandwidth_bytes_per_s,
            "disk_bandwidth_bytes_per_s": self.disk_bandwidth_bytes_per_s,
            "unified_memory": self.unified_memory,
            "cpu_threads": self.cpu_threads,
            "assumptions": list(self.assumptions),
        }

    @classmethod
    def custom(
        cls,
        *,
        ram_gb: float,
        vram_gb: list[float] | tuple[float, ...] = (),
        disk_gb: float | None = None,
        cpu_bandwidth_gbs: float | None = None,
        gpu_bandwidth_gbs: list[float] | tuple[float, ...] | float | None = None,
        disk_bandwidth_gbs: float | None = None,
        ram_available_gb: float | None = None,
        gpu_names: list[str] | tuple[str, ...] | None = None,
        unified_memory: bool = False,
        name: str = "custom machine",
    ) -> HardwareProfile:
        """A hypothetical machine; sizes in GiB (what ``free -g`` and NVML-based tools show),
        bandwidths in GB/s. RAM available defaults to RAM total; a GPU's VRAM counts as free."""
        notes: list[str] = []
        if isinstance(gpu_bandwidth_gbs, int | float):
            gpu_bandwidth_gbs = [float(gpu_bandwidth_gbs)] * len(vram_gb)
        gpus = []
        for i, v in enumerate(vram_gb):
            gname = gpu_names[i] if gpu_names and i < len(gpu_names) else f"GPU {i}"
            bw = None
            if gpu_bandwidth_gbs:
                bw = round(gpu_bandwidth_gbs[min(i, len(gpu_bandwidth_gbs) - 1)] * GB)
            assumed = False
            if bw is None:
                bw = gpu_bandwidth_for(gname)
            if bw is None:
                bw, assumed = DEFAULT_GPU_BANDWIDTH, True
                notes.append(f"{gname}: bandwidth assumed {DEFAULT_GPU_BANDWIDTH / GB:.0f} GB/s")
            size = round(v * GIB)
            gpus.append(GpuProfile(gname, size, size, bw, assumed))
        if cpu_bandwidth_gbs is None:
            notes.append(f"CPU memory bandwidth assumed {DEFAULT_CPU_BANDWIDTH / GB:.0f} GB/s")
        if disk_bandwidth_gbs is None:
            notes.append(f"disk read speed assumed {DEFAULT_DISK_BANDWIDTH / GB:.0f} GB/s (NVMe)")
        ram = round(ram_gb * GIB)
        return cls(
            ram_total_bytes=ram,
            ram_available_bytes=ram if ram_available_gb is None else round(ram_available_gb * GIB),
            gpus=tuple(gpus),
            disk_free_bytes=None if disk_gb is None else round(disk_gb * GIB),
            cpu_bandwidth_bytes_per_s=round(cpu_bandwidth_gbs * GB)
            if cpu_bandwidth_gbs
            else DEFAULT_CPU_BANDWIDTH,
            disk_bandwidth_bytes_per_s=(
                round(disk_bandwidth_gbs * GB) if disk_bandwidth_gbs else DEFAULT_DISK_BANDWIDTH
            ),
            unified_memory=unified_memory,
            name=name,
            assumptions=tuple(notes),
        )

    @classmethod
    def from_hardware_info(cls, info: Any) -> HardwareProfile:
        """From :class:`engine.hardware.HardwareInfo` (duck-typed, so tests can pass stand-ins)."""
        notes: list[str] = []
        gpus: list[GpuProfile] = []
        for g in info.gpus:
            bw = gpu_bandwidth_for(g.name)
            assumed = bw is None
            if assumed:
                bw = DEFAULT_GPU_BANDWIDTH
                notes.append(f"{g.name}: bandwidth unknown, assumed {DEFAULT_GPU_BANDWIDTH / GB:.0f} GB/s")
            gpus.append(GpuProfile(g.name, int(g.total_vram_bytes), int(g.free_vram_bytes), int(bw), assumed))
        if info.bandwidth is not None:
            cpu_bw = int(info.bandwidth.all_threads_bytes_per_s)
        else:
            cpu_bw = DEFAULT_CPU_BANDWIDTH
            notes.append(f"CPU memory bandwidth not measured, assumed {DEFAULT_CPU_BANDWIDTH / GB:.0f} GB/s")
        unified = info.unified_memory is not None
        if unified:
            um = info.unified_memory
            budget = min(int(um.gpu_budget_bytes), int(info.memory.available_bytes))
            gpus = [GpuProfile("Apple GPU (unified memory)", int(um.gpu_budget_bytes), budget, cpu_bw, True)]
            notes.append("unified memory: GPU budget is Metal's working-set estimate, shared with RAM")
        notes.append(f"disk read speed assumed {DEFAULT_DISK_BANDWIDTH / GB:.0f} GB/s (NVMe)")
        cpu_name = getattr(getattr(info, "cpu", None), "model_name", None) or "this machine"
        return cls(
            ram_total_bytes=int(info.memory.total_bytes),
            ram_available_bytes=int(info.memory.available_bytes),
            gpus=tuple(gpus),
            disk_free_bytes=int(info.disk.free_bytes),
            cpu_bandwidth_bytes_per_s=cpu_bw,
            unified_memory=unified,
            name=str(cpu_name),
            assumptions=tuple(notes),
            cpu_threads=getattr(getattr(info, "cpu", None), "usable_threads", None),
        )

    def with_overrides(self, **changes: Any) -> HardwareProfile:
        return replace(self, **changes)
