"""Ternary types TQ1_0 (5 trits per byte, 1.69 bpw) and TQ2_0 (2 bits per trit, 2.06 bpw).

Ports of ``quantize_row_tq1_0_ref`` / ``quantize_row_tq2_0_ref`` (llama.cpp ignores any
importance matrix for these): d = absmax of the 256-element block, trits ``lroundf(x/d)+1``.
Quantized a row per vector loop (:mod:`engine.quant._simd_rows`); NumPy references below.
Block layouts: TQ1_0 ``qs[48]; qh[4]; d`` and TQ2_0 ``qs[64]; d`` (fp16 ``d`` last).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.quant._common import (
    DEQUANT_CHUNK,
    KERNEL,
    QK_K,
    dequant_in_parallel,
    f16_bits_to_f32,
    get_u16,
    nonfinite_error,
    np_f32_to_f16_bits,
    np_roundf,
    np_u16_bytes,
)
from engine.quant._simd_rows import tq1_0_row, tq2_0_row
from engine.quant.format import QuantFormat

TQ1_SIZE = 54
TQ2_SIZE = 66

# ============================================================================ Numba kernels


@njit(**KERNEL, parallel=True)
def _rows(x, out, tq2, bad):
    """TQ1_0 (or ``tq2``: TQ2_0) of every row, a vector loop per row (:mod:`engine.quant._simd_rows`);
    ``bad[r]``: how many blocks of row r hold a NaN or an infinity."""
    for r in prange(x.shape[0]):
        bad[r] = tq2_0_row(x[r], out[r]) if tq2 else tq1_0_row(x[r], out[r])


@njit(**KERNEL)
def _tq1_digit(byte, k):
    """k-th trit (0 = most significant) of a TQ1_0 byte, as C: ((uint16)(uint8)(q*3^k) * 3) >> 8."""
    pw = 1
    for _ in range(k):
        pw *= 3
    q = (byte * pw) & 0xFF
    return (q * 3) >> 8


@njit(**KERNEL)
def _tq1_value(q, pw):
    """The trit of byte ``q`` (int32) at power ``pw`` of 3, minus 1, as C's TQ1_0 dequantizer."""
    return ((((q * pw) & 0xFF) * 3) >> 8) - 1


# Dequantizers of chunks of blocks: ``b`` the flat bytes of whole blocks, ``y`` the flat float32
# output.  The element loops run over views indexed from 0 with their length ``n`` (32) passed in
# at run time: with a constant trip count LLVM unrolls them before vectorizing, and the unrolled
# lanes do not vectorize (Numba arrays may alias).


@njit(**KERNEL)
def _tq1_blocks(b, y, n):
    h = n // 2
    for i in range(b.shape[0] // TQ1_SIZE):
        q = b[TQ1_SIZE * i : TQ1_SIZE * (i + 1)]
        yb = y[QK_K * i : QK_K * (i + 1)]
        d = f16_bits_to_f32(get_u16(q, 52))
        for m in range(n):  # bytes 0..31: five trits each, elements 32k + m
            v = np.int32(q[m])
            yb[m] = np.float32(d * np.float32(_tq1_value(v, 1)))
            yb[32 + m] = np.float32(d * np.float32(_tq1_value(v, 3)))
            yb[64 + m] = np.float32(d * np.float32(_tq1_value(v, 9)))
            yb[96 + m] = np.float32(d * np.float32(_tq1_value(v, 27)))
            yb[128 + m] = np.float32(d * np.float32(_tq1_value(v, 81)))
        q16 = q[32:48]
        y16 = yb[160:240]
        for m in range(h):  # bytes 32..47: elements 160 + 16k + m
            v = np.int32(q16[m])
            y16[m] = np.float32(d * np.float32(_tq1_value(v, 1)))
            y16[16 + m] = np.float32(d * np.float32(_tq1_value(v, 3)))
            y16[32 + m] = np.float32(d * np.float32(_tq1_value(v, 9)))
            y16[48 + m] = np.float32(d * np.float32(_tq1_value(v, 27)))
            y16[64 + m] = np.float32(d * np.float32(_tq1_value(v, 81)))
        for k in range(4):  # bytes 48..51: elements 240 + 4k + j
            pw = np.int32(3**k)
            for j in range(4):
                yb[240 + 4 * k + j] = np.float32(d * np.float32(_tq1_value(np.int32(q[48 + j]), pw)))


@njit(**KERNEL)
def _tq2_blocks(b, y, n):
    for i in range(b.shape[0] // TQ2_SIZE):
        q = b[TQ2_SIZE * i : TQ2_SIZE * (i + 1)]
        d = f16_bits_to_f32(get_u16(q, 64))
        for j in range(2):  # 32 bytes give elements 128j + 32k + m, k = 0..3 (2 bits each)
            qj = q[32 * j : 32 * j + 32]
            yj = y[QK_K * i + 128 * j : QK_K * i + 128 * j + 128]
            for m in range(n):
                v = np.int32(qj[m])
                yj[m] = np.float32(d * np.float32((v & 3) - 1))
                yj[32 + m] = np.float32(d * np.float32(((v >> 2) & 3) - 1))
                yj[64 + m] = np.float32(d * np.float32(((v >> 4) & 3) - 1))
                yj[96 + m] = np.float32(d * np.float32(((v >> 6) & 3) - 1))


@njit(**KERNEL)
def _dequant_plain(b, y, tq2, n):
    if tq2:
        _tq2_blocks(b, y, n)
    else:
        _tq1_blocks(b, y, n)


@njit(**KERNEL, parallel=True)
def _dequant(b, y, tq2, n):
    """TQ1_0 (or ``tq2``: TQ2_0) in chunks of blocks spread over threads, each through a plain
    function (inside a ``prange`` body the element loops do not vectorize); ``n`` = 32."""
    ts = TQ2_SIZE if tq2 else TQ1_SIZE
    nb = b.shape[0] // ts
    cb = DEQUANT_CHUNK // QK_K
    for c in prange((nb + cb - 1) // cb):
        lo = c * cb
        hi = min(nb, lo + cb)
        _dequant_plain(b[lo * ts : hi * ts], y[lo * QK_K : hi * QK_K], tq2, n)


# ============================================================================ wrappers


def _quantizer(name: str, size: int, tq2: bool):
    def quantize(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        out = np.empty((x.shape[0], x.shape[1] // QK_K * size), dtype=np.uint8)
        bad = np.empty(x.shape[0], dtype=np.int64)
        _rows(x, out, tq2, bad)
        if bad.any():
            raise nonfinite_error(x, name)
        return out

    return quantize


def _dequantize(blocks: np.ndarray, tq2: bool) -> np.ndarray:
    y = np.empty((blocks.shape[0], QK_K), dtype=np.float32)
    run = _dequant if dequant_in_parallel(y.size) else _dequant_plain
    run(np.ascontiguousarray(blocks).reshape(-1), y.reshape(-1), tq2, 32)
    return y


def _format(name: str, gid: int, size: int, tq2: bool) -> QuantFormat:
    return QuantFormat(
        name,
        gid,
        QK_K,
        size,
        lambda b: _dequantize(b, tq2),
        _quantizer(name, size, tq2),
        checks_finite=True,
    )


FORMATS: dict[str, QuantFormat] = {
    "TQ1_0": _format("TQ1_0", 34, TQ1_SIZE, False),
    "TQ2_0": _format("TQ2_0", 35, TQ2_SIZE, True),
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
