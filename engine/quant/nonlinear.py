"""Non-linear 4-bit types IQ4_NL (32-element blocks) and IQ4_XS (256-element super-blocks).

Port of ``quantize_row_iq4_nl_impl`` exactly as ``ggml_quantize_chunk`` calls it (``quantize_iq4_nl``
/ ``quantize_iq4_xs``, ntry = 7), with and without an importance matrix.  Note that llama.cpp's
``quantize_row_iq4_nl_ref`` uses ntry = -1 and gives different bytes; files are made with ntry = 7.

Per 32-element block: weights ``x^2`` (or ``qw * sqrt(sigma2 + x^2)``, ``sigma2 = 2*sum(x^2)/n``
over the super-block), a first scale from the signed absmax, a weighted least-squares refit, and 15
trial scales ``(itry + K[0]) / max``.  IQ4_XS then quantizes the 8 block scales to 6 bits against
``d = -max_scale / 32`` and re-picks every element with the final scale.
Layouts: IQ4_NL ``d; qs[16]``; IQ4_XS ``d; u16 scales_h; scales_l[4]; qs[128]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.quant._common import (
    KERNEL,
    QK_K,
    dequant_output,
    f16_bits_to_f32,
    f32_to_f16_bits,
    get_u16,
    imatrix_arg,
    nearest_int,
    np_best_index_int8,
    np_f32_to_f16_bits,
    np_nearest_int,
    np_u16_bytes,
    put_u16,
)
from engine.quant._simd import make_table_kernels
from engine.quant.format import QuantFormat

QK4_NL = 32
NTRY = 7
GROUP_MAX_EPS = np.float32(1e-15)
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
KVALUES_F32 = KVALUES.astype(np.float32)  # same table as floats: kernels avoid int->float per lookup
NL_SIZE = 18
XS_SIZE = 136

# ============================================================================ Numba kernels


_KT = tuple(np.float32(v) for v in KVALUES)  # compile-time constants in the kernels


_trial_products, _indices = make_table_kernels(tuple(float(v) for v in KVALUES))


@njit(**KERNEL)
def _trial(xr, o, idd, weight, tqx, tq2):
    """(sumqx, sumq2) of one trial scale: the products in 8-lane vectors, then C's sequential sums."""
    _trial_products(xr, o, idd, weight, tqx, tq2)
    sumqx = np.float32(0.0)
    sumq2 = np.float32(0.0)
    for j in range(32):
        sumqx = np.float32(sumqx + tqx[j])
        sumq2 = np.float32(sumq2 + tq2[j])
    return sumqx, sumq2


@njit(**KERNEL)
def _block_scale(xr, o, im, has_im, sigma2, weight, scr):
    """The refitted scale of the 32-block at xr[o:o+32] (0 when all |x| < eps).

    ``scr``: float32 (2, 32) scratch.  (C fills L here too; every caller recomputes it.)
    """
    tqx = scr[0]
    tq2 = scr[1]
    for j in range(32):
        xj = xr[o + j]
        if has_im:
            weight[j] = np.float32(im[o + j] * np.float32(np.sqrt(np.float32(sigma2 + np.float32(xj * xj)))))
        else:
            weight[j] = np.float32(xj * xj)
    amax = np.float32(0.0)
    vmax = np.float32(0.0)
    for j in range(32):
        ax = np.float32(abs(xr[o + j]))
        if ax > amax:
            amax = ax
            vmax = xr[o + j]
    if amax < GROUP_MAX_EPS:
        return np.float32(0.0)
    d = np.float32(-vmax / _KT[0])
    idd = np.float32(np.float32(1.0) / d)
    sumqx, sumq2 = _trial(xr, o, idd, weight, tqx, tq2)
    d = np.float32(sumqx / sumq2) if sumq2 > 0 else np.float32(0.0)
    best = np.float32(d * sumqx)
    for itry in range(-NTRY, NTRY + 1):
        idd = np.float32(np.float32(itry + np.int64(KVALUES[0])) / vmax)
        sumqx, sumq2 = _trial(xr, o, idd, weight, tqx, tq2)
        if sumq2 > 0 and np.float32(sumqx * sumqx) > np.float32(best * sumq2):
            d = np.float32(sumqx / sumq2)
            best = np.float32(d * sumqx)
    return d


