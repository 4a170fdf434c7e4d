"""CUDA kernels against the CPU kernels, on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), so CI
without a GPU runs them.  Shapes are tiny: the simulator runs every GPU thread as a Python thread.

Element-wise ops and the activation quantization reproduce the CPU's arithmetic step by step, so
on the simulator they are compared for equality (the transcendental functions are evaluated in
float64 and rounded, which the CPU's float32 libm calls match to the last bit on these inputs);
the quantized products differ from the CPU kernels only in the order in which block
contributions are summed, so they are held to the f32 rounding bound of that sum.

``KVANT_CUDA_TESTS=device`` runs the same tests on a real GPU (numba-cuda) instead.
"""

from __future__ import annotations

import numpy as np
import pytest

GGML = {"Q4_0": 2, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
EPS32 = float(np.finfo(np.float32).eps)


def _qweight(qtype: str, rows: int, cols: int, seed: int):
    from engine.quant import quantize
    from engine.runtime.kernels import repack

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    raw = np.asarray(quantize(x, qtype), np.uint8).reshape(rows, -1)
    return repack(raw, GGML[qtype], rows, cols)


def _acts(n: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[:, 3] *= 9.0  # an outlier column, as real activations have
    return x


def _product_bound(w, x: np.ndarray) -> np.ndarray:
    """f32 rounding bound of a quantized product computed in a different summation order than the
    CPU: (units + 64) * eps * sum_k |w_rk| |x_tk| over exactly dequantized weights and activations."""
    from engine.runtime.kernels import dequant_act, dequantize_rows, quantize_act

    act = quantize_act(w, x)
    xf = np.abs(dequant_act(act[0], act[1]).astype(np.float64))
    wf = np.abs(dequantize_rows(w).astype(np.float64))
    units = w.cols // 32 if w.qtype in ("Q4_0", "Q5_0", "Q8_0") else w.cols // 64
    return (units + 64) * EPS32 * (xf @ wf.T)


def test_activation_quantization_equals_cpu(launch):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.kernels import quantize_q8_0, quantize_q8_k

    x = _acts(2, 512, 1)
    x[1, 256:512] = 0.0  # an all-zero Q8_K block
    x[0, 40], x[0, 41] = 3.0, -3.0  # a tie in |x|: the first one sets the scale's sign
    dx = cuda.to_device(x)
    q, d = (a.copy_to_host() for a in D.quantize(launch, "Q8_0", dx))
    rq, rd = quantize_q8_0(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(d, rd)
    q, d, bs = (a.copy_to_host() for a in D.quantize(launch, "Q8_K", dx))
    rq, rd, rbs = quantize_q8_k(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(bs, rbs)


@pytest.mark.parametrize(
    ("qtype", "cols"),
    [("Q4_0", 96), ("Q5_0", 96), ("Q8_0", 96), ("Q4_K", 512), ("Q5_K", 512), ("Q6_K", 512)],
)
def test_quantized_products_match_cpu(reduce_launch, qtype, cols):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.kernels import matvec

    rows = 5  # not a multiple of the rows per block
    w = _qweight(qtype, rows, cols, seed=cols + GGML[qtype])
    dw = D.DeviceQWeight.upload(D.DeviceArena(0, None, True, None), w)
    for n in (1, 3):  # decode (mat-vec) and a small prefill tile (mat-mat)
        x = _acts(n, cols, seed=n)
        act = D.quantize(reduce_launch, dw.act_type, cuda.to_device(x))
        got = D.matmul(reduce_launch, dw, act)
        got = got.copy_to_host()
        want = matvec(w, x)
        bound = _product_bound(w, x)
        assert np.all(np.abs(got.astype(np.float64) - want) <= bound), (qtype, n, np.abs(got - want).max())
        assert np.abs(got).max() > 1.0  # not a vacuous comparison


def test_rmsnorm_and_residual_equal_cpu(reduce_launch):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.kernels import rmsnorm

    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    res = rng.standard_normal((3, 40)).astype(np.float32)
    w = (1 + 0.1 * rng.standard_normal(40)).astype(np.float32)
    eps = np.float32(1e-6)
    got = D.rmsnorm(reduce_launch, cuda.to_device(x), cuda.to_device(w), eps).copy_to_host()
    np.testing.assert_array_equal(got, rmsnorm(x, w, eps))
    got = D.rmsnorm(reduce_launch, cuda.to_device(x), cuda.to_device(w), eps, res=cuda.to_device(res))
    np.testing.assert_array_equal(got.copy_to_host(), res + rmsnorm(x, w, eps))


def test_rope_scale_and_f16_rounding_match_cpu(reduce_launch):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.kernels import rope_neox

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 16)).astype(np.float32)
    pos = np.array([0, 7, 1000], np.int64)
    want = rope_neox(x.copy(), pos, 10000.0, 0.25)
    got = D.rope(reduce_launch, cuda.to_device(x), cuda.to_device(pos), 10000.0, 0.25).copy_to_host()
    # cos/sin: float64 rounded to f32 here, the C library's float32 functions on the CPU
    np.testing.assert_allclose(got, want, rtol=4 * EPS32, atol=4 * EPS32)
    scale = np.float32(0.125)
    want = (rope_neox(x.copy(), pos, 1e6, 1.0) * scale).astype(np.float16).astype(np.float32)
    got = D.rope(reduce_launch, cuda.to_device(x), cuda.to_device(pos), 1e6, 1.0, scale=0.125, round_f16=True)
    got = got.copy_to_host()
    assert np.mean(got == want) > 0.99  # a rare 1-ulp f32 difference may flip an f16 rounding
    np.testing.assert_allclose(got, want, rtol=2**-10)


def test_geglu_softcap_match_cpu(reduce_launch):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.kernels import geglu

    rng = np.random.default_rng(5)
    gate = (4 * rng.standard_normal((2, 48))).astype(np.float32)
    gate[0, :4] = [-12.0, 12.0, -10.0, 10.0]  # outside the fp16 table
    up = rng.standard_normal((2, 48)).astype(np.float32)
    got = D.geglu(reduce_launch, cuda.to_device(gate), cuda.to_device(up), True).copy_to_host()
    np.testing.assert_array_equal(got, geglu(gate, up, True))  # fp16 table: the same bits
    # without the table the CPU calls glibc's tanhf (llama.cpp's), the device its own tanh (the
    # simulator: Python's, correctly rounded): the same expression with tanh(.) within an ulp
    # (|t| <= 1), so each output within 0.5·|gate·up|·2 ulp(1) (plus the final roundings)
    got = D.geglu(reduce_launch, cuda.to_device(gate), cuda.to_device(up), False).copy_to_host()
    want = geglu(gate, up, False)
    bound = np.abs(gate * up) * np.float32(2.0**-23) + 4 * np.spacing(np.abs(want))
    assert (np.abs(got - want) <= bound).all(), np.abs(got - want).max()
    logits = (30 * rng.standard_normal((3, 50))).astype(np.float32)
    logits[1, 7] = logits[1, 30] = logits[1].max() + 1  # a tie: the first index wins
    c = np.float32(30.0)
    got = D.softcap(reduce_launch, cuda.to_device(logits), c).copy_to_host()
    np.testing.assert_allclose(got, np.tanh(logits / c) * c, rtol=2 * EPS32, atol=0)


def _greedy_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    base = (30 * rng.standard_normal(75)).astype(np.float32)
    cases = {"random": base}
    top = base.max() + 1
    for name, where in {"first": [0], "last": [74], "tie": [9, 10, 52], "tie-far": [61, 3]}.items():
        x = base.copy()
        x[where] = top  # ties: the first index wins, across threads and blocks
        cases[name] = x
    x = np.full(75, -np.inf, np.float32)
    x[40] = -1e30
    cases["-inf and one finite"] = x
    cases["all equal"] = np.full(75, 2.5, np.float32)
    x = base.copy()
    x[::2] = -np.inf
    cases["some -inf"] = x
    # the host sampler rejects these (SamplingError), so the device must hand them back
    for name, where, v in (("NaN", 33, np.nan), ("NaN first", 0, np.nan), ("+inf", 20, np.inf)):
        x = base.copy()
        x[where] = v
        cases[name] = x
    cases["only -inf"] = np.full(75, -np.inf, np.float32)
    return cases


@pytest.mark.parametrize("blocks", [1, 4])
@pytest.mark.parametrize("case", list(_greedy_cases()))
def test_top_pick_is_the_host_samplers_top_k(reduce_launch, blocks, case):
    import dataclasses

    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.sampling import Sampler, SamplingError, SamplingParams, _top_k_positions

    logits = _greedy_cases()[case]
    lc = dataclasses.replace(reduce_launch, max_blocks=blocks)
    x = cuda.to_device(logits[None, :])
    deep = case in ("random", "tie", "all equal", "some -inf")  # many rounds (slow on the simulator)
    for k in (1, 3, 12, 64) if deep else (1, 3):
        got = D.top_pick(lc, x, k)
        try:
            greedy = Sampler(SamplingParams(temperature=0.0)).sample(logits)
        except SamplingError:
            assert got is None  # the host looks at the logits and raises
            continue
        ids, vals = got
        want = _top_k_positions(logits, k)  # best first, ties: the lowest id first
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_array_equal(vals, logits[want])
        assert ids[0] == greedy


def test_f16_kv_cache_and_attention_with_window_match_cpu(reduce_launch):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.cuda import kernels as K
    from engine.runtime.kernels import attention
    from engine.runtime.kv_cache import KVCache

    rng = np.random.default_rng(6)
    nh, nkv, d, window = 4, 2, 8, 3
    cpu = KVCache(16, nkv, d, [window], max_batch=2)  # a ring of 4 slots
    slots = cpu.slots[0]
    kc = cuda.to_device(np.zeros((slots, nkv, d), np.uint16))
    vc = cuda.to_device(np.zeros((slots, nkv, d), np.uint16))
    sp = cuda.to_device(np.full(slots, -1, np.int64))
    for pos0 in (0, 2, 4, 6):  # batches of 2: the ring wraps
        k = rng.standard_normal((2, nkv, d)).astype(np.float32)
        v = rng.standard_normal((2, nkv, d)).astype(np.float32)
        q = rng.standard_normal((2, nh, d)).astype(np.float16).astype(np.float32)
        qpos = np.arange(pos0, pos0 + 2, dtype=np.int64)
        cpu.write(0, pos0, k, v)
        K.kv_write[1, 1](cuda.to_device(k), cuda.to_device(v), kc, vc, sp, pos0)
        kk, vv, spos = cpu.view(0, pos0 + 2)
        want = attention(q, kk, vv, spos, qpos, window, True)
        ns = min(slots, pos0 + 2)
        got = D.attention(
            reduce_launch, cuda.to_device(q), kc, vc, sp, ns, cuda.to_device(qpos), window, True
        )
        np.testing.assert_array_equal(sp.copy_to_host()[:ns], spos)
        kbits = kc.copy_to_host()[:ns]
        np.testing.assert_array_equal(kbits.view(np.float16).astype(np.float32), kk)
        # exp: float64 rounded to f32 here, the C library's expf on the CPU
        np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-6, atol=1e-6)
