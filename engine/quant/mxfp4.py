"""MXFP4 (OCP microscaling FP4): 32 E2M1 values sharing one E8M0 exponent, 4.25 bpw; and NVFP4
(dequantize only): 64 E2M1 values in four groups of 16, each with an unsigned E4M3 scale, 4.5 bpw.

Port of ``quantize_row_mxfp4_ref`` (llama.cpp ignores an importance matrix here):
``e = (uint8)(floorf(log2f(amax)) - 2 + 127)`` (0 for an all-zero block), ``d = 2^(e-128)``
(``GGML_E8M0_TO_FP32_HALF``; the table holds doubled E2M1 values), and each element takes the
first table index with the smallest ``|kvalues[i]*d - x|``.  Block layout: ``e; qs[16]``.

``log2f`` is taken as correctly rounded (``float32(log2(double))``); glibc's ``log2f`` agrees
except possibly within a fraction of an ulp of a power of two, where ``floorf`` could differ.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from engine.quant._common import KERNEL, dequant_output, trunc_i32
from engine.quant._simd import mxfp4_indices
from engine.quant.format import QuantFormat

QK = 32
TYPE_SIZE = 17
KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)
KVALUES_F32 = KVALUES.astype(np.float32)  # the kernels' copy: no int->float per lookup

# ============================================================================ Numba kernels


@njit(**KERNEL)
def _e8m0_half(e):
    """GGML_E8M0_TO_FP32_HALF: 2^(e-128) as float32 (exact, denormal for e < 2)."""
    return np.float32(math.ldexp(1.0, e - 128))


@njit(**KERNEL)
def _exponent(amax):
    if not amax > 0:
        return 0
    lg = np.float32(math.log2(np.float64(amax)))
    return trunc_i32(np.float32(np.float32(math.floor(lg)) - np.float32(2.0) + np.float32(127.0))) & 0xFF


@njit(**KERNEL)
def _best_index(kv, x, d):
    """First i with the smallest |kv[i]*d - x|, scanning i = 0..15 as C does.

    Only the half of the table with x's sign can win: for v > 0, fl(|v*d - |x||) <= fl(v*d + |x|)
    (rounding is monotonic), a tie needs |x| absorbed by v*d, and then entry 0 (|x|) is better;
    entry 8 (0 again) never beats entry 0.  So the scan visits 0, then 1..7 or 9..15, in order.
    """
    best = 0
    best_err = np.float32(abs(x))
    base = 0 if x >= 0 else 8
    for i in range(base + 1, base + 8):
        err = np.float32(abs(np.float32(kv[i] * d - x)))
        if err < best_err:
            best = i
            best_err = err
    return best


@njit(**KERNEL, parallel=True)
def _mxfp4_rows(x, out, kv):
    rows, n = x.shape
    nb = n // QK
    for r in prange(rows):
        xr = x[r]
        yr = out[r]
        idx = np.empty(QK, np.uint8)  # per row: negligible next to a row's work
        for ib in range(nb):
            o = ib * QK
            p = ib * TYPE_SIZE
            amax = np.float32(0.0)
            for j in range(QK):
                a = np.float32(abs(xr[o + j]))
                if amax < a:
                    amax = a
            e = _exponent(amax)
            d = _e8m0_half(e)
            yr[p] = e
            mxfp4_indices(xr, o, d, idx)  # = _best_index per element, 8 lanes at a time
            for j in range(16):
                yr[p + 1 + j] = idx[j] | (idx[16 + j] << 4)


@njit(**KERNEL, parallel=True)
def _mxfp4_dequant(blocks, kv, y):
    nb = blocks.shape[0]
    for i in prange(nb):
        d = _e8m0_half(np.int64(blocks[i, 0]))
        for j in range(16):
            b = np.int64(blocks[i, 1 + j])
            y[i, j] = np.float32(d * np.float32(kv[b & 0x0F]))
            y[i, j + 16] = np.float32(d * np.float32(kv[b >> 4]))


NV_QK = 64
NV_TYPE_SIZE = 36


def _ue4m3_half_table() -> np.ndarray:
    """NVFP4's scale byte -> float32, halved for the doubled E2M1 table (ggml_ue4m3_to_fp32 * 0.5):
    exponent bits 3-6 (bias 7; 0: subnormal, mantissa * 2^-9), mantissa bits 0-2, bit 7 ignored;
    0 and 0x7F (NaN) read as 0.  Every value is exact in float32."""
    x = np.arange(256)
    exp = (x >> 3) & 0xF
    man = (x & 7).astype(np.float64)
    raw = np.where(exp == 0, man * 2.0**-9, (1.0 + man / 8.0) * 2.0 ** (exp - 7.0))
    return np.where((x == 0) | (x == 0x7F), 0.0, raw * 0.5).astype(np.float32)


UE4M3_HALF = _ue4m3_half_table()


@njit(**KERNEL, parallel=True)
def _nvfp4_dequant(blocks, scale, kv, y):
    """Block i: bytes 0-3 the scales of elements 16s..16s+15; bytes 4+8s..11+8s their values, low
    nibbles first (elements 16s..16s+7), then high nibbles.  d * value is exact (few bits each)."""
    nb = blocks.shape[0]
    for i in prange(nb):
        for s in range(4):
            d = scale[blocks[i, s]]
            for j in range(8):
                b = np.int64(blocks[i, 4 + 8 * s + j])
                y[i, 16 * s + j] = np.float32(d * kv[b & 0x0F])
                y[i, 16 * s + 8 + j] = np.float32(d * kv[b >> 4])


# ============================================================================ wrappers


def _quantize(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    out = np.empty((x.shape[0], x.shape[1] // QK * TYPE_SIZE), dtype=np.uint8)
    _mxfp4_rows(x, out, KVALUES_F32)
    return out


def _dequantize(blocks: np.ndarray) -> np.ndarray:
    out = dequant_output(blocks.shape[0], QK)
    _mxfp4_dequant(np.ascontiguousarray(blocks), KVALUES, out)
    return out


def _dequantize_nvfp4(blocks: np.ndarray) -> np.ndarray:
    out = dequant_output(blocks.shape[0], NV_QK)
    _nvfp4_dequant(np.ascontiguousarray(blocks), UE4M3_HALF, KVALUES_F32, out)
    return out


FORMATS: dict[str, QuantFormat] = {
    "MXFP4": QuantFormat("MXFP4", 39, QK, TYPE_SIZE, _dequantize, _quantize),
    "NVFP4": QuantFormat("NVFP4", 40, NV_QK, NV_TYPE_SIZE, _dequantize_nvfp4),  # dequantize only
}


# ============================================================================ NumPy reference


def _ref(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    rows = x.shape[0]
    xb = x.reshape(-1, QK)
    amax = np.abs(xb).max(axis=1)
    with np.errstate(divide="ignore"):
        lg = np.log2(amax.astype(np.float64)).astype(np.float32)
        ev = (np.floor(lg).astype(np.float32) - np.float32(2.0) + np.float32(127.0)).astype(np.float32)
    e = np.where(amax > 0, np.trunc(np.where(amax > 0, ev, 0)).astype(np.int64) & 0xFF, 0)
    d = np.ldexp(np.float64(1.0), e - 128).astype(np.float32)
    table = KVALUES.astype(np.float32)[None, None, :] * d[:, None, None]  # exact (power of two)
    err = np.abs((table.astype(np.float32) - xb[:, :, None]).astype(np.float32))
    idx = np.argmin(err, axis=2)  # first minimum, like the strict '<' scan
    q = (idx[:, :16] | (idx[:, 16:] << 4)).astype(np.uint8)
    blocks = np.concatenate([e.astype(np.uint8)[:, None], q], axis=1)
    return np.ascontiguousarray(blocks.reshape(rows, -1))


REFERENCE = {"MXFP4": _ref}


def ref_dequantize_nvfp4(blocks: np.ndarray) -> np.ndarray:
    """NumPy reference of NVFP4's dequantizer (blocks (n, 36) uint8 -> (n, 64) float32)."""
    d = UE4M3_HALF[blocks[:, :4]][:, :, None]  # (n, 4, 1)
    qs = blocks[:, 4:].reshape(-1, 4, 8)
    vals = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # (n, 4, 16)
    return (d * KVALUES_F32[vals]).astype(np.float32).reshape(-1, NV_QK)