@njit(**KERNEL)
def _sigma2(xr, o, n):
    s = np.float32(0.0)
    for j in range(n):
        s = np.float32(s + np.float32(xr[o + j] * xr[o + j]))
    return np.float32(s * np.float32(np.float32(2.0) / np.float32(n)))


@njit(**KERNEL, parallel=True)
def _iq4_nl_rows(x, out, im, has_im, kv):
    rows, n = x.shape
    nb = n // QK4_NL
    for r in prange(rows):
        xr = x[r]
        yr = out[r]
        weight = np.zeros(32, dtype=np.float32)  # per row: negligible next to a row's work
        L = np.zeros(32, dtype=np.int64)
        scr = np.zeros((2, 32), dtype=np.float32)
        for ib in range(nb):
            o = ib * QK4_NL
            p = ib * NL_SIZE
            sigma2 = _sigma2(xr, o, QK4_NL)
            s = _block_scale(xr, o, im, has_im, sigma2, weight, scr)
            put_u16(yr, p, f32_to_f16_bits(s))
            idd = np.float32(np.float32(1.0) / s) if s != 0 else np.float32(0.0)
            _indices(xr, o, idd, L, 0)
            for j in range(16):
                yr[p + 2 + j] = (L[j] | (L[16 + j] << 4)) & 0xFF


