"""CPU kernels: every Numba kernel equals its NumPy reference; repacked weights dequantize exactly
as gguf-py (llama.cpp's own Python dequantizers) does."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from engine.errors import ModelError
from engine.runtime.kernels import (
    attention,
    attention_kt,
    attention_ref,
    dequantize_rows,
    geglu,
    matmul_dense,
    matmul_ref,
    matvec,
    quantize_q8_0,
    quantize_q8_k,
    repack,
    rmsnorm,
    rope_neox,
    softmax,
)
from engine.runtime.kernels.actquant import dequant_act, quantize_q8_0_ref, quantize_q8_k_ref
from engine.runtime.kernels.ops import geglu_ref, rmsnorm_ref, rope_neox_ref, softmax_ref
from engine.runtime.kv_cache import KVCache

GGML = {"Q4_0": 2, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


@pytest.fixture(scope="module")
def gemma(default_model):
    from engine.gguf import open_gguf

    m = open_gguf(default_model)
    yield m
    m.close()


def _random_weight(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Bytes of a random weight in ``qtype``: engine.quant's quantizer, or random bytes with sane scales."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    try:
        from engine.quant import quantize

        return np.asarray(quantize(x, qtype), np.uint8).reshape(rows, -1)
    except Exception:  # quantizer not available for this type: gguf-py's
        return gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype]).reshape(rows, -1)


def _real_weights(gemma):
    """(name, raw, type, rows, cols) for one tensor of each type in the default model (few rows)."""
    picks = {}
    for t in gemma.tensors:
        if t.type in (2, 6, 8, 12, 13, 14) and t.type not in picks and len(t.shape) == 2:
            picks[t.type] = t
    out = []
    for t in picks.values():
        rows, cols = t.shape
        n = min(rows, 96)
        raw = np.asarray(gemma.raw(t.name)).reshape(rows, -1)[:n]
        out.append((t.name, raw, t.type, n, cols))
    return out


def _gguf_dequant(raw: np.ndarray, ggml_type: int, rows: int, cols: int) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(ggml_type))).reshape(rows, cols)


def _check_weight(raw, ggml_type, rows, cols, rng):
    w = repack(raw, ggml_type, rows, cols)
    ref = _gguf_dequant(raw, ggml_type, rows, cols)
    np.testing.assert_array_equal(dequantize_rows(w), ref)
    np.testing.assert_array_equal(dequantize_rows(w, 3, 7), ref[3:7])
    for n in (1, 3):
        x = (rng.standard_normal((n, cols)) * 4).astype(np.float32)
        want = matmul_ref(ref, w.qtype, x)
        scale = np.abs(want).max()
        np.testing.assert_allclose(matvec(w, x), want, rtol=0, atol=2e-6 * scale)
        np.testing.assert_allclose(matmul_dense(w, x, chunk_rows=32), want, rtol=0, atol=2e-6 * scale)


@pytest.mark.parametrize("qtype", sorted(GGML))
def test_matvec_random_weights(qtype):
    rng = np.random.default_rng(7)
    cols = 512
    raw = _random_weight(qtype, 40, cols, seed=GGML[qtype])
    _check_weight(raw, GGML[qtype], 40, cols, rng)


def test_matvec_real_model_weights(gemma):
    rng = np.random.default_rng(3)
    seen = set()
    for _name, raw, ggml_type, rows, cols in _real_weights(gemma):
        _check_weight(raw, ggml_type, rows, cols, rng)
        seen.add(ggml_type)
    assert {6, 8, 12, 14} <= seen


def test_repack_rejects_bad_shapes():
    with pytest.raises(ModelError):
        repack(np.zeros(34, np.uint8), 8, 1, 33)
    with pytest.raises(ModelError):
        repack(np.zeros(34, np.uint8), 99, 1, 32)


@pytest.mark.parametrize("k", [256, 640, 1024])
def test_activation_quantization(k):
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((5, k)) * rng.uniform(0.01, 100, (5, 1))).astype(np.float32)
    x[1, :32] = 0.0  # an all-zero block
    q, d = quantize_q8_0(x)
    qr, dr = quantize_q8_0_ref(x)
    np.testing.assert_array_equal(q, qr)
    np.testing.assert_array_equal(d, dr)
    assert np.abs(dequant_act(q, d) - x).max() <= np.abs(x).max() / 127
    if k % 256 == 0:
        q, d, bs = quantize_q8_k(x)
        qr, dr, bsr = quantize_q8_k_ref(x)
        np.testing.assert_array_equal(q, qr)
        np.testing.assert_array_equal(d, dr)
        np.testing.assert_array_equal(bs, bsr)


def test_rmsnorm_rope_geglu_softmax():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((7, 640)) * 30).astype(np.float32)
    w = rng.uniform(0.5, 3, 640).astype(np.float32)
    np.testing.assert_allclose(rmsnorm(x, w, np.float32(1e-6)), rmsnorm_ref(x, w, 1e-6), rtol=1e-6, atol=1e-6)

    q = rng.standard_normal((5, 4, 256)).astype(np.float32)
    pos = np.array([0, 1, 511, 512, 3000])
    for base in (10000.0, 1e6):
        got = rope_neox(q.copy(), pos, base, 1.0)
        np.testing.assert_allclose(got, rope_neox_ref(q, pos, base, 1.0), rtol=0, atol=2e-5)
    np.testing.assert_array_equal(rope_neox(q.copy(), np.zeros(5, np.int64), 1e4, 1.0), q)

    g = (rng.standard_normal((3, 300)) * 6).astype(np.float32)
    g[0, :4] = [-12.0, 12.0, 0.0, -10.0]
    u = rng.standard_normal((3, 300)).astype(np.float32)
    np.testing.assert_allclose(geglu(g, u, False), geglu_ref(g, u, False), rtol=1e-6, atol=1e-6)
    # the fp16 table rounds its output: one fp16 step apart at most
    np.testing.assert_allclose(geglu(g, u, True), geglu_ref(g, u, True), rtol=1e-3, atol=1e-6)

    s = (rng.standard_normal((4, 100)) * 10).astype(np.float32)
    np.testing.assert_allclose(softmax(s), softmax_ref(s), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(softmax(s).sum(axis=1), 1.0, rtol=1e-5)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("round_f16", [False, True])
@pytest.mark.parametrize("n,d", [(6, 32), (1, 32), (5, 40), (1, 80), (1, 128), (3, 128)])
def test_attention_numba_equals_reference(window, round_f16, n, d):
    """Any slot order (a ring buffer, an empty slot), batches (tinyBLAS's form) and one query
    (ggml_vec_dot's), D with and without the SIMD multiples: the NumPy definition's bits."""
    rng = np.random.default_rng(5)
    cast = _f16 if round_f16 else (lambda x: x)
    q = cast(rng.standard_normal((n, 4, d)).astype(np.float32))
    k = cast(rng.standard_normal((13, 1, d)).astype(np.float32))
    v = cast(rng.standard_normal((13, 1, d)).astype(np.float32))
    slot_pos = rng.permutation(13).astype(np.int64)  # a ring buffer: slots out of position order
    slot_pos[slot_pos == 12] = -1  # an empty slot
    qpos = np.arange(12 - n, 12)
    got = attention(q, k, v, slot_pos, qpos, window, round_f16)
    want = attention_ref(q, k, v, slot_pos, qpos, window, round_f16)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))

    # brute force for one query: softmax over exactly the visible positions
    t, h = n - 1, 2
    p = qpos[t]
    vis = (slot_pos >= 0) & (slot_pos <= p) & ((window == 0) | (p - slot_pos < window))
    sc = k[vis, 0].astype(np.float64) @ q[t, h]
    pr = np.exp(sc - sc.max())
    pr /= pr.sum()
    np.testing.assert_allclose(got[t, h], pr @ v[vis, 0], rtol=2e-3 if round_f16 else 1e-5, atol=2e-3)


def test_attention_arithmetic_is_llama_cpps():
    """The reference is llama.cpp's arithmetic, not just any attention: its lane sums differ from
    a sequential sum, and a batch of two takes a different form from one query."""
    from engine.runtime.kernels.attention import _dot_ref, _tree16_ref

    rng = np.random.default_rng(3)
    a = _f16(rng.standard_normal((50, 256)).astype(np.float32))
    b = _f16(rng.standard_normal(256).astype(np.float32))
    tiny = _dot_ref(a, b, True)
    vec = _dot_ref(a, b, False)
    seq = np.array([np.float32(sum(np.float32(x) for x in (r * b).astype(np.float32))) for r in a])
    assert not np.array_equal(tiny, vec) and not np.array_equal(tiny, seq)
    # lane l holds dims l, l+16, ...; the tree adds lanes i and i+8 first
    lanes = np.zeros(16, np.float32)
    for i in range(0, 256, 16):
        lanes = (lanes + a[0, i : i + 16] * b[i : i + 16]).astype(np.float32)
    t8 = lanes[:8] + lanes[8:]
    t4 = t8[:4] + t8[4:]
    t2 = t4[:2] + t4[2:]
    assert tiny[0] == np.float32(t2[0] + t2[1]) == _tree16_ref(lanes)


def test_expf_is_ggml_v_expf():
    """Every lane as llama.cpp's AVX-512 ggml_v_expf: the NumPy model bit for bit, within 3 ulp of
    exp (2.2 ulp seen), 0 past its underflow guard, exact at 0."""
    from numba import njit

    from engine.runtime.kernels.attention import expf, expf_ref

    @njit
    def ev(x):
        o = np.empty_like(x)
        for i in range(x.size):
            o[i] = expf(x[i])
        return o

    rng = np.random.default_rng(4)
    x = np.concatenate(
        [-rng.random(20000) * 90, -rng.random(2000) * 200, [0.0, -0.0, -1e-30, -87.3, -103.9, -150.0]]
    ).astype(np.float32)
    got = ev(x)
    np.testing.assert_array_equal(got.view(np.uint32), expf_ref(x).view(np.uint32))
    ok = x > -87
    exact = np.exp(x[ok].astype(np.float64))
    assert (np.abs(got[ok] - exact) <= 3 * np.spacing(got[ok])).all()
    assert got[-6] == 1.0 and got[-1] == 0.0
    assert (got[x < -140] == 0.0).all()


@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("round_f16", [False, True])
@pytest.mark.parametrize("nkv", [1, 2])
@pytest.mark.parametrize("n", [7, 1])
def test_attention_kt_over_a_ring_equals_reference(window, round_f16, nkv, n):
    """The kernel on a KV cache's own layout (position p in slot p % S, S % 64 == 0, kt 16-slot
    padded): a ring that has wrapped, partly written, against the NumPy definition."""
    rng = np.random.default_rng(6)
    d, S = 48, 64
    cast = _f16 if round_f16 else (lambda x: x)
    q = cast(rng.standard_normal((n, 4, d)).astype(np.float32))
    end = 150  # positions 86..149 held
    k = cast(rng.standard_normal((S, nkv, d)).astype(np.float32))
    v = cast(rng.standard_normal((S, nkv, d)).astype(np.float32))
    slot_pos = np.empty(S, np.int64)
    slot_pos[np.arange(end - S, end) % S] = np.arange(end - S, end)
    kt = np.ascontiguousarray(np.transpose(k, (1, 2, 0)))
    qpos = np.arange(end - n, end)
    w = window if window else 0
    if w == 0:  # full attention needs every earlier position: only the last S are held here
        qpos = qpos[qpos - (end - S) < S]
    got = attention_kt(q, kt, v, slot_pos, S, qpos, w if w else S, round_f16, 0.3)
    want = attention_ref(q, k, v, slot_pos, qpos, w if w else S, round_f16, 0.3)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # the plain cache, partly written (slots past ns unread)
    sp = np.full(80, -1, np.int64)
    sp[:41] = np.arange(41)
    kt2 = np.zeros((nkv, d, 80), np.float32)
    kt2[:, :, :S] = kt
    v2 = np.zeros((80, nkv, d), np.float32)
    v2[:S] = v
    qp = np.arange(41 - n, 41)
    got = attention_kt(q, kt2, v2, sp, 41, qp, window, round_f16, 1.0)
    want = attention_ref(q, v2[:, :, :] * 0 + np.transpose(kt2, (2, 0, 1)), v2, sp, qp, window, round_f16)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("round_f16", [False, True])
@pytest.mark.parametrize("nkv", [1, 2])
def test_attention_with_transposed_keys_long_rows_bit_identical(round_f16, nkv):
    """Past the SIMD tiles: D = 277 (no 16-lane form: the batch takes ggml_vec_dot's, with its
    double tail), D = 256 (tinyBLAS's 16 lanes, four heads per V pass), visible slot ranges of
    every length up to 150."""
    rng = np.random.default_rng(8)
    n, slots = 9, 160
    cast = _f16 if round_f16 else (lambda x: x)
    for d in (277, 256):
        q = cast((rng.standard_normal((n, 4, d)) * 0.2).astype(np.float32))
        k = cast(rng.standard_normal((slots, nkv, d)).astype(np.float32))
        v = cast(rng.standard_normal((slots, nkv, d)).astype(np.float32))
        kt = np.ascontiguousarray(np.transpose(k, (1, 2, 0)))
        sp = np.arange(slots, dtype=np.int64)
        qpos = np.array([0, 15, 16, 63, 64, 79, 100, 127, 149])
        for window in (0, 37):
            got = attention_kt(q, kt, v, sp, 150, qpos, window, round_f16, 1.0)
            want = attention_ref(q, k[:150], v[:150], sp[:150], qpos, window, round_f16)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_kv_cache_ring_and_overflow():
    c = KVCache(n_ctx=40, n_kv_head=1, head_dim=4, windows=[0, 8], max_batch=4, dtype="f32")
    assert c.slots == [40, 40]  # a ring is a multiple of 64 slots: no smaller than n_ctx here
    c = KVCache(n_ctx=200, n_kv_head=1, head_dim=4, windows=[0, 8], max_batch=4, dtype="f32")
    assert c.slots == [200, 64]
    c = KVCache(200, 1, 4, [0, 8], 4, dtype="f32", k_transposed=True)
    assert [kt.shape[2] for kt in c.kt] == [208, 64]  # kt padded to whole 16-slot blocks
    assert KVCache(256, 1, 4, [0], 4, k_transposed=True).kt[0].shape[2] == 272  # no 1 KB stride
    c = KVCache(n_ctx=200, n_kv_head=1, head_dim=4, windows=[0, 8], max_batch=4, dtype="f32")
    for start in range(0, 200, 4):
        k = np.full((4, 1, 4), start, np.float32) + np.arange(4, dtype=np.float32)[:, None, None]
        c.write(0, start, k, k)
        c.write(1, start, k, k)
        c.n_past = start + 4
        _, _, sp = c.view(1, start + 4)
        # every query of the batch still sees its last 8 positions
        for p in range(start, start + 4):
            need = set(range(max(0, p - 7), p + 1))
            assert need <= set(sp.tolist())
    kk, _, sp = c.view(1, 200)
    for s, p in enumerate(sp):
        assert kk[s, 0, 0] == p and s == p % 64
    with pytest.raises(ModelError, match="context overflow"):
        c.check(198, 3)
    with pytest.raises(ModelError):
        KVCache(8, 1, 4, [0], 4, dtype="q8")


def test_geglu_through_the_fp16_table_is_bit_identical():
    from engine.runtime.kernels.fused import gelu_f16_table
    from engine.runtime.kernels.ops import geglu_lut

    rng = np.random.default_rng(8)
    g = (rng.standard_normal((5, 333)) * 4).astype(np.float32)
    g[0, :6] = [-12.0, 12.0, 0.0, -10.0, 10.0, -0.0]
    g[1, :4] = [6.1e-5, -6.1e-5, 1e-8, 65504.0]  # fp16 subnormal/normal edges, overflow
    u = rng.standard_normal((5, 333)).astype(np.float32)
    np.testing.assert_array_equal(geglu_lut(g, u, gelu_f16_table()), geglu(g, u, True))
    from engine.runtime.kernels.ops import geglu_lut_inplace

    u2 = u.copy()
    assert geglu_lut_inplace(g, u2, gelu_f16_table()) is not None
    np.testing.assert_array_equal(u2, geglu(g, u, True))  # written over up, same bits


def test_q5_0_widened_to_q8_0_codes_keeps_the_values(gemma):
    from engine.models._common import WIDEN_Q5_0_MAX_SHARE, widen_q5_0_in
    from engine.runtime.kernels.qmatmul import widen_q5_0

    rng = np.random.default_rng(11)
    raw = _random_weight("Q5_0", 40, 640, seed=6)
    w = repack(raw, GGML["Q5_0"], 40, 640)
    wide = widen_q5_0(w)
    assert wide.qtype == "Q8_0" and wide.fields[1] is w.fields[2]
    assert wide.fields[0].min() >= -16 and wide.fields[0].max() <= 15
    ref = _gguf_dequant(raw, GGML["Q5_0"], 40, 640)
    np.testing.assert_array_equal(dequantize_rows(wide), ref)  # the same weights, exactly
    x = (rng.standard_normal((3, 640)) * 4).astype(np.float32)
    want = matmul_ref(ref, "Q5_0", x)  # Q5_0 and Q8_0 read the same Q8_0 activations
    np.testing.assert_allclose(matvec(wide, x), want, rtol=0, atol=2e-6 * np.abs(want).max())
    assert widen_q5_0(wide) is wide

    # the default model's Q5_0 fallbacks (18% of its bytes) are widened; a Q5_0 model is not
    assert widen_q5_0_in(gemma)
    total = sum(t.nbytes for t in gemma.tensors)
    q5 = sum(t.nbytes for t in gemma.tensors if t.type == GGML["Q5_0"])
    assert 0 < q5 <= WIDEN_Q5_0_MAX_SHARE * total

    class AllQ5:
        tensors = [type("T", (), {"type": GGML["Q5_0"], "nbytes": 100})()] * 3

    assert not widen_q5_0_in(AllQ5())


def test_kv_cache_with_transposed_keys_keeps_them_once():
    shape = dict(n_ctx=16, n_kv_head=2, head_dim=4, windows=[0, 4], max_batch=2, dtype="f32")
    c = KVCache(**shape, k_transposed=True)
    plain = KVCache(**shape)
    assert c.nbytes == plain.nbytes  # K once (transposed) + V, not K twice (16 slots: no padding)
    k = np.arange(2 * 2 * 4, dtype=np.float32).reshape(2, 2, 4)
    c.write(1, 0, k, -k)
    assert np.array_equal(c.kt[1][:, :, :2], np.transpose(k, (1, 2, 0))) and np.array_equal(c.v[1][:2], -k)
    with pytest.raises(ModelError, match="transposed"):
        c.view(1, 2)


# sha256 of llama.cpp's ggml_table_gelu_f16 (65,536 fp16 values), read from llama-cpp-python 0.3.36's
# libggml-cpu.so after ggml_cpu_init() (ctypes: (c_uint16 * 65536).in_dll(lib, "ggml_table_gelu_f16")).
LLAMA_GELU_F16_TABLE_SHA256 = "5eceda6f287dec9dc0bcfa24516d6744a031a5c52d1984688b4558aeb1daf909"


def test_gelu_table_is_llama_cpps_bit_for_bit():
    """The fp16 GELU table (prefill geglu_lut and the fused decode GELU) is llama.cpp's own: f32
    tanhf and llama.cpp's contracted 1 + (A·x)·x; the f64 tanh of before differed in 269 entries."""
    import hashlib

    from engine.runtime.kernels.fused import gelu_f16_table

    table = gelu_f16_table().astype(np.float16)
    assert hashlib.sha256(table.tobytes()).hexdigest() == LLAMA_GELU_F16_TABLE_SHA256


def test_kv_cache_knows_when_a_ring_cannot_rewind():
    """A ring holds its last ``slots`` positions: restarting further back than that minus the
    window would read keys it has overwritten, so the cache says no (the models then refuse, and
    generation starts over instead of reusing the cached prefix)."""
    c = KVCache(n_ctx=300, n_kv_head=1, head_dim=4, windows=[0, 8], max_batch=4, dtype="f32")
    assert c.slots == [300, 64]
    c.n_past = 200  # the ring holds positions 136..199
    assert c.can_rewind(200) and c.can_rewind(150) and c.can_rewind(143)  # 143 sees 136..143
    assert not c.can_rewind(142) and not c.can_rewind(10)
    assert c.can_rewind(0)  # a fresh start needs nothing
    full = KVCache(n_ctx=300, n_kv_head=1, head_dim=4, windows=[0, 0], max_batch=4, dtype="f32")
    full.n_past = 200
    assert full.can_rewind(1)


def test_scale_round_and_kv_store_equal_numpy():
    """The fused prefill helpers are the NumPy steps they replace, bit for bit: the query's scale
    then f16 rounding, and the KV cache's f16 rounding + transposed key store over a ring."""
    from engine.runtime.kernels import scale_round

    rng = np.random.default_rng(12)
    q = (rng.standard_normal((5, 4, 48)) * 300).astype(np.float32)
    q[0, 0, :3] = [70000.0, 1e-8, -0.0]  # f16 overflow, subnormal, sign
    for rnd in (True, False):
        got = q.copy()
        scale_round(got, np.float32(0.3), rnd)
        want = q * np.float32(0.3)
        if rnd:
            want = want.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    for rnd in ("f16", "f32"):
        a = KVCache(200, 2, 48, [0, 8], 4, dtype=rnd, k_transposed=True)
        k = (rng.standard_normal((3, 2, 48)) * 100).astype(np.float32)
        v = (rng.standard_normal((3, 2, 48)) * 100).astype(np.float32)
        a.write(1, 62, k, v)  # slots 62, 63, 0 of the 64-slot ring
        cast = (lambda x: x.astype(np.float16).astype(np.float32)) if rnd == "f16" else (lambda x: x)
        slots = np.array([62, 63, 0])
        np.testing.assert_array_equal(a.kt[1][:, :, slots], np.transpose(cast(k), (1, 2, 0)))
        np.testing.assert_array_equal(a.v[1][slots], cast(v))
        assert a.slot_pos[1][slots].tolist() == [62, 63, 64]
