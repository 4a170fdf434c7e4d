"""Element-wise and per-row kernels: RMSNorm, RoPE (NEOX; any mode with frequency factors), GELU-tanh
and SiLU gating, softmax.

Each has a Numba implementation and a NumPy reference (``*_ref``); both follow ggml's CPU
arithmetic (RMSNorm sums squares in float64; RoPE's angle is advanced by repeated f32
multiplication; SiLU is ``x / (1 + exp(-x))`` in f32; softmax sums in float64).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from engine.quant._common import f16_bits_to_f32, f32_to_f16_bits
from engine.runtime.kernels._config import KERNEL
from engine.runtime.kernels.fmath import fma32, fma32_ref
from engine.runtime.kernels.fmath import round_f16 as round_f16_

GELU_COEF_A = np.float32(0.044715)
SQRT_2_OVER_PI = np.float32(0.79788456080286535587989211986876)


# ---------------------------------------------------------------------------- RMSNorm


@njit(**KERNEL, parallel=True)
def rmsnorm(x, w, eps):
    """RMSNorm over the last axis of x (rows, n), times weight w (n,) -> new array."""
    rows, n = x.shape
    out = np.empty_like(x)
    for r in prange(rows):
        s = 0.0
        for i in range(n):
            v = x[r, i]
            s += np.float64(np.float32(v * v))
        mean = np.float32(s / n)
        scale = np.float32(np.float32(1.0) / np.float32(math.sqrt(np.float32(mean + eps))))
        for i in range(n):
            out[r, i] = np.float32(x[r, i] * scale) * w[i]
    return out


def rmsnorm_ref(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x = np.asarray(x, np.float32)
    mean = ((x * x).astype(np.float64).sum(axis=-1) / x.shape[-1]).astype(np.float32)
    scale = (np.float32(1.0) / np.sqrt(mean + np.float32(eps))).astype(np.float32)
    return (x * scale[..., None]) * w


# ---------------------------------------------------------------------------- RoPE (NEOX)


@njit(**KERNEL, parallel=True)
def rope_neox(x, positions, base, freq_scale):
    """Rotate x (n, heads, d) in place, NEOX mode (pairs i, i + d/2), ggml's angle recurrence and its
    rotation as llama.cpp's build computes it: ``fma(x0, c, -(x1·s))``, ``fma(x0, s, x1·c)`` (its C++ is
    compiled with floating-point contraction; checked against its tensors by
    ``scripts/debug_llama_ops.py``)."""
    n, nh, d = x.shape
    half = d // 2
    theta_scale = np.float32(math.pow(np.float32(base), np.float32(-2.0) / np.float32(d)))
    for t in prange(n):
        theta = np.float32(positions[t])
        for i in range(half):
            ang = np.float32(freq_scale * theta)
            c = np.float32(math.cos(ang))
            s = np.float32(math.sin(ang))
            for h in range(nh):
                x0 = x[t, h, i]
                x1 = x[t, h, i + half]
                x[t, h, i] = fma32(x0, c, -(x1 * s))  # llama.cpp's contracted x0·c - x1·s
                x[t, h, i + half] = fma32(x0, s, x1 * c)
            theta = np.float32(theta * theta_scale)
    return x


def rope_neox_ref(x: np.ndarray, positions: np.ndarray, base: float, freq_scale: float) -> np.ndarray:
    x = np.array(x, np.float32)
    n, _, d = x.shape
    half = d // 2
    theta_scale = np.float32(np.float32(base) ** (np.float32(-2.0) / np.float32(d)))
    theta = np.asarray(positions, np.float32).copy()
    cos = np.empty((n, half), np.float32)
    sin = np.empty((n, half), np.float32)
    for i in range(half):
        ang = (np.float32(freq_scale) * theta).astype(np.float64)
        cos[:, i] = np.cos(ang)
        sin[:, i] = np.sin(ang)
        theta = (theta * theta_scale).astype(np.float32)
    x0 = x[:, :, :half].copy()
    x1 = x[:, :, half:].copy()
    c = cos[:, None, :]
    s = sin[:, None, :]
    x[:, :, :half] = fma32_ref(x0, c, -(x1 * s))
    x[:, :, half:] = fma32_ref(x0, s, x1 * c)
    return x


# ---------------------------------------------------------------------------- RoPE (NORM or NEOX, factors)


@njit(**KERNEL, parallel=True)
def rope(x, positions, n_rot, base, freq_scale, freq_factors, mscale, neox):
    """Rotate the first ``n_rot`` dims of every head of x (n, heads, d) in place, as ggml's
    ``rope_ext`` without YaRN (ext_factor 0): pair ``i`` (``0 <= i < n_rot/2``) is (x[2i], x[2i+1])
    in NORM mode (llama) or (x[i], x[i + n_rot/2]) in NEOX mode; its angle is
    ``freq_scale * (pos * base^(-2i/n_rot) / freq_factors[i])`` with the power advanced by repeated
    f32 multiplication, and cos/sin are scaled by ``mscale`` (llama.cpp's attn_factor).
    ``freq_factors``: (n_rot/2,) f32 (all ones when the model has none)."""
    n, nh, _ = x.shape
    half = n_rot // 2
    theta_scale = np.float32(math.pow(np.float32(base), np.float32(-2.0) / np.float32(n_rot)))
    fs = np.float32(freq_scale)
    ms = np.float32(mscale)
    for t in prange(n):
        theta = np.float32(positions[t])
        for i in range(half):
            ang = np.float32(fs * np.float32(theta / freq_factors[i]))
            c = np.float32(np.float32(math.cos(ang)) * ms)
            s = np.float32(np.float32(math.sin(ang)) * ms)
            if neox:
                i0 = i
                i1 = i + half
            else:
                i0 = 2 * i
                i1 = 2 * i + 1
            for h in range(nh):
                x0 = x[t, h, i0]
                x1 = x[t, h, i1]
                x[t, h, i0] = fma32(x0, c, -(x1 * s))  # llama.cpp's contracted x0·c - x1·s
                x[t, h, i1] = fma32(x0, s, x1 * c)
            theta = np.float32(theta * theta_scale)
    return x


def rope_ref(
    x: np.ndarray,
    positions: np.ndarray,
    n_rot: int,
    base: float,
    freq_scale: float,
    freq_factors: np.ndarray,
    mscale: float,
    neox: bool,
) -> np.ndarray:
    """NumPy reference of :func:`rope` (returns a new array)."""
    x = np.array(x, np.float32)
    n = x.shape[0]
    half = n_rot // 2
    theta_scale = np.float32(np.float32(base) ** (np.float32(-2.0) / np.float32(n_rot)))
    theta = np.asarray(positions, np.float32).copy()
    cos = np.empty((n, half), np.float32)
    sin = np.empty((n, half), np.float32)
    ff = np.asarray(freq_factors, np.float32)
    for i in range(half):
        ang = (np.float32(freq_scale) * (theta / ff[i]).astype(np.float32)).astype(np.float32)
        ms = np.float32(mscale)
        cos[:, i] = (np.cos(ang.astype(np.float64)).astype(np.float32) * ms).astype(np.float32)
        sin[:, i] = (np.sin(ang.astype(np.float64)).astype(np.float32) * ms).astype(np.float32)
        theta = (theta * theta_scale).astype(np.float32)
    if neox:
        i0, i1 = np.arange(half), np.arange(half) + half
    else:
        i0, i1 = np.arange(half) * 2, np.arange(half) * 2 + 1
    x0 = x[:, :, i0].copy()
    x1 = x[:, :, i1].copy()
    c = cos[:, None, :]
    s = sin[:, None, :]
    x[:, :, i0] = fma32_ref(x0, c, -(x1 * s))
    x[:, :, i1] = fma32_ref(x0, s, x1 * c)
    return x


# ---------------------------------------------------------------------------- GELU (tanh)


@njit(**KERNEL, inline="always")
def _gelu1(v):
    """ggml_gelu_f32 as llama.cpp's build computes it: in f32 (tanhf), with the contraction
    ``1 + (A·x)·x -> fma(A·x, x, 1)``; its fp16 table (ggml_table_gelu_f16) is reproduced exactly
    (tests/test_kernels.py)."""
    inner = fma32(np.float32(GELU_COEF_A * v), v, np.float32(1.0))
    t = np.float32(math.tanh(np.float32(np.float32(SQRT_2_OVER_PI * v) * inner)))
    return np.float32(np.float32(np.float32(0.5) * v) * np.float32(np.float32(1.0) + t))


@njit(**KERNEL, parallel=True)
def geglu(gate, up, fp16_table):
    """gelu_tanh(gate) * up.  ``fp16_table`` mimics ggml's table: gelu of the fp16-rounded input,
    rounded to fp16 (|x| < 10); beyond, 0 or x."""
    rows, n = gate.shape
    out = np.empty_like(gate)
    for r in prange(rows):
        for i in range(n):
            v = gate[r, i]
            if fp16_table:
                if v <= -10.0:
                    g = np.float32(0.0)
                elif v >= 10.0:
                    g = v
                else:
                    g = f16_bits_to_f32(f32_to_f16_bits(_gelu1(f16_bits_to_f32(f32_to_f16_bits(v)))))
            else:
                g = _gelu1(v)
            out[r, i] = g * up[r, i]
    return out


@njit(**KERNEL)
def geglu_lut(gate, up, table):
    """:func:`geglu` with ``fp16_table``, through a table of every fp16 input
    (:func:`engine.runtime.kernels.fused.gelu_f16_table`, ggml's ``ggml_table_gelu_f16``): the same
    numbers without a tanh and two fp16 roundings per element."""
    out = np.empty_like(gate)
    _geglu_lut_into(gate, up, table, out)
    return out


@njit(**KERNEL, parallel=True)
def _geglu_lut_into(gate, up, table, out):
    rows, n = gate.shape
    for r in prange(rows):
        for i in range(n):
            v = gate[r, i]
            if v <= -10.0:
                g = np.float32(0.0)
            elif v >= 10.0:
                g = v
            else:
                g = table[f32_to_f16_bits(v)]
            out[r, i] = g * up[r, i]


@njit(**KERNEL)
def geglu_lut_inplace(gate, up, table):
    """:func:`geglu_lut` written over ``up`` (each element read before it is written): one
    (tokens, n_ff) array less at the prefill's peak."""
    _geglu_lut_into(gate, up, table, up)
    return up


def geglu_ref(gate: np.ndarray, up: np.ndarray, fp16_table: bool) -> np.ndarray:
    g = np.asarray(gate, np.float32)

    def gelu(v: np.ndarray) -> np.ndarray:
        v = v.astype(np.float32)
        inner = fma32_ref(GELU_COEF_A * v, v, np.float32(1.0))
        arg = ((SQRT_2_OVER_PI * v).astype(np.float32) * inner).astype(np.float32)
        t = np.tanh(arg.astype(np.float64)).astype(np.float32)  # tanhf: correctly rounded here
        return ((np.float32(0.5) * v).astype(np.float32) * (np.float32(1.0) + t)).astype(np.float32)

    if fp16_table:
        y = gelu(g.astype(np.float16).astype(np.float32)).astype(np.float16).astype(np.float32)
        y = np.where(g <= -10, np.float32(0), np.where(g >= 10, g, y))
    else:
        y = gelu(g)
    return (y * up).astype(np.float32)


# ---------------------------------------------------------------------------- SiLU gating (SwiGLU)


@njit(**KERNEL, parallel=True)
def swiglu(gate, up):
    """silu(gate) * up, ``silu(v) = v / (1 + exp(-v))`` in f32 (ggml's ``ggml_silu_f32``)."""
    rows, n = gate.shape
    out = np.empty((rows, n), np.float32)
    one = np.float32(1.0)
    for r in prange(rows):
        for i in range(n):
            v = gate[r, i]
            e = np.float32(math.exp(-v))
            out[r, i] = np.float32(v / np.float32(one + e)) * up[r, i]
    return out


def swiglu_ref(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    g = np.asarray(gate, np.float32)
    with np.errstate(over="ignore"):
        e = np.exp(-g.astype(np.float64)).astype(np.float32)
    silu = (g / (np.float32(1.0) + e)).astype(np.float32)
    return (silu * np.asarray(up, np.float32)).astype(np.float32)


# ---------------------------------------------------------------------------- softmax


@njit(**KERNEL, parallel=True)
def softmax(x):
    """Softmax over the last axis of x (rows, n); sum in float64, as ggml does."""
    rows, n = x.shape
    out = np.empty_like(x)
    for r in prange(rows):
        m = -np.inf
        for i in range(n):
            m = max(m, x[r, i])
        s = 0.0
        for i in range(n):
            e = np.float32(math.exp(np.float32(x[r, i] - m)))
            out[r, i] = e
            s += e
        inv = np.float32(1.0 / s)
        for i in range(n):
            out[r, i] *= inv
    return out


def softmax_ref(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True)).astype(np.float32)
    return (e * (1.0 / e.astype(np.float64).sum(axis=-1, keepdims=True)).astype(np.float32)).astype(
        np.float32
    )


@njit(**KERNEL, parallel=True)
def scale_round(x, scale, round_f16):
    """In place: ``x = x · scale`` in f32, then rounded to f16 with ``round_f16`` (the query before
    an f16 K·Q, as llama.cpp's ``ggml_scale`` then its f16 conversion compute it)."""
    xf = x.reshape(x.size)
    n = xf.shape[0]
    for c in prange((n + 4095) // 4096):
        for i in range(c * 4096, min(n, c * 4096 + 4096)):
            v = np.float32(xf[i] * scale)
            xf[i] = round_f16_(v) if round_f16 else v


@njit(**KERNEL, parallel=True)
def kv_store(k, v, kt, vc, slot_pos, start_pos, round_f16):
    """Store ``k``, ``v`` (n, Hkv, D) for positions ``start_pos ..`` in a ring of
    ``S = len(slot_pos)`` slots (position ``p`` in slot ``p % S``): keys transposed into ``kt``
    (Hkv, D, >= S), values into ``vc`` (>= S, Hkv, D), rounded to f16 with ``round_f16``."""
    n, nkv, d = k.shape
    nslots = slot_pos.shape[0]
    for t in prange(n):
        s = (start_pos + t) % nslots
        for h in range(nkv):
            for j in range(d):
                a = k[t, h, j]
                b = v[t, h, j]
                if round_f16:
                    a = round_f16_(a)
                    b = round_f16_(b)
                kt[h, j, s] = a
                vc[s, h, j] = b
        slot_pos[s] = start_pos + t
