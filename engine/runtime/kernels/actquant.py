"""Activation conversion, as llama.cpp's CPU backend does before every mat-mul (``from_float`` of
the weight type's ``vec_dot_type``).

- Q8_0 (for Q4_0, Q5_0, Q8_0, IQ4_NL, MXFP4): 32-element blocks, fp16 scale; the x86 path:
  ``id = 127/amax``, round half to even.
- Q8_1 (for Q4_1, Q5_1): the same codes and scale plus ``s = fp16(d·Σq)`` per block, with the
  unrounded f32 ``d = amax/127`` (checked against llama.cpp's ``quantize_row_q8_1``).
- Q8_K (for K-quants, IQ and TQ types): 256-element blocks, f32 scale ``1/(-127/max)`` where
  ``max`` is the signed value of the largest magnitude, ``nearest_int``, per-16 sums ``bsums``.
- F16 / BF16 weights take activations rounded to their type (round to nearest even; BF16 keeps
  NaN quiet), returned as f32 holding exactly the rounded values; F32 takes them as they are.

The quantizers return the integer codes and scales; :func:`dequant_act` turns them back into the
float activations the integer dot products stand for.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.quant._common import f16_bits_to_f32, f32_to_f16_bits
from engine.runtime.kernels._config import KERNEL
from engine.runtime.kernels.fmath import f32_from_bits

QK8_0 = 32
QK_K = 256


@njit(**KERNEL)
def _abs_bits_max(x, o, m):
    """The largest |x[o:o+m]| as its f32 bit pattern: for non-NaN floats the bits of |x| order like
    the values, so this is an integer max, which vectorizes (a float max does not, here)."""
    bits = x.view(np.uint32)
    a = np.uint32(0)
    for j in range(o, o + m):
        a = max(a, bits[j] & np.uint32(0x7FFFFFFF))
    return a


@njit(**KERNEL)
def _q8_0_row(x, q, d):
    """One row of :func:`quantize_q8_0` (1-D views: loops here vectorize, inside ``prange`` not)."""
    for b in range(d.shape[0]):
        o = b * QK8_0
        amax = f32_from_bits(_abs_bits_max(x, o, QK8_0))
        dd = np.float32(amax / np.float32(127.0))
        d[b] = f16_bits_to_f32(f32_to_f16_bits(dd))
        idd = np.float32(np.float32(127.0) / amax) if amax != 0 else np.float32(0.0)
        for j in range(o, o + QK8_0):
            q[j] = np.int8(np.rint(x[j] * idd))


@njit(**KERNEL, parallel=True)
def quantize_q8_0(x):
    """x (n, K) f32 -> (q int8 (n, K), d f32 (n, K/32)); d is rounded to fp16 as llama.cpp stores it."""
    n, k = x.shape
    nb = k // QK8_0
    x = np.ascontiguousarray(x)
    q = np.empty((n, k), np.int8)
    d = np.empty((n, nb), np.float32)
    for t in prange(n):
        _q8_0_row(x[t], q[t], d[t])
    return q, d


@njit(**KERNEL)
def _q8_k_row(x, q, d, bs):
    """One row of :func:`quantize_q8_k`."""
    for b in range(d.shape[0]):
        o = b * QK_K
        abits = _abs_bits_max(x, o, QK_K)
        if abits == 0:
            d[b] = 0.0
            for j in range(o, o + QK_K):
                q[j] = 0
        else:
            bits = x.view(np.uint32)
            vmax = np.float32(0.0)
            for j in range(o, o + QK_K):  # the first element of largest magnitude, as llama.cpp
                if bits[j] & np.uint32(0x7FFFFFFF) == abits:
                    vmax = x[j]
                    break
            iscale = np.float32(np.float32(-127.0) / vmax)
            for j in range(o, o + QK_K):
                v = np.rint(np.float32(iscale * x[j]))
                q[j] = np.int8(min(np.float32(127.0), v))
            d[b] = np.float32(np.float32(1.0) / iscale)
        for g in range(16):
            s = np.int32(0)
            for j in range(o + 16 * g, o + 16 * g + 16):
                s += np.int32(q[j])
            bs[b * 16 + g] = s


@njit(**KERNEL, parallel=True)
def quantize_q8_k(x):
    """x (n, K) f32 -> (q int8 (n, K), d f32 (n, K/256), bsums int32 (n, K/16))."""
    n, k = x.shape
    nb = k // QK_K
    x = np.ascontiguousarray(x)
    q = np.empty((n, k), np.int8)
    d = np.empty((n, nb), np.float32)
    bs = np.empty((n, k // 16), np.int32)
    for t in prange(n):
        _q8_k_row(x[t], q[t], d[t], bs[t])
    return q, d, bs


@njit(**KERNEL, parallel=True)
def quantize_q8_1(x):
    """x (n, K) -> (q, d, s): :func:`quantize_q8_0` plus s (n, K/32) = fp16(d_f32 · Σ q) as f32."""
    n, k = x.shape
    nb = k // QK8_0
    q = np.empty((n, k), np.int8)
    d = np.empty((n, nb), np.float32)
    s = np.empty((n, nb), np.float32)
    for i in prange(n * nb):
        t = i // nb
        b = i % nb
        o = b * QK8_0
        amax = np.float32(0.0)
        for j in range(QK8_0):
            a = abs(x[t, o + j])
            if a > amax:
                amax = a
        dd = np.float32(amax / np.float32(127.0))
        d[t, b] = f16_bits_to_f32(f32_to_f16_bits(dd))
        idd = np.float32(np.float32(127.0) / amax) if amax != 0 else np.float32(0.0)
        tot = 0
        for j in range(QK8_0):
            v = np.int8(np.rint(x[t, o + j] * idd))
            q[t, o + j] = v
            tot += v
        s[t, b] = f16_bits_to_f32(f32_to_f16_bits(np.float32(dd * np.float32(tot))))
    return q, d, s


@njit(**KERNEL, parallel=True)
def round_f16(x):
    """x (n, K) f32 -> the nearest fp16 values, as f32 (llama.cpp's fp32 -> fp16 conversion)."""
    n, k = x.shape
    out = np.empty((n, k), np.float32)
    for t in prange(n):
        for j in range(k):
            out[t, j] = f16_bits_to_f32(f32_to_f16_bits(x[t, j]))
    return out


@njit(**KERNEL, parallel=True)
def round_bf16(x):
    """x (n, K) f32 -> the nearest bf16 values, as f32 (round half to even; NaN made quiet)."""
    n, k = x.shape
    u = x.view(np.uint32)
    out = np.empty((n, k), np.uint32)
    for t in prange(n):
        for j in range(k):
            v = np.uint32(u[t, j])
            if (v & 0x7FFFFFFF) > 0x7F800000:
                out[t, j] = (v | 0x00400000) & 0xFFFF0000
            else:
                out[t, j] = ((v + 0x7FFF + ((v >> 16) & 1)) >> 16) << 16
    return out.view(np.float32)


def quantize_q8_0_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy reference of :func:`quantize_q8_0`."""
    n, k = x.shape
    xb = x.reshape(n, k // QK8_0, QK8_0).astype(np.float32)
    amax = np.abs(xb).max(axis=2)
    d = (amax / np.float32(127.0)).astype(np.float32).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore"):
        idd = np.where(amax != 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(xb * idd[:, :, None]).astype(np.int8)
    return q.reshape(n, k), d


def quantize_q8_k_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy reference of :func:`quantize_q8_k`."""
    n, k = x.shape
    xb = x.reshape(n, k // QK_K, QK_K).astype(np.float32)
    idx = np.abs(xb).argmax(axis=2)
    vmax = np.take_along_axis(xb, idx[:, :, None], axis=2)[:, :, 0]
    with np.errstate(divide="ignore"):
        iscale = np.where(vmax != 0, np.float32(-127.0) / vmax, np.float32(0.0)).astype(np.float32)
        d = np.where(vmax != 0, np.float32(1.0) / iscale, np.float32(0.0)).astype(np.float32)
    q = np.minimum(np.float32(127.0), np.rint((iscale[:, :, None] * xb).astype(np.float32))).astype(np.int8)
    bs = q.reshape(n, k // 16, 16).astype(np.int32).sum(axis=2)
    return q.reshape(n, k), d, bs


def quantize_q8_1_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy reference of :func:`quantize_q8_1`."""
    n, k = x.shape
    q, d = quantize_q8_0_ref(x)
    dd = (np.abs(x.reshape(n, k // QK8_0, QK8_0)).max(axis=2) / np.float32(127.0)).astype(np.float32)
    tot = q.reshape(n, k // QK8_0, QK8_0).astype(np.int32).sum(axis=2).astype(np.float32)
    s = (dd * tot).astype(np.float32).astype(np.float16).astype(np.float32)
    return q, d, s


def round_f16_ref(x: np.ndarray) -> np.ndarray:
    """NumPy reference of :func:`round_f16`."""
    with np.errstate(over="ignore"):  # beyond fp16's range: inf, as in C
        return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def round_bf16_ref(x: np.ndarray) -> np.ndarray:
    """NumPy reference of :func:`round_bf16`."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = np.where(nan, (u | 0x00400000) & 0xFFFF0000, r)
    return r.astype(np.uint32).view(np.float32)


def dequant_act(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The float activations (n, K) that codes ``q`` and block scales ``d`` stand for."""
    n, k = q.shape
    bs = k // d.shape[1]
    return (q.reshape(n, -1, bs).astype(np.float32) * d[:, :, None]).reshape(n, k)
