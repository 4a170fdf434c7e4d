"""CPU model name, core counts and SIMD features.

SIMD features come from llvmlite's ``get_host_cpu_features()`` (what LLVM, and so numba,
sees on this CPU; it works on Linux, Windows and macOS), falling back to the operating
system's own list (``/proc/cpuinfo`` flags on Linux, ``sysctl hw.optional`` on macOS) when
llvmlite is missing or cannot answer. Every source is mapped to one canonical vocabulary,
:data:`KNOWN_FEATURES`, so callers test ``"avx2" in cpu.features`` whatever the platform.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from engine.errors import HardwareError

#: Every feature name :class:`CpuInfo` can report, in display order (x86 first, then Arm).
KNOWN_FEATURES: tuple[str, ...] = (
    "sse2",
    "sse3",
    "ssse3",
    "sse4.1",
    "sse4.2",
    "popcnt",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avxvnni",
    "avx512f",
    "avx512cd",
    "avx512bw",
    "avx512dq",
    "avx512vl",
    "avx512vbmi",
    "avx512vnni",
    "avx512bf16",
    "avx512fp16",
    "amx-tile",
    "amx-int8",
    "amx-bf16",
    "neon",
    "fp16",
    "dotprod",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
    "sme",
)

#: The features that matter for quantized inference kernels (shown in the human summary).
HEADLINE_FEATURES: tuple[str, ...] = (
    "sse4.2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avxvnni",
    "avx512f",
    "avx512vnni",
    "avx512bf16",
    "avx512fp16",
    "amx-int8",
    "neon",
    "fp16",
    "dotprod",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
    "sme",
)

_KNOWN = frozenset(KNOWN_FEATURES)

# Source-specific spellings -> canonical name. Names already canonical need no entry.
_ALIASES: dict[str, str] = {
    # Linux /proc/cpuinfo (x86)
    "pni": "sse3",
    "sse4_1": "sse4.1",
    "sse4_2": "sse4.2",
    "avx_vnni": "avxvnni",
    "avx512_vnni": "avx512vnni",
    "avx512_bf16": "avx512bf16",
    "avx512_fp16": "avx512fp16",
    "amx_tile": "amx-tile",
    "amx_int8": "amx-int8",
    "amx_bf16": "amx-bf16",
    # Linux /proc/cpuinfo (aarch64)
    "asimd": "neon",
    "asimdhp": "fp16",
    "fphp": "fp16",
    "asimddp": "dotprod",
    # LLVM (aarch64)
    "fullfp16": "fp16",
    # macOS machdep.cpu.features tokens (x86), lower-cased
    "avx1.0": "avx",
    # macOS sysctl hw.optional.* keys (value 1 means present)
    "hw.optional.sse2": "sse2",
    "hw.optional.sse3": "sse3",
    "hw.optional.supplementalsse3": "ssse3",
    "hw.optional.sse4_1": "sse4.1",
    "hw.optional.sse4_2": "sse4.2",
    "hw.optional.avx1_0": "avx",
    "hw.optional.avx2_0": "avx2",
    "hw.optional.fma": "fma",
    "hw.optional.bmi2": "bmi2",
    "hw.optional.avx512f": "avx512f",
    "hw.optional.avx512cd": "avx512cd",
    "hw.optional.avx512bw": "avx512bw",
    "hw.optional.avx512dq": "avx512dq",
    "hw.optional.avx512vl": "avx512vl",
    "hw.optional.avx512vbmi": "avx512vbmi",
    "hw.optional.neon": "neon",
    "hw.optional.advsimd": "neon",
    "hw.optional.neon_fp16": "fp16",
    "hw.optional.arm.feat_fp16": "fp16",
    "hw.optional.arm.feat_dotprod": "dotprod",
    "hw.optional.arm.feat_i8mm": "i8mm",
    "hw.optional.arm.feat_bf16": "bf16",
    "hw.optional.arm.feat_sme": "sme",
}

_SYSCTL_TOKEN_KEYS = ("machdep.cpu.features", "machdep.cpu.leaf7_features")


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """The host CPU.

    ``usable_threads`` is how many logical CPUs this process may run on (its affinity
    mask), which can be fewer than ``logical_cores`` in containers and under taskset.
    ``features`` holds canonical names from :data:`KNOWN_FEATURES`, in that order;
    ``feature_source`` says where they came from (``"llvmlite"``, ``"/proc/cpuinfo"``,
    ``"sysctl"`` or ``"none"``).
    """

    model_name: str
    architecture: str
    physical_cores: int
    logical_cores: int
    usable_threads: int
    features: tuple[str, ...]
    feature_source: str
    llvm_cpu_name: str | None = None

    def has(self, feature: str) -> bool:
        return feature.lower() in self.features

    @property
    def headline_features(self) -> tuple[str, ...]:
        return tuple(f for f in HEADLINE_FEATURES if f in self.features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "architecture": self.architecture,
            "physical_cores": self.physical_cores,
            "logical_cores": self.logical_cores,
            "usable_threads": self.usable_threads,
            "features": list(self.features),
            "headline_features": list(self.headline_features),
            "feature_source": self.feature_source,
            "llvm_cpu_name": self.llvm_cpu_name,
        }


def canonical_feature(name: str) -> str | None:
    """The canonical spelling of one feature name from any source, or None if not tracked."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in _KNOWN else None


