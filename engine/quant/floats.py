"""Float storage types: F32, F16, BF16 (block size 1).

F16 is ggml's ``ggml_fp32_to_fp16_row`` (``ggml_compute_fp32_to_fp16``: round-nearest-even,
overflow to infinity, NaN -> sign|0x7E00); BF16 is ``ggml_fp32_to_bf16_row_ref``
(round-nearest-even on the top 16 bits, NaN forced quiet by setting bit 6, no flushing).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.quant._common import KERNEL, f16_bits_to_f32, f32_to_f16_bits, np_f32_to_f16_bits
from engine.quant.format import QuantFormat

# ============================================================================ Numba kernels


@njit(**KERNEL)
def _f16_row(x, out):
    for j in range(x.shape[0]):
        out[j] = np.uint16(f32_to_f16_bits(x[j]))


@njit(**KERNEL, parallel=True)
def _f16_rows(x, out):
    """``out`` (rows, n) uint16: the fp16 bits of ``x``.  Each row goes through a plain function of
    its own: inside a ``prange`` body the element loop does not vectorize, in a function it does."""
    for r in prange(x.shape[0]):
        _f16_row(x[r], out[r])


@njit(**KERNEL)
def _bf16_row(u, out):
    for j in range(u.shape[0]):
        v = u[j]
        rounded = (v + (np.uint32(0x7FFF) + ((v >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
        quiet = (v >> np.uint32(16)) | np.uint32(64)
        out[j] = np.uint16(quiet if (v & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rounded)


@njit(**KERNEL, parallel=True)
def _bf16_rows(u, out):
    """``out`` (rows, n) uint16: the bf16 bits of the float32 bit patterns ``u`` (rows, n) uint32."""
    for r in prange(u.shape[0]):
        _bf16_row(u[r], out[r])


@njit(**KERNEL, parallel=True)
def _f16_dequant(blocks):
    n = blocks.shape[0]
    y = np.empty((n, 1), dtype=np.float32)
    for i in prange(n):
        y[i, 0] = f16_bits_to_f32(np.int64(blocks[i, 0]) | (np.int64(blocks[i, 1]) << 8))
    return y


@njit(**KERNEL, parallel=True)
def _bf16_dequant(blocks):
    n = blocks.shape[0]
    y = np.empty((n, 1), dtype=np.float32)
    for i in prange(n):
        bits = (np.int64(blocks[i, 0]) << 16) | (np.int64(blocks[i, 1]) << 24)
        y[i, 0] = np.uint32(bits).view(np.float32)
    return y


# ============================================================================ wrappers


def _quantize_f32(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8).copy()


def _dequantize_f32(blocks: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(blocks).view(np.float32).reshape(-1, 1).copy()


def _quantize_f16(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.uint16)
    _f16_rows(x, out)
    return out.view(np.uint8)  # little-endian bytes, as GGUF stores them


def _quantize_bf16(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    out = np.empty(x.shape, dtype=np.uint16)
    _bf16_rows(np.ascontiguousarray(x).view(np.uint32), out)
    return out.view(np.uint8)


def _dequantize_f16(blocks: np.ndarray) -> np.ndarray:
    return _f16_dequant(np.ascontiguousarray(blocks))


def _dequantize_bf16(blocks: np.ndarray) -> np.ndarray:
    return _bf16_dequant(np.ascontiguousarray(blocks))


FORMATS: dict[str, QuantFormat] = {
    "F32": QuantFormat("F32", 0, 1, 4, _dequantize_f32, _quantize_f32),
    "F16": QuantFormat("F16", 1, 1, 2, _dequantize_f16, _quantize_f16),
    "BF16": QuantFormat("BF16", 30, 1, 2, _dequantize_bf16, _quantize_bf16),
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
