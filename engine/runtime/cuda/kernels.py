"""CUDA kernels (numba-cuda) for the GPU layers: activation quantization, quantized mat-vec/mat-mul
on the repacked blocks, RMSNorm, RoPE (NEOX), GELU-tanh gating, attention over an f16 KV cache
with a sliding window, soft-capping and argmax.

Every kernel follows the arithmetic of its CPU counterpart in :mod:`engine.runtime.kernels`:
activations are quantized per block exactly as the CPU does (Q8_0 / Q8_K, same rounding), block
dot products are exact integer sums, then scaled in f32; element-wise ops use the same f32/f64
steps.  Results agree with the CPU kernels to f32 rounding (summation order across blocks differs;
on a real GPU the compiler may also fuse multiply-adds).

Arithmetic is written with explicit ``np.float32``/``np.float64``/``np.int32`` conversions so that
the compiled kernels and the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, NumPy scalar rules)
compute the same thing.  fp16 conversions are done with ``math.frexp`` and a table of powers of two (round to
nearest even, like ggml's and NumPy's), so no fp16 hardware intrinsic is needed.

Launch shapes come from :class:`Launch`: on a GPU 32 lanes per row and many blocks; on the
simulator (where every thread is a Python thread) one or two lanes and a single block, with the
same grid-stride loops, so the tests exercise the same code.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

import engine._jit  # noqa: F401  (Numba's cache keyed by the kernels' sources, before any cache=True)

TT = 8  # tokens per mat-mul tile (weights decoded once per tile)
SM_F32 = 2048  # shared f32 scratch: TT x (lanes x rows per block) <= 8 x 256
SM_F64 = 256
INT32 = np.int32
F32 = np.float32
F64 = np.float64
# 2**(e - 25) for a half's biased exponent e (1..30); index 1 also scales subnormals (2**-24)
POW2_HALF = np.array([2.0 ** (e - 25) for e in range(32)], np.float64)

# ============================================================================ device helpers


@cuda.jit(device=True)
def rne(y):
    """Round a non-negative float64 to the nearest integer, ties to even (float64)."""
    f = F64(np.int64(y))
    d = y - f
    if d > 0.5 or (d == 0.5 and (np.int64(f) & 1) == 1):
        f += 1.0
    return f


@cuda.jit(device=True)
def rint_f(p):
    """np.rint of a float value, as float64."""
    s = F64(p)
    if s < 0:
        return -rne(-s)
    return rne(s)


@cuda.jit(device=True)
def f16_bits(v):
    """float32 -> IEEE half bits (int32), round to nearest even; NaN -> 0x7E00."""
    x = F64(v)
    sign = INT32(0)
    if x < 0 or (x == 0 and math.copysign(1.0, x) < 0):
        sign = INT32(0x8000)
        x = -x
    if x != x:
        return INT32(0x7E00)
    if x >= 65520.0:
        return sign | INT32(0x7C00)
    if x < 6.103515625e-05:  # 2**-14: subnormal halves, quantum 2**-24
        return sign | INT32(rne(x * 16777216.0))
    m, e = math.frexp(x)  # x = m * 2**e, 0.5 <= m < 1
    r = rne(m * 2048.0)
    ee = INT32(e) - INT32(1)
    if r >= 2048.0:
        r = 1024.0
        ee += INT32(1)
    if ee + 15 >= 31:
        return sign | INT32(0x7C00)
    return sign | ((ee + INT32(15)) << INT32(10)) | (INT32(r) - INT32(1024))


@cuda.jit(device=True)
def f16_value(b):
    """IEEE half bits -> float32 (exact)."""
    b = INT32(b)
    e = (b >> INT32(10)) & INT32(31)
    f = b & INT32(1023)
    if e == 0:
        v = F64(f) * POW2_HALF[1]
    elif e == 31:
        v = math.inf if f == 0 else math.nan
    else:
        v = F64(f + INT32(1024)) * POW2_HALF[e]
    if b & INT32(0x8000):
        v = -v
    return F32(v)


@cuda.jit(device=True)
def f16_round(v):
    return f16_value(f16_bits(v))


@cuda.jit(device=True)
def _reduce_store(acc, sm, nt, out, t0, r, rows):
    """Sum ``acc[0:nt]`` over the lanes (threadIdx.x) of each row (threadIdx.y) and store lane 0's
    total at ``out[t0 + t, r]``.  Every thread of the block must call it (it synchronizes)."""
    lane = cuda.threadIdx.x
    nl = cuda.blockDim.x
    ty = cuda.threadIdx.y
    ny = cuda.blockDim.y
    if nl == 1:
        if r < rows:
            for t in range(nt):
                out[t0 + t, r] = acc[t]
        return
    for t in range(TT):
        sm[(t * ny + ty) * nl + lane] = acc[t]
    cuda.syncthreads()
    stride = nl // 2
    while stride > 0:
        if lane < stride:
            for t in range(TT):
                i = (t * ny + ty) * nl + lane
                sm[i] = sm[i] + sm[i + stride]
        cuda.syncthreads()
        stride //= 2
    if lane == 0 and r < rows:
        for t in range(nt):
            out[t0 + t, r] = sm[(t * ny + ty) * nl]
    cuda.syncthreads()


# ============================================================================ activation quantization


@cuda.jit(device=True)
def q8_0_block(x, t, b, q, d):
    """quantize_q8_0 of block ``b`` (32 elements) of row ``t`` of x into q, d."""
    o = b * 32
    amax = F32(0.0)
    for j in range(32):
        a = abs(x[t, o + j])
        if a > amax:
            amax = a
    d[t, b] = f16_round(F32(amax / F32(127.0)))
    idd = F32(0.0)
    if amax != 0:
        idd = F32(F32(127.0) / amax)
    for j in range(32):
        q[t, o + j] = np.int8(rint_f(F32(x[t, o + j] * idd)))


@cuda.jit(device=True)
def q8_k_block(x, t, b, q, d, bs):
    """quantize_q8_k of super-block ``b`` (256 elements) of row ``t`` of x into q, d, bsums."""
    o = b * 256
    amax = F32(0.0)
    vmax = F32(0.0)
    for j in range(256):
        a = abs(x[t, o + j])
        if a > amax:
            amax = a
            vmax = x[t, o + j]
    if amax == 0:
        d[t, b] = F32(0.0)
        for j in range(256):
            q[t, o + j] = np.int8(0)
    else:
        iscale = F32(F32(-127.0) / vmax)
        for j in range(256):
            v = rint_f(F32(iscale * x[t, o + j]))
            q[t, o + j] = np.int8(min(127.0, v))
        d[t, b] = F32(F32(1.0) / iscale)
    for g in range(16):
        s = INT32(0)
        for j in range(16):
            s += INT32(q[t, o + 16 * g + j])
        bs[t, b * 16 + g] = s


@cuda.jit(cache=True)
def quant_q8_0(x, q, d):
    """x (n, K) f32 -> q int8 (n, K), d f32 (n, K/32): quantize_q8_0 (one thread per block)."""
    n = x.shape[0]
    nb = x.shape[1] // 32
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, n * nb, step):
        q8_0_block(x, i // nb, i % nb, q, d)


@cuda.jit(cache=True)
def quant_q8_k(x, q, d, bs):
    """x (n, K) f32 -> q int8, d f32 (n, K/256), bsums int32 (n, K/16): quantize_q8_k."""
    n = x.shape[0]
    nb = x.shape[1] // 256
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, n * nb, step):
        q8_k_block(x, i // nb, i % nb, q, d, bs)


# ============================================================================ quantized mat-mul
#
# Grid: x over row groups (grid-stride), y over token tiles of TT.  Block: x = lanes that split a
# row's units (32-element blocks, or 64-element quarters of a K-quant super-block), y = rows.
# A thread decodes a unit's weights once into ``wv`` and dots them with every token of the tile.


@cuda.jit(cache=True)
def mm_q8_0(qs, d, xq, xd, out):
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
                db = d[r, b]
                for j in range(32):
                    wv[j] = INT32(qs[r, b * 32 + j])
                for t in range(nt):
                    s = INT32(0)
                    for j in range(32):
                        s += wv[j] * INT32(xq[t0 + t, b * 32 + j])
                    acc[t] += F32(s) * F32(db * xd[t0 + t, b])
        _reduce_store(acc, sm, nt, out, t0, r, rows)


@cuda.jit(cache=True)
def mm_q4_0(qs, d, xq, xd, out):
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
                db = d[r, b]
                for j in range(16):
                    v = INT32(qs[r, b * 16 + j])
                    wv[j] = (v & INT32(15)) - INT32(8)
                    wv[j + 16] = (v >> INT32(4)) - INT32(8)
                for t in range(nt):
                    s = INT32(0)
                    for j in range(32):
                        s += wv[j] * INT32(xq[t0 + t, b * 32 + j])
                    acc[t] += F32(s) * F32(db * xd[t0 + t, b])
        _reduce_store(acc, sm, nt, out, t0, r, rows)


@cuda.jit(cache=True)
def mm_q5_0(qs, qh, d, xq, xd, out):
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
                db = d[r, b]
                h = np.int64(qh[r, b])
                for j in range(16):
                    v = INT32(qs[r, b * 16 + j])
                    lo = INT32((v & INT32(15)) | INT32(((h >> j) & 1) << 4))
                    hi = INT32((v >> INT32(4)) | INT32(((h >> (j + 16)) & 1) << 4))
                    wv[j] = lo - INT32(16)
                    wv[j + 16] = hi - INT32(16)
                for t in range(nt):
                    s = INT32(0)
                    for j in range(32):
                        s += wv[j] * INT32(xq[t0 + t, b * 32 + j])
                    acc[t] += F32(s) * F32(db * xd[t0 + t, b])
        _reduce_store(acc, sm, nt, out, t0, r, rows)


@cuda.jit(cache=True)
def mm_qk(qs, sc, mn, d, dmin, qh, has_qh, xq, xd, xbs, out):
    """Q4_K (``has_qh`` False) and Q5_K: units are the 4 quarters (64 elements, 2 scales) of a
    super-block."""
    rows = qs.shape[0]
    nb = d.shape[1]
    n = xq.shape[0]
    t0 = cuda.blockIdx.y * TT
    nt = min(TT, n - t0)
    sm = cuda.shared.array(SM_F32, np.float32)
    acc = cuda.local.array(TT, np.float32)
    wv = cuda.local.array(64, np.int32)
    ny = cuda.blockDim.y
    for rb in range(cuda.blockIdx.x * ny, rows, cuda.gridDim.x * ny):
        r = rb + cuda.threadIdx.y
        for t in range(TT):
            acc[t] = F32(0.0)
        if r < rows:
            for u in range(cuda.threadIdx.x, nb * 4, cuda.blockDim.x):
                b = u // 4
                c = u % 4
                for li in range(32):
                    v = INT32(qs[r, b * 128 + 32 * c + li])
                    lo = v & INT32(15)
                    hi = v >> INT32(4)
                    if has_qh:
                        hb = INT32(qh[r, b * 32 + li])
                        lo |= ((hb >> INT32(2 * c)) & INT32(1)) << INT32(4)
                        hi |= ((hb >> INT32(2 * c + 1)) & INT32(1)) << INT32(4)
                    wv[li] = lo
                    wv[32 + li] = hi
                sc1 = INT32(sc[r, b * 8 + 2 * c])
                sc2 = INT32(sc[r, b * 8 + 2 * c + 1])
                m1 = INT32(mn[r, b * 8 + 2 * c])
                m2 = INT32(mn[r, b * 8 + 2 * c + 1])
                db = d[r, b]
                dm = dmin[r, b]
                o = b * 256 + 64 * c
                for t in range(nt):
                    tt = t0 + t
                    slo = INT32(0)
                    shi = INT32(0)
                    for li in range(32):
                        slo += wv[li] * INT32(xq[tt, o + li])
                        shi += wv[32 + li] * INT32(xq[tt, o + 32 + li])
                    sumi = sc1 * slo + sc2 * shi
                    k = b * 16 + 4 * c
                    summ = m1 * (INT32(xbs[tt, k]) + INT32(xbs[tt, k + 1])) + m2 * (
                        INT32(xbs[tt, k + 2]) + INT32(xbs[tt, k + 3])
                    )
                    acc[t] += F32(xd[tt, b] * F32(F32(db * F32(sumi)) - F32(dm * F32(summ))))
        _reduce_store(acc, sm, nt, out, t0, r, rows)


@cuda.jit(cache=True)
def mm_q6_k(ql, qh, sc, d, xq, xd, out):
    """Q6_K: units are (half, 16-lane group) quarters of a super-block (64 elements, 4 scales)."""
    rows = ql.shape[0]
    nb = d.shape[1]
    n = xq.shape[0]
    t0 = cuda.blockIdx.y * TT
    nt = min(TT, n - t0)
    sm = cuda.shared.array(SM_F32, np.float32)
    acc = cuda.local.array(TT, np.float32)
    wv = cuda.local.array(64, np.int32)
    ny = cuda.blockDim.y
    for rb in range(cuda.blockIdx.x * ny, rows, cuda.gridDim.x * ny):
        r = rb + cuda.threadIdx.y
        for t in range(TT):
            acc[t] = F32(0.0)
        if r < rows:
            for u in range(cuda.threadIdx.x, nb * 4, cuda.blockDim.x):
                b = u // 4
                h = (u % 4) // 2
                g = u % 2
                for m in range(16):
                    li = 16 * g + m
                    a = INT32(ql[r, b * 128 + 64 * h + li])
                    a2 = INT32(ql[r, b * 128 + 64 * h + 32 + li])
                    hb = INT32(qh[r, b * 64 + 32 * h + li])
                    wv[m] = ((a & INT32(15)) | ((hb & INT32(3)) << INT32(4))) - INT32(32)
                    wv[16 + m] = ((a2 & INT32(15)) | (((hb >> INT32(2)) & INT32(3)) << INT32(4))) - INT32(32)
                    wv[32 + m] = ((a >> INT32(4)) | (((hb >> INT32(4)) & INT32(3)) << INT32(4))) - INT32(32)
                    wv[48 + m] = ((a2 >> INT32(4)) | (((hb >> INT32(6)) & INT32(3)) << INT32(4))) - INT32(32)
                s0 = b * 16 + 8 * h + g
                c1 = INT32(sc[r, s0])
                c2 = INT32(sc[r, s0 + 2])
                c3 = INT32(sc[r, s0 + 4])
                c4 = INT32(sc[r, s0 + 6])
                db = d[r, b]
                e = b * 256 + 128 * h + 16 * g
                for t in range(nt):
                    tt = t0 + t
                    s1 = INT32(0)
                    s2 = INT32(0)
                    s3 = INT32(0)
                    s4 = INT32(0)
                    for m in range(16):
                        s1 += wv[m] * INT32(xq[tt, e + m])
                        s2 += wv[16 + m] * INT32(xq[tt, e + 32 + m])
                        s3 += wv[32 + m] * INT32(xq[tt, e + 64 + m])
                        s4 += wv[48 + m] * INT32(xq[tt, e + 96 + m])
                    sumi = c1 * s1 + c2 * s2 + c3 * s3 + c4 * s4
                    acc[t] += F32(F32(xd[tt, b] * db) * F32(sumi))
        _reduce_store(acc, sm, nt, out, t0, r, rows)


# ============================================================================ element-wise and per-row ops


@cuda.jit(cache=True)
def rmsnorm_rows(x, w, eps, out, res):
    """out = rmsnorm(x) * w, or out = res + rmsnorm(x) * w when ``res`` has rows (x: rows, n).
    One block per row (grid-stride); the sum of squares is float64 as on the CPU."""
    rows = x.shape[0]
    n = x.shape[1]
    tid = cuda.threadIdx.x
    nth = cuda.blockDim.x
    sm = cuda.shared.array(SM_F64, np.float64)
    add = res.shape[0] == rows
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        s = F64(0.0)
        for i in range(tid, n, nth):
            v = x[r, i]
            s += F64(F32(v * v))
        if nth > 1:
            sm[tid] = s
            cuda.syncthreads()
            stride = nth // 2
            while stride > 0:
                if tid < stride:
                    sm[tid] = sm[tid] + sm[tid + stride]
                cuda.syncthreads()
                stride //= 2
            s = sm[0]
            cuda.syncthreads()
        mean = F32(s / n)
        scale = F32(F32(1.0) / F32(math.sqrt(F32(mean + eps))))
        for i in range(tid, n, nth):
            y = F32(F32(x[r, i] * scale) * w[i])
            if add:
                y = F32(res[r, i] + y)
            out[r, i] = y


@cuda.jit(cache=True)
def rope_neox(x, positions, theta_scale, freq_scale, scale, round_f16):
    """Rotate x (n, heads, d) in place (NEOX pairs i, i + d/2), ggml's angle recurrence; then
    x *= scale and, with ``round_f16``, round to fp16 (what the query gets before K·Q)."""
    n = x.shape[0]
    nh = x.shape[1]
    d = x.shape[2]
    half = d // 2
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for k in range(start, n * half, step):
        t = k // half
        i = k % half
        theta = F32(positions[t])
        for _ in range(i):
            theta = F32(theta * theta_scale)
        ang = F32(F64(freq_scale) * F64(theta))
        c = F32(math.cos(F64(ang)))
        s = F32(math.sin(F64(ang)))
        for h in range(nh):
            x0 = x[t, h, i]
            x1 = x[t, h, i + half]
            y0 = F32(F32(x0 * c) - F32(x1 * s))
            y1 = F32(F32(x0 * s) + F32(x1 * c))
            if scale != 1.0:
                y0 = F32(y0 * scale)
                y1 = F32(y1 * scale)
            if round_f16:
                y0 = f16_round(y0)
                y1 = f16_round(y1)
            x[t, h, i] = y0
            x[t, h, i + half] = y1


@cuda.jit(device=True)
def _gelu(v):
    """engine.runtime.kernels.ops._gelu1: f32, tanhf, and the fused 1 + (A·v)·v of llama.cpp's build."""
    inner = F32(cuda.fma(F32(F32(0.044715) * v), v, F32(1.0)))
    t = F32(math.tanh(F32(F32(F32(0.7978845608028654) * v) * inner)))
    return F32(F32(F32(0.5) * v) * F32(F32(1.0) + t))


