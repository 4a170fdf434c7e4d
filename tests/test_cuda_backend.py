"""Shared set-up of the CUDA tests: Numba's CUDA simulator unless KVANT_CUDA_TESTS=device."""

from __future__ import annotations

import contextlib
import os

import pytest


@contextlib.contextmanager
def cuda_test_device():
    """The launch shapes of the device the tests run on (simulator by default).  The simulator is
    switched on for a test module only (a module-scoped fixture), so other tests never see GPU
    offload as available."""
    with pytest.MonkeyPatch.context() as mp:
        if os.environ.get("KVANT_CUDA_TESTS") != "device":
            mp.setenv("NUMBA_ENABLE_CUDASIM", "1")
        from engine.runtime.cuda.backend import availability

        av = availability()
        assert av.available, av.reason
        from engine.runtime.cuda import device as D

        yield D.SIM_LAUNCH if av.simulator else D.GPU_LAUNCH


class _Nvml:
    """A fake NVML (engine.hardware.NvmlApi) with GPUs of given free memory and a driver version."""

    def __init__(self, free_gib=(24,), cuda=12040, fail_init: Exception | None = None) -> None:
        self.free = list(free_gib)
        self.cuda = cuda
        self.fail_init = fail_init

    def init(self) -> None:
        if self.fail_init is not None:
            raise self.fail_init

    def shutdown(self) -> None:
        pass

    def driver_version(self) -> str:
        return "550.54"

    def cuda_driver_version(self) -> int:
        return self.cuda

    def device_count(self) -> int:
        return len(self.free)

    def device_name(self, index: int) -> str:
        return f"NVIDIA Test {index}"

    def device_memory(self, index: int) -> tuple[int, int]:
        return 32 << 30, self.free[index] << 30

    def device_compute_capability(self, index: int) -> tuple[int, int]:
        return 8, 9


@pytest.fixture
def real_mode(monkeypatch):
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)


def test_no_gpu_driver_too_old_and_no_numba_cuda_are_explained(real_mode, monkeypatch):
    import importlib.util

    from engine.runtime.cuda import availability

    class NVMLError_DriverNotLoaded(Exception):
        pass

    av = availability(_Nvml(fail_init=NVMLError_DriverNotLoaded()))
    assert not av.available and "NVIDIA driver is not loaded" in av.reason
    av = availability(_Nvml(cuda=11040))
    assert not av.available and "driver is too old" in av.reason and "11.4" in av.reason
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "numba_cuda" else real(name, *a)
    )
    av = availability(_Nvml())
    assert not av.available and av.reason.startswith("numba-cuda is not installed")
    assert "pip install 'kvant[cuda]'" in av.reason


def test_open_model_without_a_gpu_runs_on_the_cpu_and_says_why(real_mode, monkeypatch, tmp_path):
    import engine
    from engine.convert.synthetic import SyntheticSpec, write_synthetic
    from engine.runtime.cuda import CudaAvailability, backend

    path = tmp_path / "tiny.gguf"
    from engine.convert import convert_sync

    src = write_synthetic(tmp_path / "src.gguf", SyntheticSpec("gemma3", 2, 64, 128, 2, 1, 32, 256, "F32", 7))
    convert_sync(src, path, preset="Q8_0")
    monkeypatch.setattr(backend, "availability", lambda nvml=None: CudaAvailability(False, "no NVIDIA GPU"))
    events = []
    with engine.open_model(path, n_ctx=16, n_gpu_layers="all", progress=events.append) as m:
        assert m.offload.n_gpu_layers == 0 and m.net.gpu is None
        assert m.offload.message() == "GPU offload unavailable: no NVIDIA GPU; running on the CPU"
        assert m.offload.message() in [e.message for e in events]
        assert m.logits([1, 2]).shape == (2, 256)
    with engine.open_model(path, n_ctx=16) as m:
        assert m.offload.message().startswith("GPU offload off")


def test_layers_split_across_gpus_in_proportion_to_free_vram():
    from engine.errors import ModelError
    from engine.runtime.cuda import CudaDevice, parse_gpu_layers, split_slots

    devs = [CudaDevice(0, "a", 32 << 30, 8 << 30), CudaDevice(1, "b", 32 << 30, 24 << 30)]
    assert split_slots(9, devs) == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert split_slots(4, devs[:1]) == [0, 0, 0, 0]
    assert parse_gpu_layers("12") == 12 and parse_gpu_layers("AUTO") == "auto" and parse_gpu_layers(None) == 0
    for bad in (-1, "half", 1.5, True):
        with pytest.raises(ModelError):
            parse_gpu_layers(bad)


def test_bench_records_the_gpu_status(real_mode, default_model, monkeypatch, capsys):
    import json

    from engine.cli import run_cli
    from engine.runtime.cuda import CudaAvailability, backend

    monkeypatch.setattr(backend, "availability", lambda nvml=None: CudaAvailability(False, "no NVIDIA GPU"))
    argv = ["bench", str(default_model), "--prompt-tokens", "16", "--gen-tokens", "1"]
    argv += ["--n-gpu-layers", "all"]
    assert run_cli([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_gpu_layers"] == "all" and data["kvant"]["decode_tok_s"] > 0
    assert data["gpu"]["n_gpu_layers"] == 0 and data["gpu"]["reason"] == "no NVIDIA GPU"
    assert data["gpu"]["message"] == "GPU offload unavailable: no NVIDIA GPU; running on the CPU"
    assert data["gpu_launch_modes"] is None  # no GPU layer decoded
