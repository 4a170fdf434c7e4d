"""GPU offload of a whole Gemma 3 model on the CUDA simulator: n_gpu_layers 0, half and all give the
CPU's greedy continuation and its logits to f32 rounding; sliding window, ring buffer, cache
rewinds, the observer hook, "auto", out-of-memory retries and several devices.

The model is a tiny synthetic Gemma 3 (2 layers, 64 wide, vocabulary 256) quantized to Q8_0 with
Q4_0/Q5_0 tensors; the K-quant kernels are compared with the CPU's in test_cuda_kernels.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import engine

IDS = np.array([1, 17, 99, 3, 200, 42, 7], np.int64)
# Logits of the GPU path differ from the CPU's by f32 rounding (summation order) carried through two
# layers (observed: < 1e-6 on logits of magnitude ~7); a wrong kernel is off by orders more.
LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from engine.convert import convert_sync
    from engine.convert.synthetic import SyntheticSpec, write_synthetic

    d = tmp_path_factory.mktemp("cuda-gemma3")
    spec = SyntheticSpec("gemma3", 2, 64, 128, 2, 1, 32, 256, "F32", 7)
    src = write_synthetic(d / "src.gguf", spec)
    out = d / "tiny-q8.gguf"
    overrides = ["attn_k=Q5_0", "attn_output=Q4_0", "ffn_up=Q4_0", "ffn_down=Q5_0"]
    convert_sync(src, out, preset="Q8_0", overrides=overrides)
    return out


@pytest.fixture(scope="module")
def cpu_logits(tiny):
    with engine.open_model(tiny, n_ctx=32) as m:
        return m.logits(IDS)


def _greedy(m, n: int = 3) -> list[int]:
    m.reset()
    return [
        ev.token for ev in m.generate(IDS[:4].tolist(), temperature=0, max_tokens=n) if ev.token is not None
    ]


@pytest.mark.parametrize("n_gpu_layers", [0, 1, "all"])
def test_offload_gives_the_cpu_logits_and_continuation(launch, tiny, cpu_logits, n_gpu_layers):
    events = []
    with engine.open_model(tiny, n_ctx=32, n_gpu_layers=n_gpu_layers, progress=events.append) as m:
        info = m.offload
        assert info.reason == ""
        assert info.n_gpu_layers == {0: 0, 1: 1, "all": 2}[n_gpu_layers]
        assert info.output_on_gpu == (n_gpu_layers == "all")
        if n_gpu_layers:
            assert any(e.message.startswith("GPU offload: ") for e in events), [e.message for e in events]
        got = m.logits(IDS)
        np.testing.assert_allclose(got, cpu_logits, rtol=0, atol=LOGIT_ATOL)
        np.testing.assert_array_equal(got.argmax(axis=1), cpu_logits.argmax(axis=1))
        cont = _greedy(m)
    with engine.open_model(tiny, n_ctx=32) as cpu:
        assert cont == _greedy(cpu) and len(cont) == 3


def _direct(tiny, window: int, max_batch: int):
    """The tiny model with a small sliding window and micro-batch (n_ctx 16: rings are whole
    multiples of 64 slots, so every layer keeps all 16 positions)."""
    from engine.gguf import open_gguf
    from engine.models.gemma3 import Gemma3, Gemma3Params
    from engine.runtime.kv_cache import KVCache

    g = open_gguf(tiny)
    net = Gemma3.from_gguf(g, n_ctx=16)
    net.params = dataclasses.replace(net.params, sliding_window=window)
    p = net.params
    windows = [p.window(i) for i in range(p.n_layer)]
    net.cache = KVCache(16, p.n_head_kv, p.head_dim, windows, max_batch, k_transposed=True)
    assert isinstance(p, Gemma3Params) and all(p.is_swa(i) for i in range(p.n_layer))
    return g, net


def test_sliding_window_ring_and_rewind_on_two_devices(launch, tiny):
    from engine.runtime.cuda.device import DeviceArena

    g, cpu = _direct(tiny, window=3, max_batch=2)
    g2, gpu = _direct(tiny, window=3, max_batch=2)
    try:
        # two arenas: the layers' activations move between "devices" (the same simulated GPU)
        arenas = [DeviceArena(0, None, True, None), DeviceArena(0, None, True, None)]
        gpu.offload(2, arenas, output=True)
        assert gpu.cache.slots == [] and gpu.gpu.layers[0].kc.shape[0] == 16  # the CPU cache's sizing
        seen: dict[str, list[np.ndarray]] = {}
        gpu.observer = lambda name, x: seen.setdefault(name, []).append(x)
        want = cpu.forward(IDS[:6], 0)  # micro-batches of 2 through the window of 3
        got = gpu.forward(IDS[:6], 0)
        np.testing.assert_allclose(got, want, rtol=0, atol=LOGIT_ATOL)
        assert len(seen["blk.1.ffn_down.weight"]) == 3 and seen["token_embd.weight"][0].shape == (2, 64)
        gpu.observer = None
        # rewind: positions 3.. again with other tokens (the caches forget them first)
        other = np.array([9, 250], np.int64)
        got = gpu.forward(other, 3, last_only=True)
        np.testing.assert_allclose(got, cpu.forward(other, 3, last_only=True), rtol=0, atol=LOGIT_ATOL)
        assert got.shape == (1, 256)
    finally:
        g.close()
        g2.close()


def test_auto_asks_the_planner(launch, tiny, monkeypatch):
    with engine.open_model(tiny, n_ctx=32, n_gpu_layers="auto") as m:
        info = m.offload
        assert info.n_gpu_layers == 2 and info.output_on_gpu
        assert "chosen automatically" in info.message()
        assert any(
            n.startswith("auto: the planner fits 2 of 2 layers and the output layer") for n in info.notes
        )
    # no room beyond the planner's 1 GiB reserve: nothing goes to the GPU, and the user is told
    monkeypatch.setenv("KVANT_CUDASIM_VRAM_MB", "1024")
    with engine.open_model(tiny, n_ctx=32, n_gpu_layers="auto") as m:
        assert m.offload.n_gpu_layers == 0 and m.net.gpu is None
        assert m.offload.message().startswith("no layer fits on the GPU")


def test_out_of_memory_is_reported_and_retried_with_fewer_layers(launch, tiny):
    from engine.gguf import open_gguf
    from engine.models import load_model
    from engine.runtime.cuda import availability, offload_model

    with open_gguf(tiny) as g:
        net = load_model(g, n_ctx=32)
        layer_bytes = 60_000  # one layer (~46 kB of weights and cache) fits, two do not
        logs: list[str] = []
        info = offload_model(
            net, g, "all", 32, av=availability(), limit_bytes=lambda d: layer_bytes, log=logs.append
        )
        assert info.n_gpu_layers == 1 and not info.output_on_gpu and net.gpu.n_layers == 1
        assert "ran out of memory" in logs[0] and "MiB more were needed" in logs[0]
        assert logs[0].endswith("retrying with 2 layers on the GPU")  # the output layer goes first
        assert logs[-1].endswith("retrying with 1 layers on the GPU") and len(logs) == 2
        assert 0 < info.vram_bytes[0] <= layer_bytes
        with engine.open_model(tiny, n_ctx=32) as cpu:
            want = cpu.logits(IDS)
        net.reset()
        np.testing.assert_allclose(net.forward(IDS, 0), want, rtol=0, atol=LOGIT_ATOL)


def test_a_weight_type_without_cuda_kernel_keeps_the_model_on_the_cpu(launch, tiny, monkeypatch):
    from engine.gguf import open_gguf
    from engine.models import load_model
    from engine.runtime.cuda import availability, offload_model
    from engine.runtime.cuda import device as D
    from engine.runtime.kernels import QWeight

    # every CPU weight type has a CUDA kernel now: pretend Q3_K has none (a future type would not)
    monkeypatch.setattr(D, "GPU_QTYPES", D.GPU_QTYPES - {"Q3_K"})

    with open_gguf(tiny) as g:
        net = load_model(g, n_ctx=16)
        w = net.layers[1].w_up
        net.layers[1] = dataclasses.replace(net.layers[1], w_up=QWeight("Q3_K", w.rows, w.cols, w.fields))
        info = offload_model(net, g, "all", 16, av=availability())
        assert net.gpu is None and info.n_gpu_layers == 0 and len(net.layers) == 2
        assert (
            info.message()
            == "GPU offload unavailable: no CUDA kernel for Q3_K weights (layer 1) yet; running on the CPU"
        )
