"""Kernel launches and device allocations per decoded token on the GPU layers (CUDA simulator).

On a real GPU every launch from Python costs ~5-20 us of CPU time, more than the kernels of a small
model need: Gemma 3 270M reads ~250 MB of weights per token, ~75 us at an H100's bandwidth, over
18 layers.  So the one-token path (engine/runtime/cuda/decode.py) allocates its buffers with the
weights, configures its launches once and fuses what it can (engine/runtime/cuda/fused_kernels.py).

Counted on tiny 2-layer Gemma 3 and llama models with every weight in Q8_0 (one activation type),
for the second token decoded after a prompt:

=============  ==================================  ==================================
per layer      before                              after
=============  ==================================  ==================================
Gemma 3        22 launches, 28 device allocations  9 launches, 0 device allocations
llama family   21 launches, 23 device allocations  9 launches, 0 device allocations
=============  ==================================  ==================================

Per token, before: 2 uploads into new device arrays (hidden state, positions) and, for the output
layer, 3 launches (norm, quantization, mat-mul) and 5 allocations.  After: no allocation (the
hidden state is copied into a buffer), and leaving the GPU layers is 1 launch with the hidden state
(the last residual update) or 2 with the logits (residual update + output norm + quantization,
output mat-mul; + soft-capping where the model has it).  A layer after: residual update + norm +
quantization (one kernel, which also ends the previous layer), the q‖k‖v mat-mul (one launch per
weight type), Q/K norm + RoPE + query scale + KV-cache write, attention + quantization of its
output, the output projection, residual + FFN norm + quantization, the gate‖up mat-mul, GELU/SiLU
gating + quantization, the down projection.  The default model as loaded (Gemma 3 270M: q/k/v and
gate/up Q8_0, the others K-quants, so the same count) goes from 18 x 22 + 3 = 399 launches and 511
allocations per token to 18 x 9 + 2 = 164 launches and none.

The decoded logits are the CPU's to f32 rounding, and, through a sliding-window ring on two
devices, those of the general graph (the one an observer gets) bit for bit.  The fused kernels
with several threads per block are compared with the kernels they replace in test_cuda_fused.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter

import numpy as np
import pytest

import engine
from tests.test_cuda_backend import cuda_test_device

PROMPT = np.array([1, 17, 99], np.int64)
N_CTX = 16
LAUNCHES_PER_LAYER = 9
LAUNCHES_TO_HIDDEN = 1
LAUNCHES_TO_LOGITS = 2
# as in test_cuda_gemma3 / test_cuda_decoder: f32 rounding (summation order) through two layers
LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def launch():
    with cuda_test_device() as launch:
        from engine.runtime.cuda import device as D

        if launch is not D.SIM_LAUNCH:
            pytest.skip("launches are counted on the CUDA simulator")
        yield launch


@pytest.fixture(scope="module")
def q8_models(tmp_path_factory):
    """2-layer synthetic Gemma 3 and llama models, every weight Q8_0."""
    from engine.convert import convert_sync
    from engine.convert.synthetic import SyntheticSpec, write_synthetic

    d = tmp_path_factory.mktemp("cuda-launches")
    paths = {}
    for arch in ("gemma3", "llama"):
        spec = SyntheticSpec(arch, 2, 64, 128, 2, 1, 32, 256, "F32", 7)
        paths[arch] = d / f"{arch}-q8.gguf"
        convert_sync(write_synthetic(d / f"{arch}.gguf", spec), paths[arch], preset="Q8_0")
    return paths


@contextlib.contextmanager
def counting():
    """Counts kernel launches (not device-function calls) and device allocations (new device
    arrays, uploads, host arrays a kernel gets and copies itself) while the block runs."""
    from numba import cuda
    from numba.cuda.simulator import kernel as sim

    counts: Counter[str] = Counter()
    call = sim.FakeCUDAKernel.__call__

    def counted_call(self, *args):
        if not self._device:
            counts["launches"] += 1
            counts["allocations"] += sum(isinstance(a, np.ndarray) and a.ndim > 0 for a in args)
        return call(self, *args)

    def counted(fn):
        def alloc(*args, **kwargs):
            counts["allocations"] += 1
            return fn(*args, **kwargs)

        return alloc

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sim.FakeCUDAKernel, "__call__", counted_call)
        for name in ("device_array", "device_array_like", "to_device", "managed_array", "mapped_array"):
            if hasattr(cuda, name):
                mp.setattr(cuda, name, counted(getattr(cuda, name)))
        yield counts


@dataclasses.dataclass
class Decoded:
    launches: int
    allocations: int
    logits: np.ndarray
    planned: int  # what the GPU layers' programs say they launch (engine.runtime.cuda.decode)


def _decode(path, n_gpu_layers) -> Decoded:
    """The prompt, one greedy token, then the counted one."""
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers=n_gpu_layers) as m:
        net = m.net
        logits = net.forward(PROMPT, 0, last_only=True)
        logits = net.forward(np.array([int(logits.argmax())]), net.n_past, last_only=True)
        tok = np.array([int(logits.argmax())])
        with counting() as counts:
            logits = net.forward(tok, net.n_past, last_only=True)
        planned = 0
        if net.gpu is not None:
            from engine.runtime.cuda.decode import launches_per_token

            planned = launches_per_token(net.gpu.decode)
    return Decoded(counts["launches"], counts["allocations"], logits, planned)


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_a_decoded_token_costs_nine_launches_per_layer_and_no_allocation(launch, q8_models, arch):
    q8_model = q8_models[arch]
    cpu = _decode(q8_model, 0)
    assert (cpu.launches, cpu.allocations) == (0, 0)
    one = _decode(q8_model, 1)  # the second layer on the GPU: the hidden state comes back
    assert (one.launches, one.allocations) == (LAUNCHES_PER_LAYER + LAUNCHES_TO_HIDDEN, 0)
    full = _decode(q8_model, "all")  # both layers and the output layer
    assert (full.launches, full.allocations) == (2 * LAUNCHES_PER_LAYER + LAUNCHES_TO_LOGITS, 0)
    for got in (one, full):
        assert got.planned == got.launches
        assert got.logits.shape == cpu.logits.shape == (1, 256)
        np.testing.assert_allclose(got.logits, cpu.logits, rtol=0, atol=LOGIT_ATOL)


def test_the_counter_sees_launches_and_allocations(launch):
    from numba import cuda

    from engine.runtime.cuda import kernels as K

    with counting() as counts:
        x = cuda.device_array((1, 64), np.float32)
        K.softcap[1, 1](x, np.float32(30.0))
        K.kv_truncate[1, 1](np.zeros(4, np.int64), 0)  # a host array: copied to the device
    assert counts == {"launches": 2, "allocations": 2}


def _gemma_ring(path):
    """Gemma 3 with a 3-token sliding window in a ring of 4 slots (micro-batches of 2), and
    soft-capped logits."""
    from engine.gguf import open_gguf
    from engine.models.gemma3 import Gemma3
    from engine.runtime.kv_cache import KVCache

    g = open_gguf(path)
    net = Gemma3.from_gguf(g, n_ctx=N_CTX)
    net.params = dataclasses.replace(net.params, sliding_window=3, final_softcap=2.0)  # logits ~ +-2
    p = net.params
    windows = [p.window(i) for i in range(p.n_layer)]
    net.cache = KVCache(N_CTX, p.n_head_kv, p.head_dim, windows, 2, k_transposed=True)  # as the model's
    return g, net


def test_decode_through_a_sliding_window_ring_on_two_devices(launch, q8_models):
    """Token by token past the 4-slot ring of a 3-token window, layers on two devices, and a
    rewind: the one-token programs give the general graph's logits bit for bit (an observer
    makes the model take the general graph)."""
    from engine.runtime.cuda.device import DeviceArena

    nets = [_gemma_ring(q8_models["gemma3"]) for _ in range(2)]
    try:
        fast, general = (net for _, net in nets)
        for net in (fast, general):
            net.offload(2, [DeviceArena(0, None, True, None), DeviceArena(0, None, True, None)], output=True)
        # a layer each; the first hands its hidden state on, the second adds the soft-capped logits
        assert [g.launches(True) for g in fast.gpu.decode] == [
            LAUNCHES_PER_LAYER + LAUNCHES_TO_HIDDEN,
            LAUNCHES_PER_LAYER + LAUNCHES_TO_LOGITS + 1,
        ]
        general.observer = lambda name, x: None
        steps = [(PROMPT, 0), *((np.array([t]), p) for p, t in enumerate([5, 250, 9], start=3))]
        for tokens, pos in [*steps, (np.array([11]), 4)]:  # positions 4, 5 wrap; then a rewind
            want = general.forward(tokens, pos, last_only=True)
            np.testing.assert_array_equal(fast.forward(tokens, pos, last_only=True), want)
            assert 1.0 < np.abs(want).max() < 2.0
    finally:
        for g, _ in nets:
            g.close()
