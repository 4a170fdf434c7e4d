"""GPU offload of the llama-family decoder (llama, qwen2, qwen3, phi3) on the CUDA simulator: with
n_gpu_layers 0, half and all, greedy generation (a batched prompt, then a decoded token) gives the
CPU's logits to f32 rounding and its continuation, and the observer sees the same weight inputs;
"auto", out of memory; and each element-wise kernel of engine.runtime.cuda.ops_kernels against its
CPU function.

The models are test_models_arch's tiny random-weight GGUFs, written by the same builder
(scripts/make_arch_fixtures.py) with 2 layers, n_ff 256 and 320 tokens instead of 3, 512 and 512
so that the simulator (every GPU thread a Python thread) stays fast; everything else is theirs:
GQA, qwen2's q/k/v biases and tied output, qwen3's q/k norms and 128-wide heads, phi3's fused
q‖k‖v and gate‖up, rope factors and attention factor, llama's NORM rope, and weights in
Q8_0/Q6_K/Q5_K/Q5_0/Q4_K/Q4_0.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import engine
from tests.test_models_arch import ARCHS, _script

PROMPT = np.array([1, 17, 99], np.int64)
N_DECODE = 1  # greedy tokens decoded one by one after the prompt (the continuation is one more)
N_CTX = 16
# As in test_cuda_gemma3: the GPU path's logits differ from the CPU's by f32 rounding (summation
# order); a wrong kernel is off by orders more.
LOGIT_ATOL = 1e-4
# The weight inputs the observer sees: V (and the query) are rounded to f16 for the cache, and a
# value one f32 rounding apart can round to the neighbouring f16 (one f16 step, 2**-10 relative;
# seen: 5e-4 on values ~0.9 in attention outputs).  The logits above stay within LOGIT_ATOL.
ACT_RTOL_OF_MAX = 2.0**-10
EPS32 = float(np.finfo(np.float32).eps)


@dataclasses.dataclass
class Run:
    info: object
    logits: list[np.ndarray]  # (1, n_vocab): the prompt's last row, then each decoded token's
    tokens: list[int]  # the greedy continuation
    seen: list[tuple[str, np.ndarray]]  # the observer during the prompt


def _run(path, n_gpu_layers) -> Run:
    """Greedy generation as engine.runtime.generate does it (``last_only``): the prompt (observed),
    then one token at a time."""
    seen: list[tuple[str, np.ndarray]] = []
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers=n_gpu_layers) as m:
        net = m.net
        net.observer = lambda name, x: seen.append((name, np.array(x)))
        try:
            logits = [net.forward(PROMPT, 0, last_only=True)]
        finally:
            net.observer = None
        tokens = [int(logits[-1].argmax())]
        for _ in range(N_DECODE):
            logits.append(net.forward(np.array(tokens[-1:]), net.n_past, last_only=True))
            tokens.append(int(logits[-1].argmax()))
        return Run(m.offload, logits, tokens, seen)


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    """(arch, GGUF path, the CPU's run)."""
    arch = request.param
    script = _script()
    small = dataclasses.replace(script.SPECS[arch], n_layer=2, n_ff=256, vocab=320)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(script.SPECS, arch, small)
        path, _ = script.build(arch, tmp_path_factory.mktemp("cuda-decoder") / f"{arch}.gguf")
    return arch, path, _run(path, 0)


@pytest.mark.parametrize("n_gpu_layers", [0, 1, "all"])
def test_offload_gives_the_cpu_logits_and_continuation(launch, tiny, n_gpu_layers):
    arch, path, cpu = tiny
    got = _run(path, n_gpu_layers)
    info = got.info
    assert info.reason == "" and info.n_layer == 2
    assert info.n_gpu_layers == {0: 0, 1: 1, "all": 2}[n_gpu_layers]
    assert info.output_on_gpu == (n_gpu_layers == "all")
    assert got.tokens == cpu.tokens and len(got.tokens) == N_DECODE + 1
    assert [a.shape for a in got.logits] == [(1, 320)] * (N_DECODE + 1)
    for g, c in zip(got.logits, cpu.logits, strict=True):
        np.testing.assert_allclose(g, c, rtol=0, atol=LOGIT_ATOL, err_msg=arch)
    # the observer sees every weight's input, in the CPU's order, whichever device runs it
    assert [n for n, _ in got.seen] == [n for n, _ in cpu.seen]
    assert len(got.seen) == 2 * (4 if arch == "phi3" else 7) + 1
    for (name, g), (_, c) in zip(got.seen, cpu.seen, strict=True):
        assert g.shape == c.shape, name
        np.testing.assert_allclose(g, c, rtol=0, atol=ACT_RTOL_OF_MAX * np.abs(c).max(), err_msg=name)


def test_auto_and_out_of_memory(launch, tmp_path):
    """With "auto" the planner puts everything in the simulator's 4 GiB; a GPU that holds one
    layer gets one layer, after the output layer and the second layer were tried."""
    from engine.gguf import open_gguf
    from engine.models import load_model
    from engine.runtime.cuda import availability, offload_model

    path, _ = _script().build("qwen2", tmp_path / "qwen2.gguf")
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers="auto") as m:
        assert m.offload.n_gpu_layers == 3 and m.offload.output_on_gpu and m.net.gpu.n_layers == 3
        assert any(
            n.startswith("auto: the planner fits 3 of 3 layers and the output layer") for n in m.offload.notes
        )
        assert len(m.net.layers) == 0 and m.net.cache.slots == []
    with open_gguf(path) as g:
        net = load_model(g, n_ctx=N_CTX)
        one_layer = 600_000  # a layer is 431 kB of weights and cache
        logs: list[str] = []
        info = offload_model(
            net, g, "all", N_CTX, av=availability(), limit_bytes=lambda d: one_layer, log=logs.append
        )
        assert info.n_gpu_layers == 1 and not info.output_on_gpu and net.gpu.n_layers == 1
        assert [line.rsplit("; ", 1)[1] for line in logs] == [
            "retrying with 3 layers on the GPU",
            "retrying with 1 layers on the GPU",
        ]
        assert 0 < info.vram_bytes[0] <= one_layer and len(net.layers) == 2


