"""Element-wise CUDA kernels (numba-cuda) of the llama-family decoder's GPU layers, and their host
launchers (``run_*``): RoPE in NORM or NEOX mode with frequency factors and llama.cpp's attention
factor, the query's scale and fp16 rounding in either order, SiLU gating, residual adds, and the
column slice (+ bias) that splits a fused q‖k‖v projection.

Each follows its CPU counterpart's arithmetic (:mod:`engine.runtime.kernels.ops`,
``engine.models._common``) step by step, with explicit ``np.float32``/``np.float64`` conversions so
that a GPU and the CUDA simulator compute the same thing (see :mod:`.kernels`).  Launch shapes come
from :class:`engine.runtime.cuda.device.Launch`; every kernel is a grid-stride loop.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from engine.runtime.cuda import device as D
from engine.runtime.cuda.kernels import f16_round

F32 = np.float32
F64 = np.float64

# ============================================================================ kernels


@cuda.jit(cache=True)
def rope_ext(x, positions, n_rot, theta_scale, freq_scale, freq_factors, mscale, neox):
    """engine.runtime.kernels.ops.rope on x (n, heads, d) in place: pair ``i < n_rot/2`` is
    (2i, 2i+1) (NORM) or (i, i + n_rot/2) (NEOX); its angle is ``freq_scale * (theta_i /
    freq_factors[i])`` with ``theta_i = pos * theta_scale**i`` by repeated f32 multiplication;
    cos and sin are scaled by ``mscale``.  One thread per (token, pair), all heads."""
    n = x.shape[0]
    nh = x.shape[1]
    half = n_rot // 2
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for k in range(start, n * half, step):
        t = k // half
        i = k % half
        theta = F32(positions[t])
        for _ in range(i):
            theta = F32(theta * theta_scale)
        ang = F32(freq_scale * F32(theta / freq_factors[i]))
        c = F32(F32(math.cos(F64(ang))) * mscale)
        s = F32(F32(math.sin(F64(ang))) * mscale)
        if neox:
            i0 = i
            i1 = i + half
        else:
            i0 = 2 * i
            i1 = 2 * i + 1
        for h in range(nh):
            x0 = x[t, h, i0]
            x1 = x[t, h, i1]
            x[t, h, i0] = F32(F32(x0 * c) - F32(x1 * s))
            x[t, h, i1] = F32(F32(x0 * s) + F32(x1 * c))


@cuda.jit(cache=True)
def scale_round(x, scale, scale_first, round_f16):
    """The query K·Q reads, in place on x (rows, n): ``scale_first`` (phi3): x * scale, then fp16
    rounding (with ``round_f16``); otherwise fp16 rounding, then x * scale (llama.cpp scales the
    f32 scores of the f16 query; see engine.models._common)."""
    rows = x.shape[0]
    n = x.shape[1]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for k in range(start, rows * n, step):
        r = k // n
        i = k % n
        y = x[r, i]
        if scale_first:
            y = F32(y * scale)
            if round_f16:
                y = f16_round(y)
        else:
            if round_f16:
                y = f16_round(y)
            y = F32(y * scale)
        x[r, i] = y


@cuda.jit(cache=True)
def swiglu(gate, up, out):
    """out = silu(gate) * up, ``silu(v) = v / (1 + exp(-v))`` in f32 (ops.swiglu).  ``gate`` and
    ``up`` may be column slices of one fused gate‖up output."""
    rows = gate.shape[0]
    n = gate.shape[1]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for k in range(start, rows * n, step):
        r = k // n
        i = k % n
        v = gate[r, i]
        e = F32(math.exp(F64(-v)))
        out[r, i] = F32(F32(v / F32(F32(1.0) + e)) * up[r, i])


@cuda.jit(cache=True)
def add_rows(a, b, out):
    """out = a + b (rows, n) in f32 (a residual add; ``out`` may be ``a`` or ``b``)."""
    rows = a.shape[0]
    n = a.shape[1]
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for k in range(start, rows * n, step):
        r = k // n
        i = k % n
        out[r, i] = F32(a[r, i] + b[r, i])


@cuda.jit(cache=True)
def take_cols(src, col0, bias, out):
    """out (rows, n) = src[:, col0 : col0 + n] (+ bias (n,) when it has elements).  ``out`` may be
    ``src`` itself with ``col0`` 0 (a bias added in place)."""
    rows = out.shape[0]
    n = out.shape[1]
    add = bias.shape[0] == n
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for k in range(start, rows * n, step):
        r = k // n
        i = k % n
        y = src[r, col0 + i]
        if add:
            y = F32(y + bias[i])
        out[r, i] = y


# ============================================================================ host launchers


def _grid(launch: D.Launch, total: int) -> tuple[int, int]:
    return D._blocks(total, launch.elem_threads, launch), launch.elem_threads


def run_rope(launch: D.Launch, x, positions, n_rot: int, base, freq_scale, freq_factors, mscale, neox: bool):
    """Rotate device x (n, heads, d) in place; ``positions`` (n,) int64 and ``freq_factors``
    (n_rot/2,) f32 on the device."""
    ts = D._theta_scale(np.float32(base), n_rot)  # ops.rope's float32 pow
    blocks, threads = _grid(launch, x.shape[0] * (n_rot // 2))
    rope_ext[blocks, threads](
        x, positions, n_rot, ts, np.float32(freq_scale), freq_factors, np.float32(mscale), bool(neox)
    )
    return x


def run_scale_round(launch: D.Launch, x, scale, scale_first: bool, round_f16: bool):
    """:func:`scale_round` on device x (rows, n), in place."""
    blocks, threads = _grid(launch, x.shape[0] * x.shape[1])
    scale_round[blocks, threads](x, np.float32(scale), bool(scale_first), bool(round_f16))
    return x


def run_swiglu(launch: D.Launch, gate, up):
    out = cuda.device_array(gate.shape, np.float32)
    blocks, threads = _grid(launch, gate.shape[0] * gate.shape[1])
    swiglu[blocks, threads](gate, up, out)
    return out


def run_add(launch: D.Launch, a, b, out=None):
    if out is None:
        out = cuda.device_array(a.shape, np.float32)
    blocks, threads = _grid(launch, a.shape[0] * a.shape[1])
    add_rows[blocks, threads](a, b, out)
    return out


def run_take_cols(launch: D.Launch, src, col0: int, n: int, bias=None, out=None):
    """Columns ``col0 .. col0 + n`` of device src (rows, >= col0 + n) plus an optional device bias
    (n,), into ``out`` (a new contiguous array unless given)."""
    if out is None:
        out = cuda.device_array((src.shape[0], n), np.float32)
    if bias is None:
        bias = cuda.device_array(0, np.float32)  # no bias (a size-0 array allocates nothing)
    blocks, threads = _grid(launch, src.shape[0] * n)
    take_cols[blocks, threads](src, col0, bias, out)
    return out
