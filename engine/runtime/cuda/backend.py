"""Is CUDA offload possible here, and on which GPUs: :func:`availability`.

The GPU path uses the ``numba-cuda`` package (``pip install 'kvant[cuda]'``).  Without it, without
an NVIDIA GPU, with a driver too old for CUDA 12, or when CUDA fails to start, the answer is
"unavailable" with a sentence that says why, and Kvant runs on the CPU.

``NUMBA_ENABLE_CUDASIM=1`` selects Numba's CUDA simulator (kernels run as Python on the CPU, very
slowly: for tests with tiny shapes).  It reports one simulated device whose free memory is
``KVANT_CUDASIM_VRAM_MB`` (default 4096 MiB).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Any

MIN_DRIVER_CUDA = (12, 0)  # numba-cuda[cu12]
MIN_COMPUTE_CAPABILITY = (5, 0)
SIM_VRAM_ENV = "KVANT_CUDASIM_VRAM_MB"
SIM_VRAM_DEFAULT_MB = 4096
INSTALL_HINT = "install Kvant with its CUDA extra: pip install 'kvant[cuda]'"


@dataclass(frozen=True, slots=True)
class CudaDevice:
    index: int  # CUDA device ordinal
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        cc = self.compute_capability
        return {
            "index": self.index,
            "name": self.name,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "compute_capability": None if cc is None else f"{cc[0]}.{cc[1]}",
        }


@dataclass(frozen=True, slots=True)
class CudaAvailability:
    """``available``: GPU offload can run; ``reason``: why not (or '' when it can)."""

    available: bool
    reason: str
    devices: tuple[CudaDevice, ...] = ()
    simulator: bool = False
    driver_cuda: str | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "reason": self.reason,
            "simulator": self.simulator,
            "driver_cuda": self.driver_cuda,
            "devices": [d.to_dict() for d in self.devices],
            "notes": list(self.notes),
        }


def _sim_requested() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _loaded_simulator() -> bool | None:
    """True/False when numba.cuda is already imported as the simulator / the real target."""
    mod = sys.modules.get("numba.cuda")
    if mod is None:
        return None
    return "numba.cuda.simulator" in sys.modules and hasattr(mod, "simulator")


def cuda_module(simulator: bool):
    """Import ``numba.cuda`` in the requested mode (the simulator needs the env var before import)."""
    loaded = _loaded_simulator()
    if loaded is None:
        import numba

        if bool(numba.config.ENABLE_CUDASIM) != simulator:
            numba.config.reload_config()
    from numba import cuda

    return cuda


def _simulated() -> CudaAvailability:
    if _loaded_simulator() is False:
        return CudaAvailability(
            False, "NUMBA_ENABLE_CUDASIM was set after the real CUDA target was loaded in this process"
        )
    cuda_module(True)
    mb = int(os.environ.get(SIM_VRAM_ENV, SIM_VRAM_DEFAULT_MB))
    dev = CudaDevice(0, "CUDA simulator", mb << 20, mb << 20, None)
    return CudaAvailability(True, "", (dev,), simulator=True, notes=("the CUDA simulator runs on the CPU",))


def _cuda_version(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def availability(nvml: Any = None) -> CudaAvailability:
    """Can layers run on a GPU here?  Never raises; ``nvml`` is for tests (see engine.hardware)."""
    if _sim_requested():
        return _simulated()
    from engine.hardware import detect_gpus

    scan = detect_gpus(nvml)
    if not scan.gpus:
        note = scan.note or "No NVIDIA GPU detected."
        return CudaAvailability(False, note.rstrip("."))
    driver = scan.gpus[0].cuda_version
    ver = _cuda_version(driver)
    if ver is not None and ver < MIN_DRIVER_CUDA:
        return CudaAvailability(
            False,
            f"the NVIDIA driver is too old: it supports CUDA {driver}, GPU offload needs CUDA "
            f"{MIN_DRIVER_CUDA[0]}.{MIN_DRIVER_CUDA[1]} or newer (driver 525 or later)",
            driver_cuda=driver,
        )
    if importlib.util.find_spec("numba_cuda") is None:
        return CudaAvailability(False, f"numba-cuda is not installed ({INSTALL_HINT})", driver_cuda=driver)
    if _loaded_simulator():
        return CudaAvailability(
            False, "the CUDA simulator is loaded but NUMBA_ENABLE_CUDASIM is not set", driver_cuda=driver
        )
    notes: list[str] = []
    try:
        cuda = cuda_module(False)
        if not cuda.is_available():
            return CudaAvailability(
                False, "CUDA could not start (numba-cuda found no usable CUDA driver)", driver_cuda=driver
            )
        n_cuda = len(cuda.gpus)
    except Exception as err:  # driver/toolkit problems surface as various exception types
        return CudaAvailability(False, f"CUDA could not start: {err}".strip(), driver_cuda=driver)
    devices: list[CudaDevice] = []
    for g in scan.gpus:
        if g.index >= n_cuda:
            continue
        cc = g.compute_capability
        if cc is not None and cc < MIN_COMPUTE_CAPABILITY:
            notes.append(f"GPU {g.index} ({g.name}) skipped: compute capability {cc[0]}.{cc[1]} is too old")
            continue
        devices.append(CudaDevice(g.index, g.name, g.total_vram_bytes, g.free_vram_bytes, cc))
    if scan.note:
        notes.append(scan.note)
    if not devices:
        return CudaAvailability(
            False, "; ".join(notes) or "no usable NVIDIA GPU", driver_cuda=driver, notes=tuple(notes)
        )
    return CudaAvailability(True, "", tuple(devices), driver_cuda=driver, notes=tuple(notes))