@cuda.jit(cache=True)
def geglu(gate, up, out, fp16_table):
    """out = gelu_tanh(gate) * up; ``fp16_table`` mimics ggml's fp16 GELU table."""
    rows = gate.shape[0]
    n = gate.shape[1]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for k in range(start, rows * n, step):
        r = k // n
        i = k % n
        v = gate[r, i]
        if fp16_table:
            if v <= F32(-10.0):
                g = F32(0.0)
            elif v >= F32(10.0):
                g = v
            else:
                g = f16_round(_gelu(f16_round(v)))
        else:
            g = _gelu(v)
        out[r, i] = F32(g * up[r, i])


@cuda.jit(cache=True)
def softcap(x, c):
    """x = tanh(x / c) * c in place (Gemma's final logit soft-capping)."""
    rows = x.shape[0]
    n = x.shape[1]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for k in range(start, rows * n, step):
        r = k // n
        i = k % n
        x[r, i] = F32(F32(math.tanh(F64(F32(x[r, i] / c)))) * c)


# ---------------------------------------------------------------------------- the top-k pick
# The k largest logits of a row, best first, in the host sampler's order (engine/runtime/sampling.py:
# larger value first, the smaller index on a tie, which is also NumPy's argmax for k = 1), so that
# only they, not the whole row, go back to the host.  k rounds of a (value, index) arg-max, each over
# what comes after the previous pick in that order (so nothing is marked or copied); first per block
# over a grid-stride share of the row (top_partial), then over the blocks' picks (top_final).


