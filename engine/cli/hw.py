"""``kvant hw``: what this machine has (CPU, RAM, disk, GPUs, memory bandwidth)."""

from __future__ import annotations

import argparse

from engine.cli import add_json_flag, emit
from engine.hardware import HardwareInfo, detect
from engine.hardware.units import gib
from engine.paths import KvantPaths

_LABEL_WIDTH = 11


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hw",
        help="show this machine's CPU, memory, disk, GPUs and memory bandwidth",
        description="Detect the CPU, RAM, free disk at the models folder, NVIDIA GPUs (or Apple "
        "unified memory) and measure memory bandwidth (measured once per machine, then cached).",
    )
    add_json_flag(parser)
    probe = parser.add_mutually_exclusive_group()
    probe.add_argument("--no-bandwidth", action="store_true", help="skip the memory-bandwidth probe")
    probe.add_argument(
        "--refresh", action="store_true", help="re-measure memory bandwidth instead of using the cached value"
    )
    parser.set_defaults(func=run)


def _display_feature(name: str) -> str:
    special = {"avx512vnni": "AVX512-VNNI", "avx512bf16": "AVX512-BF16", "avx512fp16": "AVX512-FP16"}
    return special.get(name, name.upper())


def format_hardware(info: HardwareInfo) -> str:
    """The human-readable table ``kvant hw`` prints."""
    rows: list[tuple[str, str]] = []
    cpu = info.cpu
    rows.append(("CPU", f"{cpu.model_name} ({cpu.architecture})"))
    cores = f"{cpu.physical_cores} physical, {cpu.logical_cores} logical"
    if cpu.usable_threads != cpu.logical_cores:
        cores += f" ({cpu.usable_threads} usable by Kvant)"
    rows.append(("Cores", cores))
    simd = " ".join(_display_feature(f) for f in cpu.headline_features) or "none detected"
    rows.append(("SIMD", f"{simd}  [{cpu.feature_source}]"))

    mem = info.memory
    rows.append(
        ("RAM", f"{gib(mem.total_bytes):.1f} GiB total, {gib(mem.available_bytes):.1f} GiB available")
    )
    if mem.swap_total_bytes:
        rows.append(
            ("Swap", f"{gib(mem.swap_total_bytes):.1f} GiB total, {gib(mem.swap_free_bytes):.1f} GiB free")
        )
    else:
        rows.append(("Swap", "none"))

    disk = info.disk
    where = str(disk.path)
    if not disk.path_exists:
        where += f" (not created yet; measured at {disk.measured_path})"
    rows.append(
        ("Disk", f"{gib(disk.free_bytes):.1f} GiB free of {gib(disk.total_bytes):.1f} GiB at {where}")
    )

    if info.unified_memory is not None:
        um = info.unified_memory
        rows.append(
            (
                "Unified",
                f"{gib(um.total_bytes):.1f} GiB shared with the GPU; about "
                f"{gib(um.gpu_budget_bytes):.1f} GiB usable by it (estimate)",
            )
        )
    for gpu in info.gpus:
        details = [f"{gib(gpu.total_vram_bytes):.1f} GiB ({gib(gpu.free_vram_bytes):.1f} GiB free)"]
        if gpu.compute_capability_str:
            details.append(f"compute {gpu.compute_capability_str}")
        if gpu.driver_version:
            details.append(f"driver {gpu.driver_version}")
        if gpu.cuda_version:
            details.append(f"CUDA {gpu.cuda_version}")
        rows.append((f"GPU {gpu.index}", f"{gpu.name}, " + ", ".join(details)))
    if not info.gpus:
        rows.append(("GPU", info.gpu_note or "none"))
    elif info.gpu_note:
        rows.append(("GPU note", info.gpu_note))

    bw = info.bandwidth
    if bw is None:
        rows.append(("Bandwidth", info.bandwidth_note or "not measured"))
    else:
        origin = f"cached, measured {bw.measured_at}" if bw.cached else "just measured"
        rows.append(
            (
                "Bandwidth",
                f"{bw.single_thread_bytes_per_s / 1e9:.1f} GB/s one thread, "
                f"{bw.all_threads_bytes_per_s / 1e9:.1f} GB/s with {bw.threads} threads ({origin})",
            )
        )
    return "\n".join(f"{label:<{_LABEL_WIDTH}}{value}" for label, value in rows)


def run(args: argparse.Namespace) -> int:
    info = detect(
        KvantPaths.default(),
        bandwidth=not getattr(args, "no_bandwidth", False),
        refresh=getattr(args, "refresh", False),
    )
    emit(args, info.to_dict(), format_hardware(info))
    return 0
