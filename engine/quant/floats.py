"""Float storage types: F32, F16, BF16 (block size 1).

F16 is ggml's ``ggml_fp32_to_fp16_row`` (``ggml_compute_fp32_to_fp16``: round-nearest-even,
overflow to infinity, NaN -> sign|0x7E00); BF16 is ``ggml_fp32_to_bf16_row_ref``
(round-nearest-even on the top 16 bits, NaN forced quiet by setting bit 6, no flushing).  Both are
converted 16 at a time (:mod:`engine.quant._simd_rows`), with the input's finiteness checked in the
same pass.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.quant._common import (
    DEQUANT_CHUNK,
    KERNEL,
    dequant_in_parallel,
    f32_to_f16_bits,
    nonfinite_error,
    np_f32_to_f16_bits,
)
from engine.quant._simd_rows import bf16_span, f16_span
from engine.quant.format import QuantFormat

# ============================================================================ Numba kernels


@njit(**KERNEL)
def _f16_row(x, out):
    for j in range(x.shape[0]):
        out[j] = np.uint16(f32_to_f16_bits(x[j]))


@njit(**KERNEL)
def _bf16_row(u, out):
    for j in range(u.shape[0]):
        v = u[j]
        rounded = (v + (np.uint32(0x7FFF) + ((v >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
        quiet = (v >> np.uint32(16)) | np.uint32(64)
        out[j] = np.uint16(quiet if (v & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rounded)


_CHUNK = 1 << 16


@njit(**KERNEL, parallel=True)
def _half_flat(u, out, bf16):
    """``out``: the bf16 (or fp16) bits of the float32 bit patterns ``u`` (both flat), in chunks
    spread over threads, 16 at a time (:mod:`engine.quant._simd_rows`); returns how many NaN or
    infinities it met (in groups of 16)."""
    n = u.shape[0]
    nc = (n + _CHUNK - 1) // _CHUNK
    bad = np.zeros(nc, dtype=np.int64)
    for c in prange(nc):
        lo = c * _CHUNK
        m = min(n - lo, _CHUNK)
        v = m - m % 16
        bad[c] = bf16_span(u, out, lo, v) if bf16 else f16_span(u, out, lo, v)
        for j in range(lo + v, lo + m):
            bad[c] += (u[j] & np.uint32(0x7FFFFFFF)) >= np.uint32(0x7F800000)
        if bf16:
            _bf16_row(u[lo + v : lo + m], out[lo + v : lo + m])
        else:
            _f16_row(u[lo + v : lo + m].view(np.float32), out[lo + v : lo + m])
    return bad.sum()


_TWO_M14 = np.float32(2.0**-14)


@njit(**KERNEL)
def _f16_to_f32_row(b, y, n):
    """``y`` (n,) uint32: the float32 bits of the n fp16 values ``b`` (uint16), exactly
    :func:`f16_bits_to_f32` (NaN payloads kept), written without branches so that it vectorizes:
    normal numbers rebias the exponent, inf/NaN keep an all-ones exponent, subnormals and zero are
    ``(2**-14 + m * 2**-24) - 2**-14``, exact.  ``n`` arrives at run time (see legacy.py)."""
    for j in range(n):
        h = np.uint32(b[j])
        u = (h & np.uint32(0x7FFF)) << np.uint32(13)
        e = h & np.uint32(0x7C00)
        sub = np.float32(np.uint32(u + np.uint32(0x38800000)).view(np.float32) - _TWO_M14)
        r = u + np.uint32(0x38000000)
        r = u + np.uint32(0x70000000) if e == np.uint32(0x7C00) else r
        r = sub.view(np.uint32) if e == np.uint32(0) else r
        y[j] = r | ((h & np.uint32(0x8000)) << np.uint32(16))


@njit(**KERNEL)
def _bf16_to_f32_row(b, y, n):
    """``y`` (n,) uint32: the float32 bits of the n bf16 values ``b`` (uint16)."""
    for j in range(n):
        y[j] = np.uint32(b[j]) << np.uint32(16)


@njit(**KERNEL, parallel=True)
def _half_dequant(b, y, bf16):
    """``y`` (n,) uint32: float32 bits of the fp16 (or ``bf16``) values ``b`` (n,) uint16,
    in chunks spread over threads, each through a plain function (that vectorizes)."""
    n = y.shape[0]
    for c in prange((n + DEQUANT_CHUNK - 1) // DEQUANT_CHUNK):
        lo = c * DEQUANT_CHUNK
        hi = min(n, lo + DEQUANT_CHUNK)
        if bf16:
            _bf16_to_f32_row(b[lo:hi], y[lo:hi], hi - lo)
        else:
            _f16_to_f32_row(b[lo:hi], y[lo:hi], hi - lo)


# ============================================================================ wrappers


def _quantize_f32(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8).copy()


def _dequantize_f32(blocks: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(blocks).view(np.float32).reshape(-1, 1).copy()


def _half_quantizer(name: str, bf16: bool):
    def quantize(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        out = np.empty(x.shape, dtype=np.uint16)
        if _half_flat(x.reshape(-1).view(np.uint32), out.reshape(-1), bf16):
            raise nonfinite_error(x, name)
        return out.view(np.uint8)  # little-endian bytes, as GGUF stores them

    return quantize


def _dequantize_half(blocks: np.ndarray, bf16: bool) -> np.ndarray:
    n = blocks.shape[0]
    y = np.empty(n, dtype=np.uint32)
    # little-endian uint16 (a view, aligned or not: Numba compiles unaligned arrays as well)
    u = np.ascontiguousarray(blocks).reshape(-1).view("<u2")
    if dequant_in_parallel(n):
        _half_dequant(u, y, bf16)
    else:
        (_bf16_to_f32_row if bf16 else _f16_to_f32_row)(u, y, n)
    return y.view(np.float32).reshape(-1, 1)


def _dequantize_f16(blocks: np.ndarray) -> np.ndarray:
    return _dequantize_half(blocks, False)


def _dequantize_bf16(blocks: np.ndarray) -> np.ndarray:
    return _dequantize_half(blocks, True)


FORMATS: dict[str, QuantFormat] = {
    "F32": QuantFormat("F32", 0, 1, 4, _dequantize_f32, _quantize_f32),
    "F16": QuantFormat("F16", 1, 1, 2, _dequantize_f16, _half_quantizer("F16", False), checks_finite=True),
    "BF16": QuantFormat(
        "BF16", 30, 1, 2, _dequantize_bf16, _half_quantizer("BF16", True), checks_finite=True
    ),
}


# ============================================================================ NumPy reference


def _ref_f16(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return np_f32_to_f16_bits(x).astype("<u2").view(np.uint8).reshape(x.shape[0], -1)


def _ref_bf16(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    h = np.where(nan, (u >> 16) | 64, ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) & 0xFFFF)
    return h.astype("<u2").view(np.uint8).reshape(x.shape[0], -1)


REFERENCE = {"F32": _quantize_f32, "F16": _ref_f16, "BF16": _ref_bf16}
