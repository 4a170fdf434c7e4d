"""The SIMD intrinsics (engine.runtime.kernels.simd) against a NumPy model of their arithmetic, bit
for bit, on every instruction path this machine can run; and the Q8_0 mat-vec built on them."""

from __future__ import annotations

import numpy as np
import pytest
from numba import carray, njit

from engine.runtime.kernels import fmath, simd
from engine.runtime.kernels.qmatmul import _mv_q8_0
from engine.runtime.kernels.simd import has_fma

FMA = has_fma()


def _model_dot(q: np.ndarray, d: np.ndarray, x: np.ndarray, xd: np.ndarray) -> np.float32:
    """One row · one activation row in NumPy: per 32-block the exact sums of four products
    q[4i..4i+3]·x[4i..4i+3] as f32, times f32(d·xd), added lane-wise into 8 f32 lanes
    (multiply-add fused where the CPU has FMA); then the lanes summed as the tree 4+4, 2+2, 1+1.
    (The f64 emulation of the fused step rounds twice; a double-rounding difference would
    need a sum within 2⁻⁵³ of an f32 tie, which this fixed data does not hit.)"""
    acc = np.zeros(8, np.float32)
    for b in range(d.shape[0]):
        qb = q[b * 32 : b * 32 + 32].astype(np.int32)
        xb = x[b * 32 : b * 32 + 32].astype(np.int32)
        pairs = (qb * xb).reshape(8, 4).sum(axis=1).astype(np.float32)
        s = np.float32(d[b] * xd[b])
        if FMA:  # fused: f32 · f32 is exact in f64, one rounding of the sum (to f64, then f32)
            acc = (pairs.astype(np.float64) * np.float64(s) + acc.astype(np.float64)).astype(np.float32)
        else:
            acc = acc + pairs * s
    while acc.shape[0] > 1:
        h = acc.shape[0] // 2
        acc = acc[:h] + acc[h:]
    return acc[0]


def _kernel(acc, block, hsum):
    @njit(cache=False)
    def dot(q, d, x, xd):
        a = acc()
        for b in range(d.shape[0]):
            block(a, q, b * 32, x, b * 32, d[b] * xd[b])
        return hsum(a)

    return dot


def _feats() -> str:
    return simd._features(__import__("numba").core.registry.cpu_target.target_context)


def _can(path: str) -> bool:
    f = _feats()
    return {
        "vnni": ("+avx512vnni" in f and "+avx512vl" in f) or "+avxvnni" in f,
        "avx512bw": "+avx512bw" in f,
        "avx2": "+avx2" in f,
        "generic": True,
    }[path]


