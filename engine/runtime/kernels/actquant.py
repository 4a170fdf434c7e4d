"""Activation quantization, as llama.cpp's CPU backend does before every quantized mat-mul.

Q4_0/Q5_0/Q8_0 weights multiply activations quantized to Q8_0 (32-element blocks, fp16 scale;
the AVX2 path: ``id = 127/amax``, round half to even); K-quant weights multiply activations
quantized to Q8_K (256-element blocks, f32 scale ``1/(-127/max)`` where ``max`` is the signed
value of the largest magnitude, ``nearest_int``, per-16 sums ``bsums``).

Each function returns the integer codes and scales; :func:`dequant_act` turns them back into the
float activations the integer dot products stand for.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine.quant._common import f16_bits_to_f32, f32_to_f16_bits
from engine.runtime.kernels._config import KERNEL

QK8_0 = 32
QK_K = 256


@njit(**KERNEL, parallel=True)
def quantize_q8_0(x):
    """x (n, K) f32 -> (q int8 (n, K), d f32 (n, K/32)); d is rounded to fp16 as llama.cpp stores it."""
    n, k = x.shape
    nb = k // QK8_0
    q = np.empty((n, k), np.int8)
    d = np.empty((n, nb), np.float32)
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
        for j in range(QK8_0):
            q[t, o + j] = np.int8(np.rint(x[t, o + j] * idd))
    return q, d


@njit(**KERNEL, parallel=True)
def quantize_q8_k(x):
    """x (n, K) f32 -> (q int8 (n, K), d f32 (n, K/256), bsums int32 (n, K/16))."""
    n, k = x.shape
    nb = k // QK_K
    q = np.empty((n, k), np.int8)
    d = np.empty((n, nb), np.float32)
    bs = np.empty((n, k // 16), np.int32)
    for i in prange(n * nb):
        t = i // nb
        b = i % nb
        o = b * QK_K
        amax = np.float32(0.0)
        vmax = np.float32(0.0)
        for j in range(QK_K):
            a = abs(x[t, o + j])
            if a > amax:
                amax = a
                vmax = x[t, o + j]
        if amax == 0:
            d[t, b] = 0.0
            for j in range(QK_K):
                q[t, o + j] = 0
        else:
            iscale = np.float32(np.float32(-127.0) / vmax)
            for j in range(QK_K):
                v = np.rint(np.float32(iscale * x[t, o + j]))
                q[t, o + j] = np.int8(min(127.0, v))
            d[t, b] = np.float32(np.float32(1.0) / iscale)
        for g in range(16):
            s = 0
            for j in range(16):
                s += q[t, o + 16 * g + j]
            bs[t, b * 16 + g] = s
    return q, d, bs


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


def dequant_act(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The float activations (n, K) that codes ``q`` and block scales ``d`` stand for."""
    n, k = q.shape
    bs = k // d.shape[1]
    return (q.reshape(n, -1, bs).astype(np.float32) * d[:, :, None]).reshape(n, k)
