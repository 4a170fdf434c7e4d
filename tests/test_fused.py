"""Fused single-token kernels (engine.runtime.kernels.fused): each equals, bit for bit, the unfused
kernels it replaces in the decode path (and so their NumPy references, which tests/test_kernels.py
holds those to)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.runtime.kernels import (
    attention,
    fused,
    geglu,
    matvec,
    quantize_q8_0,
    quantize_q8_k,
    repack,
    rmsnorm,
)
from engine.runtime.kernels.actquant import dequant_act
from engine.runtime.kernels.ops import rope, rope_neox, swiglu
from engine.runtime.kv_cache import KVCache

EPS = np.float32(1e-6)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def same(a, b) -> bool:
    return np.array_equal(bits(a), bits(b))


def rng_vec(n: int, seed: int, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def check_act(buf: fused.ActBuffers, h: np.ndarray) -> None:
    """buf holds h and its quantized forms, as the unfused activation quantizers give them."""
    assert same(buf.h, h)
    x = h[None, :]
    if buf.flags & fused.ACT_Q8_0:
        q, d = quantize_q8_0(x)
        assert np.array_equal(buf.q0, q[0]) and same(buf.d0, d[0])
        assert same(buf.xs, dequant_act(q, d)[0])
    if buf.flags & fused.ACT_Q8_K:
        q, d, s = quantize_q8_k(x)
        assert np.array_equal(buf.qk, q[0]) and same(buf.dk, d[0]) and np.array_equal(buf.bk, s[0])


ALL = fused.ACT_Q8_0 | fused.ACT_Q8_K


@pytest.mark.parametrize("seed", range(3))
def test_rms_act_and_add_rms_act(seed):
    n = 512
    x, a, w, w2 = (rng_vec(n, seed * 10 + i) for i in range(4))
    x[:32] = 0  # a zero block: Q8_0 scale 0
    buf = fused.ActBuffers(n)
    buf.flags = ALL
    fused.rms_act(x, w, EPS, buf.h, *buf.outs())
    check_act(buf, rmsnorm(x[None], w, EPS)[0])

    x1 = x.copy()
    fused.add_rms_act(x1, a, w2, True, EPS, w, buf.h, *buf.outs())
    want = x[None] + rmsnorm(a[None], w2, EPS)
    assert same(x1, want[0])
    check_act(buf, rmsnorm(want, w, EPS)[0])

    x2 = x.copy()
    fused.add_rms_act(x2, a, w2, False, EPS, w, buf.h, *buf.outs())
    assert same(x2, (a[None] + x[None])[0])

    x3 = x.copy()
    fused.add_rms(x3, a, w2, EPS)
    assert same(x3, want[0])


@pytest.mark.parametrize("fp16_table", [True, False])
def test_geglu_act(fp16_table):
    n = 2048
    g = rng_vec(n, 1, 6.0)
    g[:4] = [-12.0, 12.0, -10.0, 10.0]
    u = rng_vec(n, 2)
    buf = fused.ActBuffers(n)
    buf.flags = ALL
    fused.geglu_act(g, u, fp16_table, fused.gelu_f16_table(), buf.h, *buf.outs())
    check_act(buf, geglu(g[None], u[None], fp16_table)[0])


def test_gelu_table_covers_every_half():
    t = fused.gelu_f16_table()
    halves = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    finite = np.abs(halves) < 10
    want = geglu(halves[None, finite], np.ones((1, finite.sum()), np.float32), True)[0]
    assert same(t[finite], want)


def test_swiglu_act():
    g, u = rng_vec(1024, 3), rng_vec(1024, 4)
    buf = fused.ActBuffers(1024)
    buf.flags = ALL
    fused.swiglu_act(g, u, buf.h, *buf.outs())
    check_act(buf, swiglu(g[None], u[None])[0])


def test_embed_q8_0():
    rows, cols = 7, 64
    w = repack(_q8_0_bytes(rows, cols), 8, rows, cols)
    out = np.empty(cols, np.float32)
    from engine.runtime.kernels import dequantize_rows

    for r in range(rows):
        fused.embed_q8_0(w.fields[0], w.fields[1], r, np.float32(8.0), out)
        assert same(out, dequantize_rows(w, r, r + 1)[0] * np.float32(8.0))


def _q8_0_bytes(rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    blk = np.zeros((rows, cols // 32, 34), np.uint8)
    blk[:, :, 0:2] = np.full((rows, cols // 32), 0.01, np.float16).view(np.uint8).reshape(rows, -1, 2)
    blk[:, :, 2:] = rng.integers(0, 256, (rows, cols // 32, 32), dtype=np.uint8)
    return blk.reshape(-1)


@pytest.mark.parametrize(
    "gemma,neox,scale_first,round_f16,window",
    [(True, True, True, True, 4), (False, True, False, True, 0), (False, False, True, False, 0)],
)
def test_qk_rope_cache_and_attend_one(gemma, neox, scale_first, round_f16, window):
    """Norm + rope + scale + cache write, then attention, for one token against the batched path."""
    nh, nkv, d = 4, 2, 16
    n_ctx, pos = 12, 9
    rng = np.random.default_rng(7)
    qn, kn = rng_vec(d, 8), rng_vec(d, 9)
    ff = (1.0 + rng.random(d // 2)).astype(np.float32)
    base, fscale, mscale, scale = 10000.0, 0.5, 1.25, np.float32(0.3)
    cache = KVCache(
        n_ctx, nkv, d, [window], max_batch=4, dtype="f16" if round_f16 else "f32", k_transposed=True
    )
    # earlier positions through the batched write
    kprev = rng.standard_normal((pos, nkv, d)).astype(np.float32)
    vprev = rng.standard_normal((pos, nkv, d)).astype(np.float32)
    for p0 in range(0, pos, 4):
        cache.write(0, p0, kprev[p0 : p0 + 4], vprev[p0 : p0 + 4])
    q, k, v = rng_vec(nh * d, 10), rng_vec(nkv * d, 11), rng_vec(nkv * d, 12)

    # unfused: the models' batched graph for n = 1
    positions = np.array([pos], np.int64)
    qr = rmsnorm(q.reshape(-1, d), qn, EPS).reshape(1, nh, d)
    kr = rmsnorm(k.reshape(-1, d), kn, EPS).reshape(1, nkv, d)
    for t in (qr, kr):
        if gemma:
            rope_neox(t, positions, base, fscale)
        else:
            rope(t, positions, d, base, fscale, ff, mscale, neox)
    if scale_first:
        qr *= scale
        if round_f16:
            qr = qr.astype(np.float16).astype(np.float32)
    else:
        if round_f16:
            qr = qr.astype(np.float16).astype(np.float32)
        qr *= scale
    ref = KVCache(n_ctx, nkv, d, [window], max_batch=4, dtype=cache.dtype)
    for p0 in range(0, pos, 4):
        ref.write(0, p0, kprev[p0 : p0 + 4], vprev[p0 : p0 + 4])
    ref.write(0, pos, kr, v.reshape(1, nkv, d))
    kc, vc, sp = ref.view(0, pos + 1)
    want = attention(qr, kc, vc, sp, positions, window, round_f16).reshape(-1)

    # fused
    qo = np.empty((nh, d), np.float32)
    slot = pos % cache.slots[0]
    fused.qk_rope_cache(
        q, k, v, qn, kn, True, EPS, pos, d, base, fscale, ff, mscale, neox, gemma, scale, scale_first,
        round_f16, qo, cache.k[0], cache.v[0], cache.kt[0], True, cache.slot_pos[0], slot,
    )  # fmt: skip
    assert same(qo, qr[0])
    ns = min(cache.slots[0], pos + 1)
    assert cache.k[0].shape[0] == 0  # the keys live only in kt
    assert same(cache.kt[0][:, :, :ns], np.transpose(kc, (1, 2, 0))) and same(cache.v[0][:ns], vc)
    assert np.array_equal(cache.slot_pos[0][:ns], sp)
    out = np.empty(nh * d, np.float32)
    scores = np.empty((nh, cache.kt[0].shape[2]), np.float32)
    fused.attend_one(
        qo, cache.kt[0], cache.v[0], cache.slot_pos[0], ns, pos, window, round_f16, 1.0, scores, out
    )
    assert same(out, want)


@pytest.mark.parametrize(
    "qtype,ggml", [("Q8_0", 8), ("Q5_0", 6), ("Q4_0", 2), ("Q4_K", 12), ("Q6_K", 14), ("F32", 0)]
)
def test_matvec_call(qtype, ggml):
    """The bound kernel call on the fused kernels' buffers equals matvec on the activation."""
    rows, cols = 48, 512
    x = np.random.default_rng(13).standard_normal((rows, cols)).astype(np.float32)
    try:
        from engine.quant import quantize

        raw = np.asarray(quantize(x, qtype), np.uint8).reshape(-1)
    except Exception:
        import gguf

        raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype]).reshape(-1)
    w = repack(raw, ggml, rows, cols)
    buf = fused.ActBuffers(cols)
    out = np.empty((1, rows), np.float32)
    fn, args = fused.matvec_call(w, buf, out)
    h = rng_vec(cols, 14)
    fused.rms_act(h, np.ones(cols, np.float32), EPS, buf.h, *buf.outs())
    fn(*args)
    assert same(out, matvec(w, buf.h2))


