"""Which layers go to which GPU, and loading them there: :func:`offload_model`.

``n_gpu_layers`` counts repeating layers, as llama.cpp does; the last layers go first.  When every
layer is on a GPU the output layer goes there too if it fits.  ``"all"`` asks for everything;
``"auto"`` asks the planner (:func:`engine.fit.plan`) for the most layers that fit in free VRAM with
its safety margin (:data:`engine.fit.GPU_RESERVE_BYTES` kept free per GPU, its compute-buffer and KV
estimates).  Layers are split across GPUs in proportion to their free VRAM (llama.cpp's default
tensor split).  If a GPU runs out of memory while loading, the numbers are reported and the load is
retried with fewer layers.  Without a usable GPU the model stays on the CPU and
:attr:`OffloadInfo.reason` says why.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ModelError
from engine.runtime.cuda.backend import CudaAvailability, CudaDevice

MIB = 1 << 20


@dataclass(frozen=True)
class OffloadInfo:
    """What was asked, what was done and why."""

    requested: int | str
    n_layer: int
    n_gpu_layers: int = 0
    output_on_gpu: bool = False
    layer_devices: tuple[int, ...] = ()  # CUDA device of each GPU layer, first GPU layer first
    devices: tuple[CudaDevice, ...] = ()
    vram_bytes: dict[int, int] = field(default_factory=dict)  # loaded on each device
    reason: str = ""  # why GPU offload is unavailable (empty when it is available or not asked for)
    simulator: bool = False
    notes: tuple[str, ...] = ()

    @property
    def first_gpu_layer(self) -> int:
        return self.n_layer - self.n_gpu_layers

    def message(self) -> str:
        if self.requested in (0, None):
            return "GPU offload off: every layer runs on the CPU"
        if self.reason:
            return f"GPU offload unavailable: {self.reason}; running on the CPU"
        if self.n_gpu_layers == 0:
            why = f" ({self.notes[-1]})" if self.notes else ""
            return f"no layer fits on the GPU{why}: running on the CPU"
        used = [d for d in self.devices if d.index in self.vram_bytes]
        where = ", ".join(f"{d.name} (GPU {d.index}, {self.vram_bytes[d.index] / MIB:.0f} MiB)" for d in used)
        out = " and the output layer" if self.output_on_gpu else ""
        rest = (
            f"; layers 0-{self.first_gpu_layer - 1} on the CPU"
            if self.first_gpu_layer > 0
            else ("" if self.output_on_gpu else "; the output layer on the CPU")
        )
        how = " (chosen automatically)" if self.requested == "auto" else ""
        return f"GPU offload: {self.n_gpu_layers} of {self.n_layer} layers{out} on {where}{how}{rest}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "n_layer": self.n_layer,
            "n_gpu_layers": self.n_gpu_layers,
            "output_on_gpu": self.output_on_gpu,
            "layer_devices": list(self.layer_devices),
            "devices": [d.to_dict() for d in self.devices],
            "vram_bytes": {str(k): v for k, v in self.vram_bytes.items()},
            "reason": self.reason,
            "simulator": self.simulator,
            "notes": list(self.notes),
            "message": self.message(),
        }


def parse_gpu_layers(value: int | str | None) -> int | str:
    """0, a layer count, ``"all"`` or ``"auto"`` (strings of digits are counts)."""
    if value is None:
        return 0
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("all", "auto"):
            return v
        if v.isdigit():
            return int(v)
        raise ModelError(f"n_gpu_layers must be a number of layers, 'all' or 'auto', not {value!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"n_gpu_layers must be a number of layers, 'all' or 'auto', not {value!r}")
    if value < 0:
        raise ModelError(f"n_gpu_layers must be 0 or more, not {value}")
    return value


def split_slots(n_slots: int, devices: Sequence[CudaDevice]) -> list[int]:
    """CUDA device of each of ``n_slots`` consecutive GPU slots (layers, then the output), in
    proportion to the devices' free memory (llama.cpp's default split: cumulative shares)."""
    if not devices or n_slots <= 0:
        return []
    weights = [max(0, d.free_bytes) for d in devices]
    total = sum(weights)
    if total == 0:
        weights, total = [1] * len(devices), len(devices)
    acc, cuts = 0.0, []
    for w in weights:
        acc += w / total
        cuts.append(acc)
    cuts[-1] = 1.0
    last = len(devices) - 1
    return [devices[min(bisect.bisect_right(cuts, k / n_slots), last)].index for k in range(n_slots)]


def auto_slots(gguf: Any, n_ctx: int, av: CudaAvailability) -> tuple[int, str]:
    """GPU slots (layers, + 1 for the output) the planner fits in free VRAM, and a note."""
    from engine.fit import GPU_RESERVE_BYTES, HardwareProfile, describe_gguf, plan
    from engine.fit.profile import DEFAULT_GPU_BANDWIDTH, GpuProfile, gpu_bandwidth_for
    from engine.hardware import detect_memory

    shape, weights = describe_gguf(gguf)
    mem = detect_memory()
    gpus = tuple(
        GpuProfile(d.name, d.total_bytes, d.free_bytes, gpu_bandwidth_for(d.name) or DEFAULT_GPU_BANDWIDTH)
        for d in av.devices
    )
    hw = HardwareProfile(
        ram_total_bytes=max(1, mem.total_bytes), ram_available_bytes=max(0, mem.available_bytes), gpus=gpus
    )
    fp = plan(shape, weights, hw, n_ctx=n_ctx, kv_type="f16", on_disk=True)
    p = fp.placement
    slots = p.gpu_layers + (1 if p.output_device != "cpu" else 0)
    free = sum(d.free_bytes for d in av.devices)
    out = " and the output layer" if p.output_device != "cpu" else ""
    note = (
        f"auto: the planner fits {p.gpu_layers} of {p.n_layer} layers{out} in {free / MIB:.0f} MiB "
        f"of free VRAM, keeping {GPU_RESERVE_BYTES / MIB:.0f} MiB free per GPU"
    )
    return slots, note


def _flush(av: CudaAvailability) -> None:
    """Free what a failed load left on the devices (Numba defers deallocations)."""
    if av.simulator:
        return
    import contextlib

    from numba import cuda

    for d in av.devices:
        with contextlib.suppress(Exception), cuda.gpus[d.index]:
            cuda.current_context().deallocations.clear()


def offload_model(
    net: Any,
    gguf: Any,
    requested: int | str,
    n_ctx: int,
    *,
    av: CudaAvailability | None = None,
    limit_bytes: Callable[[CudaDevice], int | None] | None = None,
    log: Callable[[str], None] | None = None,
) -> OffloadInfo:
    """Put the last layers of ``net`` on GPUs as ``requested`` (see the module docstring).

    ``av`` defaults to :func:`engine.runtime.cuda.availability`; ``limit_bytes`` caps what Kvant may
    allocate per device (default: nothing on a GPU, the free memory on the simulator)."""
    from engine.runtime.cuda.backend import availability

    n_layer = int(getattr(getattr(net, "params", None), "n_layer", 0))
    if requested in (0, None):
        return OffloadInfo(0, n_layer)
    if not hasattr(net, "offload"):
        arch = type(net).__name__
        return OffloadInfo(requested, n_layer, reason=f"GPU offload is not implemented for {arch} yet")
    av = availability() if av is None else av
    if not av.available:
        return OffloadInfo(requested, n_layer, reason=av.reason, notes=av.notes)
    from engine.runtime.cuda.device import DeviceArena, GpuOutOfMemory, NoGpuKernel

    notes: list[str] = list(av.notes)
    if requested == "auto":
        slots, note = auto_slots(gguf, n_ctx, av)
        notes.append(note)
    elif requested == "all":
        slots = n_layer + 1
    else:
        slots = n_layer + 1 if requested >= n_layer else int(requested)
    if limit_bytes is None:

        def limit_bytes(d: CudaDevice) -> int | None:
            return d.free_bytes if av.simulator else None

    while slots > 0:
        devs = split_slots(slots, av.devices)
        n_gpu = min(slots, n_layer)
        output = slots > n_layer
        # the output layer goes with the last layer
        arenas = {
            d.index: DeviceArena(d.index, limit_bytes(d), av.simulator, d.free_bytes)
            for d in av.devices
            if d.index in devs[:n_gpu]
        }
        layer_arenas = [arenas[i] for i in devs[:n_gpu]]
        try:
            net.offload(n_gpu, layer_arenas, output)
        except NoGpuKernel as err:
            _flush(av)
            return OffloadInfo(requested, n_layer, reason=str(err), notes=tuple(notes))
        except GpuOutOfMemory as err:
            _flush(av)
            loaded = getattr(err, "loaded_layers", 0)
            # first drop the output layer; then keep the layers that fitted
            new = n_layer if output else min(slots - 1, loaded)
            msg = f"{err}; retrying with {new} layers on the GPU"
            notes.append(msg)
            if log is not None:
                log(msg)
            slots = new
            continue
        return OffloadInfo(
            requested,
            n_layer,
            n_gpu_layers=n_gpu,
            output_on_gpu=output,
            layer_devices=tuple(devs[:n_gpu]),
            devices=av.devices,
            vram_bytes={i: a.allocated for i, a in arenas.items()},
            simulator=av.simulator,
            notes=tuple(notes),
        )
    return OffloadInfo(requested, n_layer, devices=av.devices, simulator=av.simulator, notes=tuple(notes))
