"""Legacy 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

Ports of llama.cpp's ggml-quants.c as reached through ``ggml_quantize_chunk``:
without an importance matrix ``quantize_row_q*_ref``; with one ``quantize_row_q4_0_impl`` /
``q5_0`` (``make_qx_quants``, rmse_type 1, weights ``qw * sqrt(sigma2 + x^2)``) and
``q4_1`` / ``q5_1`` (``make_qkx3_quants``, rmin -0.9, rdelta 0.05, 36 steps).  Q8_0 ignores
the importance matrix, as llama.cpp does.

Each type has a Numba kernel (``FORMATS``, multi-threaded over rows: without an importance matrix
a vector loop per row, :mod:`engine.quant._simd_rows`; with one block by block) and a vectorized
NumPy reference (``REFERENCE``, vectorized over blocks, sequential over a block's elements in C
order); the tests hold them equal to each other and to llama.cpp's bytes.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.quant._common import (
    DEQUANT_CHUNK,
    INLINE,
    KERNEL,
    check_finite,
    dequant_in_parallel,
    dequant_output,
    f16_bits_to_f32,
    f32_to_f16_bits,
    get_u16,
    nearest_int,
    nonfinite_error,
    np_f32_to_f16_bits,
    np_nearest_int,
    np_roundf,
    np_trunc_i8,
    np_trunc_i32,
    np_u16_bytes,
    put_u16,
)
from engine.quant._simd import qkx_errors, qkx_products, qx_products
from engine.quant._simd_rows import q4_0_row, q4_1_row, q5_0_row, q5_1_row, q8_0_row
from engine.quant.format import QuantFormat

QK = 32
GROUP_MAX_EPS = np.float32(1e-15)
FLT_MAX = np.float32(np.finfo(np.float32).max)

# ============================================================================ Numba helpers


@njit(**INLINE)
def _row_sigma2(x):
    s = np.float32(0.0)
    for j in range(x.shape[0]):
        s = np.float32(s + np.float32(x[j] * x[j]))
    return np.float32(s / np.float32(x.shape[0]))


@njit(**INLINE)
def _block_weights(x, o, im, sigma2, weight):
    for j in range(QK):
        xj = x[o + j]
        weight[j] = np.float32(im[o + j] * np.float32(np.sqrt(np.float32(sigma2 + np.float32(xj * xj)))))


@njit(**INLINE)
def _make_qx_quants_w(n, nmax, x, o, L, w, scr):
    """make_qx_quants(n, nmax, x+o, L, rmse_type=1, qw=w): returns the scale; L in [0, 2*nmax).

    ``scr``: float32 (>= 2, >= n) scratch for the trial terms (computed 8 lanes at a time).
    """
    vmax = np.float32(0.0)
    amax = np.float32(0.0)
    for i in range(n):
        ax = np.float32(abs(x[o + i]))
        if ax > amax:
            amax = ax
            vmax = x[o + i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return np.float32(0.0)
    iscale = np.float32(np.float32(-nmax) / vmax)
    sumlx = np.float32(0.0)
    suml2 = np.float32(0.0)
    for i in range(n):
        li = nearest_int(np.float32(iscale * x[o + i]))
        li = max(-nmax, min(nmax - 1, li))
        L[i] = li + nmax
        fl = np.float32(li)
        sumlx = np.float32(sumlx + np.float32(np.float32(w[i] * x[o + i]) * fl))
        suml2 = np.float32(suml2 + np.float32(np.float32(w[i] * fl) * fl))
    scale = np.float32(sumlx / suml2) if suml2 != 0 else np.float32(0.0)
    best = np.float32(scale * sumlx)
    tx = scr[0, :n]
    t2 = scr[1, :n]
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = np.float32(
            -np.float32(np.float32(nmax) + np.float32(np.float32(0.1) * np.float32(step))) / vmax
        )
        qx_products(x[o : o + n], w, iscale, nmax, n, tx, t2)
        sumlx = np.float32(0.0)
        suml2 = np.float32(0.0)
        for i in range(n):
            sumlx = np.float32(sumlx + tx[i])
            suml2 = np.float32(suml2 + t2[i])
        if suml2 > 0 and np.float32(sumlx * sumlx) > np.float32(best * suml2):
            for i in range(n):
                li = nearest_int(np.float32(iscale * x[o + i]))
                L[i] = nmax + max(-nmax, min(nmax - 1, li))
            scale = np.float32(sumlx / suml2)
            best = np.float32(scale * sumlx)
    return scale


@njit(**INLINE)
def _make_qkx3_quants_w(n, nmax, x, o, w, L, Laux, rmin, rdelta, nstep, scr):
    """make_qkx3_quants(..., use_mad=false) with weights: returns (scale, the_min).

    ``Laux`` uint8; ``scr``: float32 (3, >= n) scratch for the trial terms (8 lanes at a time).
    """
    vmin = x[o]
    vmax = x[o]
    sum_w = w[0]
    sum_x = np.float32(sum_w * x[o])
    for i in range(1, n):
        xi = x[o + i]
        if xi < vmin:
            vmin = xi
        if xi > vmax:
            vmax = xi
        sum_w = np.float32(sum_w + w[i])
        sum_x = np.float32(sum_x + np.float32(w[i] * xi))
    if vmin > 0:
        vmin = np.float32(0.0)
    if vmax <= vmin:
        for i in range(n):
            L[i] = 0
        return np.float32(0.0), np.float32(-vmin)
    iscale = np.float32(np.float32(nmax) / np.float32(vmax - vmin))
    scale = np.float32(np.float32(1.0) / iscale)
    best_mad = np.float32(0.0)
    for i in range(n):
        li = nearest_int(np.float32(iscale * np.float32(x[o + i] - vmin)))
        L[i] = max(0, min(nmax, li))
        diff = np.float32(np.float32(np.float32(scale * np.float32(L[i])) + vmin) - x[o + i])
        diff = np.float32(diff * diff)
        best_mad = np.float32(best_mad + np.float32(w[i] * diff))
    xb = x[o : o + n]
    tl = scr[0, :n]
    tl2 = scr[1, :n]
    txl = scr[2, :n]
    for step in range(nstep + 1):
        # C reuses `min`, which an accepted step replaces by this_min: max - min moves too.
        iscale = np.float32(
            np.float32(np.float32(rmin + np.float32(rdelta * np.float32(step))) + np.float32(nmax))
            / np.float32(vmax - vmin)
        )
        qkx_products(xb, w, iscale, vmin, nmax, n, Laux, tl, tl2, txl)
        sum_l = np.float32(0.0)
        sum_l2 = np.float32(0.0)
        sum_xl = np.float32(0.0)
        for i in range(n):
            sum_l = np.float32(sum_l + tl[i])
            sum_l2 = np.float32(sum_l2 + tl2[i])
            sum_xl = np.float32(sum_xl + txl[i])
        D = np.float32(np.float32(sum_w * sum_l2) - np.float32(sum_l * sum_l))
        if D > 0:
            this_scale = np.float32(np.float32(np.float32(sum_w * sum_xl) - np.float32(sum_x * sum_l)) / D)
            this_min = np.float32(np.float32(np.float32(sum_l2 * sum_x) - np.float32(sum_l * sum_xl)) / D)
            if this_min > 0:
                this_min = np.float32(0.0)
                this_scale = np.float32(sum_xl / sum_l2)
            qkx_errors(xb, w, Laux, this_scale, this_min, n, False, tl)
            mad = np.float32(0.0)
            for i in range(n):
                mad = np.float32(mad + tl[i])
            if mad < best_mad:
                for i in range(n):
                    L[i] = Laux[i]
                best_mad = mad
                scale = this_scale
                vmin = this_min
    return scale, np.float32(-vmin)


@njit(**INLINE)
def _pack_nibbles(L, out, p):
    for j in range(16):
        out[p + j] = (L[j] | (L[j + 16] << 4)) & 0xFF


@njit(**INLINE)
def _pack_q5(L, out, p):
    """qh (u32 at p) then qs[16] (at p+4) from 5-bit L[32]."""
    qh = 0
    for j in range(16):
        xi0 = L[j] & 0xFF
        xi1 = L[j + 16] & 0xFF
        out[p + 4 + j] = ((xi0 & 0x0F) | ((xi1 & 0x0F) << 4)) & 0xFF
        qh |= ((xi0 & 0x10) >> 4) << j
        qh |= ((xi1 & 0x10) >> 4) << (j + 16)
    for k in range(4):
        out[p + k] = (qh >> (8 * k)) & 0xFF


# ============================================================================ Numba kernels


# The importance-matrix paths, block by block (without one: the vector rows of _simd_rows).


@njit(**KERNEL, parallel=True)
def _q4_0_rows(x, out, im):
    rows, n = x.shape
    for r in prange(rows):
        xr = x[r]
        yr = out[r]
        L = np.zeros(QK, dtype=np.int64)
        weight = np.zeros(QK, dtype=np.float32)
        scr = np.zeros((3, QK), dtype=np.float32)
        sigma2 = _row_sigma2(xr)
        for ib in range(n // QK):
            o = ib * QK
            p = ib * 18
            _block_weights(xr, o, im, sigma2, weight)
            d = _make_qx_quants_w(QK, 8, xr, o, L, weight, scr)
            put_u16(yr, p, f32_to_f16_bits(d))
            _pack_nibbles(L, yr, p + 2)


@njit(**KERNEL, parallel=True)
def _q4_1_rows(x, out, im):
    rows, n = x.shape
    for r in prange(rows):
        xr = x[r]
        yr = out[r]
        L = np.zeros(QK, dtype=np.int64)
        Laux = np.zeros(QK, dtype=np.uint8)
        weight = np.zeros(QK, dtype=np.float32)
        scr = np.zeros((3, QK), dtype=np.float32)
        sigma2 = _row_sigma2(xr)
        for ib in range(n // QK):
            o = ib * QK
            p = ib * 20
            _block_weights(xr, o, im, sigma2, weight)
            d, the_min = _make_qkx3_quants_w(
                QK, 15, xr, o, weight, L, Laux, np.float32(-0.9), np.float32(0.05), 36, scr
            )
            put_u16(yr, p, f32_to_f16_bits(d))
            put_u16(yr, p + 2, f32_to_f16_bits(-the_min))
            _pack_nibbles(L, yr, p + 4)


@njit(**KERNEL, parallel=True)
def _q5_0_rows(x, out, im):
    rows, n = x.shape
    for r in prange(rows):
        xr = x[r]
        yr = out[r]
        L = np.zeros(QK, dtype=np.int64)
        weight = np.zeros(QK, dtype=np.float32)
        scr = np.zeros((3, QK), dtype=np.float32)
        sigma2 = _row_sigma2(xr)
        for ib in range(n // QK):
            o = ib * QK
            p = ib * 22
            _block_weights(xr, o, im, sigma2, weight)
            d = _make_qx_quants_w(QK, 16, xr, o, L, weight, scr)
            put_u16(yr, p, f32_to_f16_bits(d))
            _pack_q5(L, yr, p + 2)


@njit(**KERNEL, parallel=True)
def _q5_1_rows(x, out, im):
    rows, n = x.shape
    for r in prange(rows):
        xr = x[r]
        yr = out[r]
        L = np.zeros(QK, dtype=np.int64)
        Laux = np.zeros(QK, dtype=np.uint8)
        weight = np.zeros(QK, dtype=np.float32)
        scr = np.zeros((3, QK), dtype=np.float32)
        sigma2 = _row_sigma2(xr)
        for ib in range(n // QK):
            o = ib * QK
            p = ib * 24
            _block_weights(xr, o, im, sigma2, weight)
            d, the_min = _make_qkx3_quants_w(
                QK, 31, xr, o, weight, L, Laux, np.float32(-0.9), np.float32(0.05), 36, scr
            )
            put_u16(yr, p, f32_to_f16_bits(d))
            put_u16(yr, p + 2, f32_to_f16_bits(-the_min))
            _pack_q5(L, yr, p + 4)


@njit(**KERNEL, parallel=True)
def _rows_simd(x, out, kind, bad):
    """The quantizers without an importance matrix, a row per vector loop (see
    :mod:`engine.quant._simd_rows`); ``kind`` as in :data:`_KIND`.  ``bad[r]``: how many blocks of
    row r hold a NaN or an infinity (the bytes are then meaningless)."""
    for r in prange(x.shape[0]):
        if kind == 0:
            bad[r] = q4_0_row(x[r], out[r])
        elif kind == 1:
            bad[r] = q4_1_row(x[r], out[r])
        elif kind == 2:
            bad[r] = q5_0_row(x[r], out[r])
        elif kind == 3:
            bad[r] = q5_1_row(x[r], out[r])
        else:
            bad[r] = q8_0_row(x[r], out[r])


# Dequantizers: ``b`` the flat bytes of whole blocks, ``y`` the flat float32 output.  The element
# loops run with the block length ``qk`` (32) passed in at run time: with a constant trip count LLVM
# unrolls them before vectorizing, and the unrolled lanes do not vectorize (Numba arrays may alias).


@njit(**KERNEL)
def _dequant_q8_0(b, y, qk):
    for i in range(b.shape[0] // 34):
        p = 34 * i
        o = qk * i
        d = f16_bits_to_f32(get_u16(b, p))
        for j in range(qk):
            y[o + j] = np.float32(np.float32(np.int8(b[p + 2 + j])) * d)


@njit(**KERNEL)
def _dequant_q4(b, y, qk, with_min):
    """Q4_0 (``d * (q - 8)``) or, ``with_min``, Q4_1 (``d * q + m``)."""
    ts = 20 if with_min else 18
    h = qk // 2
    for i in range(b.shape[0] // ts):
        blk = b[ts * i : ts * (i + 1)]
        d = f16_bits_to_f32(get_u16(blk, 0))
        q = blk[ts - h :]
        y0 = y[qk * i : qk * i + h]
        y1 = y[qk * i + h : qk * (i + 1)]
        if with_min:
            m = f16_bits_to_f32(get_u16(blk, 2))
            for j in range(h):
                y0[j] = np.float32(np.float32(d * np.float32(q[j] & 0x0F)) + m)
                y1[j] = np.float32(np.float32(d * np.float32(q[j] >> 4)) + m)
        else:
            for j in range(h):
                y0[j] = np.float32(d * np.float32(np.int32(q[j] & 0x0F) - 8))
                y1[j] = np.float32(d * np.float32(np.int32(q[j] >> 4) - 8))


@njit(**KERNEL, parallel=True)
def _dequant_q5(blocks, with_min, y):
    """Q5_0 (``d * (q - 16)``) or, ``with_min``, Q5_1 (``d * q + m``) of ``blocks`` (n, type size) into
    ``y`` (n, 32).  Block by block in the ``prange`` body: measured faster than through the chunk
    functions.  ``y`` comes from NumPy (see :func:`engine.quant._common.dequant_output`)."""
    nb = blocks.shape[0]
    for i in prange(nb):
        b = blocks[i]
        d = f16_bits_to_f32(get_u16(b, 0))
        m = f16_bits_to_f32(get_u16(b, 2)) if with_min else np.float32(0.0)
        qs = 8 if with_min else 6
        qh = get_u16(b, qs - 4) | (get_u16(b, qs - 2) << 16)
        for j in range(16):
            lo = np.int64(b[qs + j] & 0x0F) | (((qh >> j) & 1) << 4)
            hi = np.int64(b[qs + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)
            if with_min:
                y[i, j] = np.float32(np.float32(d * np.float32(lo)) + m)
                y[i, j + 16] = np.float32(np.float32(d * np.float32(hi)) + m)
            else:
                y[i, j] = np.float32(d * np.float32(lo - 16))
                y[i, j + 16] = np.float32(d * np.float32(hi - 16))


@njit(**KERNEL)
def _dequant_plain(b, y, kind, qk):
    if kind == 4:
        _dequant_q8_0(b, y, qk)
    else:
        _dequant_q4(b, y, qk, kind == 1)


@njit(**KERNEL, parallel=True)
def _dequant_legacy(b, y, kind, ts, qk):
    """kind: 0 Q4_0, 1 Q4_1, 4 Q8_0.  ``b``: flat bytes of whole blocks of ``ts`` bytes; ``y``: flat
    float32 output.  Chunks of blocks spread over threads, each through a plain function whose
    element loops vectorize (the same loops in the ``prange`` body did not)."""
    nb = b.shape[0] // ts
    cb = DEQUANT_CHUNK // qk
    for c in prange((nb + cb - 1) // cb):
        lo = c * cb
        hi = min(nb, lo + cb)
        _dequant_plain(b[lo * ts : hi * ts], y[lo * qk : hi * qk], kind, qk)


# ============================================================================ Python wrappers


_KIND = {"Q4_0": 0, "Q4_1": 1, "Q5_0": 2, "Q5_1": 3, "Q8_0": 4}


def _quantizer(name: str):
    """Without an importance matrix (Q8_0 ignores it) the vector row kernels, which also check that
    the input is finite; with one the block-by-block kernels after a separate finiteness pass."""

    def quantize(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        if imatrix is not None and name != "Q8_0":
            check_finite(x, name)
            out = np.empty((x.shape[0], x.shape[1] // QK * _SIZE[name]), dtype=np.uint8)
            _IMATRIX[name](x, out, imatrix)
            return out
        out = np.empty((x.shape[0], x.shape[1] // QK * _SIZE[name]), dtype=np.uint8)
        bad = np.empty(x.shape[0], dtype=np.int64)
        _rows_simd(x, out, _KIND[name], bad)
        if bad.any():
            raise nonfinite_error(x, name)
        return out

    return quantize


def _dequantizer(kind):
    def dequantize(blocks: np.ndarray) -> np.ndarray:
        blocks = np.ascontiguousarray(blocks)
        if kind in (2, 3):
            out = dequant_output(blocks.shape[0], QK)
            _dequant_q5(blocks, kind == 3, out)
            return out
        y = np.empty(blocks.shape[0] * QK, dtype=np.float32)
        if dequant_in_parallel(y.size):
            _dequant_legacy(blocks.reshape(-1), y, kind, blocks.shape[1], QK)
        else:
            _dequant_plain(blocks.reshape(-1), y, kind, QK)
        return y.reshape(-1, QK)

    return dequantize


_SIZE = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34}
_IMATRIX = {"Q4_0": _q4_0_rows, "Q4_1": _q4_1_rows, "Q5_0": _q5_0_rows, "Q5_1": _q5_1_rows}


def _format(name: str, gid: int, kind: int) -> QuantFormat:
    return QuantFormat(
        name,
        gid,
        QK,
        _SIZE[name],
        _dequantizer(kind),
        _quantizer(name),
        uses_imatrix=name != "Q8_0",
        checks_finite=True,
    )


FORMATS: dict[str, QuantFormat] = {
    "Q4_0": _format("Q4_0", 2, 0),
    "Q4_1": _format("Q4_1", 3, 1),
    "Q5_0": _format("Q5_0", 6, 2),
    "Q5_1": _format("Q5_1", 7, 3),
    "Q8_0": _format("Q8_0", 8, 4),
}


# ============================================================================ NumPy reference


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _np_absmax(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (amax, signed value of the first largest |x|) of a (B, n) array."""
    ax = np.abs(xb)
    idx = np.argmax(ax, axis=1)  # first occurrence, like the strict '<' scan
    amax = ax.max(axis=1)
    vmax = np.take_along_axis(xb, idx[:, None], 1)[:, 0]
    return amax, np.where(amax > 0, vmax, np.float32(0.0)).astype(np.float32)