@cuda.jit(device=True)
def _before(v, i, bv, bi):
    """(v, i) comes before (bv, bi) in the pick order; index -1 is no candidate."""
    return i >= 0 and (bi < 0 or v > bv or (v == bv and i < bi))


@cuda.jit(device=True)
def _after(v, i, lv, li, first):
    """(v, i) is still to pick after the last pick (lv, li) (everything is, in the first round)."""
    return first or v < lv or (v == lv and i > li)


@cuda.jit(device=True)
def _best_in_block(smv, smi, smb, v, i, bad, tid, nth):
    """(value, index, NaN seen) of the block: the first in the pick order of the threads' ``(v, i)``,
    and their ``bad`` flags or-ed; a tree reduction in shared memory (``nth`` a power of two).  The
    caller syncs the block before it calls again (every thread reads slot 0 first)."""
    smv[tid] = v
    smi[tid] = i
    smb[tid] = bad
    cuda.syncthreads()
    stride = nth // 2
    while stride > 0:
        if tid < stride:
            ov = smv[tid + stride]
            oi = smi[tid + stride]
            if _before(ov, oi, smv[tid], smi[tid]):
                smv[tid] = ov
                smi[tid] = oi
            smb[tid] = smb[tid] | smb[tid + stride]
        cuda.syncthreads()
        stride //= 2
    return smv[0], smi[0], smb[0]


