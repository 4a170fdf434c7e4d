"""Helpers shared by the quantization family modules.

Every scalar helper comes twice: a Numba version (``@njit``, for kernels; inlined) and a NumPy
version (``np_`` prefix, vectorized, for the reference implementations).  Both reproduce the C
semantics llama.cpp relies on bit for bit:

- :func:`f32_to_f16_bits` is ggml's ``ggml_compute_fp32_to_fp16`` (round-nearest-even; NaN ->
  sign|0x7E00), :func:`f16_bits_to_f32` the exact inverse widening.
- :func:`nearest_int` is ggml's magic-number ``nearest_int`` (round half to even for
  ``|x| <= 4194303``; outside that range it returns what the C bit trick returns).
- :func:`roundf` is C ``roundf``/``lroundf`` (half away from zero).
- :func:`trunc_i32` / :func:`trunc_i8` are x86 ``(int)x`` / ``(int8_t)x`` on a float
  (``cvttss2si``: NaN and out-of-range give INT32_MIN; int8 keeps the low byte).
- :func:`best_index_int8` is ggml's ``best_index_int8`` on a sorted int8 table.

Also: float32/int conversions used by kernels, and input validation raising
:class:`engine.errors.QuantError` (used by ``engine.quant``; kernels get validated input).

Numba typing note for kernel writers: ``int * float32`` is float64 in Numba; convert integers
with ``np.float32(i)`` and write float literals as ``np.float32(...)`` to keep C's float math.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit

from engine._jit import INLINE, KERNEL  # also points Numba's cache at the kernels' sources
from engine.errors import QuantError

QK_K = 256


_I32_MIN = -(2**31)
_F16_TO_INF = np.float32(2.0**112)  # ggml: scale_to_inf
_F16_TO_ZERO = np.float32(2.0**-110)  # ggml: scale_to_zero
_TWO_M24 = np.float32(2.0**-24)


# ----------------------------------------------------------------------------- fp16


@njit(**INLINE)
def f32_to_f16_bits(f):
    """ggml_compute_fp32_to_fp16: float32 -> IEEE half bits (as int)."""
    f = np.float32(f)
    base = (np.float32(abs(f)) * _F16_TO_INF) * _F16_TO_ZERO
    w = np.int64(np.float32(f).view(np.uint32))
    shl1_w = (w + w) & 0xFFFFFFFF
    sign = w & 0x80000000
    bias = shl1_w & 0xFF000000
    if bias < 0x71000000:
        bias = 0x71000000
    base = np.float32(np.uint32((bias >> 1) + 0x07800000).view(np.float32) + base)
    bits = np.int64(np.float32(base).view(np.uint32))
    exp_bits = (bits >> 13) & 0x00007C00
    mantissa_bits = bits & 0x00000FFF
    nonsign = exp_bits + mantissa_bits
    if shl1_w > 0xFF000000:
        nonsign = 0x7E00
    return (sign >> 16) | nonsign


@njit(**INLINE)
def f16_bits_to_f32(h):
    """IEEE half bits -> float32, exact (NaN payloads kept, like NumPy's astype)."""
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = np.float32(np.float32(m) * _TWO_M24)  # exact
        return -v if sign else v
    top = 0x7F800000 if e == 31 else (e + 112) << 23
    bits = sign | top | (m << 13)
    return np.uint32(bits).view(np.float32)


@njit(**INLINE)
def f16_round(f):
    """float32 -> nearest half -> float32 (GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(f)))."""
    return f16_bits_to_f32(f32_to_f16_bits(f))


def np_f32_to_f16_bits(f: np.ndarray) -> np.ndarray:
    """Vectorized ggml_compute_fp32_to_fp16 -> uint16 array."""
    f = np.asarray(f, dtype=np.float32)
    with np.errstate(over="ignore"):
        base = (np.abs(f) * np.float32(2.0**112)) * np.float32(2.0**-110)
    w = f.view(np.uint32).astype(np.uint64)
    shl1_w = (w + w) & np.uint64(0xFFFFFFFF)
    sign = w & np.uint64(0x80000000)
    bias = np.maximum(shl1_w & np.uint64(0xFF000000), np.uint64(0x71000000))
    base = ((bias >> np.uint64(1)) + np.uint64(0x07800000)).astype(np.uint32).view(np.float32) + base
    bits = base.astype(np.float32).view(np.uint32).astype(np.uint64)
    nonsign = ((bits >> np.uint64(13)) & np.uint64(0x7C00)) + (bits & np.uint64(0xFFF))
    out = (sign >> np.uint64(16)) | np.where(shl1_w > np.uint64(0xFF000000), np.uint64(0x7E00), nonsign)
    return out.astype(np.uint16)


def np_f16_bits_to_f32(h: np.ndarray) -> np.ndarray:
    return np.asarray(h, dtype=np.uint16).view(np.float16).astype(np.float32)


def np_f16_round(f: np.ndarray) -> np.ndarray:
    return np_f16_bits_to_f32(np_f32_to_f16_bits(f))


# ----------------------------------------------------------------------------- rounding


@njit(**INLINE)
def nearest_int(f):
    """ggml's nearest_int: (bits(f + 12582912.f) & 0x7fffff) - 0x400000."""
    v = np.float32(np.float32(f) + np.float32(12582912.0))
    i = np.int64(np.float32(v).view(np.int32))
    return (i & 0x007FFFFF) - 0x00400000


def np_nearest_int(f: np.ndarray) -> np.ndarray:
    """Vectorized ggml nearest_int -> int64 array."""
    with np.errstate(invalid="ignore", over="ignore"):
        v = (np.asarray(f, dtype=np.float32) + np.float32(12582912.0)).astype(np.float32)
    return (v.view(np.int32).astype(np.int64) & 0x007FFFFF) - 0x00400000


@njit(**INLINE)
def roundf(f):
    """C roundf/lroundf (half away from zero) of a finite float -> int."""
    a = math.floor(abs(np.float64(f)) + 0.5)
    return np.int64(-a if f < 0 else a)


def np_roundf(f: np.ndarray) -> np.ndarray:
    f64 = np.asarray(f, dtype=np.float64)
    return (np.sign(f64) * np.floor(np.abs(f64) + 0.5)).astype(np.int64)


@njit(**INLINE)
def trunc_i32(f):
    """x86 (int)f: truncation toward zero; NaN / out of range -> INT32_MIN."""
    f64 = np.float64(f)
    if not (f64 > -2147483649.0 and f64 < 2147483648.0):
        return np.int64(_I32_MIN)
    return np.int64(math.trunc(f64))


@njit(**INLINE)
def trunc_i8(f):
    """x86 (int8_t)f: (int)f, low byte, signed."""
    return ((trunc_i32(f) + 128) & 0xFF) - 128


def np_trunc_i32(f: np.ndarray) -> np.ndarray:
    f64 = np.asarray(f, dtype=np.float64)
    ok = (f64 > -2147483649.0) & (f64 < 2147483648.0)
    with np.errstate(invalid="ignore"):
        t = np.trunc(np.where(ok, f64, 0.0)).astype(np.int64)
    return np.where(ok, t, np.int64(_I32_MIN))


def np_trunc_i8(f: np.ndarray) -> np.ndarray:
    return ((np_trunc_i32(f) + 128) & 0xFF) - 128


# ----------------------------------------------------------------------------- tables


@njit(**INLINE)
def best_index_int8(values, x):
    """ggml best_index_int8(n, values, x) for a sorted int8 table (x float32)."""
    n = values.shape[0]
    if x <= np.float32(values[0]):
        return 0
    if x >= np.float32(values[n - 1]):
        return n - 1
    # The C binary search moves ml up exactly where !(x < values[mav]); on a sorted table it ends
    # at ml = count of k in 1..n-2 with !(x < values[k]) (branch-free, same index; NaN -> n-2).
    ml = 0
    for k in range(1, n - 1):
        ml += not (x < np.float32(values[k]))
    mu = ml + 1
    if np.float32(x - np.float32(values[mu - 1])) < np.float32(np.float32(values[mu]) - x):
        return mu - 1
    return mu


def np_best_index_int8(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Vectorized best_index_int8 (same comparisons, same tie rule) -> int64 array."""
    vals = values.astype(np.float32)
    n = len(vals)
    x = np.asarray(x, dtype=np.float32)
    # mu = first index with x < vals[mu] among 1..n-1 (binary search result for interior x)
    mu = np.searchsorted(vals, x, side="right").astype(np.int64)
    mu = np.clip(mu, 1, n - 1)
    lo = vals[mu - 1]
    hi = vals[mu]
    with np.errstate(invalid="ignore"):
        res = np.where((x - lo).astype(np.float32) < (hi - x).astype(np.float32), mu - 1, mu)
        res = np.where(x <= vals[0], 0, np.where(x >= vals[n - 1], n - 1, res))
    return res.astype(np.int64)


# ----------------------------------------------------------------------------- bytes


@njit(**INLINE)
def put_u16(out, pos, v):
    out[pos] = v & 0xFF
    out[pos + 1] = (v >> 8) & 0xFF


@njit(**INLINE)
def get_u16(buf, pos):
    return np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8)


def np_u16_bytes(v: np.ndarray) -> np.ndarray:
    """(n,) uint16 -> (n, 2) little-endian bytes."""
    return np.ascontiguousarray(v.astype("<u2")).view(np.uint8).reshape(-1, 2)


# ----------------------------------------------------------------------------- validation


@njit(**KERNEL)
def _count_nonfinite(bits):
    """How many float32 (given as their uint32 bits) are inf or NaN: one vectorized pass, no
    temporary (np.isfinite(x).all() writes and rereads a bool array: ~10% of a Q4_1 quantize)."""
    n = 0
    for i in range(bits.shape[0]):
        n += (bits[i] & 0x7F800000) == 0x7F800000
    return n


def check_rows(x: object, qtype: str, block_size: int, finite: bool = True) -> np.ndarray:
    """Validate a quantize input: 2-D float32, non-empty, rows divisible into blocks, and (unless
    ``finite`` is False: the quantizer checks as it goes) finite.  Returns it C-contiguous."""
    if not isinstance(x, np.ndarray):
        raise QuantError(f"Cannot quantize to {qtype}: input must be a NumPy array, got {type(x).__name__}.")
    if x.dtype != np.float32:
        raise QuantError(f"Cannot quantize to {qtype}: input dtype must be float32, got {x.dtype}.")
    if x.ndim != 2:
        raise QuantError(
            f"Cannot quantize to {qtype}: input must be 2-D (rows x n_per_row), "
            f"got {x.ndim}-D shape {x.shape}."
        )
    if x.size == 0:
        raise QuantError(f"Cannot quantize to {qtype}: input is empty (shape {x.shape}).")
    n = x.shape[1]
    if n % block_size:
        raise QuantError(
            f"Cannot quantize to {qtype}: row length {n} is not a multiple of the block size {block_size}."
        )
    x = np.ascontiguousarray(x)
    if finite:
        check_finite(x, qtype)
    return x


def check_finite(x: np.ndarray, qtype: str) -> None:
    """Raise :class:`QuantError` naming the first NaN or infinity of ``x`` (2-D, C-contiguous)."""
    if _count_nonfinite(x.reshape(-1).view(np.uint32)):
        raise nonfinite_error(x, qtype)


def nonfinite_error(x: np.ndarray, qtype: str) -> QuantError:
    """The error for an input with a NaN or an infinity, naming the first one."""
    r, c = np.argwhere(~np.isfinite(x))[0]
    return QuantError(
        f"Cannot quantize to {qtype}: input has a non-finite value ({x[r, c]}) at row {r}, column {c}."
    )


def check_imatrix(imatrix: object, qtype: str, n_per_row: int) -> np.ndarray:
    """Validate an importance matrix: 1-D, one finite non-negative float per column."""
    try:
        im = np.asarray(imatrix, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise QuantError(f"Cannot quantize to {qtype}: the importance matrix is not numeric ({e}).") from e
    if im.ndim != 1 or im.shape[0] != n_per_row:
        raise QuantError(
            f"Cannot quantize to {qtype}: the importance matrix must have one value per column "
            f"({n_per_row}), got shape {im.shape}."
        )
    bad = ~np.isfinite(im)
    if bad.any():
        i = int(np.argmax(bad))
        raise QuantError(
            f"Cannot quantize to {qtype}: the importance matrix has a non-finite value ({im[i]}) "
            f"at column {i}."
        )
    neg = im < 0
    if neg.any():
        i = int(np.argmax(neg))
        raise QuantError(
            f"Cannot quantize to {qtype}: the importance matrix has a negative value ({im[i]}) at column {i}."
        )
    return np.ascontiguousarray(im)


def imatrix_arg(imatrix: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """Kernel argument pair (array, has_imatrix) for an optional imatrix."""
    if imatrix is None:
        return np.empty(0, dtype=np.float32), False
    return imatrix, True


# ----------------------------------------------------------------------------- dequantize

# Elements per chunk of blocks that a dequantizer's ``prange`` hands to one plain function call.
DEQUANT_CHUNK = 1 << 15


def dequant_in_parallel(n_elems: int) -> bool:
    """Whether a dequantizer of ``n_elems`` outputs should go through its ``prange`` driver: only for
    more than one chunk and more than one Numba thread (otherwise its plain function, called
    directly, skips the thread pool)."""
    return n_elems > DEQUANT_CHUNK and numba.get_num_threads() > 1


def dequant_output(n_blocks: int, block_size: int) -> np.ndarray:
    """The float32 output of a dequantizer, (n_blocks, block_size), allocated by NumPy rather than inside
    a Numba kernel: NumPy asks Linux for transparent huge pages on large arrays, so a 64 MiB result
    costs ~4 ms of first-touch page faults instead of ~23 ms with 4 KiB pages (what an ``np.empty`` in
    a kernel gets), which was most of a large Q5_0/IQ4/MXFP4 dequantize."""
    return np.empty((n_blocks, block_size), np.float32)
