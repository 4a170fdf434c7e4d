"""Ternary types TQ1_0 (5 trits per byte, 1.69 bpw) and TQ2_0 (2 bits per trit, 2.06 bpw).

Ports of ``quantize_row_tq1_0_ref`` / ``quantize_row_tq2_0_ref`` (llama.cpp ignores any
importance matrix for these): d = absmax of the 256-element block, trits ``lroundf(x/d)+1``.
Block layouts: TQ1_0 ``qs[48]; qh[4]; d`` and TQ2_0 ``qs[64]; d`` (fp16 ``d`` last).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.quant._common import (
    KERNEL,
    QK_K,
    f16_bits_to_f32,
    f32_to_f16_bits,
    get_u16,
    np_f32_to_f16_bits,
    np_roundf,
    np_u16_bytes,
    put_u16,
    roundf,
)
from engine.quant.format import QuantFormat

TQ1_SIZE = 54
TQ2_SIZE = 66

# ============================================================================ Numba kernels


@njit(**KERNEL)
def _scale(x, o):
    amax = np.float32(0.0)
    for j in range(QK_K):
        a = np.float32(abs(x[o + j]))
        amax = amax if amax > a else a
    idd = np.float32(np.float32(1.0) / amax) if amax != 0 else np.float32(0.0)
    return amax, idd


@njit(**KERNEL)
def _trit(v, idd):
    return roundf(np.float32(v * idd)) + 1


@njit(**KERNEL, parallel=True)
def _tq1_rows(x, out):
    rows, n = x.shape
    nb = n // QK_K
    for r in prange(rows):
        xr = x[r]
        yr = out[r]
        for ib in range(nb):
            o = ib * QK_K
            p = ib * TQ1_SIZE
            d, idd = _scale(xr, o)
            # qs[0:32]: elements o + m + 32n, n = 0..4
            for m in range(32):
                q = 0
                for k in range(5):
                    q = (q * 3 + _trit(xr[o + m + k * 32], idd)) & 0xFF
                yr[p + m] = ((q * 256 + 242) // 243) & 0xFF
            # qs[32:48]: elements o + 160 + m + 16n
            for m in range(16):
                q = 0
                for k in range(5):
                    q = (q * 3 + _trit(xr[o + 160 + m + k * 16], idd)) & 0xFF
                yr[p + 32 + m] = ((q * 256 + 242) // 243) & 0xFF
            # qh[4]: elements o + 240 + j + 4m, m = 0..3, first trit most significant
            for j in range(4):
                q = 0
                for m in range(4):
                    q = (q * 3 + _trit(xr[o + 240 + j + m * 4], idd)) & 0xFF
                q = (q * 3) & 0xFF
                yr[p + 48 + j] = ((q * 256 + 242) // 243) & 0xFF
            put_u16(yr, p + 52, f32_to_f16_bits(d))


@njit(**KERNEL, parallel=True)
def _tq2_rows(x, out):
    rows, n = x.shape
    nb = n // QK_K
    for r in prange(rows):
        xr = x[r]
        yr = out[r]
        for ib in range(nb):
            o = ib * QK_K
            p = ib * TQ2_SIZE
            d, idd = _scale(xr, o)
            for j in range(2):
                for m in range(32):
                    q = 0
                    for k in range(4):
                        q += (_trit(xr[o + 128 * j + m + k * 32], idd) & 3) << (2 * k)
                    yr[p + 32 * j + m] = q & 0xFF
            put_u16(yr, p + 64, f32_to_f16_bits(d))


@njit(**KERNEL)
def _tq1_digit(byte, k):
    """k-th trit (0 = most significant) of a TQ1_0 byte, as C: ((uint16)(uint8)(q*3^k) * 3) >> 8."""
    pw = 1
    for _ in range(k):
        pw *= 3
    q = (byte * pw) & 0xFF
    return (q * 3) >> 8


@njit(**KERNEL, parallel=True)
def _tq1_dequant(blocks):
    nb = blocks.shape[0]
    y = np.empty((nb, QK_K), dtype=np.float32)
    for i in prange(nb):
        b = blocks[i]
        d = f16_bits_to_f32(get_u16(b, 52))
        e = 0
        for k in range(5):
            for m in range(32):
                y[i, e] = np.float32(d * np.float32(_tq1_digit(np.int64(b[m]), k) - 1))
                e += 1
        for k in range(5):
            for m in range(16):
                y[i, e] = np.float32(d * np.float32(_tq1_digit(np.int64(b[32 + m]), k) - 1))
                e += 1
        for k in range(4):
            for j in range(4):
                y[i, e] = np.float32(d * np.float32(_tq1_digit(np.int64(b[48 + j]), k) - 1))
                e += 1
    return y


@njit(**KERNEL, parallel=True)
def _tq2_dequant(blocks):
    nb = blocks.shape[0]
    y = np.empty((nb, QK_K), dtype=np.float32)
    for i in prange(nb):
        b = blocks[i]
        d = f16_bits_to_f32(get_u16(b, 64))
        for j in range(2):
            for k in range(4):
                for m in range(32):
                    q = (np.int64(b[32 * j + m]) >> (2 * k)) & 3
                    y[i, 128 * j + 32 * k + m] = np.float32(d * np.float32(q - 1))
    return y


# ============================================================================ wrappers


def _quantize_tq1(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    out = np.empty((x.shape[0], x.shape[1] // QK_K * TQ1_SIZE), dtype=np.uint8)
    _tq1_rows(x, out)
    return out


def _quantize_tq2(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    out = np.empty((x.shape[0], x.shape[1] // QK_K * TQ2_SIZE), dtype=np.uint8)
    _tq2_rows(x, out)
    return out


FORMATS: dict[str, QuantFormat] = {
    "TQ1_0": QuantFormat(
        "TQ1_0", 34, QK_K, TQ1_SIZE, lambda b: _tq1_dequant(np.ascontiguousarray(b)), _quantize_tq1
    ),
    "TQ2_0": QuantFormat(
        "TQ2_0", 35, QK_K, TQ2_SIZE, lambda b: _tq2_dequant(np.ascontiguousarray(b)), _quantize_tq2
    ),
}


# ============================================================================ NumPy reference


def _np_trits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d[B], trits[B, 256] in {0, 1, 2}) for (B, 256) blocks."""
    d = np.abs(x).max(axis=1)
    with np.errstate(divide="ignore"):
        idd = np.where(d != 0, (np.float32(1.0) / d).astype(np.float32), np.float32(0.0)).astype(np.float32)
    return d, np_roundf((x * idd[:, None]).astype(np.float32)) + 1


