"""Tests for engine.hardware: parsers, fake NVML, bandwidth cache and real-machine sanity."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

from engine.errors import HardwareError
from engine.hardware import (
    APPLE_GPU_BUDGET_FRACTION,
    KNOWN_FEATURES,
    BandwidthInfo,
    GpuInfo,
    HardwareInfo,
    NvmlApi,
    PynvmlAdapter,
    bandwidth_cache_key,
    cached_bandwidth,
    detect,
    detect_cpu,
    detect_disk,
    detect_gpus,
    detect_memory,
    detect_unified_memory,
    measure_bandwidth,
)
from engine.hardware import bandwidth as bandwidth_mod
from engine.hardware import cpu as cpu_mod
from engine.hardware.cpu import (
    canonical_feature,
    features_from_llvm,
    normalize_architecture,
    parse_proc_cpuinfo,
    parse_sysctl,
)
from engine.paths import KvantPaths

GIB = 1024**3

# --------------------------------------------------------------------------- fakes


class FakeNVML:
    """A scriptable stand-in for NVML, following the NvmlApi protocol."""

    def __init__(
        self,
        devices: list[dict] | None = None,
        *,
        init_error: Exception | None = None,
        count_error: Exception | None = None,
        driver: str | bytes = "550.54.15",
        cuda: int = 12040,
    ) -> None:
        self.devices = devices or []
        self.init_error = init_error
        self.count_error = count_error
        self.driver = driver
        self.cuda = cuda
        self.calls: list[str] = []

    def init(self) -> None:
        self.calls.append("init")
        if self.init_error is not None:
            raise self.init_error

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def driver_version(self) -> str | bytes:
        return self.driver

    def cuda_driver_version(self) -> int:
        return self.cuda

    def device_count(self) -> int:
        if self.count_error is not None:
            raise self.count_error
        return len(self.devices)

    def _dev(self, index: int) -> dict:
        dev = self.devices[index]
        if dev.get("error") is not None:
            raise dev["error"]
        return dev

    def device_name(self, index: int) -> str | bytes:
        return self._dev(index)["name"]

    def device_memory(self, index: int) -> tuple[int, int]:
        dev = self._dev(index)
        return dev["total"], dev["free"]

    def device_compute_capability(self, index: int) -> tuple[int, int]:
        dev = self._dev(index)
        if dev.get("cc_error") is not None:
            raise dev["cc_error"]
        return dev["cc"]


def two_gpus(**kwargs) -> FakeNVML:
    return FakeNVML(
        [
            {"name": b"NVIDIA GeForce RTX 4090", "total": 24 * GIB, "free": 22 * GIB, "cc": (8, 9)},
            {"name": "NVIDIA A100-SXM4-80GB", "total": 80 * GIB, "free": 79 * GIB, "cc": (8, 0)},
        ],
        **kwargs,
    )


class CountingProbe:
    """A bandwidth probe that returns fixed numbers and counts how often it ran."""

    def __init__(self, single: int = 20_000_000_000, multi: int = 50_000_000_000) -> None:
        self.calls = 0
        self.single = single
        self.multi = multi

    def __call__(self) -> BandwidthInfo:
        self.calls += 1
        return BandwidthInfo(
            single_thread_bytes_per_s=self.single + self.calls,
            all_threads_bytes_per_s=self.multi,
            threads=4,
            buffer_bytes=1 << 20,
            repeats=3,
            method="fake",
            measured_at="2025-01-01T00:00:00+00:00",
        )


@pytest.fixture
def paths(tmp_path: Path) -> KvantPaths:
    return KvantPaths(tmp_path / "kvant-home")


# --------------------------------------------------------------------------- CPU parsing

X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Core(TM) i9-13900K
flags\t\t: fpu sse sse2 pni ssse3 fma sse4_1 sse4_2 popcnt avx f16c avx2 bmi2 avx_vnni sha_ni

processor\t: 1
model name\t: Something Else
flags\t\t: fpu avx512f avx512_vnni
"""

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve i8mm bf16
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""