# ---------------------------------------------------------------------------- element-wise kernels


def test_rope_norm_and_neox_with_factors_match_cpu(reduce_launch):
    from numba import cuda

    from engine.runtime.cuda import ops_kernels as O
    from engine.runtime.kernels.ops import rope

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 16)).astype(np.float32)
    pos = np.array([0, 7, 1000], np.int64)
    for n_rot, neox in ((16, False), (16, True), (12, False), (12, True)):
        ff = np.geomspace(1.0, 8.0, n_rot // 2).astype(np.float32)
        args = (n_rot, 500000.0, 0.5, ff, 1.19, neox)
        want = rope(x.copy(), pos, *args)
        dx = cuda.to_device(x)
        O.run_rope(reduce_launch, dx, cuda.to_device(pos), *args[:3], cuda.to_device(ff), *args[4:])
        got = dx.copy_to_host()
        # cos/sin: float64 rounded to f32 here, the C library's float32 functions on the CPU
        np.testing.assert_allclose(got, want, rtol=4 * EPS32, atol=4 * EPS32, err_msg=f"{n_rot} {neox}")
        np.testing.assert_array_equal(got[..., n_rot:], x[..., n_rot:])  # beyond n_rot: untouched
        assert np.abs(got - x).max() > 0.1


def test_query_scale_and_f16_rounding_equal_cpu(reduce_launch):
    from numba import cuda

    from engine.runtime.cuda import ops_kernels as O

    rng = np.random.default_rng(2)
    x = (3 * rng.standard_normal((4, 24))).astype(np.float32)
    s = np.float32(1 / np.sqrt(96.0))  # not a power of two: the order matters

    def f16(a):
        return a.astype(np.float16).astype(np.float32)

    cases = {(True, True): f16(x * s), (False, True): f16(x) * s, (True, False): x * s, (False, False): x * s}
    for (scale_first, round_f16), want in cases.items():
        got = O.run_scale_round(reduce_launch, cuda.to_device(x), s, scale_first, round_f16).copy_to_host()
        np.testing.assert_array_equal(got, want, err_msg=f"{scale_first} {round_f16}")
    assert (cases[True, True] != cases[False, True]).any()


def test_swiglu_on_a_fused_gate_up_equals_cpu(reduce_launch):
    from numba import cuda

    from engine.runtime.cuda import ops_kernels as O
    from engine.runtime.kernels.ops import swiglu

    rng = np.random.default_rng(3)
    gu = (4 * rng.standard_normal((3, 80))).astype(np.float32)  # gate ‖ up, as phi3's ffn_up gives
    d = cuda.to_device(gu)
    got = O.run_swiglu(reduce_launch, d[:, :40], d[:, 40:]).copy_to_host()
    np.testing.assert_array_equal(got, swiglu(gu[:, :40], gu[:, 40:]))


def test_residual_add_and_column_slices_with_bias_equal_cpu(reduce_launch):
    from numba import cuda

    from engine.runtime.cuda import ops_kernels as O

    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal((3, 20)).astype(np.float32) for _ in range(2))
    np.testing.assert_array_equal(
        O.run_add(reduce_launch, cuda.to_device(a), cuda.to_device(b)).copy_to_host(), a + b
    )
    qkv = rng.standard_normal((3, 36)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    d = cuda.to_device(qkv)
    got = O.run_take_cols(reduce_launch, d, 20, 8, cuda.to_device(bias)).copy_to_host()
    np.testing.assert_array_equal(got, qkv[:, 20:28] + bias)
    np.testing.assert_array_equal(O.run_take_cols(reduce_launch, d, 28, 8).copy_to_host(), qkv[:, 28:])
    # a bias added in place
    full_bias = rng.standard_normal(36).astype(np.float32)
    O.run_take_cols(reduce_launch, d, 0, 36, cuda.to_device(full_bias), out=d)
    np.testing.assert_array_equal(d.copy_to_host(), qkv + full_bias)
