"""CUDA mat-mul kernels (numba-cuda) for the weight types beyond :mod:`.kernels`' fast paths:
F32, F16, BF16, Q4_1, Q5_1, IQ4_NL, MXFP4, Q2_K, Q3_K, IQ4_XS, TQ1_0, TQ2_0, IQ2_XXS, IQ2_XS,
IQ2_S, IQ3_XXS, IQ3_S, IQ1_S and IQ1_M, plus the activation conversions they take (Q8_1, and
F16 / BF16 rounding).

They read the blocks as :func:`engine.runtime.kernels.qmatmul.repack` splits them (the same
fields the CPU kernels of :mod:`engine.runtime.kernels.qkernels` take) and follow those kernels'
arithmetic: activations converted to the weight type's ``vec_dot_type``, integer codes decoded
as the CPU's unpackers decode them (IQ1 codes ``8·grid ± 1``, the IQ2/IQ3 power-of-two factors
folded into the f32 block scale at repack), each unit's dot product an exact integer sum, then
``(d·xd)·sumi`` in f32 (Q4_1 / Q5_1 add ``m·s``; Q2_K subtracts ``(xd·dmin)·Σ min·bsum``).  Only
the order in which the f32 unit terms are summed differs from the CPU (a unit here is 32 elements,
the CPU sums a super-block's integers first), which the tests bound to f32 rounding.

Launch layout as in :mod:`.kernels`: grid x over row groups (grid-stride), y over token tiles of
``TT``; block x = lanes splitting a row's units, y = rows.  A thread decodes a unit's 32 codes
once into ``wv`` and dots them with every token of the tile.  The grid tables, the IQ4_NL values
and ``ksigns`` come in as device arrays (uploaded once per device by :mod:`.device`).

Super-block types share one kernel, :func:`mm_k32`, that dispatches on a per-type ``kind`` (a
uniform branch: every thread of a launch takes the same one); unused field and table arguments
get placeholders.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from engine.runtime.cuda.kernels import (
    F32,
    F64,
    INT32,
    SM_F32,
    TT,
    _reduce_store,
    f16_round,
    f16_value,
    rint_f,
    rne,
)

# kinds of mm_k32
Q2_K, Q3_K, IQ4_XS, TQ1_0, TQ2_0, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M = range(12)
K32_KINDS = {
    "Q2_K": Q2_K,
    "Q3_K": Q3_K,
    "IQ4_XS": IQ4_XS,
    "TQ1_0": TQ1_0,
    "TQ2_0": TQ2_0,
    "IQ2_XXS": IQ2_XXS,
    "IQ2_XS": IQ2_XS,
    "IQ2_S": IQ2_S,
    "IQ3_XXS": IQ3_XXS,
    "IQ3_S": IQ3_S,
    "IQ1_S": IQ1_S,
    "IQ1_M": IQ1_M,
}
# kinds of mm_float and round_act
F32_W, F16_W, BF16_W = range(3)
FLOAT_KINDS = {"F32": F32_W, "F16": F16_W, "BF16": BF16_W}
# 2**(e - 134) for a bf16's biased exponent e (1..254); index 1 also scales subnormals (2**-133)
POW2_BF16 = np.array([2.0 ** (e - 134) for e in range(256)], np.float64)
F32_MIN_NORMAL = 2.0**-126
TWO_133 = 2.0**133

# ============================================================================ activation conversion


@cuda.jit(device=True)
def q8_1_block(x, t, b, q, d, s):
    """quantize_q8_1 of block ``b`` (32 elements) of row ``t``: Q8_0's codes and fp16 scale, plus
    s = fp16(d_f32 · Σq) with the unrounded f32 d."""
    o = b * 32
    amax = F32(0.0)
    for j in range(32):
        a = abs(x[t, o + j])
        if a > amax:
            amax = a
    dd = F32(amax / F32(127.0))
    d[t, b] = f16_round(dd)
    idd = F32(0.0)
    if amax != 0:
        idd = F32(F32(127.0) / amax)
    tot = INT32(0)
    for j in range(32):
        v = INT32(rint_f(F32(x[t, o + j] * idd)))
        q[t, o + j] = np.int8(v)
        tot += v
    s[t, b] = f16_round(F32(dd * F32(tot)))


@cuda.jit(cache=True)
def quant_q8_1(x, q, d, s):
    """x (n, K) -> q int8, d f32, s f32 (n, K/32): quantize_q8_1, one thread per block."""
    n = x.shape[0]
    nb = x.shape[1] // 32
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, n * nb, step):
        q8_1_block(x, i // nb, i % nb, q, d, s)


@cuda.jit(device=True)
def bf16_round(v):
    """float32 -> the nearest bf16 value (ties to even), as float32; NaN and ±inf unchanged."""
    x = F64(v)
    a = abs(x)
    if x != x or a == 0 or a == math.inf:
        return v
    if a < F32_MIN_NORMAL:  # f32 subnormal: bf16's quantum is 2**-133
        r = rne(a * TWO_133) / TWO_133
    else:
        m, _ = math.frexp(a)
        r = (rne(m * 256.0) / 256.0) * (a / m)  # a / m: exactly 2**e
    if x < 0:
        r = -r
    return F32(r)


@cuda.jit(device=True)
def bf16_value(b):
    """bf16 bits -> float32 (exact)."""
    b = INT32(b)
    e = (b >> INT32(7)) & INT32(255)
    f = b & INT32(127)
    if e == 0:
        v = F64(f) * POW2_BF16[1]
    elif e == 255:
        v = math.inf if f == 0 else math.nan
    else:
        v = F64(f + INT32(128)) * POW2_BF16[e]
    if b & INT32(0x8000):
        v = -v
    return F32(v)


@cuda.jit(cache=True)
def round_act(x, out, kind):
    """out = x rounded to fp16 (``kind`` F16_W) or bf16 (BF16_W) values, as f32."""
    rows = x.shape[0]
    n = x.shape[1]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for k in range(start, rows * n, step):
        r = k // n
        i = k % n
        if kind == F16_W:
            out[r, i] = f16_round(x[r, i])
        else:
            out[r, i] = bf16_round(x[r, i])


# ============================================================================ floats, 32-element blocks


@cuda.jit(cache=True)
def mm_float(w, kind, x, out):
    """F32 / F16 / BF16 weights (``kind``; F16/BF16 as bits) · f32 activations holding the type's
    rounded values: units of 32 columns (the last one may be shorter), f32 products and sums."""
    rows = w.shape[0]
    k = w.shape[1]
    nu = (k + 31) // 32
    n = x.shape[0]
    t0 = cuda.blockIdx.y * TT
    nt = min(TT, n - t0)
    sm = cuda.shared.array(SM_F32, np.float32)
    acc = cuda.local.array(TT, np.float32)
    wv = cuda.local.array(32, np.float32)
    ny = cuda.blockDim.y
    for rb in range(cuda.blockIdx.x * ny, rows, cuda.gridDim.x * ny):
        r = rb + cuda.threadIdx.y
        for t in range(TT):
            acc[t] = F32(0.0)
        if r < rows:
            for u in range(cuda.threadIdx.x, nu, cuda.blockDim.x):
                o = u * 32
                m = min(32, k - o)
                for j in range(m):
                    if kind == F16_W:
                        wv[j] = f16_value(w[r, o + j])
                    elif kind == BF16_W:
                        wv[j] = bf16_value(w[r, o + j])
                    else:
                        wv[j] = F32(w[r, o + j])
                for t in range(nt):
                    s = F32(0.0)
                    for j in range(m):
                        s = F32(s + F32(wv[j] * x[t0 + t, o + j]))
                    acc[t] += s
        _reduce_store(acc, sm, nt, out, t0, r, rows)


@cuda.jit(cache=True)
def mm_q4_1(qs, qh, has_qh, d, m, xq, xd, xs, out):
    """Q4_1 (``has_qh`` False) and Q5_1 · Q8_1: (d·xd)·Σ q·xq + m·s per 32-element block."""
    rows = qs.shape[0]
    nb = d.shape[1]
    n = xq.shape[0]
    t0 = cuda.blockIdx.y * TT
    nt = min(TT, n - t0)
    sm = cuda.shared.array(SM_F32, np.float32)
    acc = cuda.local.array(TT, np.float32)
    wv = cuda.local.array(32, np.int32)
    ny = cuda.blockDim.y
    for rb in range(cuda.blockIdx.x * ny, rows, cuda.gridDim.x * ny):
        r = rb + cuda.threadIdx.y
        for t in range(TT):
            acc[t] = F32(0.0)
        if r < rows:
            for b in range(cuda.threadIdx.x, nb, cuda.blockDim.x):
                h = np.int64(0)
                if has_qh:
                    h = np.int64(qh[r, b])
                for j in range(16):
                    v = INT32(qs[r, b * 16 + j])
                    wv[j] = (v & INT32(15)) | INT32(((h >> j) & 1) << 4)
                    wv[j + 16] = (v >> INT32(4)) | INT32(((h >> (j + 16)) & 1) << 4)
                db = d[r, b]
                mb = m[r, b]
                for t in range(nt):
                    tt = t0 + t
                    s = INT32(0)
                    for j in range(32):
                        s += wv[j] * INT32(xq[tt, b * 32 + j])
                    acc[t] += F32(F32(F32(db * xd[tt, b]) * F32(s)) + F32(mb * xs[tt, b]))
        _reduce_store(acc, sm, nt, out, t0, r, rows)


@cuda.jit(cache=True)
def mm_lut4(qs, d, kv, xq, xd, out):
    """IQ4_NL / MXFP4 · Q8_0: 4-bit indices into the 16-entry table ``kv`` (low nibble: element j,
    high nibble: j + 16), (d·xd)·Σ per block."""
    rows = qs.shape[0]
    nb = d.shape[1]
    n = xq.shape[0]
    t0 = cuda.blockIdx.y * TT
    nt = min(TT, n - t0)
    sm = cuda.shared.array(SM_F32, np.float32)
    acc = cuda.local.array(TT, np.float32)
    wv = cuda.local.array(32, np.int32)
    ny = cuda.blockDim.y
    for rb in range(cuda.blockIdx.x * ny, rows, cuda.gridDim.x * ny):
        r = rb + cuda.threadIdx.y
        for t in range(TT):
            acc[t] = F32(0.0)
        if r < rows:
            for b in range(cuda.threadIdx.x, nb, cuda.blockDim.x):
                for j in range(16):
                    v = INT32(qs[r, b * 16 + j])
                    wv[j] = INT32(kv[v & INT32(15)])
                    wv[j + 16] = INT32(kv[v >> INT32(4)])
                db = d[r, b]
                for t in range(nt):
                    tt = t0 + t
                    s = INT32(0)
                    for j in range(32):
                        s += wv[j] * INT32(xq[tt, b * 32 + j])
                    acc[t] += F32(F32(db * xd[tt, b]) * F32(s))
        _reduce_store(acc, sm, nt, out, t0, r, rows)


# ============================================================================ super-block decoders
# Each decodes unit ``ib`` (elements 32·ib … 32·ib + 31) of super-block ``b`` of row ``r`` into
# wv[0:32] as the CPU unpackers (engine.runtime.kernels.qkernels._u_*) do.


@cuda.jit(device=True)
def _d_2bit(qs, r, b, ib, off, wv):
    """Q2_K / TQ2_0: 2-bit field ib % 4 of the 32 bytes of half ib // 4, minus ``off``."""
    o = b * 64 + 32 * (ib // 4)
    sh = INT32(2 * (ib % 4))
    for li in range(32):
        wv[li] = ((INT32(qs[r, o + li]) >> sh) & INT32(3)) - INT32(off)


@cuda.jit(device=True)
def _d_q3_k(qs, hm, r, b, ib, wv):
    o = b * 64 + 32 * (ib // 4)
    sh = INT32(2 * (ib % 4))
    bit = INT32(1) << INT32(ib)
    for li in range(32):
        v = (INT32(qs[r, o + li]) >> sh) & INT32(3)
        if (INT32(hm[r, b * 32 + li]) & bit) == 0:
            v -= INT32(4)
        wv[li] = v


@cuda.jit(device=True)
def _d_iq4_xs(qs, kv, r, b, ib, wv):
    o = b * 128 + 16 * ib
    for j in range(16):
        v = INT32(qs[r, o + j])
        wv[j] = INT32(kv[v & INT32(15)])
        wv[16 + j] = INT32(kv[v >> INT32(4)])


@cuda.jit(device=True)
def _tq1(byte, p):
    """Ternary digit ``p`` of a TQ1_0 byte, minus 1: ((uint8(byte·3^p)·3) >> 8) - 1."""
    pw = INT32(1)
    for _ in range(p):
        pw = INT32(pw * INT32(3))
    return INT32(((INT32(byte * pw) & INT32(255)) * INT32(3)) >> INT32(8)) - INT32(1)


@cuda.jit(device=True)
def _d_tq1_0(qs, qh, r, b, ib, wv):
    """Elements 0..159: digit e // 32 of qs byte e % 32; 160..239: digit (e-160) // 16 of byte
    32 + (e-160) % 16; 240..255: digit (e-240) // 4 of qh byte (e-240) % 4."""
    for j in range(32):
        e = 32 * ib + j
        if e < 160:
            v = _tq1(INT32(qs[r, b * 48 + e % 32]), e // 32)
        elif e < 240:
            v = _tq1(INT32(qs[r, b * 48 + 32 + (e - 160) % 16]), (e - 160) // 16)
        else:
            v = _tq1(INT32(qh[r, b * 4 + (e - 240) % 4]), (e - 240) // 4)
        wv[j] = v


@cuda.jit(device=True)
def _grid8(grid, g, signs, wv, o):
    """wv[o:o+8] = grid row g (8 values), negated where bit j of ``signs`` is set."""
    for j in range(8):
        v = INT32(grid[g, j])
        if (signs >> j) & 1:
            v = -v
        wv[o + j] = v


@cuda.jit(device=True)
def _grid4x2(grid, g1, g2, signs, wv, o):
    """wv[o:o+8] = grid rows g1 and g2 (4 values each), negated where bit j of ``signs`` is set."""
    for j in range(4):
        v1 = INT32(grid[g1, j])
        v2 = INT32(grid[g2, j])
        if (signs >> j) & 1:
            v1 = -v1
        if (signs >> (j + 4)) & 1:
            v2 = -v2
        wv[o + j] = v1
        wv[o + 4 + j] = v2


@cuda.jit(device=True)
def _grid_iq1(grid, g, delta, wv, o):
    """wv[o:o+8] = 8·grid row g + delta (IQ1 codes: llama.cpp's sumi + delta·sumi_delta / 8)."""
    for j in range(8):
        wv[o + j] = INT32(8) * INT32(grid[g, j]) + delta


@cuda.jit(device=True)
def _d_iq2_xxs(gi, ss, grid, ksg, r, b, ib, wv):
    a = np.int64(ss[r, b * 8 + ib])
    for lq in range(4):
        k = b * 32 + 4 * ib + lq
        _grid8(grid, INT32(gi[r, k]), INT32(ksg[(a >> (7 * lq)) & 127]), wv, 8 * lq)
    return INT32(2 * (a >> 28) + 1)


@cuda.jit(device=True)
def _d_iq2_xs(qs, grid, ksg, r, b, ib, wv):
    for lq in range(4):
        v = INT32(qs[r, b * 32 + 4 * ib + lq])
        _grid8(grid, v & INT32(511), INT32(ksg[v >> INT32(9)]), wv, 8 * lq)


@cuda.jit(device=True)
def _d_iq2_s(qs, sg, qh, grid, r, b, ib, wv):
    h = INT32(qh[r, b * 8 + ib])
    for lq in range(4):
        k = b * 32 + 4 * ib + lq
        g = INT32(qs[r, k]) | ((h << INT32(8 - 2 * lq)) & INT32(0x300))
        _grid8(grid, g, INT32(sg[r, k]), wv, 8 * lq)


@cuda.jit(device=True)
def _d_iq3_xxs(q3, ss, grid, ksg, r, b, ib, wv):
    a = np.int64(ss[r, b * 8 + ib])
    for lq in range(4):
        o = b * 64 + 8 * ib + 2 * lq
        signs = INT32(ksg[(a >> (7 * lq)) & 127])
        _grid4x2(grid, INT32(q3[r, o]), INT32(q3[r, o + 1]), signs, wv, 8 * lq)
    return INT32(2 * (a >> 28) + 1)


@cuda.jit(device=True)
def _d_iq3_s(qs, qh, sg, grid, r, b, ib, wv):
    h = INT32(qh[r, b * 8 + ib])
    for lq in range(4):
        o = b * 64 + 8 * ib + 2 * lq
        g1 = INT32(qs[r, o]) | ((h << INT32(8 - 2 * lq)) & INT32(256))
        g2 = INT32(qs[r, o + 1]) | ((h << INT32(7 - 2 * lq)) & INT32(256))
        _grid4x2(grid, g1, g2, INT32(sg[r, b * 32 + 4 * ib + lq]), wv, 8 * lq)


@cuda.jit(device=True)
def _d_iq1_s(qs, qh, grid, r, b, ib, wv):
    h = INT32(qh[r, b * 8 + ib])
    delta = INT32(-1) if h & INT32(0x8000) else INT32(1)
    for lq in range(4):
        k = b * 32 + 4 * ib + lq
        g = INT32(qs[r, k]) | (((h >> INT32(3 * lq)) & INT32(7)) << INT32(8))
        _grid_iq1(grid, g, delta, wv, 8 * lq)
    return INT32(2 * ((h >> INT32(12)) & INT32(7)) + 1)


@cuda.jit(device=True)
def _d_iq1_m(qs, qh, grid, r, b, ib, wv):
    for lq in range(4):
        h = INT32(qh[r, b * 16 + 2 * ib + lq // 2])
        k = b * 32 + 4 * ib + lq
        half = INT32(4 * (lq % 2))
        g = INT32(qs[r, k]) | ((h << (INT32(8) - half)) & INT32(0x700))
        delta = INT32(-1) if h & (INT32(0x08) << half) else INT32(1)
        _grid_iq1(grid, g, delta, wv, 8 * lq)


@cuda.jit(device=True)
def _nibble_scales(sv):
    """IQ2_XS / IQ2_S: the two scales 2·nibble + 1 of a scale byte."""
    return INT32(2 * (sv & INT32(15)) + 1), INT32(2 * (sv >> INT32(4)) + 1)


@cuda.jit(device=True)
def _decode(kind, f0, f1, f2, f3, grid, ksg, kv, r, b, ib, wv):
    """Codes of unit ``ib`` of super-block ``b`` into wv; returns the integer scales of its two
    16-element halves.  f0..f3: the weight's code fields in repack order (placeholders after)."""
    if kind == Q2_K:
        _d_2bit(f0, r, b, ib, 0, wv)
        g = b * 16 + 2 * ib
        return INT32(f1[r, g]), INT32(f1[r, g + 1])
    if kind == TQ2_0:
        _d_2bit(f0, r, b, ib, 1, wv)
        return INT32(1), INT32(1)
    if kind == Q3_K:
        _d_q3_k(f0, f1, r, b, ib, wv)
        g = b * 16 + 2 * ib
        return INT32(f2[r, g]), INT32(f2[r, g + 1])
    if kind == IQ4_XS:
        _d_iq4_xs(f0, kv, r, b, ib, wv)
        s = INT32(f1[r, b * 8 + ib])
        return s, s
    if kind == TQ1_0:
        _d_tq1_0(f0, f1, r, b, ib, wv)
        return INT32(1), INT32(1)
    if kind == IQ2_XXS:
        s = _d_iq2_xxs(f0, f1, grid, ksg, r, b, ib, wv)
        return s, s
    if kind == IQ2_XS:
        _d_iq2_xs(f0, grid, ksg, r, b, ib, wv)
        return _nibble_scales(INT32(f1[r, b * 8 + ib]))
    if kind == IQ2_S:
        _d_iq2_s(f0, f1, f2, grid, r, b, ib, wv)
        return _nibble_scales(INT32(f3[r, b * 8 + ib]))
    if kind == IQ3_XXS:
        s = _d_iq3_xxs(f0, f1, grid, ksg, r, b, ib, wv)
        return s, s
    if kind == IQ3_S:
        _d_iq3_s(f0, f1, f2, grid, r, b, ib, wv)
        s = INT32(2 * ((INT32(f3[r, b * 4 + ib // 2]) >> INT32(4 * (ib % 2))) & INT32(15)) + 1)
        return s, s
    if kind == IQ1_S:
        s = _d_iq1_s(f0, f1, grid, r, b, ib, wv)
        return s, s
    # IQ1_M
    _d_iq1_m(f0, f1, grid, r, b, ib, wv)
    sv = INT32(f2[r, b * 4 + ib // 2])
    sh = INT32(6 * (ib % 2))
    return INT32(2 * ((sv >> sh) & INT32(7)) + 1), INT32(2 * ((sv >> (sh + INT32(3))) & INT32(7)) + 1)


# ============================================================================ super-block mat-mul


@cuda.jit(cache=True)
def mm_k32(kind, f0, f1, f2, f3, d, dmin, grid, ksg, kv, xq, xd, xbs, out):
    """Super-block types (``kind``) · Q8_K, in units of 32 elements with two 16-element integer
    scales: (d·xd)·(ls1·Σ + ls2·Σ) per unit; Q2_K subtracts (xd·dmin)·Σ min·bsum."""
    rows = d.shape[0]
    nb = d.shape[1]
    n = xq.shape[0]
    t0 = cuda.blockIdx.y * TT
    nt = min(TT, n - t0)
    sm = cuda.shared.array(SM_F32, np.float32)
    acc = cuda.local.array(TT, np.float32)
    wv = cuda.local.array(32, np.int32)
    ny = cuda.blockDim.y
    for rb in range(cuda.blockIdx.x * ny, rows, cuda.gridDim.x * ny):
        r = rb + cuda.threadIdx.y
        for t in range(TT):
            acc[t] = F32(0.0)
        if r < rows:
            for u in range(cuda.threadIdx.x, nb * 8, cuda.blockDim.x):
                b = u // 8
                ib = u % 8
                ls1, ls2 = _decode(kind, f0, f1, f2, f3, grid, ksg, kv, r, b, ib, wv)
                db = d[r, b]
                o = u * 32
                g = b * 16 + 2 * ib
                for t in range(nt):
                    tt = t0 + t
                    s1 = INT32(0)
                    s2 = INT32(0)
                    for j in range(16):
                        s1 += wv[j] * INT32(xq[tt, o + j])
                        s2 += wv[16 + j] * INT32(xq[tt, o + 16 + j])
                    term = F32(F32(db * xd[tt, b]) * F32(ls1 * s1 + ls2 * s2))
                    if kind == Q2_K:
                        m1 = INT32(f2[r, g]) * INT32(xbs[tt, g])
                        summ = m1 + INT32(f2[r, g + 1]) * INT32(xbs[tt, g + 1])
                        term = F32(term - F32(F32(xd[tt, b] * dmin[r, b]) * F32(summ)))
                    acc[t] += term
        _reduce_store(acc, sm, nt, out, t0, r, rows)