@cuda.jit(cache=True)
def top_partial(x, k, pv, pi, pb):
    """First pass of the top-``k`` pick over ``x`` (1, n) f32: block b writes the first ``k`` of the
    elements its threads visit, in the pick order, to ``pv[b, :k]``, ``pi[b, :k]`` (index -1 once
    they run out), and whether a NaN was among them to ``pb[b]`` (NaNs are never picked)."""
    n = x.shape[1]
    tid = cuda.threadIdx.x
    nth = cuda.blockDim.x
    b = cuda.blockIdx.x
    smv = cuda.shared.array(SM_F64, np.float32)
    smi = cuda.shared.array(SM_F64, np.int32)
    smb = cuda.shared.array(SM_F64, np.int32)
    lv = F32(0.0)
    li = INT32(-1)
    bad = INT32(0)
    for r in range(k):
        best = F32(-math.inf)
        bi = INT32(-1)
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            v = x[0, i]
            if v != v:
                bad = INT32(1)
            elif _after(v, i, lv, li, r == 0) and (bi < 0 or v > best):  # a thread's indices increase
                best = v
                bi = INT32(i)
        lv, li, seen = _best_in_block(smv, smi, smb, best, bi, bad, tid, nth)
        if tid == 0:
            pv[b, r] = lv
            pi[b, r] = li
            pb[b] = seen
        cuda.syncthreads()  # slot 0 read by every thread before the next round writes it
        if li < 0:  # nothing left here (the same for every thread of the block)
            if tid == 0:
                for rr in range(r + 1, k):
                    pi[b, rr] = INT32(-1)
            break