@pytest.mark.parametrize("round_f16,window,nkv", [(True, 0, 1), (False, 200, 2), (True, 100, 1)])
def test_attend_one_over_many_slots_is_bit_identical(round_f16, window, nkv):
    """A ring that has wrapped (position p in slot p % 320) with empty slots, many 16-slot blocks:
    the NumPy definition's bits (llama.cpp's one-query arithmetic)."""
    from engine.runtime.kernels.attention import attention_ref

    nh, d, slots, pos = 4, 64, 320, 520
    rng = np.random.default_rng(9)
    cast = (lambda x: x.astype(np.float16).astype(np.float32)) if round_f16 else (lambda x: x)
    q = cast(rng.standard_normal((nh, d)).astype(np.float32))
    k = cast(rng.standard_normal((slots, nkv, d)).astype(np.float32))
    v = cast(rng.standard_normal((slots, nkv, d)).astype(np.float32))
    slot_pos = np.empty(slots, np.int64)
    held = np.arange(pos - slots + 1, pos + 1)
    slot_pos[held % slots] = held
    slot_pos[rng.choice(slots, 7, replace=False)] = -1
    kt = np.ascontiguousarray(np.transpose(k, (1, 2, 0)))
    scores = np.full((nh, slots), np.nan, np.float32)
    out = np.full(nh * d, np.nan, np.float32)
    w = window or slots  # full attention sees only what the ring holds
    fused.attend_one(q, kt, v, slot_pos, slots, pos, w, round_f16, 0.125, scores, out)
    want = attention_ref(q[None], k, v, slot_pos, np.array([pos]), w, round_f16, 0.125)
    np.testing.assert_array_equal(out, want.reshape(-1))