@njit(**KERNEL, parallel=True)
def _iq4_xs_rows(x, out, im, has_im, kv):
    rows, n = x.shape
    nb = n // QK_K
    for r in prange(rows):
        xr = x[r]
        yr = out[r]
        weight = np.zeros(32, dtype=np.float32)
        L = np.zeros(QK_K, dtype=np.int64)
        scr = np.zeros((2, 32), dtype=np.float32)
        scales = np.zeros(QK_K // 32, dtype=np.float32)
        for ibl in range(nb):
            o = ibl * QK_K
            p = ibl * XS_SIZE
            sigma2 = _sigma2(xr, o, QK_K)
            max_scale = np.float32(0.0)
            amax_scale = np.float32(0.0)
            for ib in range(QK_K // 32):
                s = _block_scale(xr, o + 32 * ib, im, has_im, sigma2, weight, scr)
                scales[ib] = s
                a = np.float32(abs(s))
                if a > amax_scale:
                    amax_scale = a
                    max_scale = s
            d = np.float32(-max_scale / np.float32(32.0))
            put_u16(yr, p, f32_to_f16_bits(d))
            idd = np.float32(np.float32(1.0) / d) if d != 0 else np.float32(0.0)
            scales_h = 0
            for k in range(4):
                yr[p + 4 + k] = 0
            for ib in range(QK_K // 32):
                li = nearest_int(np.float32(idd * scales[ib]))
                li = max(-32, min(31, li))
                dl = np.float32(d * np.float32(li))
                idl = np.float32(np.float32(1.0) / dl) if dl != 0 else np.float32(0.0)
                _indices(xr, o + 32 * ib, idl, L, 32 * ib)
                li += 32
                if ib % 2 == 0:
                    yr[p + 4 + ib // 2] = li & 0xF
                else:
                    yr[p + 4 + ib // 2] |= (li & 0xF) << 4
                scales_h |= (li >> 4) << (2 * ib)
            put_u16(yr, p + 2, scales_h & 0xFFFF)
            for i in range(QK_K // 32):
                for j in range(16):
                    yr[p + 8 + 16 * i + j] = (L[32 * i + j] | (L[32 * i + 16 + j] << 4)) & 0xFF


@njit(**KERNEL, parallel=True)
def _iq4_nl_dequant(blocks, kv, y):
    nb = blocks.shape[0]
    for i in prange(nb):
        d = f16_bits_to_f32(get_u16(blocks[i], 0))
        for j in range(16):
            b = np.int64(blocks[i, 2 + j])
            y[i, j] = np.float32(d * np.float32(kv[b & 0x0F]))
            y[i, j + 16] = np.float32(d * np.float32(kv[b >> 4]))


@njit(**KERNEL, parallel=True)
def _iq4_xs_dequant(blocks, kv, y):
    nb = blocks.shape[0]
    for i in prange(nb):
        b = blocks[i]
        d = f16_bits_to_f32(get_u16(b, 0))
        sh = get_u16(b, 2)
        for ib in range(QK_K // 32):
            ls = ((np.int64(b[4 + ib // 2]) >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4)
            dl = np.float32(d * np.float32(ls - 32))
            for j in range(16):
                q = np.int64(b[8 + 16 * ib + j])
                y[i, 32 * ib + j] = np.float32(dl * np.float32(kv[q & 0x0F]))
                y[i, 32 * ib + 16 + j] = np.float32(dl * np.float32(kv[q >> 4]))


# ============================================================================ wrappers


def _dequant_into(kernel, blocks: np.ndarray, block_size: int) -> np.ndarray:
    out = dequant_output(blocks.shape[0], block_size)
    kernel(np.ascontiguousarray(blocks), KVALUES, out)
    return out


def _quantize_nl(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    out = np.empty((x.shape[0], x.shape[1] // QK4_NL * NL_SIZE), dtype=np.uint8)
    im, has_im = imatrix_arg(imatrix)
    _iq4_nl_rows(x, out, im, has_im, KVALUES_F32)
    return out


def _quantize_xs(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    out = np.empty((x.shape[0], x.shape[1] // QK_K * XS_SIZE), dtype=np.uint8)
    im, has_im = imatrix_arg(imatrix)
    _iq4_xs_rows(x, out, im, has_im, KVALUES_F32)
    return out


FORMATS: dict[str, QuantFormat] = {
    "IQ4_NL": QuantFormat(
        "IQ4_NL",
        20,
        QK4_NL,
        NL_SIZE,
        lambda b: _dequant_into(_iq4_nl_dequant, b, QK4_NL),
        _quantize_nl,
        uses_imatrix=True,
    ),
    "IQ4_XS": QuantFormat(
        "IQ4_XS",
        23,
        QK_K,
        XS_SIZE,
        lambda b: _dequant_into(_iq4_xs_dequant, b, QK_K),
        _quantize_xs,
        uses_imatrix=True,
    ),
}


# ============================================================================ NumPy reference


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _np_sums(w: np.ndarray, xb: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sumqx = np.zeros(xb.shape[0], np.float32)
    sumq2 = np.zeros(xb.shape[0], np.float32)
    for j in range(xb.shape[1]):
        wq = _f32(w[:, j] * q[:, j])
        sumqx = _f32(sumqx + _f32(wq * xb[:, j]))
        sumq2 = _f32(sumq2 + _f32(wq * q[:, j]))
    return sumqx, sumq2


def np_block_scales(x: np.ndarray, imatrix: np.ndarray | None, super_block: int) -> np.ndarray:
    """Per 32-block refitted scales (rows * n / 32,) as quantize_row_iq4_nl_impl computes them."""
    with np.errstate(all="ignore"):  # huge inputs overflow x^2 to inf, in C as here
        return _np_block_scales(x, imatrix, super_block)


def _np_block_scales(x: np.ndarray, imatrix: np.ndarray | None, super_block: int) -> np.ndarray:
    rows = x.shape[0]
    kv = KVALUES.astype(np.float32)
    sb = x.reshape(-1, super_block)
    s = np.zeros(sb.shape[0], np.float32)
    for j in range(super_block):
        s = _f32(s + _f32(sb[:, j] * sb[:, j]))
    sigma2 = _f32(s * np.float32(np.float32(2.0) / np.float32(super_block)))
    sigma2 = np.repeat(sigma2, super_block // 32)
    xb = x.reshape(-1, 32)
    if imatrix is None:
        w = _f32(xb * xb)
    else:
        qw = np.tile(imatrix.reshape(-1, 32), (rows, 1))
        w = _f32(qw * np.sqrt(_f32(sigma2[:, None] + _f32(xb * xb))))
    ax = np.abs(xb)
    amax = ax.max(axis=1)
    vmax = np.take_along_axis(xb, np.argmax(ax, axis=1)[:, None], 1)[:, 0]
    with np.errstate(all="ignore"):
        d = _f32(-vmax / kv[0])
        idd = _f32(np.float32(1.0) / d)
        q = kv[np_best_index_int8(KVALUES, _f32(idd[:, None] * xb))]
        sumqx, sumq2 = _np_sums(w, xb, q)
        d = np.where(sumq2 > 0, _f32(sumqx / sumq2), np.float32(0.0)).astype(np.float32)
        best = _f32(d * sumqx)
        for itry in range(-NTRY, NTRY + 1):
            idd = _f32(np.float32(itry + int(KVALUES[0])) / vmax)
            q = kv[np_best_index_int8(KVALUES, _f32(idd[:, None] * xb))]
            sumqx, sumq2 = _np_sums(w, xb, q)
            better = (sumq2 > 0) & (_f32(sumqx * sumqx) > _f32(best * sumq2))
            nd = _f32(sumqx / sumq2)
            d = np.where(better, nd, d).astype(np.float32)
            best = np.where(better, _f32(nd * sumqx), best).astype(np.float32)
    return np.where(amax < GROUP_MAX_EPS, np.float32(0.0), d).astype(np.float32)


def _np_pack(L: np.ndarray) -> np.ndarray:
    L = L.reshape(L.shape[0], -1, 32)
    return (L[:, :, :16] | (L[:, :, 16:] << 4)).reshape(L.shape[0], -1).astype(np.uint8)


def _ref_nl(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows = x.shape[0]
    s = np_block_scales(x, imatrix, QK4_NL)
    xb = x.reshape(-1, 32)
    with np.errstate(divide="ignore"):
        idd = np.where(s != 0, _f32(np.float32(1.0) / s), np.float32(0.0)).astype(np.float32)
    L = np_best_index_int8(KVALUES, _f32(idd[:, None] * xb))
    blocks = np.concatenate([np_u16_bytes(np_f32_to_f16_bits(s)), _np_pack(L)], axis=1)
    return np.ascontiguousarray(blocks.reshape(rows, -1))


def _ref_xs(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows = x.shape[0]
    s = np_block_scales(x, imatrix, QK_K).reshape(-1, 8)
    a = np.abs(s)
    max_scale = np.take_along_axis(s, np.argmax(a, axis=1)[:, None], 1)[:, 0]
    max_scale = np.where(a.max(axis=1) > 0, max_scale, np.float32(0.0)).astype(np.float32)
    d = _f32(-max_scale / np.float32(32.0))
    with np.errstate(divide="ignore", over="ignore"):
        idd = np.where(d != 0, _f32(np.float32(1.0) / d), np.float32(0.0)).astype(np.float32)
        li = np.clip(np_nearest_int(_f32(idd[:, None] * s)), -32, 31)
        dl = _f32(d[:, None] * li.astype(np.float32))
        idl = np.where(dl != 0, _f32(np.float32(1.0) / dl), np.float32(0.0)).astype(np.float32)
    xb = x.reshape(-1, 8, 32)
    L = np_best_index_int8(KVALUES, _f32(idl[:, :, None] * xb)).reshape(-1, QK_K)
    ls = li + 32
    scales_l = ((ls[:, 0::2] & 0xF) | ((ls[:, 1::2] & 0xF) << 4)).astype(np.uint8)
    scales_h = np.bitwise_or.reduce((ls >> 4) << (2 * np.arange(8)), axis=1).astype(np.uint16)
    blocks = np.concatenate(
        [np_u16_bytes(np_f32_to_f16_bits(d)), np_u16_bytes(scales_h), scales_l, _np_pack(L)], axis=1
    )
    return np.ascontiguousarray(blocks.reshape(rows, -1))


REFERENCE = {"IQ4_NL": _ref_nl, "IQ4_XS": _ref_xs}