def _data(seed: int, k: int = 640):
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, k).astype(np.int8)  # -128 too: Q8_0 files may hold it
    x = rng.integers(-127, 128, k).astype(np.int8)
    q[:32] = -128  # the largest sums (4 · 128 · 127) in one block
    x[:32] = -127
    d = (rng.standard_normal(k // 32) * 1e-2).astype(np.float32)
    xd = (rng.uniform(1e-3, 1, k // 32)).astype(np.float32)
    return q, d, x, xd


@pytest.mark.parametrize(
    "path",
    ["native"]
    + [
        pytest.param(p, marks=pytest.mark.skipif(not _can(p), reason=f"this CPU cannot run the {p} path"))
        for p in simd.Q8_PATHS
    ],
)
def test_dot_q8_block_matches_numpy_model_bitwise(path):
    fns = (simd.acc_q8, simd.dot_q8_block, simd.hsum_q8) if path == "native" else simd.Q8_PATHS[path]
    dot = _kernel(*fns)
    for seed in range(20):
        q, d, x, xd = _data(seed)
        got = dot(q, d, x, xd)
        want = _model_dot(q, d, x, xd)
        assert np.float32(got).view(np.uint32) == want.view(np.uint32), (seed, got, want)


def test_mv_q8_0_is_the_model_for_every_token_and_row():
    rng = np.random.default_rng(7)
    rows, k = 11, 96  # odd rows (a single row after the pairs), 3 blocks
    qs = rng.integers(-127, 128, (rows, k)).astype(np.int8)
    d = (rng.standard_normal((rows, k // 32)) * 1e-2).astype(np.float32)
    for n in (1, 3, 4, 9):  # below, at and past the four-token tile, with a remainder
        xq = rng.integers(-127, 128, (n, k)).astype(np.int8)
        xd = rng.uniform(1e-3, 1, (n, k // 32)).astype(np.float32)
        out = np.full((n, rows), np.nan, np.float32)
        _mv_q8_0(qs, d, xq, xd, out)
        want = np.array([[_model_dot(qs[r], d[r], xq[t], xd[t]) for r in range(rows)] for t in range(n)])
        np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


def test_dot_q8_block_rejects_other_code_types():
    dot = _kernel(simd.acc_q8, simd.dot_q8_block, simd.hsum_q8)
    q, d, x, xd = _data(0)
    with pytest.raises(Exception, match=r"(?i)typing|no implementation|invalid use"):
        dot(q.astype(np.int16), d, x, xd)


# ============================================================================ K-quants × Q8_K


def _fma32(a, b, c) -> np.ndarray:
    """f32 ``a·b + c`` with one rounding (where the CPU has FMA), else two: exact through f64 with
    round-to-odd (a·b is exact in f64; the f64 sum's error term decides the sticky bit), so the
    final rounding to f32 is the correctly rounded fused result."""
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    if not FMA:
        return np.atleast_1d((a * b).astype(np.float32) + c.astype(np.float32))
    p = a * b
    s = np.atleast_1d(p + c).copy()
    bb = s - p
    err = np.broadcast_to((p - (s - bb)) + (c - bb), s.shape)
    fix = (err != 0) & ((s.view(np.int64) & 1) == 0)
    s[fix] = np.nextafter(s[fix], s[fix] + err[fix])
    return s.astype(np.float32)


def _tree(v: np.ndarray) -> np.float32:
    v = np.asarray(v, np.float32)
    while v.shape[0] > 1:
        v = v[: v.shape[0] // 2] + v[v.shape[0] // 2 :]
    return v[0]


def _quads(codes: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(chunks, 8) sums of four products per 32-element chunk."""
    return (codes.astype(np.int64) * x.astype(np.int64)).reshape(-1, 8, 4).sum(axis=2)


def _model_kq(kind: str, f: tuple, xq, xd, xb) -> np.float32:
    """One K-quant row (repacked fields ``f``) · one Q8_K activation row in NumPy, llama.cpp's x86
    arithmetic (see engine.runtime.kernels.simd): per block 8 exact integer lanes (lane k: the
    products 4k..4k+3 of each 32-element chunk times their scale), fused into 8 f32 lanes; Q4_K's
    mins into 4 lanes, Q5_K's into a scalar; the lanes summed as trees at the end."""
    acc = np.zeros(8, np.float32)
    acc_m = np.zeros(4, np.float32)
    summs = np.float32(0.0)
    for b in range(xd.shape[0]):
        x = xq[b * 256 : b * 256 + 256].astype(np.int64)
        bs = xb[b * 16 : b * 16 + 16].astype(np.int64)
        if kind == "Q6_K":
            ql = f[0][b * 128 : b * 128 + 128].astype(np.int64)
            qh = f[1][b * 64 : b * 64 + 64].astype(np.int64)
            sc = f[2][b * 16 : b * 16 + 16].astype(np.int64)
            d = f[3][b]
            # chunk c of each 128: low (c < 2) or high nibbles of ql[32(c % 2)...], bits 2c, 2c+1 of qh
            codes = np.concatenate(
                [
                    ((ql[h * 64 + 32 * (c % 2) :][:32] >> (4 * (c // 2))) & 15)
                    | (((qh[h * 32 : h * 32 + 32] >> (2 * c)) & 3) << 4)
                    for h in range(2)
                    for c in range(4)
                ]
            )
            lanes = (_quads(codes, x) * np.repeat(sc.reshape(8, 2), 4, axis=1)).sum(axis=0)
            lanes -= 32 * (bs * sc).reshape(8, 2).sum(axis=1)
            acc = _fma32(np.float32(xd[b] * d), lanes.astype(np.int32).astype(np.float32), acc)
            continue
        qs = f[0][b * 128 : b * 128 + 128].astype(np.int64)
        sc = f[1][b * 8 : b * 8 + 8].astype(np.int64)
        mn = f[2][b * 8 : b * 8 + 8].astype(np.int64)
        d, dmin = f[3][b], f[4][b]
        codes = np.concatenate(
            [np.concatenate([qs[j * 32 :][:32] & 15, qs[j * 32 :][:32] >> 4]) for j in range(4)]
        )
        if kind == "Q5_K":
            qh = f[5][b * 32 : b * 32 + 32].astype(np.int64)
            codes |= np.concatenate([((qh >> c) & 1) << 4 for c in range(8)])
        lanes = (_quads(codes, x) * sc[:, None]).sum(axis=0)
        acc = _fma32(np.float32(xd[b] * d), lanes.astype(np.int32).astype(np.float32), acc)
        prod = (mn * (bs[0::2] + bs[1::2])).reshape(4, 2).sum(axis=1)
        dm = np.float32(-xd[b] * dmin)
        if kind == "Q4_K":
            acc_m = _fma32(dm, prod.astype(np.float32), acc_m)
        else:
            summs = _fma32(dm, np.float32(prod.sum()), summs)[0]
    if kind == "Q4_K":
        return np.float32(_tree(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3])))
    return np.float32(_tree(acc) + summs)


KQ_IDS = {"Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


def _kq_data(kind: str, rows: int, k: int, n: int, seed: int):
    """A repacked K-quant weight from random block bytes (every code and scale value, the largest
    products included), and Q8_K activations (codes, scales, block sums)."""
    from engine.runtime.kernels import repack

    rng = np.random.default_rng(seed)
    bb = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[kind]
    raw = rng.integers(0, 256, (rows, k // 256, bb), dtype=np.uint8)
    scale = (rng.uniform(1e-3, 1e-1, (rows, k // 256, 2)) * rng.choice([-1, 1], (rows, k // 256, 2))).astype(
        np.float16
    )
    if kind == "Q6_K":
        raw[:, :, 208:210] = scale[:, :, :1].view(np.uint8)
    else:
        raw[:, :, 0:4] = scale.view(np.uint8).reshape(rows, k // 256, 4)
        raw[0, 0, 4:16] = 0xFF  # scales and mins 63
        raw[0, 0, 16:] = 0xFF  # codes 15 (31 with Q5_K's high bits)
    w = repack(raw.reshape(rows, -1), KQ_IDS[kind], rows, k)
    xq = rng.integers(-127, 128, (n, k)).astype(np.int8)
    xq[0, :256] = -127
    xd = rng.uniform(1e-3, 1, (n, k // 256)).astype(np.float32)
    xb = xq.reshape(n, k // 16, 16).astype(np.int32).sum(axis=2).astype(np.int32)
    return w, xq, xd, xb


def _kq_kernels(fns):
    q4, q42, q5, q52, q6, q62, mins4, mins4x2, minsum = fns
    acc8, acc16, hsum8, hsum4, fmadd32 = simd.acc8, simd.acc16, simd.hsum8, simd.hsum4, fmath.fmadd32

    @njit(cache=False)
    def q4k(qs, sc, mn, d, dmin, xq, xd, xb, out):  # out (2,): the one- and the two-token forms
        a = acc8()
        m = acc8()
        a2 = acc16()
        m2 = acc8()
        for b in range(d.shape[0]):
            q4(a, qs, b * 128, sc, b * 8, xq[0], b * 256, xd[0, b] * d[b])
            mins4(m, mn, b * 8, xb[0], b * 16, -xd[0, b] * dmin[b])
            q42(a2, qs, b * 128, sc, b * 8, xq[1], xq[0], b * 256, xd[1, b] * d[b], xd[0, b] * d[b])
            mins4x2(m2, mn, b * 8, xb[1], xb[0], b * 16, -xd[1, b] * dmin[b], -xd[0, b] * dmin[b])
        out[0] = hsum8(a, 0) + hsum4(m, 0)
        out[1] = hsum8(a2, 8) + hsum4(m2, 4)
        out[2] = hsum8(a2, 0) + hsum4(m2, 0)

    @njit(cache=False)
    def q5k(qs, sc, mn, d, dmin, qh, xq, xd, xb, out):
        a = acc8()
        a2 = acc16()
        s = np.float32(0.0)
        s1 = np.float32(0.0)
        for b in range(d.shape[0]):
            q5(a, qs, b * 128, qh, b * 32, sc, b * 8, xq[0], b * 256, xd[0, b] * d[b])
            q52(
                a2,
                qs,
                b * 128,
                qh,
                b * 32,
                sc,
                b * 8,
                xq[1],
                xq[0],
                b * 256,
                xd[1, b] * d[b],
                xd[0, b] * d[b],
            )
            s = fmadd32(-xd[0, b] * dmin[b], np.float32(minsum(mn, b * 8, xb[0], b * 16)), s)
            s1 = fmadd32(-xd[1, b] * dmin[b], np.float32(minsum(mn, b * 8, xb[1], b * 16)), s1)
        out[0] = hsum8(a, 0) + s
        out[1] = hsum8(a2, 8) + s
        out[2] = hsum8(a2, 0) + s1

    @njit(cache=False)
    def q6k(ql, qh, sc, d, xq, xd, xb, out):
        a = acc8()
        a2 = acc16()
        for b in range(d.shape[0]):
            q6(a, ql, b * 128, qh, b * 64, sc, b * 16, xq[0], b * 256, xb[0], b * 16, xd[0, b] * d[b])
            q62(a2, ql, b * 128, qh, b * 64, sc, b * 16, xq[1], xq[0], b * 256, xb[1], xb[0], b * 16,
                xd[1, b] * d[b], xd[0, b] * d[b])  # fmt: skip
        out[0] = hsum8(a, 0)
        out[1] = hsum8(a2, 8)
        out[2] = hsum8(a2, 0)

    return {"Q4_K": q4k, "Q5_K": q5k, "Q6_K": q6k}


@pytest.mark.parametrize(
    "path",
    ["native"]
    + [
        pytest.param(p, marks=pytest.mark.skipif(not _can(p), reason=f"this CPU cannot run the {p} path"))
        for p in simd.KQ_PATHS
    ],
)
def test_kquant_blocks_match_numpy_model_bitwise(path):
    """Every K-quant block intrinsic (one- and two-token forms) on every instruction path this CPU
    runs is the NumPy model of llama.cpp's arithmetic, bit for bit."""
    names = ("q4k_block", "q4k_block2", "q5k_block", "q5k_block2", "q6k_block", "q6k_block2")
    native = tuple(getattr(simd, f) for f in (*names, "kq_mins4", "kq_mins4x2", "kq_minsum"))
    kernels = _kq_kernels(native if path == "native" else simd.KQ_PATHS[path])
    for kind, fn in kernels.items():
        for seed in range(4):
            w, xq, xd, xb = _kq_data(kind, 3, 768, 2, seed)
            for r in range(w.rows):
                f = tuple(a[r] for a in w.fields)
                out = np.empty(3, np.float32)
                fn(*f, xq, xd, xb, out)
                want = [_model_kq(kind, f, xq[t], xd[t], xb[t]) for t in (0, 0, 1)]
                assert out.view(np.uint32).tolist() == np.array(want).view(np.uint32).tolist(), (
                    kind,
                    seed,
                    r,
                )


@pytest.mark.parametrize("kind", sorted(KQ_IDS))
def test_mv_kquants_are_the_model_for_every_token_and_row(kind):
    from engine.runtime.kernels.qmatmul import _NO_QH, _mv_q6k_vecdot, _mv_qk

    for n in (1, 3, 4, 9):  # below, at and past the four-token tile, with a remainder
        w, xq, xd, xb = _kq_data(kind, 19, 512, n, n)  # odd rows: a single row after the pairs
        out = np.full((n, w.rows), np.nan, np.float32)
        f = w.fields
        if kind == "Q6_K":  # llama.cpp's vec_dot kernel (its tiled one, from 8 tokens: below)
            _mv_q6k_vecdot(*f, xq, xd, xb, out)
        else:
            _mv_qk(*f[:5], f[5] if kind == "Q5_K" else _NO_QH, kind == "Q5_K", xq, xd, xb, out)
        want = [
            [_model_kq(kind, tuple(a[r] for a in f), xq[t], xd[t], xb[t]) for r in range(w.rows)]
            for t in range(n)
        ]
        np.testing.assert_array_equal(out.view(np.uint32), np.array(want, np.float32).view(np.uint32))


def _q6t_kernel(tok16, tok16x2):
    """A Q6_K tiled mat-mul of a few rows × one 16-column lane group built from one path's
    intrinsics (rows in pairs, then a single row), as qmatmul._mv_q6k_tiled uses them."""
    acc16 = simd.acc16

    @njit(cache=False)
    def run(codes, sc, d, xT, bT, dx, out):
        rows, nb = d.shape
        r = 0
        while r < rows:
            two = r + 1 < rows
            p0, p1 = acc16(), acc16()
            for b in range(nb):
                if two:
                    tok16x2(p0, p1, codes[r], codes[r + 1], b * 256, sc[r], sc[r + 1], b * 16,
                            xT[0], b * 4096, bT[0], b * 256, dx[0], b * 16, d[r, b], d[r + 1, b])  # fmt: skip
                else:
                    tok16(p0, codes[r], b * 256, sc[r], b * 16, xT[0], b * 4096, bT[0], b * 256,
                          dx[0], b * 16, d[r, b])  # fmt: skip
            a0, a1 = carray(p0, 16), carray(p1, 16)
            for t in range(out.shape[0]):
                out[t, r] = a0[t]
                if two:
                    out[t, r + 1] = a1[t]
            r += 2 if two else 1

    return run


@pytest.mark.parametrize(
    "path",
    ["native"]
    + [
        pytest.param(p, marks=pytest.mark.skipif(not _can(p), reason=f"this CPU cannot run the {p} path"))
        for p in simd.Q6T_PATHS
    ],
)
def test_q6k_tiled_intrinsics_match_numpy_model_bitwise(path):
    """q6k_tok16 / q6k_tok16x2 on every instruction path this CPU runs are the NumPy model of
    llama.cpp's tiled Q6_K arithmetic (qmatmul.q6k_tiled_ref), bit for bit, on every lane."""
    from engine.runtime.kernels.qmatmul import _q6k_codes, _q8k_tok16_q6, q6k_tiled_ref

    fns = (simd.q6k_tok16, simd.q6k_tok16x2) if path == "native" else simd.Q6T_PATHS[path]
    run = _q6t_kernel(*fns)
    for seed in range(4):
        w, xq, xd, xb = _kq_data("Q6_K", 5, 768, 16, seed)  # two pairs and a single row
        ql, qh, sc, d = w.fields
        codes = np.empty((w.rows, 768), np.uint8)
        for r in range(w.rows):
            _q6k_codes(ql[r], qh[r], codes[r])
        out = np.full((16, w.rows), np.nan, np.float32)
        run(codes, sc, d, *_q8k_tok16_q6(xq, xd, xb), out)
        want = q6k_tiled_ref(w, xq, xd)
        np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32), err_msg=f"seed {seed}")