def _np_minmax(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sequential C scan (first of equal values wins: keeps the sign of the first zero)."""
    vmin = np.full(xb.shape[0], FLT_MAX, np.float32)
    vmax = np.full(xb.shape[0], -FLT_MAX, np.float32)
    for j in range(xb.shape[1]):
        vmin = np.where(xb[:, j] < vmin, xb[:, j], vmin)
        vmax = np.where(xb[:, j] > vmax, xb[:, j], vmax)
    return vmin, vmax


def _np_inv(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(d != 0, _f32(np.float32(1.0) / d), np.float32(0.0)).astype(np.float32)


def _np_weights(x: np.ndarray, im: np.ndarray) -> np.ndarray:
    """(rows, n) float32 weights qw * sqrt(sigma2 + x^2), sigma2 a sequential row mean of x^2."""
    rows, n = x.shape
    s = np.zeros(rows, dtype=np.float32)
    for j in range(n):
        s = _f32(s + _f32(x[:, j] * x[:, j]))
    sigma2 = _f32(s / np.float32(n))
    return _f32(im[None, :] * np.sqrt(_f32(sigma2[:, None] + _f32(x * x))))


def np_make_qx_quants_w(nmax: int, xb: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized make_qx_quants(rmse_type=1, qw=w) over blocks: (scale[B], L[B, n])."""
    B, n = xb.shape
    amax, vmax = _np_absmax(xb)
    zero = amax < GROUP_MAX_EPS

    def quants(iscale):
        return np.clip(np_nearest_int(_f32(iscale[:, None] * xb)), -nmax, nmax - 1)

    def sums(lq):
        fl = lq.astype(np.float32)
        sumlx = np.zeros(B, np.float32)
        suml2 = np.zeros(B, np.float32)
        for i in range(n):
            sumlx = _f32(sumlx + _f32(_f32(w[:, i] * xb[:, i]) * fl[:, i]))
            suml2 = _f32(suml2 + _f32(_f32(w[:, i] * fl[:, i]) * fl[:, i]))
        return sumlx, suml2

    with np.errstate(all="ignore"):
        iscale = _f32(np.float32(-nmax) / vmax)
        lq = quants(iscale)
        L = lq + nmax
        sumlx, suml2 = sums(lq)
        scale = np.where(suml2 != 0, _f32(sumlx / suml2), np.float32(0.0)).astype(np.float32)
        best = _f32(scale * sumlx)
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = _f32(-_f32(np.float32(nmax) + _f32(np.float32(0.1) * np.float32(step))) / vmax)
            lq = quants(iscale)
            sumlx, suml2 = sums(lq)
            better = (suml2 > 0) & (_f32(sumlx * sumlx) > _f32(best * suml2))
            L = np.where(better[:, None], lq + nmax, L)
            new_scale = _f32(sumlx / suml2)
            scale = np.where(better, new_scale, scale).astype(np.float32)
            best = np.where(better, _f32(new_scale * sumlx), best).astype(np.float32)
    L = np.where(zero[:, None], 0, L)
    scale = np.where(zero, np.float32(0.0), scale).astype(np.float32)
    return scale, L


def np_make_qkx3_quants_w(
    nmax: int, xb: np.ndarray, w: np.ndarray, rmin: float, rdelta: float, nstep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorized make_qkx3_quants(use_mad=false) over blocks: (scale[B], the_min[B], L[B, n])."""
    B, n = xb.shape
    rmin = np.float32(rmin)
    rdelta = np.float32(rdelta)
    vmin = xb[:, 0].copy()
    vmax = xb[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = _f32(sum_w * xb[:, 0])
    for i in range(1, n):
        vmin = np.where(xb[:, i] < vmin, xb[:, i], vmin)
        vmax = np.where(xb[:, i] > vmax, xb[:, i], vmax)
        sum_w = _f32(sum_w + w[:, i])
        sum_x = _f32(sum_x + _f32(w[:, i] * xb[:, i]))
    vmin = np.where(vmin > 0, np.float32(0.0), vmin).astype(np.float32)
    vmin0 = vmin
    flat = vmax <= vmin
    with np.errstate(all="ignore"):
        iscale = _f32(np.float32(nmax) / _f32(vmax - vmin))
        scale = _f32(np.float32(1.0) / iscale)
        xm = _f32(xb - vmin[:, None])
        L = np.clip(np_nearest_int(_f32(iscale[:, None] * xm)), 0, nmax)
        best_mad = np.zeros(B, np.float32)
        fL = L.astype(np.float32)
        for i in range(n):
            diff = _f32(_f32(_f32(scale * fL[:, i]) + vmin) - xb[:, i])
            best_mad = _f32(best_mad + _f32(w[:, i] * _f32(diff * diff)))
        for step in range(nstep + 1):
            # C reuses `min`, which an accepted step replaces by this_min: max - min moves too.
            iscale = _f32(
                _f32(_f32(rmin + _f32(rdelta * np.float32(step))) + np.float32(nmax)) / _f32(vmax - vmin)
            )
            xm = _f32(xb - vmin[:, None])
            Laux = np.clip(np_nearest_int(_f32(iscale[:, None] * xm)), 0, nmax)
            fl = Laux.astype(np.float32)
            sum_l = np.zeros(B, np.float32)
            sum_l2 = np.zeros(B, np.float32)
            sum_xl = np.zeros(B, np.float32)
            for i in range(n):
                wl = _f32(w[:, i] * fl[:, i])
                sum_l = _f32(sum_l + wl)
                sum_l2 = _f32(sum_l2 + _f32(wl * fl[:, i]))
                sum_xl = _f32(sum_xl + _f32(wl * xb[:, i]))
            D = _f32(_f32(sum_w * sum_l2) - _f32(sum_l * sum_l))
            this_scale = _f32(_f32(_f32(sum_w * sum_xl) - _f32(sum_x * sum_l)) / D)
            this_min = _f32(_f32(_f32(sum_l2 * sum_x) - _f32(sum_l * sum_xl)) / D)
            pos = this_min > 0
            this_scale = np.where(pos, _f32(sum_xl / sum_l2), this_scale).astype(np.float32)
            this_min = np.where(pos, np.float32(0.0), this_min).astype(np.float32)
            mad = np.zeros(B, np.float32)
            for i in range(n):
                diff = _f32(_f32(_f32(this_scale * fl[:, i]) + this_min) - xb[:, i])
                mad = _f32(mad + _f32(w[:, i] * _f32(diff * diff)))
            better = (D > 0) & (mad < best_mad)
            L = np.where(better[:, None], Laux, L)
            best_mad = np.where(better, mad, best_mad).astype(np.float32)
            scale = np.where(better, this_scale, scale).astype(np.float32)
            vmin = np.where(better, this_min, vmin).astype(np.float32)
    L = np.where(flat[:, None], 0, L)
    scale = np.where(flat, np.float32(0.0), scale).astype(np.float32)
    vmin = np.where(flat, vmin0, vmin).astype(np.float32)
    return scale, _f32(-vmin), L


def _np_nibbles(L: np.ndarray) -> np.ndarray:
    return ((L[:, :16] | (L[:, 16:] << 4)) & 0xFF).astype(np.uint8)


def _np_q5_tail(L: np.ndarray) -> np.ndarray:
    """(B, 20): qh u32 little-endian then qs[16] from 5-bit L (B, 32)."""
    L = L & 0xFF
    qs = ((L[:, :16] & 0x0F) | ((L[:, 16:] & 0x0F) << 4)).astype(np.uint8)
    bits = ((L & 0x10) >> 4).astype(np.uint64) << np.arange(32, dtype=np.uint64)
    qh = np.bitwise_or.reduce(bits, axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)
    return np.concatenate([qh, qs], axis=1)


def _np_d(d: np.ndarray) -> np.ndarray:
    return np_u16_bytes(np_f32_to_f16_bits(d))


def _reference(qtype: str, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows = x.shape[0]
    xb = x.reshape(-1, QK)
    if qtype == "Q8_0":
        imatrix = None
    with np.errstate(all="ignore"):
        if imatrix is not None:
            w = _np_weights(x, imatrix).reshape(-1, QK)
            if qtype in ("Q4_0", "Q5_0"):
                nmax = 8 if qtype == "Q4_0" else 16
                d, L = np_make_qx_quants_w(nmax, xb, w)
                tail = _np_nibbles(L) if qtype == "Q4_0" else _np_q5_tail(L)
                blocks = np.concatenate([_np_d(d), tail], axis=1)
            else:
                nmax = 15 if qtype == "Q4_1" else 31
                d, the_min, L = np_make_qkx3_quants_w(nmax, xb, w, -0.9, 0.05, 36)
                tail = _np_nibbles(L) if qtype == "Q4_1" else _np_q5_tail(L)
                blocks = np.concatenate([_np_d(d), _np_d(_f32(-the_min)), tail], axis=1)
        elif qtype in ("Q4_0", "Q5_0"):
            _, vmax = _np_absmax(xb)
            d = _f32(vmax / np.float32(-8.0 if qtype == "Q4_0" else -16.0))
            idd = _np_inv(d)
            off = np.float32(8.5 if qtype == "Q4_0" else 16.5)
            top = 15 if qtype == "Q4_0" else 31
            L = np.minimum(top, np_trunc_i8(_f32(_f32(xb * idd[:, None]) + off))) & 0xFF
            tail = _np_nibbles(L) if qtype == "Q4_0" else _np_q5_tail(L)
            blocks = np.concatenate([_np_d(d), tail], axis=1)
        elif qtype in ("Q4_1", "Q5_1"):
            vmin, vmax = _np_minmax(xb)
            d = _f32(_f32(vmax - vmin) / np.float32(15.0 if qtype == "Q4_1" else 31.0))
            idd = _np_inv(d)
            v = _f32(_f32(_f32(xb - vmin[:, None]) * idd[:, None]) + np.float32(0.5))
            if qtype == "Q4_1":
                L = np.minimum(15, np_trunc_i8(v)) & 0xFF
                tail = _np_nibbles(L)
            else:
                tail = _np_q5_tail(np_trunc_i32(v) & 0xFF)
            blocks = np.concatenate([_np_d(d), _np_d(vmin), tail], axis=1)
        elif qtype == "Q8_0":
            amax = np.abs(xb).max(axis=1)
            d = _f32(amax / np.float32(127.0))
            idd = _np_inv(d)
            q = np_roundf(_f32(xb * idd[:, None])) & 0xFF
            blocks = np.concatenate([_np_d(d), q.astype(np.uint8)], axis=1)
        else:
            raise KeyError(qtype)
    return np.ascontiguousarray(blocks.reshape(rows, -1))


def _ref(qtype):
    def quantize(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return _reference(qtype, x, imatrix)

    return quantize


REFERENCE = {name: _ref(name) for name in FORMATS}
