"""Mat-vec and dequantize kernels for the weight types beyond the original fast paths.

Covers F32, F16, BF16, Q4_1, Q5_1, IQ4_NL, MXFP4 (32-element blocks or plain floats) and Q2_K,
Q3_K, IQ4_XS, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, TQ1_0, TQ2_0 (256-element
super-blocks).  :mod:`.qmatmul` repacks the GGUF blocks into the per-field arrays these kernels
take and dispatches to them.

Each quantized row is first *unpacked* into one int8 code per element plus one integer scale per
16 elements (``ls``), with the block's float scale kept per block; the dot product with the
activations (Q8_0 / Q8_1 / Q8_K codes) is then an exact integer sum per block, scaled as
llama.cpp's ``ggml_vec_dot_*_generic`` scales it.  Unpacking happens once per row, so a batch of
activation rows reuses it.  Where llama.cpp adds a float term the codes fold it in exactly:

- IQ1_S / IQ1_M: ``sumi + 0.125·sumi_delta`` equals ``Σ ls·(8·grid ± 1)·q8 / 8`` exactly (all
  magnitudes < 2^24), so the codes are ``8·grid ± 1`` and the block scale carries the 1/8;
- IQ2_* (×0.125) and IQ3_XXS (×0.25): the power-of-two factor llama.cpp applies at the end is
  folded into the f32 block scale at repack (exact).

Dequantization uses the same codes and scales; every product there is exact in f32 (or follows
the C expression order where it is not: Q2_K, Q4_1, Q5_1), so rows equal gguf-py's bit for bit.

Every kernel follows :data:`engine.runtime.kernels._config.KERNEL` (cached, GIL released, no
fastmath) and runs in parallel over chunks of rows, with its scratch buffers hoisted per chunk.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from engine.runtime.kernels._config import KERNEL

CH = 64  # rows per parallel chunk
_INL = {"cache": True, "nogil": True}

KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)


@functools.cache
def tables() -> dict[str, np.ndarray]:
    """Grid tables (int8, ggml-common.h values) and the sign table ``sign8[byte, j] = ±1``."""
    from engine.quant.iq_tables import dequant_grid, ksigns

    t = {
        name: np.ascontiguousarray(dequant_grid(src).astype(np.int8))
        for name, src in (
            ("iq2xxs", "KGRID_2BIT_256"),
            ("iq2xs", "KGRID_2BIT_512"),
            ("iq2s", "KGRID_2BIT_1024"),
            ("iq1s", "KGRID_1BIT_2048"),
            ("iq3xxs", "KGRID_256"),
            ("iq3s", "KGRID_512"),
        )
    }
    bits = (np.arange(256)[:, None] >> np.arange(8)) & 1
    t["sign8"] = np.ascontiguousarray((1 - 2 * bits).astype(np.int8))
    t["ksigns"] = np.ascontiguousarray(ksigns().astype(np.int32))
    for a in t.values():
        a.setflags(write=False)
    return t


# ============================================================================ shared dot products


@njit(**_INL)
def _dot_q8k(q, ls, d, r, xq, xd, t, lane):
    """Σ_blocks (d[r,b]·xd[t,b]) · Σ_groups ls[g] · Σ_16 q·xq, integer inside a super-block.
    Four 16-element groups per pass with scalar int32 accumulators: LLVM vectorizes that into
    pmaddwd lanes (an accumulator array or one group at a time runs ~10x slower)."""
    nb = d.shape[1]
    acc = np.float32(0.0)
    for b in range(nb):
        sumi = np.int32(0)
        for g in range(0, 16, 4):
            o = b * 256 + g * 16
            s1 = np.int32(0)
            s2 = np.int32(0)
            s3 = np.int32(0)
            s4 = np.int32(0)
            for j in range(16):
                s1 = np.int32(s1 + np.int32(q[o + j]) * np.int32(xq[t, o + j]))
                s2 = np.int32(s2 + np.int32(q[o + 16 + j]) * np.int32(xq[t, o + 16 + j]))
                s3 = np.int32(s3 + np.int32(q[o + 32 + j]) * np.int32(xq[t, o + 32 + j]))
                s4 = np.int32(s4 + np.int32(q[o + 48 + j]) * np.int32(xq[t, o + 48 + j]))
            k = b * 16 + g
            sumi = np.int32(sumi + ls[k] * s1 + ls[k + 1] * s2 + ls[k + 2] * s3 + ls[k + 3] * s4)
        acc += (d[r, b] * xd[t, b]) * np.float32(sumi)
    return acc


@njit(**_INL)
def _sums32(q, xq, t, b, sums):
    """Integer dots of blocks b..b+3 (32 elements each) into sums[0:4] (four at once, see above)."""
    o = b * 32
    s1 = np.int32(0)
    s2 = np.int32(0)
    s3 = np.int32(0)
    s4 = np.int32(0)
    for j in range(32):
        s1 = np.int32(s1 + np.int32(q[o + j]) * np.int32(xq[t, o + j]))
        s2 = np.int32(s2 + np.int32(q[o + 32 + j]) * np.int32(xq[t, o + 32 + j]))
        s3 = np.int32(s3 + np.int32(q[o + 64 + j]) * np.int32(xq[t, o + 64 + j]))
        s4 = np.int32(s4 + np.int32(q[o + 96 + j]) * np.int32(xq[t, o + 96 + j]))
    sums[0] = s1
    sums[1] = s2
    sums[2] = s3
    sums[3] = s4


@njit(**_INL)
def _sum32(q, xq, t, b):
    s = np.int32(0)
    for j in range(32):
        s = np.int32(s + np.int32(q[b * 32 + j]) * np.int32(xq[t, b * 32 + j]))
    return s


@njit(**_INL)
def _dot_q8_0(q, d, r, xq, xd, t, sums):
    """Σ_blocks (d[r,b]·xd[t,b]) · Σ_32 q·xq (llama.cpp's IQ4_NL / MXFP4 · Q8_0)."""
    nb = d.shape[1]
    acc = np.float32(0.0)
    nb4 = nb - nb % 4
    for b in range(0, nb4, 4):
        _sums32(q, xq, t, b, sums)
        for i in range(4):
            acc += (d[r, b + i] * xd[t, b + i]) * np.float32(sums[i])
    for b in range(nb4, nb):
        acc += (d[r, b] * xd[t, b]) * np.float32(_sum32(q, xq, t, b))
    return acc


@njit(**_INL)
def _dot_q8_1(q, d, m, r, xq, xd, xs, t, sums):
    """Σ_blocks (d·xd)·Σ q·xq + m·xs (llama.cpp's Q4_1 / Q5_1 · Q8_1; xs = fp16(d_x·Σ xq))."""
    nb = d.shape[1]
    acc = np.float32(0.0)
    nb4 = nb - nb % 4
    for b in range(0, nb4, 4):
        _sums32(q, xq, t, b, sums)
        for i in range(4):
            acc += (d[r, b + i] * xd[t, b + i]) * np.float32(sums[i]) + m[r, b + i] * xs[t, b + i]
    for b in range(nb4, nb):
        acc += (d[r, b] * xd[t, b]) * np.float32(_sum32(q, xq, t, b)) + m[r, b] * xs[t, b]
    return acc


@njit(**_INL)
def _dq_codes(q, ls, d, r, out, i):
    """out[i] = d[r, b] · ls[g] · q (exact in f32 for every type that uses it)."""
    nb = d.shape[1]
    for b in range(nb):
        for g in range(16):
            s = d[r, b] * np.float32(ls[b * 16 + g])
            o = b * 256 + g * 16
            for j in range(16):
                out[i, o + j] = s * np.float32(q[o + j])


@njit(**_INL)
def _dq_codes32(q, d, r, out, i):
    nb = d.shape[1]
    for b in range(nb):
        s = d[r, b]
        for j in range(32):
            out[i, b * 32 + j] = s * np.float32(q[b * 32 + j])


# ============================================================================ unpack: 32-element blocks


@njit(**_INL)
def _u_q4_1(qs, r, q):
    nb = q.shape[0] // 32
    for b in range(nb):
        for j in range(16):
            v = qs[r, b * 16 + j]
            q[b * 32 + j] = v & 15
            q[b * 32 + 16 + j] = v >> 4


@njit(**_INL)
def _u_q5_1(qs, qh, r, q):
    nb = q.shape[0] // 32
    for b in range(nb):
        h = qh[r, b]
        for j in range(16):
            v = qs[r, b * 16 + j]
            q[b * 32 + j] = (v & 15) | (((h >> j) & 1) << 4)
            q[b * 32 + 16 + j] = (v >> 4) | (((h >> (j + 16)) & 1) << 4)


@njit(**_INL)
def _u_lut4(qs, kv, r, q):
    """4-bit indices into a 16-entry table (IQ4_NL, MXFP4): low nibble j, high nibble j + 16."""
    nb = q.shape[0] // 32
    for b in range(nb):
        for j in range(16):
            v = qs[r, b * 16 + j]
            q[b * 32 + j] = kv[v & 15]
            q[b * 32 + 16 + j] = kv[v >> 4]


# ============================================================================ unpack: super-blocks


@njit(**_INL)
def _u_q2_k(qs, sc, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for h in range(2):
            for s in range(4):
                o = b * 256 + 128 * h + 32 * s
                for li in range(32):
                    q[o + li] = (qs[r, b * 64 + 32 * h + li] >> (2 * s)) & 3
        for g in range(16):
            ls[b * 16 + g] = sc[r, b * 16 + g]


@njit(**_INL)
def _u_q3_k(qs, hm, sc, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for h in range(2):
            for s in range(4):
                o = b * 256 + 128 * h + 32 * s
                bit = 1 << (4 * h + s)
                for li in range(32):
                    v = np.int32((qs[r, b * 64 + 32 * h + li] >> (2 * s)) & 3)
                    if not (hm[r, b * 32 + li] & bit):
                        v -= 4
                    q[o + li] = v
        for g in range(16):
            ls[b * 16 + g] = sc[r, b * 16 + g]


@njit(**_INL)
def _u_iq4_xs(qs, sc, kv, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for ib in range(8):
            o = b * 256 + 32 * ib
            for j in range(16):
                v = qs[r, b * 128 + 16 * ib + j]
                q[o + j] = kv[v & 15]
                q[o + 16 + j] = kv[v >> 4]
            ls[b * 16 + 2 * ib] = sc[r, b * 8 + ib]
            ls[b * 16 + 2 * ib + 1] = sc[r, b * 8 + ib]


@njit(**_INL)
def _u_tq1_0(qs, qh, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        o = b * 256
        for p in range(5):
            pw = np.uint8(3**p)
            for m in range(32):
                v = np.uint8(qs[r, b * 48 + m] * pw)
                q[o + 32 * p + m] = ((np.int32(v) * 3) >> 8) - 1
            for m in range(16):
                v = np.uint8(qs[r, b * 48 + 32 + m] * pw)
                q[o + 160 + 16 * p + m] = ((np.int32(v) * 3) >> 8) - 1
        for p in range(4):
            pw = np.uint8(3**p)
            for j in range(4):
                v = np.uint8(qh[r, b * 4 + j] * pw)
                q[o + 240 + 4 * p + j] = ((np.int32(v) * 3) >> 8) - 1
        for g in range(16):
            ls[b * 16 + g] = 1


@njit(**_INL)
def _u_tq2_0(qs, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for h in range(2):
            for s in range(4):
                o = b * 256 + 128 * h + 32 * s
                for k in range(32):
                    q[o + k] = np.int32((qs[r, b * 64 + 32 * h + k] >> (2 * s)) & 3) - 1
        for g in range(16):
            ls[b * 16 + g] = 1


@njit(**_INL)
def _put8(q, o, grid, gi, sign8, sb):
    for j in range(8):
        q[o + j] = grid[gi, j] * sign8[sb, j]


@njit(**_INL)
def _u_iq2_xxs(gi, ss, grid, sign8, ksg, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for ib in range(8):
            a = ss[r, b * 8 + ib]
            s = np.int32(2 * (a >> 28) + 1)
            for lq in range(4):
                _put8(
                    q,
                    b * 256 + 32 * ib + 8 * lq,
                    grid,
                    gi[r, b * 32 + 4 * ib + lq],
                    sign8,
                    ksg[(a >> (7 * lq)) & 127],
                )
            ls[b * 16 + 2 * ib] = s
            ls[b * 16 + 2 * ib + 1] = s


@njit(**_INL)
def _u_iq2_xs(qs, sc, grid, sign8, ksg, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for ib in range(8):
            for lq in range(4):
                v = qs[r, b * 32 + 4 * ib + lq]
                _put8(q, b * 256 + 32 * ib + 8 * lq, grid, v & 511, sign8, ksg[v >> 9])
            s = sc[r, b * 8 + ib]
            ls[b * 16 + 2 * ib] = 2 * np.int32(s & 15) + 1
            ls[b * 16 + 2 * ib + 1] = 2 * np.int32(s >> 4) + 1


@njit(**_INL)
def _u_iq2_s(qs, sg, qh, sc, grid, sign8, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for ib in range(8):
            h = np.int32(qh[r, b * 8 + ib])
            for lq in range(4):
                gi = np.int32(qs[r, b * 32 + 4 * ib + lq]) | ((h << (8 - 2 * lq)) & 0x300)
                _put8(q, b * 256 + 32 * ib + 8 * lq, grid, gi, sign8, sg[r, b * 32 + 4 * ib + lq])
            s = sc[r, b * 8 + ib]
            ls[b * 16 + 2 * ib] = 2 * np.int32(s & 15) + 1
            ls[b * 16 + 2 * ib + 1] = 2 * np.int32(s >> 4) + 1


@njit(**_INL)
def _put4x2(q, o, grid, g1, g2, sign8, sb):
    for j in range(4):
        q[o + j] = grid[g1, j] * sign8[sb, j]
        q[o + 4 + j] = grid[g2, j] * sign8[sb, 4 + j]


@njit(**_INL)
def _u_iq3_xxs(q3, ss, grid, sign8, ksg, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for ib in range(8):
            a = ss[r, b * 8 + ib]
            s = np.int32(2 * (a >> 28) + 1)
            for lq in range(4):
                o = b * 64 + 8 * ib + 2 * lq
                _put4x2(
                    q,
                    b * 256 + 32 * ib + 8 * lq,
                    grid,
                    q3[r, o],
                    q3[r, o + 1],
                    sign8,
                    ksg[(a >> (7 * lq)) & 127],
                )
            ls[b * 16 + 2 * ib] = s
            ls[b * 16 + 2 * ib + 1] = s


@njit(**_INL)
def _u_iq3_s(qs, qh, sg, sc, grid, sign8, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for ib in range(8):
            h = np.int32(qh[r, b * 8 + ib])
            for lq in range(4):
                o = b * 64 + 8 * ib + 2 * lq
                g1 = np.int32(qs[r, o]) | ((h << (8 - 2 * lq)) & 256)
                g2 = np.int32(qs[r, o + 1]) | ((h << (7 - 2 * lq)) & 256)
                _put4x2(q, b * 256 + 32 * ib + 8 * lq, grid, g1, g2, sign8, sg[r, b * 32 + 4 * ib + lq])
            s = 2 * np.int32((sc[r, b * 4 + ib // 2] >> (4 * (ib % 2))) & 15) + 1
            ls[b * 16 + 2 * ib] = s
            ls[b * 16 + 2 * ib + 1] = s


@njit(**_INL)
def _put8_delta(q, o, grid, gi, delta):
    for j in range(8):
        q[o + j] = 8 * grid[gi, j] + delta


@njit(**_INL)
def _u_iq1_s(qs, qh, grid, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for ib in range(8):
            h = np.int32(qh[r, b * 8 + ib])
            delta = -1 if h & 0x8000 else 1
            for lq in range(4):
                gi = np.int32(qs[r, b * 32 + 4 * ib + lq]) | (((h >> (3 * lq)) & 7) << 8)
                _put8_delta(q, b * 256 + 32 * ib + 8 * lq, grid, gi, delta)
            s = 2 * ((h >> 12) & 7) + 1
            ls[b * 16 + 2 * ib] = s
            ls[b * 16 + 2 * ib + 1] = s


@njit(**_INL)
def _u_iq1_m(qs, qh, sc, grid, r, q, ls):
    nb = q.shape[0] // 256
    for b in range(nb):
        for ib in range(8):
            for lq in range(4):
                h = np.int32(qh[r, b * 16 + 2 * ib + lq // 2])
                gi = np.int32(qs[r, b * 32 + 4 * ib + lq]) | ((h << (8 - 4 * (lq % 2))) & 0x700)
                delta = -1 if h & (0x08 << (4 * (lq % 2))) else 1
                _put8_delta(q, b * 256 + 32 * ib + 8 * lq, grid, gi, delta)
            s = np.int32(sc[r, b * 4 + ib // 2])
            ls[b * 16 + 2 * ib] = 2 * ((s >> (6 * (ib % 2))) & 7) + 1
            ls[b * 16 + 2 * ib + 1] = 2 * ((s >> (6 * (ib % 2) + 3)) & 7) + 1


# ============================================================================ mat-vec drivers
# One small driver per type: Numba cannot cache kernels that take other kernels as arguments.


@njit(**KERNEL, parallel=True)
def mv_q4_1(qs, d, m, xq, xd, xs, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 32, np.int8)
        sums = np.empty(4, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_q4_1(qs, r, q)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8_1(q, d, m, r, xq, xd, xs, t, sums)


@njit(**KERNEL, parallel=True)
def mv_q5_1(qs, qh, d, m, xq, xd, xs, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 32, np.int8)
        sums = np.empty(4, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_q5_1(qs, qh, r, q)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8_1(q, d, m, r, xq, xd, xs, t, sums)


@njit(**KERNEL, parallel=True)
def mv_lut4(qs, d, kv, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 32, np.int8)
        sums = np.empty(4, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_lut4(qs, kv, r, q)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8_0(q, d, r, xq, xd, t, sums)


@njit(**KERNEL, parallel=True)
def mv_q2_k(qs, sc, mn, d, dmin, xq, xd, xbs, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_q2_k(qs, sc, r, q, ls)
            for t in range(xq.shape[0]):
                acc = _dot_q8k(q, ls, d, r, xq, xd, t, lane)
                for b in range(nb):
                    summ = np.int32(0)
                    for g in range(16):
                        summ += np.int32(mn[r, b * 16 + g]) * xbs[t, b * 16 + g]
                    acc -= (xd[t, b] * dmin[r, b]) * np.float32(summ)
                out[t, r] = acc


@njit(**KERNEL, parallel=True)
def mv_q3_k(qs, hm, sc, d, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_q3_k(qs, hm, sc, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq4_xs(qs, sc, d, kv, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq4_xs(qs, sc, kv, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_tq1_0(qs, qh, d, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_tq1_0(qs, qh, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_tq2_0(qs, d, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_tq2_0(qs, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq2_xxs(gi, ss, d, grid, sign8, ksg, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq2_xxs(gi, ss, grid, sign8, ksg, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq2_xs(qs, sc, d, grid, sign8, ksg, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq2_xs(qs, sc, grid, sign8, ksg, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq2_s(qs, sg, qh, sc, d, grid, sign8, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq2_s(qs, sg, qh, sc, grid, sign8, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq3_xxs(q3, ss, d, grid, sign8, ksg, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq3_xxs(q3, ss, grid, sign8, ksg, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq3_s(qs, qh, sg, sc, d, grid, sign8, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq3_s(qs, qh, sg, sc, grid, sign8, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq1_s(qs, qh, d, grid, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq1_s(qs, qh, grid, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


@njit(**KERNEL, parallel=True)
def mv_iq1_m(qs, qh, sc, d, grid, xq, xd, out):
    rows, nb = d.shape
    for c in prange((rows + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        lane = np.empty(16, np.int32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _u_iq1_m(qs, qh, sc, grid, r, q, ls)
            for t in range(xq.shape[0]):
                out[t, r] = _dot_q8k(q, ls, d, r, xq, xd, t, lane)


# ============================================================================ dequantize drivers


@njit(**KERNEL, parallel=True)
def dq_q4_1(qs, d, m, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 32), np.float32)
    for i in prange(r1 - r0):
        r = r0 + i
        for b in range(nb):
            for j in range(16):
                v = qs[r, b * 16 + j]
                out[i, b * 32 + j] = d[r, b] * np.float32(v & 15) + m[r, b]
                out[i, b * 32 + 16 + j] = d[r, b] * np.float32(v >> 4) + m[r, b]
    return out


@njit(**KERNEL, parallel=True)
def dq_q5_1(qs, qh, d, m, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 32), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 32, np.int8)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_q5_1(qs, qh, r0 + i, q)
            for b in range(nb):
                for j in range(32):
                    out[i, b * 32 + j] = d[r0 + i, b] * np.float32(q[b * 32 + j]) + m[r0 + i, b]
    return out


@njit(**KERNEL, parallel=True)
def dq_lut4(qs, d, kv, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 32), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 32, np.int8)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_lut4(qs, kv, r0 + i, q)
            _dq_codes32(q, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_q2_k(qs, sc, mn, d, dmin, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            r = r0 + i
            _u_q2_k(qs, sc, r, q, ls)
            for b in range(nb):
                for g in range(16):
                    dl = d[r, b] * np.float32(ls[b * 16 + g])
                    ml = dmin[r, b] * np.float32(mn[r, b * 16 + g])
                    o = b * 256 + g * 16
                    for j in range(16):
                        out[i, o + j] = dl * np.float32(q[o + j]) - ml
    return out


@njit(**KERNEL, parallel=True)
def dq_q3_k(qs, hm, sc, d, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_q3_k(qs, hm, sc, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq4_xs(qs, sc, d, kv, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq4_xs(qs, sc, kv, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_tq1_0(qs, qh, d, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_tq1_0(qs, qh, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_tq2_0(qs, d, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_tq2_0(qs, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq2_xxs(gi, ss, d, grid, sign8, ksg, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq2_xxs(gi, ss, grid, sign8, ksg, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq2_xs(qs, sc, d, grid, sign8, ksg, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq2_xs(qs, sc, grid, sign8, ksg, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq2_s(qs, sg, qh, sc, d, grid, sign8, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq2_s(qs, sg, qh, sc, grid, sign8, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq3_xxs(q3, ss, d, grid, sign8, ksg, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq3_xxs(q3, ss, grid, sign8, ksg, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq3_s(qs, qh, sg, sc, d, grid, sign8, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq3_s(qs, qh, sg, sc, grid, sign8, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq1_s(qs, qh, d, grid, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq1_s(qs, qh, grid, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


@njit(**KERNEL, parallel=True)
def dq_iq1_m(qs, qh, sc, d, grid, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        q = np.empty(nb * 256, np.int8)
        ls = np.empty(nb * 16, np.int32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _u_iq1_m(qs, qh, sc, grid, r0 + i, q, ls)
            _dq_codes(q, ls, d, r0 + i, out, i)
    return out


# ============================================================================ float weights


@njit(**_INL)
def _f16_row(w, r, bits, f):
    """Row r of fp16 bits -> f32 in ``f`` (a float32 view of ``bits``), exact, vectorizable:
    shift exponent+mantissa into place, rescale by 2^112 (handles zeros and subnormals),
    then put back the sign and the all-ones exponent of inf/NaN."""
    k = w.shape[1]
    for j in range(k):
        bits[j] = np.uint32(w[r, j] & 0x7FFF) << 13
    for j in range(k):
        f[j] = f[j] * np.float32(2.0**112)
    for j in range(k):
        h = np.uint32(w[r, j])
        inf = np.uint32(0x7F800000) if (h & 0x7C00) == 0x7C00 else np.uint32(0)
        bits[j] = bits[j] | ((h & 0x8000) << 16) | inf


@njit(**_INL)
def _bf16_row(w, r, bits):
    for j in range(w.shape[1]):
        bits[j] = np.uint32(w[r, j]) << 16


@njit(**_INL)
def _dot_f32(f, x, t, acc):
    """Σ f·x over one row with 16 f32 lanes, then a horizontal sum."""
    k = f.shape[0]
    k16 = k - k % 16
    for j in range(16):
        acc[j] = 0.0
    for o in range(0, k16, 16):
        for j in range(16):
            acc[j] += f[o + j] * x[t, o + j]
    s = np.float32(0.0)
    for j in range(16):
        s += acc[j]
    for j in range(k16, k):
        s += f[j] * x[t, j]
    return s


@njit(**KERNEL, parallel=True)
def mv_f32(w, x, out):
    rows = w.shape[0]
    for c in prange((rows + CH - 1) // CH):
        acc = np.empty(16, np.float32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            for t in range(x.shape[0]):
                out[t, r] = _dot_f32(w[r], x, t, acc)


@njit(**KERNEL, parallel=True)
def mv_f16(w, x, out):
    rows, k = w.shape
    for c in prange((rows + CH - 1) // CH):
        acc = np.empty(16, np.float32)
        bits = np.empty(k, np.uint32)
        f = bits.view(np.float32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _f16_row(w, r, bits, f)
            for t in range(x.shape[0]):
                out[t, r] = _dot_f32(f, x, t, acc)


@njit(**KERNEL, parallel=True)
def mv_bf16(w, x, out):
    rows, k = w.shape
    for c in prange((rows + CH - 1) // CH):
        acc = np.empty(16, np.float32)
        bits = np.empty(k, np.uint32)
        f = bits.view(np.float32)
        for r in range(c * CH, min(rows, c * CH + CH)):
            _bf16_row(w, r, bits)
            for t in range(x.shape[0]):
                out[t, r] = _dot_f32(f, x, t, acc)


@njit(**KERNEL, parallel=True)
def dq_f16(w, r0, r1):
    k = w.shape[1]
    out = np.empty((r1 - r0, k), np.float32)
    for c in prange((r1 - r0 + CH - 1) // CH):
        bits = np.empty(k, np.uint32)
        f = bits.view(np.float32)
        for i in range(c * CH, min(r1 - r0, c * CH + CH)):
            _f16_row(w, r0 + i, bits, f)
            for j in range(k):
                out[i, j] = f[j]
    return out


@njit(**KERNEL, parallel=True)
def dq_bf16(w, r0, r1):
    k = w.shape[1]
    out = np.empty((r1 - r0, k), np.uint32)
    for i in prange(r1 - r0):
        for j in range(k):
            out[i, j] = np.uint32(w[r0 + i, j]) << 16
    return out.view(np.float32)