def canonical_features(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical, de-duplicated features in :data:`KNOWN_FEATURES` order; unknown names dropped."""
    found = {c for c in (canonical_feature(n) for n in names) if c is not None}
    return tuple(f for f in KNOWN_FEATURES if f in found)


def features_from_llvm(feature_string: str) -> tuple[str, ...]:
    """Parse LLVM's ``"+avx,-avx512f,+fma,..."`` host feature string."""
    return canonical_features(
        item[1:] for item in feature_string.split(",") if item.startswith("+") and len(item) > 1
    )


def parse_proc_cpuinfo(text: str) -> tuple[str | None, tuple[str, ...]]:
    """The model name (or None) and canonical features from Linux ``/proc/cpuinfo`` text.

    x86 kernels list ``model name`` and ``flags``; aarch64 kernels list ``Features`` and
    (sometimes) ``Model``/``Hardware``. Only the first processor block is read.
    """
    model: str | None = None
    flags: list[str] = []
    fallback_model: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if model is not None or flags:
                break  # end of the first processor block
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key == "model name" and value:
            model = value
        elif key in ("model", "hardware", "cpu model") and value and not value.isdigit():
            fallback_model = fallback_model or value
        elif key in ("flags", "features") and not flags:
            flags = value.split()
    return (model or fallback_model), canonical_features(flags)


def parse_sysctl(text: str) -> tuple[str, ...]:
    """Canonical features from macOS ``sysctl hw.optional machdep.cpu.features ...`` output."""
    names: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key in _SYSCTL_TOKEN_KEYS:
            names.extend(value.split())
        elif key.startswith("hw.optional.") and value == "1":
            names.append(key)
    return canonical_features(names)


def normalize_architecture(machine: str) -> str:
    m = machine.strip().lower()
    if m in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if m in ("arm64", "aarch64", "armv8", "armv8l"):
        return "arm64"
    if m in ("i386", "i686", "x86"):
        return "x86"
    return m or "unknown"


def _llvm_host() -> tuple[tuple[str, ...] | None, str | None]:
    """(features, cpu name) from llvmlite; (None, None) when llvmlite cannot answer."""
    try:
        from llvmlite import binding as llvm

        features = features_from_llvm(llvm.get_host_cpu_features().flatten())
        name = llvm.get_host_cpu_name() or None
    except Exception:  # llvmlite missing, or LLVM cannot query this host
        return None, None
    return features, (None if name == "generic" else name)


def _run_sysctl(*names: str) -> str:
    try:
        done = subprocess.run(["sysctl", *names], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout


def _windows_model_name() -> str | None:
    try:
        import winreg

        with winreg.OpenKey(
            winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0"
        ) as key:
            value, _ = winreg.QueryValueEx(key, "ProcessorNameString")
    except (ImportError, OSError):
        return None
    return str(value).strip() or None


def _usable_threads(logical: int) -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    try:
        return max(1, len(psutil.Process().cpu_affinity() or ()))
    except (AttributeError, psutil.Error, OSError):
        return logical


def detect_cpu(*, cpuinfo_path: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """Describe the host CPU. Raises :class:`HardwareError` only if core counts are unreadable."""
    try:
        logical = psutil.cpu_count(logical=True) or os.cpu_count()
        physical = psutil.cpu_count(logical=False)
    except Exception as err:  # psutil raises assorted OS errors on exotic systems
        raise HardwareError(f"could not count CPU cores: {err}") from err
    if not logical:
        raise HardwareError("could not count CPU cores: the OS reported none")
    physical = physical or logical

    features, llvm_name = _llvm_host()
    source = "llvmlite" if features else "none"
    model: str | None = None

    if sys.platform.startswith("linux"):
        try:
            text = cpuinfo_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        model, os_features = parse_proc_cpuinfo(text)
        if not features and os_features:
            features, source = os_features, "/proc/cpuinfo"
    elif sys.platform == "darwin":
        model = _run_sysctl("-n", "machdep.cpu.brand_string").strip() or None
        if not features:
            sysctl_features = parse_sysctl(_run_sysctl("hw.optional", *_SYSCTL_TOKEN_KEYS))
            if sysctl_features:
                features, source = sysctl_features, "sysctl"
    elif sys.platform == "win32":
        model = _windows_model_name()

    model = model or llvm_name or platform.processor() or platform.machine() or "unknown CPU"
    return CpuInfo(
        model_name=model,
        architecture=normalize_architecture(platform.machine()),
        physical_cores=int(physical),
        logical_cores=int(logical),
        usable_threads=min(_usable_threads(int(logical)), int(logical)),
        features=features or (),
        feature_source=source,
        llvm_cpu_name=llvm_name,
    )