@cuda.jit(cache=True)
def top_final(pv, pi, pb, k, out, vals):
    """Second pass (one block) over the picks of :func:`top_partial`: ``out[1 + r]`` = the index
    and ``vals[r]`` the value of the r-th of the ``k`` best logits; ``out[0]`` = 1 where the host
    sampler must see the logits instead (it rejects them): a NaN anywhere, or a largest value of
    +inf, or only -inf."""
    tid = cuda.threadIdx.x
    nth = cuda.blockDim.x
    smv = cuda.shared.array(SM_F64, np.float32)
    smi = cuda.shared.array(SM_F64, np.int32)
    smb = cuda.shared.array(SM_F64, np.int32)
    nc = pv.shape[0] * k
    bad = INT32(0)
    for b in range(tid, pv.shape[0], nth):
        bad = bad | pb[b]
    lv = F32(0.0)
    li = INT32(-1)
    for r in range(k):
        best = F32(-math.inf)
        bi = INT32(-1)
        for c in range(tid, nc, nth):
            v = pv[c // k, c % k]
            i = pi[c // k, c % k]
            if i >= 0 and _after(v, i, lv, li, r == 0) and _before(v, i, best, bi):
                best = v
                bi = i
        lv, li, seen = _best_in_block(smv, smi, smb, best, bi, bad, tid, nth)
        if tid == 0:
            out[1 + r] = li
            vals[r] = lv
            if r == 0:
                out[0] = 1 if (seen != 0 or li < 0 or lv == math.inf or lv == -math.inf) else 0
        cuda.syncthreads()
        cuda.syncthreads()


# ============================================================================ KV cache and attention


@cuda.jit(cache=True)
def kv_write(k, v, kc, vc, slot_pos, start_pos):
    """Store k, v (n, Hkv, D) f32 as fp16 bits into the cache (slots, Hkv, D) at slot pos % slots."""
    n = k.shape[0]
    nkv = k.shape[1]
    dd = k.shape[2]
    ns = kc.shape[0]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for idx in range(start, n * nkv * dd, step):
        t = idx // (nkv * dd)
        h = (idx // dd) % nkv
        j = idx % dd
        pos = start_pos + t
        s = pos % ns
        kc[s, h, j] = np.uint16(f16_bits(k[t, h, j]))
        vc[s, h, j] = np.uint16(f16_bits(v[t, h, j]))
        if h == 0 and j == 0:
            slot_pos[s] = pos


@cuda.jit(cache=True)
def kv_truncate(slot_pos, n_past):
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for s in range(start, slot_pos.shape[0], step):
        if slot_pos[s] >= n_past:
            slot_pos[s] = -1


@cuda.jit(device=True)
def attend(q, kc, vc, slot_pos, ns, qpos, window, round_f16, scores, out, i, smf):
    """Row ``i`` (query t, head h) of :func:`attention`: the block's threads split slots, then
    output dimensions; ends with a barrier, out[t, h] complete."""
    nh = q.shape[1]
    d = q.shape[2]
    nkv = kc.shape[1]
    group = nh // nkv
    tid = cuda.threadIdx.x
    nth = cuda.blockDim.x
    t = i // nh
    h = i % nh
    kh = h // group
    p = qpos[t]
    m = -math.inf
    for s in range(tid, ns, nth):
        sp = slot_pos[s]
        if sp < 0 or sp > p or (window > 0 and p - sp >= window):
            scores[i, s] = -math.inf
            continue
        acc = F32(0.0)
        for j in range(d):
            acc = F32(acc + F32(q[t, h, j] * f16_value(kc[s, kh, j])))
        scores[i, s] = acc
        if acc > m:
            m = acc
    if nth > 1:
        smf[tid] = m
        cuda.syncthreads()
        stride = nth // 2
        while stride > 0:
            if tid < stride and smf[tid + stride] > smf[tid]:
                smf[tid] = smf[tid + stride]
            cuda.syncthreads()
            stride //= 2
        m = smf[0]
        cuda.syncthreads()
    mf = F32(m)
    total = F64(0.0)
    for s in range(tid, ns, nth):
        sc = scores[i, s]
        if sc != -math.inf:
            e = F32(math.exp(F64(F32(sc - mf))))
            scores[i, s] = e
            total += F64(e)
        else:
            scores[i, s] = F32(0.0)
    if nth > 1:
        smf[tid] = total
        cuda.syncthreads()
        stride = nth // 2
        while stride > 0:
            if tid < stride:
                smf[tid] = smf[tid] + smf[tid + stride]
            cuda.syncthreads()
            stride //= 2
        total = smf[0]
    cuda.syncthreads()
    inv = F32(1.0 / total)
    for j in range(tid, d, nth):
        acc = F32(0.0)
        for s in range(ns):
            e = scores[i, s]
            if e != 0:
                pr = F32(e * inv)
                if round_f16:
                    pr = f16_round(pr)
                acc = F32(acc + F32(pr * f16_value(vc[s, kh, j])))
        out[t, h, j] = acc
    cuda.syncthreads()


@cuda.jit(device=True, inline=True)
def filled_slots(ns, kc, qpos):
    """``ns``, or when it is negative the slots one token at position qpos[0] sees filled:
    min(slots, pos + 1) (read on the device, so that a captured CUDA graph serves every token)."""
    if ns >= 0:
        return ns
    return min(kc.shape[0], qpos[0] + 1)


@cuda.jit(cache=True)
def attention(q, kc, vc, slot_pos, ns, qpos, window, round_f16, scores, out):
    """engine.runtime.kernels.attention over the first ``ns`` slots of an fp16 cache (``ns < 0``:
    one token, the slots filled at its position qpos[0]).
    q (n, H, D) f32 pre-scaled; scores (n*H, >= ns) f32 scratch; out (n, H, D).
    One block per (query, head) (grid-stride); threads split slots, then output dimensions."""
    ns = filled_slots(ns, kc, qpos)
    smf = cuda.shared.array(SM_F64, np.float64)
    for i in range(cuda.blockIdx.x, q.shape[0] * q.shape[1], cuda.gridDim.x):
        attend(q, kc, vc, slot_pos, ns, qpos, window, round_f16, scores, out, i, smf)
