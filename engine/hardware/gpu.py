"""NVIDIA GPUs through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

All NVML calls go through a small adapter (:class:`NvmlApi`) so tests can pass a fake.
No NVML library, no driver, no GPU or a failing device are normal results: they give
fewer (or no) :class:`GpuInfo` entries and a human-readable note, never an exception.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from engine.hardware.units import gib

# pynvml raises NVMLError subclasses named after the NVML return code; the names are
# stable across nvidia-ml-py versions, the numeric codes behind them need not be.
_INIT_NOTES: dict[str, str] = {
    "NVMLError_LibraryNotFound": "no NVIDIA driver is installed (the NVML library was not found)",
    "NVMLError_DriverNotLoaded": (
        "the NVIDIA driver is not loaded (no NVIDIA GPU, or its kernel module failed to load)"
    ),
    "NVMLError_NoPermission": "this user may not query the NVIDIA driver",
    "NVMLError_LibRmVersionMismatch": (
        "the NVIDIA driver and its NVML library have different versions (a reboot usually fixes this)"
    ),
    "NVMLError_FunctionNotFound": "the NVIDIA driver is too old for this NVML library",
}


@runtime_checkable
class NvmlApi(Protocol):
    """What Kvant asks NVML. Strings may come back as ``bytes`` (older pynvml) or ``str``."""

    def init(self) -> None: ...

    def shutdown(self) -> None: ...

    def driver_version(self) -> str | bytes: ...

    def cuda_driver_version(self) -> int: ...

    def device_count(self) -> int: ...

    def device_name(self, index: int) -> str | bytes: ...

    def device_memory(self, index: int) -> tuple[int, int]:
        """(total, free) bytes of device ``index``."""
        ...

    def device_compute_capability(self, index: int) -> tuple[int, int]: ...


class PynvmlAdapter:
    """:class:`NvmlApi` backed by the real ``pynvml`` module."""

    __slots__ = ("_nvml",)

    def __init__(self, module: ModuleType) -> None:
        self._nvml = module

    def init(self) -> None:
        self._nvml.nvmlInit()

    def shutdown(self) -> None:
        self._nvml.nvmlShutdown()

    def driver_version(self) -> str | bytes:
        return self._nvml.nvmlSystemGetDriverVersion()

    def cuda_driver_version(self) -> int:
        return int(self._nvml.nvmlSystemGetCudaDriverVersion())

    def device_count(self) -> int:
        return int(self._nvml.nvmlDeviceGetCount())

    def _handle(self, index: int) -> Any:
        return self._nvml.nvmlDeviceGetHandleByIndex(index)

    def device_name(self, index: int) -> str | bytes:
        return self._nvml.nvmlDeviceGetName(self._handle(index))

    def device_memory(self, index: int) -> tuple[int, int]:
        mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle(index))
        return int(mem.total), int(mem.free)

    def device_compute_capability(self, index: int) -> tuple[int, int]:
        major, minor = self._nvml.nvmlDeviceGetCudaComputeCapability(self._handle(index))
        return int(major), int(minor)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One NVIDIA GPU. ``compute_capability``, ``driver_version`` and ``cuda_version`` are
    None when NVML could not tell."""

    index: int
    name: str
    total_vram_bytes: int
    free_vram_bytes: int
    compute_capability: tuple[int, int] | None
    driver_version: str | None
    cuda_version: str | None = None

    @property
    def compute_capability_str(self) -> str | None:
        cc = self.compute_capability
        return None if cc is None else f"{cc[0]}.{cc[1]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "total_vram_bytes": self.total_vram_bytes,
            "free_vram_bytes": self.free_vram_bytes,
            "total_vram_gib": gib(self.total_vram_bytes),
            "free_vram_gib": gib(self.free_vram_bytes),
            "compute_capability": self.compute_capability_str,
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
        }


@dataclass(frozen=True, slots=True)
class GpuScan:
    """The GPUs found and a note that explains an empty or partial list ('' when all is well)."""

    gpus: tuple[GpuInfo, ...]
    note: str


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip("\x00").strip()
    return str(value).strip()


def _describe(err: BaseException) -> str:
    return str(err).strip() or type(err).__name__


def _init_note(err: BaseException) -> str:
    known = _INIT_NOTES.get(type(err).__name__)
    if known:
        return f"No NVIDIA GPU detected: {known}."
    return f"No NVIDIA GPU detected: NVML could not start ({_describe(err)})."


def _cuda_version(raw: int) -> str:
    # NVML encodes CUDA 12.4 as 12040.
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def default_nvml() -> NvmlApi | None:
    """The real NVML adapter, or None when ``nvidia-ml-py`` is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return PynvmlAdapter(pynvml)


def detect_gpus(nvml: NvmlApi | None = None) -> GpuScan:
    """List NVIDIA GPUs through ``nvml`` (default: the real pynvml). Never raises."""
    if nvml is None:
        nvml = default_nvml()
        if nvml is None:
            return GpuScan((), "No NVIDIA GPU detected: the nvidia-ml-py package (pynvml) is not installed.")
    try:
        nvml.init()
    except Exception as err:  # NVMLError subclasses, OSError from ctypes, ...
        return GpuScan((), _init_note(err))
    try:
        return _scan(nvml)
    finally:
        with contextlib.suppress(Exception):  # nothing useful to do if shutdown fails
            nvml.shutdown()


def _scan(nvml: NvmlApi) -> GpuScan:
    try:
        count = int(nvml.device_count())
    except Exception as err:
        return GpuScan((), f"No NVIDIA GPU detected: NVML could not count devices ({_describe(err)}).")
    if count <= 0:
        return GpuScan((), "No NVIDIA GPU detected: the NVIDIA driver is loaded but reports no GPU.")

    try:
        driver: str | None = _text(nvml.driver_version()) or None
    except Exception:
        driver = None
    try:
        cuda: str | None = _cuda_version(int(nvml.cuda_driver_version()))
    except Exception:
        cuda = None

    gpus: list[GpuInfo] = []
    failures: list[str] = []
    for index in range(count):
        try:
            name = _text(nvml.device_name(index)) or f"NVIDIA GPU {index}"
            total, free = nvml.device_memory(index)
        except Exception as err:
            failures.append(f"GPU {index} could not be queried ({_describe(err)})")
            continue
        try:
            major, minor = nvml.device_compute_capability(index)
            cc: tuple[int, int] | None = (int(major), int(minor))
        except Exception:
            cc = None
        gpus.append(
            GpuInfo(
                index=index,
                name=name,
                total_vram_bytes=int(total),
                free_vram_bytes=int(free),
                compute_capability=cc,
                driver_version=driver,
                cuda_version=cuda,
            )
        )

    if not failures:
        return GpuScan(tuple(gpus), "")
    prefix = "No NVIDIA GPU usable" if not gpus else f"{len(failures)} of {count} NVIDIA GPUs skipped"
    return GpuScan(tuple(gpus), f"{prefix}: " + "; ".join(failures) + ".")