APPLE_SYSCTL = """\
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 0
hw.optional.arm.FEAT_BF16: 0
hw.optional.arm.FEAT_FP16: 1
hw.optional.AdvSIMD: 1
hw.optional.floatingpoint: 1
"""

INTEL_MAC_SYSCTL = """\
hw.optional.avx1_0: 1
hw.optional.avx2_0: 1
hw.optional.avx512f: 0
hw.optional.sse4_2: 1
machdep.cpu.features: FPU VME SSE3 SSSE3 FMA SSE4.1 SSE4.2 POPCNT AVX1.0 F16C
machdep.cpu.leaf7_features: BMI1 AVX2 BMI2
"""


def test_proc_cpuinfo_x86_reads_first_block_and_canonicalises_flags():
    model, features = parse_proc_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Core(TM) i9-13900K"
    for name in ("sse3", "ssse3", "sse4.1", "sse4.2", "avx", "avx2", "fma", "f16c", "avxvnni"):
        assert name in features
    # flags of the second processor block are not mixed in
    assert "avx512f" not in features and "avx512vnni" not in features
    assert list(features) == [f for f in KNOWN_FEATURES if f in features]


def test_proc_cpuinfo_aarch64_features():
    model, features = parse_proc_cpuinfo(ARM_CPUINFO)
    assert model is None
    assert set(features) == {"neon", "fp16", "dotprod", "sve", "i8mm", "bf16"}


def test_llvm_feature_string_keeps_only_enabled_known_features():
    assert features_from_llvm("+avx2,-avx512f,+fma,+avx512vnni,+sse4.2,+cx16,-sve") == (
        "sse4.2",
        "avx2",
        "fma",
        "avx512vnni",
    )
    assert features_from_llvm("+neon,+fullfp16,+dotprod,-i8mm") == ("neon", "fp16", "dotprod")
    assert features_from_llvm("") == ()


def test_sysctl_apple_silicon_and_intel_mac():
    assert parse_sysctl(APPLE_SYSCTL) == ("neon", "fp16", "dotprod")
    intel = parse_sysctl(INTEL_MAC_SYSCTL)
    assert {"avx", "avx2", "fma", "f16c", "sse4.2", "bmi2", "popcnt"} <= set(intel)
    assert "avx512f" not in intel


def test_canonical_names():
    assert canonical_feature("AVX512_BF16") == "avx512bf16"
    assert canonical_feature("asimd") == "neon"
    assert canonical_feature("cx16") is None
    assert normalize_architecture("AMD64") == "x86_64"
    assert normalize_architecture("aarch64") == "arm64"


# --------------------------------------------------------------------------- CPU on this machine


def test_detect_cpu_is_plausible_here():
    cpu = detect_cpu()
    assert cpu.model_name
    assert cpu.logical_cores >= 1
    assert 1 <= cpu.physical_cores <= cpu.logical_cores
    assert 1 <= cpu.usable_threads <= cpu.logical_cores
    assert set(cpu.features) <= set(KNOWN_FEATURES)
    assert cpu.feature_source in ("llvmlite", "/proc/cpuinfo", "sysctl", "none")
    json.dumps(cpu.to_dict())


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux /proc/cpuinfo")
def test_detected_simd_agrees_with_proc_cpuinfo():
    _, os_features = parse_proc_cpuinfo(Path("/proc/cpuinfo").read_text())
    cpu = detect_cpu()
    if normalize_architecture(platform.machine()) == "x86_64":
        if "avx2" in os_features:
            assert cpu.has("avx2") and cpu.has("AVX2")
        for name in ("avx", "fma", "f16c", "avx512f"):
            assert (name in cpu.features) == (name in os_features), name
    elif "neon" in os_features:
        assert cpu.has("neon")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the /proc/cpuinfo fallback is Linux-only")
