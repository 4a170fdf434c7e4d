# ruff: noqa: E741  (`l` as in ggml-quants.c, for line-by-line review against the C source)
"""K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): quantize and dequantize, bit-exact with llama.cpp.

Ports of ggml/src/ggml-quants.c. ``ggml_quantize_chunk`` takes ``quantize_row_<t>_ref`` when no
importance matrix is given and ``quantize_row_<t>_impl`` with one (one imatrix value per column).

Every type has two implementations:

- ``ref_quantize_<t>`` / ``ref_dequantize_<t>``: NumPy references, vectorised over blocks;
- Numba kernels (``@njit(parallel=True)``, rows spread over threads with ``prange``, scratch
  buffers allocated once per chunk outside the parallel body), used by ``FORMATS``.

Tests hold both to llama.cpp's bytes and to each other.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import njit, prange

from engine.quant._common import DEQUANT_CHUNK, dequant_in_parallel
from engine.quant._simd import requant
from engine.quant.format import QuantFormat
from engine.quant.kquants_search import (
    F32,
    GROUP_MAX_EPS,
    first_absmax,
    fp16_bits_to_fp32,
    fp32_to_fp16_bits,
    nb_make_q3_quants,
    nb_make_qkx2_quants,
    nb_make_qkx3_quants,
    nb_make_qp_quants,
    nb_make_qx_quants,
    nearest_int,
    np_make_q3_quants,
    np_make_qkx_quants,
    np_make_qp_quants,
    np_make_qx_quants,
    np_nearest_int,
    np_seq_sum,
)

QK_K = 256
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = 10, 11, 12, 13, 14
TYPE_SIZE = {Q2_K: 84, Q3_K: 110, Q4_K: 144, Q5_K: 176, Q6_K: 210}
NAMES = {Q2_K: "Q2_K", Q3_K: "Q3_K", Q4_K: "Q4_K", Q5_K: "Q5_K", Q6_K: "Q6_K"}

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


# =========================================================================== Numba: block kernels


@njit(inline="always", **_JIT)
def _put_fp16(y, off, f):
    """Store fp16(f) little-endian at y[off]; return its float32 value (C's FP16_TO_FP32(FP32_TO_FP16))."""
    h = fp32_to_fp16_bits(f)
    y[off] = np.uint8(h & np.uint16(0xFF))
    y[off + 1] = np.uint8(h >> np.uint16(8))
    return fp16_bits_to_fp32(h)


@njit(inline="always", **_JIT)
def _get_fp16(y, off):
    return fp16_bits_to_fp32(np.uint16(y[off]) | (np.uint16(y[off + 1]) << np.uint16(8)))


@njit(inline="always", **_JIT)
def _scale_min_k4(j, q, off):
    """get_scale_min_k4 on the 12 scale bytes at q[off]."""
    if j < 4:
        return q[off + j] & 63, q[off + j + 4] & 63
    d = (np.int64(q[off + j + 4]) & 0xF) | ((np.int64(q[off + j - 4]) >> 6) << 4)
    m = (np.int64(q[off + j + 4]) >> 4) | ((np.int64(q[off + j]) >> 6) << 4)
    return d, m


@njit(inline="always", **_JIT)
def _pack_scale_min_k4(y, off, j, ls, lm):
    """The 6-bit scale/min packing of Q4_K/Q5_K (uint8 arithmetic as in C)."""
    if j < 4:
        y[off + j] = np.uint8(ls & 0xFF)
        y[off + j + 4] = np.uint8(lm & 0xFF)
    else:
        y[off + j + 4] = np.uint8(((ls & 0xF) | ((lm & 0xF) << 4)) & 0xFF)
        y[off + j - 4] = np.uint8((np.int64(y[off + j - 4]) | ((ls >> 4) << 6)) & 0xFF)
        y[off + j] = np.uint8((np.int64(y[off + j]) | ((lm >> 4) << 6)) & 0xFF)


@njit(inline="always", **_JIT)
def _pack_2bit(y, off, L):
    for j in range(0, QK_K, 128):
        for l in range(32):
            y[off + j // 4 + l] = np.uint8(
                (
                    np.int64(L[j + l])
                    | (np.int64(L[j + l + 32]) << 2)
                    | (np.int64(L[j + l + 64]) << 4)
                    | (np.int64(L[j + l + 96]) << 6)
                )
                & 0xFF
            )


@njit(**_JIT)
def _q2k_block(x, y, qw, use_qw, L, Laux, weights, scales, mins, sw, Ls, Lm, scr):
    if not use_qw:  # quantize_row_q2_K_ref
        max_scale = F32(0.0)
        max_min = F32(0.0)
        for j in range(16):
            xj = x[16 * j : 16 * j + 16]
            for l in range(16):
                weights[l] = abs(xj[l])
            scale, the_min = nb_make_qkx2_quants(
                16, 3, xj, weights, L[16 * j : 16 * j + 16], Laux, F32(-0.5), F32(0.1), 15, True, scr
            )
            scales[j] = scale
            mins[j] = the_min
            if scale > max_scale:
                max_scale = scale
            if the_min > max_min:
                max_min = the_min
        if max_scale > F32(0.0):
            iscale = F32(15.0) / max_scale
            for j in range(16):
                y[j] = np.uint8(nearest_int(iscale * scales[j]) & 0xFF)
            d = _put_fp16(y, 80, max_scale / F32(15.0))
        else:
            for j in range(16):
                y[j] = 0
            d = _put_fp16(y, 80, F32(0.0))
        if max_min > F32(0.0):
            iscale = F32(15.0) / max_min
            for j in range(16):
                y[j] = np.uint8((np.int64(y[j]) | (nearest_int(iscale * mins[j]) << 4)) & 0xFF)
            dmin = _put_fp16(y, 82, max_min / F32(15.0))
        else:
            dmin = _put_fp16(y, 82, F32(0.0))
    else:  # quantize_row_q2_K_impl
        sumx2 = F32(0.0)
        for j in range(QK_K):
            sumx2 += x[j] * x[j]
        sigma2 = sumx2 / F32(QK_K)
        for j in range(16):
            xj = x[16 * j : 16 * j + 16]
            for l in range(16):
                weights[l] = qw[16 * j + l] * np.sqrt(sigma2 + xj[l] * xj[l])
            s = F32(0.0)
            for l in range(16):
                s += weights[l]
            sw[j] = s
            scale, the_min = nb_make_qkx3_quants(
                16, 3, xj, weights, L[16 * j : 16 * j + 16], Laux, F32(-0.9), F32(0.05), 36, False, scr
            )
            scales[j] = scale
            mins[j] = the_min
        dm = nb_make_qp_quants(16, 15, scales, Ls, sw)
        mm = nb_make_qp_quants(16, 15, mins, Lm, sw)
        d = _put_fp16(y, 80, dm)
        dmin = _put_fp16(y, 82, mm)
        for j in range(16):
            y[j] = np.uint8((np.int64(Ls[j]) | (np.int64(Lm[j]) << 4)) & 0xFF)
    for j in range(16):
        dl = d * F32(np.int64(y[j]) & 0xF)
        if dl == F32(0.0):
            continue
        ml = dmin * F32(np.int64(y[j]) >> 4)
        requant(x, 16 * j, ml, dl, 0, 3, 0, L, 16)
    _pack_2bit(y, 16, L)


@njit(**_JIT)
def _q3k_block(x, y, qw, use_qw, L, weights, scales, sw, Ls, scr):
    for k in range(96, 108):
        y[k] = 0
    if not use_qw:  # quantize_row_q3_K_ref
        max_scale = F32(0.0)
        amax = F32(0.0)
        for j in range(16):
            scales[j] = nb_make_q3_quants(16, 4, x[16 * j : 16 * j + 16], L[16 * j : 16 * j + 16], True)
            scale = abs(scales[j])
            if scale > amax:
                amax = scale
                max_scale = scales[j]
        if max_scale != F32(0.0):
            iscale = F32(-32.0) / max_scale
            for j in range(16):
                l = ((nearest_int(iscale * scales[j]) + 128) & 0xFF) - 128  # int8_t l = nearest_int(..)
                l = max(-32, min(31, l)) + 32
                _pack_q3_scale(y, j, l)
            d = _put_fp16(y, 108, F32(1.0) / iscale)
        else:
            d = _put_fp16(y, 108, F32(0.0))
    else:  # quantize_row_q3_K_impl
        sumx2 = F32(0.0)
        for j in range(QK_K):
            sumx2 += x[j] * x[j]
        sigma2 = F32(2.0) * sumx2 / F32(QK_K)
        for j in range(16):
            xj = x[16 * j : 16 * j + 16]
            for l in range(16):
                weights[l] = qw[16 * j + l] * np.sqrt(sigma2 + xj[l] * xj[l])
            s = F32(0.0)
            for l in range(16):
                s += weights[l]
            sw[j] = s
            scales[j] = nb_make_qx_quants(16, 4, xj, L[16 * j : 16 * j + 16], 1, weights, True, scr)
        d_block = nb_make_qx_quants(16, 32, scales, Ls, 1, sw, True, scr)
        for j in range(16):
            _pack_q3_scale(y, j, np.int64(Ls[j]))
        d = _put_fp16(y, 108, d_block)
    for j in range(16):
        dl = d * F32(_q3_scale(y, j))
        if dl == F32(0.0):
            continue
        requant(x, 16 * j, F32(0.0), dl, -4, 3, 4, L, 16)
    # C: element j = 32*k + m with L > 3 sets bit k of hmask[m] and keeps L - 4.  L is in 0..7
    # here, so that is bit 2 of L: split without branches (C's loop mispredicts on random data).
    for m in range(32):
        y[m] = 0
    for k in range(8):
        for m in range(32):
            v = np.int64(L[32 * k + m])
            y[m] = np.uint8(np.int64(y[m]) | (((v >> 2) & 1) << k))
            L[32 * k + m] = np.int8(v & 3)
    _pack_2bit(y, 32, L)


@njit(inline="always", **_JIT)
def _q3_scale(y, j):
    """Signed 6-bit scale j of a Q3_K block (bytes 96..107), as C's requantize/dequantize read it."""
    sc = np.int64(y[96 + j]) & 0xF if j < 8 else np.int64(y[96 + j - 8]) >> 4
    return (sc | (((np.int64(y[96 + 8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32


@njit(inline="always", **_JIT)
def _pack_q3_scale(y, j, l):
    if j < 8:
        y[96 + j] = np.uint8(l & 0xF)
    else:
        y[96 + j - 8] = np.uint8((np.int64(y[96 + j - 8]) | ((l & 0xF) << 4)) & 0xFF)
    l >>= 4
    k = 96 + 8 + j % 4
    y[k] = np.uint8((np.int64(y[k]) | (l << (2 * (j // 4)))) & 0xFF)


@njit(**_JIT)
def _q45k_block(x, y, qw, use_qw, q5, L, Laux, weights, scales, mins, sw, Ls, Lm, scr):
    nmax = 31 if q5 else 15
    if not use_qw:  # quantize_row_q4_K_ref / quantize_row_q5_K_ref
        max_scale = F32(0.0)
        max_min = F32(0.0)
        for j in range(8):
            xj = x[32 * j : 32 * j + 32]
            sum_x2 = F32(0.0)
            for l in range(32):
                sum_x2 += xj[l] * xj[l]
            av_x = np.sqrt(sum_x2 / F32(32.0))
            for l in range(32):
                weights[l] = av_x + abs(xj[l])
            Lj = L[32 * j : 32 * j + 32]
            if q5:
                scale, the_min = nb_make_qkx2_quants(
                    32, 31, xj, weights, Lj, Laux, F32(-0.5), F32(0.1), 15, False, scr
                )
            else:
                scale, the_min = nb_make_qkx2_quants(
                    32, 15, xj, weights, Lj, Laux, F32(-1.0), F32(0.1), 20, False, scr
                )
            scales[j] = scale
            mins[j] = the_min
            if scale > max_scale:
                max_scale = scale
            if the_min > max_min:
                max_min = the_min
        inv_scale = F32(63.0) / max_scale if max_scale > F32(0.0) else F32(0.0)
        inv_min = F32(63.0) / max_min if max_min > F32(0.0) else F32(0.0)
        for j in range(8):
            ls = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
            lm = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
            _pack_scale_min_k4(y, 4, j, ls, lm)
        d = _put_fp16(y, 0, max_scale / F32(63.0))
        dmin = _put_fp16(y, 2, max_min / F32(63.0))
    else:  # quantize_row_q4_K_impl / quantize_row_q5_K_impl
        sum_x2 = F32(0.0)
        for l in range(QK_K):
            sum_x2 += x[l] * x[l]
        sigma2 = F32(2.0) * sum_x2 / F32(QK_K)
        for j in range(8):
            xj = x[32 * j : 32 * j + 32]
            for l in range(32):
                weights[l] = qw[32 * j + l] * np.sqrt(sigma2 + xj[l] * xj[l])
            s = F32(0.0)
            for l in range(32):
                s += weights[l]
            sw[j] = s
            scale, the_min = nb_make_qkx3_quants(
                32, nmax, xj, weights, L[32 * j : 32 * j + 32], Laux, F32(-0.9), F32(0.05), 36, False, scr
            )
            scales[j] = scale
            mins[j] = the_min
        d_block = nb_make_qp_quants(8, 63, scales, Ls, sw)
        m_block = nb_make_qp_quants(8, 63, mins, Lm, sw)
        for j in range(8):
            ls = np.int64(Ls[j])
            lm = np.int64(Lm[j])
            if q5:
                ls = min(63, ls)
                lm = min(63, lm)
            _pack_scale_min_k4(y, 4, j, ls, lm)
        d = _put_fp16(y, 0, d_block)
        dmin = _put_fp16(y, 2, m_block)
    for j in range(8):
        sc, m = _scale_min_k4(j, y, 4)
        dl = d * F32(sc)
        if dl == F32(0.0):
            continue
        dm = dmin * F32(m)
        requant(x, 32 * j, dm, dl, 0, nmax, 0, L, 32)
    if q5:
        for k in range(16, 48):
            y[k] = 0
        m1 = 1
        m2 = 2
        for n in range(0, QK_K, 64):
            qs = 48 + n // 2
            for j in range(32):
                l1 = np.int64(L[n + j])
                if l1 > 15:
                    l1 -= 16
                    y[16 + j] = np.uint8(y[16 + j] | m1)
                l2 = np.int64(L[n + j + 32])
                if l2 > 15:
                    l2 -= 16
                    y[16 + j] = np.uint8(y[16 + j] | m2)
                y[qs + j] = np.uint8(l1 | (l2 << 4))
            m1 <<= 2
            m2 <<= 2
    else:
        for n in range(0, QK_K, 64):
            qs = 16 + n // 2
            for l in range(32):
                y[qs + l] = np.uint8(np.int64(L[n + l]) | (np.int64(L[n + l + 32]) << 4))


@njit(**_JIT)
def _q6k_block(x, y, qw, use_qw, L, scales, scr):
    max_scale = F32(0.0)
    max_abs_scale = F32(0.0)
    for ib in range(16):
        scale = nb_make_qx_quants(
            16,
            32,
            x[16 * ib : 16 * ib + 16],
            L[16 * ib : 16 * ib + 16],
            1,
            qw[16 * ib : 16 * ib + 16],
            use_qw,
            scr,
        )
        scales[ib] = scale
        abs_scale = abs(scale)
        if abs_scale > max_abs_scale:
            max_abs_scale = abs_scale
            max_scale = scale
    if max_abs_scale < GROUP_MAX_EPS:
        for k in range(210):
            y[k] = 0
        return
    iscale = F32(-128.0) / max_scale
    d = _put_fp16(y, 208, F32(1.0) / iscale)
    for ib in range(16):
        y[192 + ib] = np.uint8(min(127, nearest_int(iscale * scales[ib])) & 0xFF)
    for j in range(16):
        sc = np.int64(y[192 + j])
        if sc > 127:
            sc -= 256
        dl = d * F32(sc)
        if dl == F32(0.0):
            continue
        requant(x, 16 * j, F32(0.0), dl, -32, 31, 32, L, 16)
    for h in range(2):
        j = 128 * h
        ql = 64 * h
        qh = 128 + 32 * h
        for l in range(32):
            q1 = L[j + l] & 0xF
            q2 = L[j + l + 32] & 0xF
            q3 = L[j + l + 64] & 0xF
            q4 = L[j + l + 96] & 0xF
            y[ql + l] = np.uint8(q1 | (q3 << 4))
            y[ql + l + 32] = np.uint8(q2 | (q4 << 4))
            y[qh + l] = np.uint8(
                (np.int64(L[j + l]) >> 4)
                | ((np.int64(L[j + l + 32]) >> 4) << 2)
                | ((np.int64(L[j + l + 64]) >> 4) << 4)
                | ((np.int64(L[j + l + 96]) >> 4) << 6)
            )


# =========================================================================== Numba: row drivers


@njit(parallel=True, **_JIT)
def _quantize_rows(kind, x, qw, use_qw, out, nchunks):
    nrows = x.shape[0]
    nb = x.shape[1] // QK_K
    ts = out.shape[1] // nb
    # scratch, one set per chunk, allocated outside the parallel body
    Lu = np.zeros((nchunks, QK_K), np.uint8)
    Li = np.zeros((nchunks, QK_K), np.int8)
    Laux = np.zeros((nchunks, 32), np.uint8)
    weights = np.zeros((nchunks, 32), np.float32)
    scales = np.zeros((nchunks, 16), np.float32)
    mins = np.zeros((nchunks, 16), np.float32)
    sw = np.zeros((nchunks, 16), np.float32)
    Lsu = np.zeros((nchunks, 16), np.uint8)
    Lmu = np.zeros((nchunks, 16), np.uint8)
    Lsi = np.zeros((nchunks, 16), np.int8)
    fscr = np.zeros((nchunks, 3, 32), np.float32)
    for c in prange(nchunks):
        r0 = c * nrows // nchunks
        r1 = (c + 1) * nrows // nchunks
        for r in range(r0, r1):
            for b in range(nb):
                xb = x[r, b * QK_K : (b + 1) * QK_K]
                yb = out[r, b * ts : (b + 1) * ts]
                qb = qw[b * QK_K : (b + 1) * QK_K]
                if kind == Q2_K:
                    _q2k_block(
                        xb,
                        yb,
                        qb,
                        use_qw,
                        Lu[c],
                        Laux[c],
                        weights[c],
                        scales[c],
                        mins[c],
                        sw[c],
                        Lsu[c],
                        Lmu[c],
                        fscr[c],
                    )
                elif kind == Q3_K:
                    _q3k_block(xb, yb, qb, use_qw, Li[c], weights[c], scales[c], sw[c], Lsi[c], fscr[c])
                elif kind == Q6_K:
                    _q6k_block(xb, yb, qb, use_qw, Li[c], scales[c], fscr[c])
                else:
                    q5 = kind == Q5_K
                    _q45k_block(
                        xb,
                        yb,
                        qb,
                        use_qw,
                        q5,
                        Lu[c],
                        Laux[c],
                        weights[c],
                        scales[c],
                        mins[c],
                        sw[c],
                        Lsu[c],
                        Lmu[c],
                        fscr[c],
                    )


@njit(parallel=True, **_JIT)
def _dequantize_blocks(kind, blocks, out):
    """Q2_K and Q3_K, block by block (Q4_K, Q5_K, Q6_K: :func:`_dequant_chunks`)."""
    for i in prange(blocks.shape[0]):
        q = blocks[i]
        y = out[i]
        if kind == Q2_K:
            d = _get_fp16(q, 80)
            dmin = _get_fp16(q, 82)
            for j in range(16):
                dl = d * F32(q[j] & 0xF)
                ml = dmin * F32(np.int64(q[j]) >> 4)
                base = 16 + 32 * (j // 8) + 16 * (j % 2)
                shift = 2 * ((j % 8) // 2)
                for l in range(16):
                    y[16 * j + l] = dl * F32((np.int64(q[base + l]) >> shift) & 3) - ml
        else:  # Q3_K
            d_all = _get_fp16(q, 108)
            for j in range(16):
                dl = d_all * F32(_q3_scale(q, j))
                base = 32 + 32 * (j // 8) + 16 * (j % 2)
                shift = 2 * ((j % 8) // 2)
                mbit = 1 << (j // 2)
                for l in range(16):
                    hm_off = 16 * (j % 2) + l
                    v = np.int64((np.int64(q[base + l]) >> shift) & 3) - (
                        0 if (np.int64(q[hm_off]) & mbit) else 4
                    )
                    y[16 * j + l] = dl * F32(v)


# Dequantizers of chunks of blocks: ``b`` the flat bytes of whole blocks, ``y`` the flat float32
# output.  The element loops run over views indexed from 0, with their length ``n`` (32) passed in
# at run time: with a constant trip count LLVM unrolls them before vectorizing, and the unrolled
# lanes do not vectorize (Numba arrays may alias).  Same float operations as _dequantize_blocks.


@njit(inline="always", **_JIT)
def _q45k_scales(q, d, dmin):
    """The 8 sub-block scales ``d * sc`` and mins ``dmin * m`` of a Q4_K/Q5_K block, as locals."""
    s0, m0 = _scale_min_k4(0, q, 4)
    s1, m1 = _scale_min_k4(1, q, 4)
    s2, m2 = _scale_min_k4(2, q, 4)
    s3, m3 = _scale_min_k4(3, q, 4)
    s4, m4 = _scale_min_k4(4, q, 4)
    s5, m5 = _scale_min_k4(5, q, 4)
    s6, m6 = _scale_min_k4(6, q, 4)
    s7, m7 = _scale_min_k4(7, q, 4)
    return (
        (
            d * F32(s0),
            d * F32(s1),
            d * F32(s2),
            d * F32(s3),
            d * F32(s4),
            d * F32(s5),
            d * F32(s6),
            d * F32(s7),
        ),
        (
            dmin * F32(m0),
            dmin * F32(m1),
            dmin * F32(m2),
            dmin * F32(m3),
            dmin * F32(m4),
            dmin * F32(m5),
            dmin * F32(m6),
            dmin * F32(m7),
        ),
    )


@njit(**_JIT)
def _dequant_q4k(b, y, n):
    """Q4_K: one loop over the 32 byte columns of the 128 nibble bytes; byte l of chunk c gives
    elements 64c + l (low nibble) and 64c + 32 + l (high nibble).  Scales in registers."""
    for i in range(b.shape[0] // 144):
        q = b[144 * i : 144 * (i + 1)]
        (d0, d1, d2, d3, d4, d5, d6, d7), (m0, m1, m2, m3, m4, m5, m6, m7) = _q45k_scales(
            q, _get_fp16(q, 0), _get_fp16(q, 2)
        )
        ql = q[16:144]
        yb = y[QK_K * i : QK_K * (i + 1)]
        for l in range(n):
            q0, q1, q2, q3 = ql[l], ql[32 + l], ql[64 + l], ql[96 + l]
            yb[l] = d0 * F32(q0 & 0xF) - m0
            yb[32 + l] = d1 * F32(q0 >> 4) - m1
            yb[64 + l] = d2 * F32(q1 & 0xF) - m2
            yb[96 + l] = d3 * F32(q1 >> 4) - m3
            yb[128 + l] = d4 * F32(q2 & 0xF) - m4
            yb[160 + l] = d5 * F32(q2 >> 4) - m5
            yb[192 + l] = d6 * F32(q3 & 0xF) - m6
            yb[224 + l] = d7 * F32(q3 >> 4) - m7


@njit(**_JIT)
def _dequant_q5k(b, y, n):
    """Q5_K: as :func:`_dequant_q4k`, with bit j of qh[l] on top of sub-block j's nibble."""
    for i in range(b.shape[0] // 176):
        q = b[176 * i : 176 * (i + 1)]
        (d0, d1, d2, d3, d4, d5, d6, d7), (m0, m1, m2, m3, m4, m5, m6, m7) = _q45k_scales(
            q, _get_fp16(q, 0), _get_fp16(q, 2)
        )
        qh = q[16:48]
        ql = q[48:176]
        yb = y[QK_K * i : QK_K * (i + 1)]
        for l in range(n):
            q0, q1, q2, q3 = ql[l], ql[32 + l], ql[64 + l], ql[96 + l]
            h = qh[l]
            yb[l] = d0 * F32((q0 & 0xF) | ((h & 1) << 4)) - m0
            yb[32 + l] = d1 * F32((q0 >> 4) | (((h >> 1) & 1) << 4)) - m1
            yb[64 + l] = d2 * F32((q1 & 0xF) | (((h >> 2) & 1) << 4)) - m2
            yb[96 + l] = d3 * F32((q1 >> 4) | (((h >> 3) & 1) << 4)) - m3
            yb[128 + l] = d4 * F32((q2 & 0xF) | (((h >> 4) & 1) << 4)) - m4
            yb[160 + l] = d5 * F32((q2 >> 4) | (((h >> 5) & 1) << 4)) - m5
            yb[192 + l] = d6 * F32((q3 & 0xF) | (((h >> 6) & 1) << 4)) - m6
            yb[224 + l] = d7 * F32((q3 >> 4) | (((h >> 7) & 1) << 4)) - m7


@njit(**_JIT)
def _dequant_q6k(b, y, n):
    for i in range(b.shape[0] // 210):
        q = b[210 * i : 210 * (i + 1)]
        d = _get_fp16(q, 208)
        for h in range(2):
            ql0 = q[64 * h : 64 * h + 32]
            ql1 = q[64 * h + 32 : 64 * h + 64]
            qh = q[128 + 32 * h : 128 + 32 * h + 32]
            sc = q[192 + 8 * h : 192 + 8 * h + 8]  # two scales per quarter: elements 0..15, 16..31
            a1, b1 = d * F32(_i8(sc[0])), d * F32(_i8(sc[1]))
            a2, b2 = d * F32(_i8(sc[2])), d * F32(_i8(sc[3]))
            a3, b3 = d * F32(_i8(sc[4])), d * F32(_i8(sc[5]))
            a4, b4 = d * F32(_i8(sc[6])), d * F32(_i8(sc[7]))
            o = QK_K * i + 128 * h
            y1 = y[o : o + 32]
            y2 = y[o + 32 : o + 64]
            y3 = y[o + 64 : o + 96]
            y4 = y[o + 96 : o + 128]
            for l in range(n):
                first = l < 16
                hb = np.int32(qh[l])
                y1[l] = (a1 if first else b1) * F32(np.int32((ql0[l] & 0xF) | ((hb & 3) << 4)) - 32)
                y2[l] = (a2 if first else b2) * F32(np.int32((ql1[l] & 0xF) | (((hb >> 2) & 3) << 4)) - 32)
                y3[l] = (a3 if first else b3) * F32(np.int32((ql0[l] >> 4) | (((hb >> 4) & 3) << 4)) - 32)
                y4[l] = (a4 if first else b4) * F32(np.int32((ql1[l] >> 4) | (((hb >> 6) & 3) << 4)) - 32)


@njit(**_JIT)
def _dequant_plain(kind, b, y, n):
    if kind == Q6_K:
        _dequant_q6k(b, y, n)
    elif kind == Q5_K:
        _dequant_q5k(b, y, n)
    else:
        _dequant_q4k(b, y, n)


@njit(parallel=True, **_JIT)
def _dequant_chunks(kind, b, y, n):
    """Q4_K, Q5_K, Q6_K: chunks of blocks spread over threads, each through a plain function;
    ``n`` = 32 (the length of the element loops, from the caller so that it stays a run-time value)."""
    ts = 176 if kind == Q5_K else (144 if kind == Q4_K else 210)
    nb = b.shape[0] // ts
    cb = DEQUANT_CHUNK // QK_K
    for c in prange((nb + cb - 1) // cb):
        lo = c * cb
        hi = min(nb, lo + cb)
        _dequant_plain(kind, b[lo * ts : hi * ts], y[lo * QK_K : hi * QK_K], n)


@njit(inline="always", **_JIT)
def _i8(b):
    v = np.int64(b)
    return v - 256 if v > 127 else v


# =========================================================================== public kernels


def _chunks(nrows: int) -> int:
    return max(1, min(nrows, 4 * numba.get_num_threads()))


def _quantize(kind: int, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows, ncols = x.shape
    nb = ncols // QK_K
    if imatrix is None:
        qw, use_qw = np.zeros(ncols, np.float32), False
    else:
        qw, use_qw = np.ascontiguousarray(imatrix, dtype=np.float32), True
    out = np.empty((nrows, nb * TYPE_SIZE[kind]), np.uint8)
    if nrows and nb:
        _quantize_rows(kind, x, qw, use_qw, out, _chunks(nrows))
    return out


def _dequantize(kind: int, blocks: np.ndarray) -> np.ndarray:
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, TYPE_SIZE[kind])
    out = np.empty((blocks.shape[0], QK_K), np.float32)
    if not blocks.shape[0]:
        return out
    if kind in (Q4_K, Q5_K, Q6_K):
        run = _dequant_chunks if dequant_in_parallel(out.size) else _dequant_plain
        run(kind, blocks.reshape(-1), out.reshape(-1), 32)
    else:
        _dequantize_blocks(kind, blocks, out)
    return out


def _make_format(kind: int) -> QuantFormat:
    return QuantFormat(
        name=NAMES[kind],
        ggml_id=kind,
        block_size=QK_K,
        type_size=TYPE_SIZE[kind],
        dequantize=lambda blocks: _dequantize(kind, blocks),
        quantize=lambda x, imatrix: _quantize(kind, x, imatrix),
        needs_imatrix=False,
        uses_imatrix=True,
    )


FORMATS: dict[str, QuantFormat] = {NAMES[k]: _make_format(k) for k in (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)}


# =========================================================================== NumPy references


def _f16(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 bytes as (G, 2) uint8, float32 value of the fp16)."""
    h = np.asarray(v, dtype=np.float32).astype(np.float16)
    return h.view(np.uint8).reshape(-1, 2), h.astype(np.float32)


def _seq_max(a: np.ndarray) -> np.ndarray:
    """C's ``if (v > m) m = v`` scan from 0 along the last axis."""
    m = np.zeros(a.shape[0], np.float32)
    for j in range(a.shape[1]):
        m = np.where(a[:, j] > m, a[:, j], m)
    return m


def _pack_2bit_np(L: np.ndarray) -> np.ndarray:
    L = L.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def _unpack_2bit_np(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 2, 1, 32)
    return ((q >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3).reshape(-1, QK_K)


def _pack_scale_min_k4_np(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    ls = ls.astype(np.int64)
    lm = lm.astype(np.int64)
    s = np.zeros((ls.shape[0], 12), np.int64)
    s[:, 0:4] = ls[:, 0:4]
    s[:, 4:8] = lm[:, 0:4]
    s[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    s[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    s[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return (s & 0xFF).astype(np.uint8)


def _unpack_scale_min_k4_np(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = s.astype(np.int64)
    sc = np.empty((s.shape[0], 8), np.int64)
    m = np.empty((s.shape[0], 8), np.int64)
    sc[:, :4] = s[:, 0:4] & 63
    m[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    m[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc, m


def _pack_q3_scales_np(l: np.ndarray) -> np.ndarray:
    l = l.astype(np.int64)
    s = np.zeros((l.shape[0], 12), np.int64)
    s[:, 0:8] = (l[:, 0:8] & 0xF) | ((l[:, 8:16] & 0xF) << 4)
    hi = l >> 4
    for j in range(16):
        s[:, 8 + j % 4] |= hi[:, j] << (2 * (j // 4))
    return (s & 0xFF).astype(np.uint8)


def _unpack_q3_scales_np(s: np.ndarray) -> np.ndarray:
    s = s.astype(np.int64)
    lo = np.concatenate([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], axis=1)
    j = np.arange(16)
    hi = (s[:, 8 + j % 4] >> (2 * (j // 4))) & 3
    return (lo | (hi << 4)) - 32


def _blocks(x: np.ndarray, imatrix: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, int]:
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows = x.shape[0]
    X = x.reshape(-1, QK_K)
    qw = None
    if imatrix is not None:
        qw = np.tile(np.asarray(imatrix, np.float32).reshape(-1, QK_K), (nrows, 1))
    return X, qw, nrows


def _rows(parts: list[np.ndarray], nrows: int) -> np.ndarray:
    return np.concatenate(parts, axis=1).astype(np.uint8).reshape(nrows, -1)


def _requant(X, d, dmin, sc, m, L, nmax, sub):
    """Re-quantize with the fp16-rounded scales; sub-blocks with d*sc == 0 keep the first-pass L."""
    G = X.shape[0]
    dl = (d[:, None] * sc.astype(np.float32)).astype(np.float32)
    ml = (dmin[:, None] * m.astype(np.float32)).astype(np.float32)
    Xs = X.reshape(G, -1, sub)
    l = np.clip(np_nearest_int((Xs + ml[..., None]) / dl[..., None]), 0, nmax)
    return np.where((dl != 0)[..., None], l, L.reshape(G, -1, sub)).reshape(G, QK_K)


def ref_quantize_q2_k(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    X, qw, nrows = _blocks(x, imatrix)
    G = X.shape[0]
    xs = X.reshape(-1, 16)
    with np.errstate(all="ignore"):
        if qw is None:
            scale, the_min, L = np_make_qkx_quants(3, xs, np.abs(xs), -0.5, 0.1, 15, True)
            scales, mins = scale.reshape(G, 16), the_min.reshape(G, 16)
            max_scale, max_min = _seq_max(scales), _seq_max(mins)
            ok_s, ok_m = max_scale > 0, max_min > 0
            ls = np.where(ok_s[:, None], np_nearest_int((F32(15) / max_scale)[:, None] * scales), 0)
            lm = np.where(ok_m[:, None], np_nearest_int((F32(15) / max_min)[:, None] * mins), 0)
            d_b, d = _f16(np.where(ok_s, max_scale / F32(15), F32(0)))
            m_b, dmin = _f16(np.where(ok_m, max_min / F32(15), F32(0)))
        else:
            sigma2 = np_seq_sum(X * X) / F32(QK_K)
            w = qw.reshape(-1, 16) * np.sqrt(np.repeat(sigma2, 16)[:, None] + xs * xs)
            sw = np_seq_sum(w).reshape(G, 16)
            scale, the_min, L = np_make_qkx_quants(3, xs, w, -0.9, 0.05, 36, False)
            dm, ls = np_make_qp_quants(15, scale.reshape(G, 16), sw)
            mm, lm = np_make_qp_quants(15, the_min.reshape(G, 16), sw)
            d_b, d = _f16(dm)
            m_b, dmin = _f16(mm)
        sc_bytes = ((ls & 0xFF) | (lm << 4)) & 0xFF
        L = _requant(X, d, dmin, sc_bytes & 0xF, sc_bytes >> 4, L, 3, 16)
    return _rows([sc_bytes, _pack_2bit_np(L), d_b, m_b], nrows)


def ref_quantize_q3_k(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    X, qw, nrows = _blocks(x, imatrix)
    G = X.shape[0]
    xs = X.reshape(-1, 16)
    with np.errstate(all="ignore"):
        if qw is None:
            scale, L = np_make_q3_quants(4, xs)
            scales = scale.reshape(G, 16)
            max_scale, _ = first_absmax(scales)
            ok = max_scale != 0
            iscale = F32(-32) / max_scale
            l = np_nearest_int(iscale[:, None] * scales)
            l = ((l + 128) & 0xFF) - 128
            l = np.clip(l, -32, 31) + 32
            sc_bytes = np.where(ok[:, None], _pack_q3_scales_np(l), 0).astype(np.uint8)
            d_b, d = _f16(np.where(ok, F32(1) / iscale, F32(0)))
        else:
            sigma2 = F32(2) * np_seq_sum(X * X) / F32(QK_K)
            w = qw.reshape(-1, 16) * np.sqrt(np.repeat(sigma2, 16)[:, None] + xs * xs)
            sw = np_seq_sum(w).reshape(G, 16)
            scale, L = np_make_qx_quants(4, xs, w)
            d_block, ls = np_make_qx_quants(32, scale.reshape(G, 16), sw)
            sc_bytes = _pack_q3_scales_np(ls)
            d_b, d = _f16(d_block)
        dl = (d[:, None] * _unpack_q3_scales_np(sc_bytes).astype(np.float32)).astype(np.float32)
        l = np.clip(np_nearest_int(X.reshape(G, 16, 16) / dl[..., None]), -4, 3) + 4
        L = np.where((dl != 0)[..., None], l, L.reshape(G, 16, 16)).reshape(G, QK_K)
    high = L > 3
    L = np.where(high, L - 4, L)
    hbits = high.reshape(G, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]
    hmask = np.bitwise_or.reduce(hbits, axis=1)
    return _rows([hmask, _pack_2bit_np(L), sc_bytes, d_b], nrows)


def _ref_quantize_q45(x: np.ndarray, imatrix: np.ndarray | None, q5: bool) -> np.ndarray:
    X, qw, nrows = _blocks(x, imatrix)
    G = X.shape[0]
    nmax = 31 if q5 else 15
    xs = X.reshape(-1, 32)
    with np.errstate(all="ignore"):
        if qw is None:
            av_x = np.sqrt(np_seq_sum(xs * xs) / F32(32))
            w = av_x[:, None] + np.abs(xs)
            if q5:
                scale, the_min, L = np_make_qkx_quants(31, xs, w, -0.5, 0.1, 15, False)
            else:
                scale, the_min, L = np_make_qkx_quants(15, xs, w, -1.0, 0.1, 20, False)
            scales, mins = scale.reshape(G, 8), the_min.reshape(G, 8)
            max_scale, max_min = _seq_max(scales), _seq_max(mins)
            inv_s = np.where(max_scale > 0, F32(63) / max_scale, F32(0)).astype(np.float32)
            inv_m = np.where(max_min > 0, F32(63) / max_min, F32(0)).astype(np.float32)
            ls = np.minimum(63, np_nearest_int(inv_s[:, None] * scales) & 0xFF)
            lm = np.minimum(63, np_nearest_int(inv_m[:, None] * mins) & 0xFF)
            d_b, d = _f16(max_scale / F32(63))
            m_b, dmin = _f16(max_min / F32(63))
        else:
            sigma2 = F32(2) * np_seq_sum(X * X) / F32(QK_K)
            w = qw.reshape(-1, 32) * np.sqrt(np.repeat(sigma2, 8)[:, None] + xs * xs)
            sw = np_seq_sum(w).reshape(G, 8)
            scale, the_min, L = np_make_qkx_quants(nmax, xs, w, -0.9, 0.05, 36, False)
            d_block, ls = np_make_qp_quants(63, scale.reshape(G, 8), sw)
            m_block, lm = np_make_qp_quants(63, the_min.reshape(G, 8), sw)
            if q5:
                ls, lm = np.minimum(63, ls), np.minimum(63, lm)
            d_b, d = _f16(d_block)
            m_b, dmin = _f16(m_block)
        sc_bytes = _pack_scale_min_k4_np(ls, lm)
        sc, m = _unpack_scale_min_k4_np(sc_bytes)
        L = _requant(X, d, dmin, sc, m, L, nmax, 32).reshape(G, 4, 2, 32)
    qs = ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).astype(np.uint8).reshape(G, 128)
    parts = [d_b, m_b, sc_bytes]
    if q5:
        hb = (L >> 4).astype(np.uint8) << np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1)
        parts.append(np.bitwise_or.reduce(hb.reshape(G, 8, 32), axis=1))
    return _rows([*parts, qs], nrows)


def ref_quantize_q4_k(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _ref_quantize_q45(x, imatrix, q5=False)


def ref_quantize_q5_k(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return _ref_quantize_q45(x, imatrix, q5=True)


def ref_quantize_q6_k(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    X, qw, nrows = _blocks(x, imatrix)
    G = X.shape[0]
    xs = X.reshape(-1, 16)
    with np.errstate(all="ignore"):
        w = xs * xs if qw is None else qw.reshape(-1, 16)
        scale, L = np_make_qx_quants(32, xs, w)
        scales = scale.reshape(G, 16)
        max_scale, max_abs = first_absmax(scales)
        zero = max_abs < GROUP_MAX_EPS
        iscale = F32(-128) / max_scale
        d_b, d = _f16(np.where(zero, F32(0), F32(1) / iscale))
        sc = np.minimum(127, np_nearest_int(iscale[:, None] * scales))
        sc = ((sc + 128) & 0xFF) - 128  # stored as int8
        dl = (d[:, None] * sc.astype(np.float32)).astype(np.float32)
        l = np.clip(np_nearest_int(X.reshape(G, 16, 16) / dl[..., None]), -32, 31) + 32
        L = np.where((dl != 0)[..., None], l, L.reshape(G, 16, 16)).reshape(G, 2, 4, 32)
    ql = np.concatenate(
        [(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4), (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)],
        axis=2,
    )
    hi = L >> 4
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    out = np.concatenate([ql.reshape(G, 128), qh.reshape(G, 64), sc & 0xFF, d_b.astype(np.int64)], axis=1)
    out[zero] = 0
    return out.astype(np.uint8).reshape(nrows, -1)


def _quiet(fn):
    """Run a reference dequantizer with IEEE warnings off (random bytes decode to inf/nan, as in C)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


def _fp16_at(b: np.ndarray, off: int) -> np.ndarray:
    return np.ascontiguousarray(b[:, off : off + 2]).view(np.float16)[:, 0].astype(np.float32)


@_quiet
def ref_dequantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, 84)
    d, dmin = _fp16_at(b, 80), _fp16_at(b, 82)
    dl = d[:, None] * (b[:, :16] & 0xF).astype(np.float32)
    ml = dmin[:, None] * (b[:, :16] >> 4).astype(np.float32)
    q = _unpack_2bit_np(b[:, 16:80]).reshape(-1, 16, 16).astype(np.float32)
    return (dl[..., None] * q - ml[..., None]).reshape(-1, QK_K)


@_quiet
def ref_dequantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, 110)
    dl = _fp16_at(b, 108)[:, None] * _unpack_q3_scales_np(b[:, 96:108]).astype(np.float32)
    q = _unpack_2bit_np(b[:, 32:96]).astype(np.int64)
    hbit = (b[:, None, 0:32] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = q - 4 * (1 - hbit.reshape(-1, QK_K).astype(np.int64))
    return (dl[..., None] * q.reshape(-1, 16, 16).astype(np.float32)).reshape(-1, QK_K)


@_quiet
def _ref_dequantize_q45(blocks: np.ndarray, q5: bool) -> np.ndarray:
    ts = 176 if q5 else 144
    b = np.asarray(blocks, np.uint8).reshape(-1, ts)
    d, dmin = _fp16_at(b, 0), _fp16_at(b, 2)
    sc, m = _unpack_scale_min_k4_np(b[:, 4:16])
    qs = b[:, ts - 128 :].reshape(-1, 4, 1, 32)
    q = ((qs >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0xF).reshape(-1, 8, 32).astype(np.int64)
    if q5:
        qh = b[:, 16:48]
        q = q + 16 * ((qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1)
    dl = d[:, None] * sc.astype(np.float32)
    ml = dmin[:, None] * m.astype(np.float32)
    return (dl[..., None] * q.astype(np.float32) - ml[..., None]).reshape(-1, QK_K)


def ref_dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    return _ref_dequantize_q45(blocks, q5=False)


def ref_dequantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    return _ref_dequantize_q45(blocks, q5=True)


@_quiet
def ref_dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, 210)
    d = _fp16_at(b, 208)
    ql = b[:, :128].reshape(-1, 2, 2, 32)  # [half][0: ql[l], 1: ql[l+32]][l]
    qh = b[:, 128:192].reshape(-1, 2, 1, 32)
    lo = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    hi = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = (lo.astype(np.int64) | (hi.astype(np.int64) << 4)) - 32
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    dl = d[:, None] * sc
    return (dl.reshape(-1, 16, 1) * q.reshape(-1, 16, 16).astype(np.float32)).reshape(-1, QK_K)


REF_QUANTIZE = {
    "Q2_K": ref_quantize_q2_k,
    "Q3_K": ref_quantize_q3_k,
    "Q4_K": ref_quantize_q4_k,
    "Q5_K": ref_quantize_q5_k,
    "Q6_K": ref_quantize_q6_k,
}
REF_DEQUANTIZE = {
    "Q2_K": ref_dequantize_q2_k,
    "Q3_K": ref_dequantize_q3_k,
    "Q4_K": ref_dequantize_q4_k,
    "Q5_K": ref_dequantize_q5_k,
    "Q6_K": ref_dequantize_q6_k,
}