def _pack5(t: np.ndarray) -> np.ndarray:
    """t (B, k, g): k trits per output byte (first most significant) -> (B, g) bytes."""
    q = np.zeros(t.shape[::2], dtype=np.int64)
    for k in range(t.shape[1]):
        q = (q * 3 + t[:, k, :]) & 0xFF
    return q


def _ref_tq1(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows = x.shape[0]
    xb = x.reshape(-1, QK_K)
    d, t = _np_trits(xb)
    q0 = _pack5(t[:, :160].reshape(-1, 5, 32))
    q1 = _pack5(t[:, 160:240].reshape(-1, 5, 16))
    qh = (_pack5(t[:, 240:].reshape(-1, 4, 4)) * 3) & 0xFF
    q = np.concatenate([q0, q1, qh], axis=1)
    q = (q * 256 + 242) // 243
    blocks = np.concatenate([q.astype(np.uint8), np_u16_bytes(np_f32_to_f16_bits(d))], axis=1)
    return np.ascontiguousarray(blocks.reshape(rows, -1))


def _ref_tq2(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows = x.shape[0]
    xb = x.reshape(-1, QK_K)
    d, t = _np_trits(xb)
    t = (t & 3).reshape(-1, 2, 4, 32) << (2 * np.arange(4)).reshape(1, 1, 4, 1)
    q = t.sum(axis=2).reshape(-1, 64)
    blocks = np.concatenate([q.astype(np.uint8), np_u16_bytes(np_f32_to_f16_bits(d))], axis=1)
    return np.ascontiguousarray(blocks.reshape(rows, -1))


REFERENCE = {"TQ1_0": _ref_tq1, "TQ2_0": _ref_tq2}