def test_detect_cpu_falls_back_to_proc_cpuinfo(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text(X86_CPUINFO)
    monkeypatch.setattr(cpu_mod, "_llvm_host", lambda: (None, None))
    cpu = detect_cpu(cpuinfo_path=fake)
    assert cpu.feature_source == "/proc/cpuinfo"
    assert cpu.model_name == "Intel(R) Core(TM) i9-13900K"
    assert cpu.has("avx2") and not cpu.has("avx512f")


# --------------------------------------------------------------------------- memory and disk


def test_memory_is_plausible_here():
    mem = detect_memory()
    assert mem.total_bytes > 0
    assert 0 < mem.available_bytes <= mem.total_bytes
    assert 0 <= mem.swap_free_bytes <= mem.swap_total_bytes
    data = mem.to_dict()
    assert data["total_bytes"] == mem.total_bytes
    assert data["total_gib"] == pytest.approx(mem.total_bytes / GIB, abs=0.01)


def test_disk_of_missing_models_folder_uses_nearest_existing_parent(tmp_path):
    target = tmp_path / "not" / "yet" / "models"
    disk = detect_disk(target)
    assert disk.path == target
    assert disk.measured_path == tmp_path
    assert not disk.path_exists
    assert disk.free_bytes > 0 and disk.total_bytes >= disk.free_bytes
    target.mkdir(parents=True)
    again = detect_disk(target)
    assert again.path_exists and again.measured_path == target
    assert json.loads(json.dumps(again.to_dict()))["path_exists"] is True


def test_unified_memory_only_on_apple_silicon():
    um = detect_unified_memory(16 * GIB, system="darwin", machine="arm64")
    assert um is not None
    assert um.total_bytes == 16 * GIB
    assert um.gpu_budget_bytes == int(16 * GIB * APPLE_GPU_BUDGET_FRACTION)
    assert um.to_dict()["estimate"] is True
    assert detect_unified_memory(16 * GIB, system="darwin", machine="x86_64") is None
    assert detect_unified_memory(16 * GIB, system="linux", machine="aarch64") is None


# --------------------------------------------------------------------------- GPUs


def test_fake_nvml_satisfies_protocol():
    assert isinstance(FakeNVML(), NvmlApi)
    assert isinstance(PynvmlAdapter(pynvml), NvmlApi)


def test_no_nvml_library_is_a_normal_result():
    fake = FakeNVML(init_error=pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert isinstance(fake.init_error, pynvml.NVMLError_LibraryNotFound)
    scan = detect_gpus(fake)
    assert scan.gpus == ()
    assert "no NVIDIA driver" in scan.note
    assert fake.calls == ["init"]  # no shutdown after a failed init


def test_driver_not_loaded_is_a_normal_result():
    scan = detect_gpus(
        FakeNVML(init_error=pynvml.NVMLError_DriverNotLoaded(pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    )
    assert scan.gpus == ()
    assert "not loaded" in scan.note


def test_unexpected_init_failure_is_a_note_not_an_exception():
    scan = detect_gpus(FakeNVML(init_error=OSError("libnvidia-ml.so.1: bad ELF")))
    assert scan.gpus == ()
    assert "bad ELF" in scan.note


def test_two_gpus_with_bytes_and_str_answers():
    fake = two_gpus(driver=b"550.54.15")
    scan = detect_gpus(fake)
    assert scan.note == ""
    assert fake.calls == ["init", "shutdown"]
    first, second = scan.gpus
    assert first == GpuInfo(0, "NVIDIA GeForce RTX 4090", 24 * GIB, 22 * GIB, (8, 9), "550.54.15", "12.4")
    assert second.name == "NVIDIA A100-SXM4-80GB"
    assert second.index == 1
    assert second.total_vram_bytes == 80 * GIB and second.free_vram_bytes == 79 * GIB
    assert second.compute_capability_str == "8.0"
    assert second.driver_version == "550.54.15"
    data = json.loads(json.dumps(first.to_dict()))
    assert data["compute_capability"] == "8.9"
    assert data["total_vram_gib"] == 24.0 and data["free_vram_gib"] == 22.0


def test_driver_as_str_too():
    scan = detect_gpus(two_gpus(driver="535.104.05", cuda=12020))
    assert {g.driver_version for g in scan.gpus} == {"535.104.05"}
    assert {g.cuda_version for g in scan.gpus} == {"12.2"}


def test_one_failing_device_is_skipped_with_a_note():
    fake = two_gpus()
    fake.devices[0]["error"] = pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
    scan = detect_gpus(fake)
    assert [g.index for g in scan.gpus] == [1]
    assert "GPU 0" in scan.note and "1 of 2" in scan.note
    assert fake.calls[-1] == "shutdown"


def test_all_devices_failing_gives_empty_list_and_note():
    fake = two_gpus()
    for dev in fake.devices:
        dev["error"] = pynvml.NVMLError_GpuIsLost(pynvml.NVML_ERROR_GPU_IS_LOST)
    scan = detect_gpus(fake)
    assert scan.gpus == ()
    assert "GPU 0" in scan.note and "GPU 1" in scan.note


def test_missing_compute_capability_keeps_the_gpu():
    fake = two_gpus()
    fake.devices[1]["cc_error"] = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
    scan = detect_gpus(fake)
    assert len(scan.gpus) == 2
    assert scan.gpus[1].compute_capability is None
    assert scan.gpus[1].to_dict()["compute_capability"] is None


def test_zero_devices_and_count_failure():
    assert "reports no GPU" in detect_gpus(FakeNVML([])).note
    scan = detect_gpus(FakeNVML(count_error=pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)))
    assert scan.gpus == () and "count" in scan.note


def test_pynvml_adapter_maps_the_module_calls():
    handles = {0: "h0"}
    module = SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: b"560.35.03",
        nvmlSystemGetCudaDriverVersion=lambda: 12060,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: handles[i],
        nvmlDeviceGetName=lambda h: {"h0": b"NVIDIA L4"}[h],
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=23 * GIB, free=22 * GIB, used=GIB),
        nvmlDeviceGetCudaComputeCapability=lambda h: (8, 9),
    )
    scan = detect_gpus(PynvmlAdapter(module))
    assert scan.gpus == (GpuInfo(0, "NVIDIA L4", 23 * GIB, 22 * GIB, (8, 9), "560.35.03", "12.6"),)


def test_real_nvml_never_raises_here():
    scan = detect_gpus()
    if not scan.gpus:
        assert scan.note  # the user is told why
    for gpu in scan.gpus:
        assert gpu.total_vram_bytes > 0 and gpu.name


# --------------------------------------------------------------------------- bandwidth


def test_cache_second_call_does_not_remeasure_and_refresh_does(tmp_path):
    cache = tmp_path / "cache" / "bw.json"
    probe = CountingProbe()
    first = cached_bandwidth(cache, "machine-a", measure=probe)
    assert probe.calls == 1 and not first.cached
    second = cached_bandwidth(cache, "machine-a", measure=probe)
    assert probe.calls == 1 and second.cached
    assert second.single_thread_bytes_per_s == first.single_thread_bytes_per_s
    third = cached_bandwidth(cache, "machine-a", measure=probe, refresh=True)
    assert probe.calls == 2 and not third.cached
    assert third.single_thread_bytes_per_s != first.single_thread_bytes_per_s
    assert cached_bandwidth(cache, "machine-a", measure=probe).single_thread_bytes_per_s == (
        third.single_thread_bytes_per_s
    )
    # another machine sharing the same home gets its own entry
    cached_bandwidth(cache, "machine-b", measure=probe)
    assert probe.calls == 3
    stored = json.loads(cache.read_text())
    assert stored["format"] == 1 and set(stored["entries"]) == {"machine-a", "machine-b"}
    assert "cached" not in stored["entries"]["machine-a"]


@pytest.mark.parametrize("content", ["{not json", '{"format": 1, "entries": {"k": {"threads": "x"}}}', "[]"])
def test_corrupt_cache_means_measure_again(tmp_path, content):
    cache = tmp_path / "bw.json"
    cache.write_text(content)
    probe = CountingProbe()
    info = cached_bandwidth(cache, "k", measure=probe)
    assert probe.calls == 1 and not info.cached
    assert cached_bandwidth(cache, "k", measure=probe).cached


def test_unwritable_cache_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    probe = CountingProbe()
    info = cached_bandwidth(blocker / "cache" / "bw.json", "k", measure=probe)
    assert info.all_threads_bytes_per_s == probe.multi


def test_cache_key_names_the_machine():
    key = bandwidth_cache_key("AMD EPYC", 8, 16, 64 * GIB)
    assert "AMD EPYC" in key and "16" in key and str(64 * GIB) in key
    assert key != bandwidth_cache_key("AMD EPYC", 8, 16, 32 * GIB)
    assert key != bandwidth_cache_key("AMD EPYC", 4, 8, 64 * GIB)


def test_real_probe_tiny_buffer():
    info = measure_bandwidth(threads=2, buffer_bytes=1 << 20, repeats=2)
    assert info.single_thread_bytes_per_s > 0 and info.all_threads_bytes_per_s > 0
    assert info.threads == 2 and info.buffer_bytes == 1 << 20
    assert 1 <= info.repeats <= 2
    assert info.method in ("numba", "numpy")
    assert BandwidthInfo.from_dict(info.to_dict()) == info


def test_numpy_fallback_probe(monkeypatch):
    import numpy as np

    monkeypatch.setattr(bandwidth_mod, "_summer", lambda: ((lambda a: int(np.add.reduce(a))), "numpy"))
    info = measure_bandwidth(threads=1, buffer_bytes=1 << 20, repeats=1)
    assert info.method == "numpy" and info.single_thread_bytes_per_s == info.all_threads_bytes_per_s


def test_probe_detects_a_wrong_sum(monkeypatch):
    monkeypatch.setattr(bandwidth_mod, "_summer", lambda: ((lambda a: 0), "broken"))
    with pytest.raises(HardwareError, match="wrong sum"):
        measure_bandwidth(threads=1, buffer_bytes=1 << 20, repeats=1)


# --------------------------------------------------------------------------- detect()


def test_detect_with_fake_nvml_and_injected_probe(paths):
    probe = CountingProbe()
    info = detect(paths, nvml=two_gpus(), bandwidth_probe=probe)
    assert isinstance(info, HardwareInfo)
    assert [g.name for g in info.gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA A100-SXM4-80GB"]
    assert info.gpu_note == ""
    assert info.total_vram_bytes == 104 * GIB
    assert info.bandwidth is not None and not info.bandwidth.cached
    assert info.disk.path == paths.models and info.disk.free_bytes > 0
    assert not paths.models.exists()  # detection must not create the models folder
    assert (paths.cache / bandwidth_mod.CACHE_FILE_NAME).is_file()

    again = detect(
        paths, nvml=FakeNVML(init_error=pynvml.NVMLError_LibraryNotFound(12)), bandwidth_probe=probe
    )
    assert probe.calls == 1 and again.bandwidth is not None and again.bandwidth.cached
    assert again.gpus == () and again.gpu_note

    refreshed = detect(paths, nvml=FakeNVML(), refresh=True, bandwidth_probe=probe)
    assert probe.calls == 2 and refreshed.bandwidth is not None and not refreshed.bandwidth.cached

    data = json.loads(json.dumps(info.to_dict()))
    assert set(data) == {
        "system",
        "machine",
        "cpu",
        "memory",
        "disk",
        "gpus",
        "gpu_note",
        "unified_memory",
        "bandwidth",
        "bandwidth_note",
    }
    assert data["gpus"][1]["compute_capability"] == "8.0"
    assert data["bandwidth"]["all_threads_gb_per_s"] == 50.0


def test_detect_without_bandwidth_does_not_probe(paths):
    probe = CountingProbe()
    info = detect(paths, nvml=FakeNVML(), bandwidth=False, bandwidth_probe=probe)
    assert probe.calls == 0
    assert info.bandwidth is None and "skipped" in info.bandwidth_note
    assert info.to_dict()["bandwidth"] is None


def test_detect_reports_a_failed_probe_in_the_note(paths):
    def failing() -> BandwidthInfo:
        raise HardwareError("not enough memory for the probe")

    info = detect(paths, nvml=FakeNVML(), bandwidth_probe=failing)
    assert info.bandwidth is None and "not enough memory" in info.bandwidth_note


def test_results_are_frozen(paths):
    info = detect(paths, nvml=FakeNVML(), bandwidth=False)
    with pytest.raises(AttributeError):
        info.cpu.logical_cores = 99  # type: ignore[misc]
