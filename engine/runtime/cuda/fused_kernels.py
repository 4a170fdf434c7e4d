"""Fused CUDA kernels (numba-cuda) of the one-token (decode) path: each replaces two to four
launches of :mod:`.kernels` / :mod:`.ops_kernels` with the same arithmetic, step for step.

- :func:`residual_norm_quant`: the residual update after a mat-mul (Gemma's post-norm + add, or
  the llama family's add + bias), then the next RMSNorm and the quantization of its output for the
  next mat-mul (Q8_0, Q8_1 or Q8_K codes, written with the f32 row);
- :func:`gemma_qk_rope_kv` and :func:`ext_qk_rope_kv`: from the q‖k‖v mat-mul output, the per-head
  Q/K RMSNorm (and biases), RoPE, the query's scale and fp16 rounding, and the fp16 K/V cache
  write, with the position of the token for the attention kernel;
- :func:`attention_quant`: attention of one token and the codes of its output for the output
  projection, head by head (when a head is a whole number of code blocks);
- :func:`glu_quant`: GELU (tanh, optionally through ggml's fp16 table) or SiLU gating and the
  quantization of its output.

The quantization codes come from the device helpers of :mod:`.kernels` / :mod:`.qkernels` (the
same per-block functions the stand-alone kernels call), so the fused kernels write the same bits.
Like every kernel here they use explicit ``np.float32``/``np.float64`` conversions so that a GPU
and the CUDA simulator compute the same thing, grid-stride loops, and launch shapes from
:class:`engine.runtime.cuda.device.Launch` (one block per row or head, ``row_threads`` threads,
a power of two).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from engine.runtime.cuda.kernels import (
    SM_F64,
    _gelu,
    attend,
    f16_bits,
    f16_round,
    filled_slots,
    q8_0_block,
    q8_k_block,
)
from engine.runtime.cuda.qkernels import q8_1_block

F32 = np.float32
F64 = np.float64

# activation codes a fused kernel writes (NO_CODES: only the f32 row)
NO_CODES, Q8_0, Q8_1, Q8_K = range(4)
CODE_KINDS = {"Q8_0": Q8_0, "Q8_1": Q8_1, "Q8_K": Q8_K}
# residual_norm_quant modes: x as is / x += a (+ bias) / x += rmsnorm(a) * w1
NO_RESIDUAL, ADD, ADD_NORMED = range(3)
# glu_quant gates
SILU, GELU, GELU_F16 = range(3)

# ============================================================================ device helpers


@cuda.jit(device=True)
def block_sum(s, sm):
    """The float64 sum of ``s`` over the threads of the block (a tree in shared memory, as
    kernels.rmsnorm_rows sums); every thread of the block must call it."""
    tid = cuda.threadIdx.x
    nth = cuda.blockDim.x
    if nth == 1:
        return s
    sm[tid] = s
    cuda.syncthreads()
    stride = nth // 2
    while stride > 0:
        if tid < stride:
            sm[tid] = sm[tid] + sm[tid + stride]
        cuda.syncthreads()
        stride //= 2
    s = sm[0]
    cuda.syncthreads()
    return s


@cuda.jit(device=True)
def rms_scale(ss, n, eps):
    """1 / sqrt(mean + eps) from a float64 sum of squares, as kernels.rmsnorm_rows."""
    mean = F32(ss / n)
    return F32(F32(1.0) / F32(math.sqrt(F32(mean + eps))))


@cuda.jit(device=True)
def code_block(x, t, b, kind, q, d, s, bs):
    """Quantize block ``b`` of row ``t`` of x (32 elements, or 256 for Q8_K) as ``kind``."""
    if kind == Q8_0:
        q8_0_block(x, t, b, q, d)
    elif kind == Q8_1:
        q8_1_block(x, t, b, q, d, s)
    elif kind == Q8_K:
        q8_k_block(x, t, b, q, d, bs)


@cuda.jit(device=True)
def block_elems(kind):
    return 256 if kind == Q8_K else 32


# ============================================================================ kernels


@cuda.jit(cache=True)
def residual_norm_quant(a, bias, w1, x, w2, eps, mode, h, kind, q, d, s, bs):
    """Residual update of x (rows, n) in place by ``mode``: NO_RESIDUAL, ADD (x = (a + bias) + x,
    ``bias`` used when it has n elements) or ADD_NORMED (x = x + rmsnorm(a) * w1); then, when
    ``w2`` has n elements, h = rmsnorm(x) * w2 and its codes (``kind``, into q, d and s (Q8_1) or
    bs (Q8_K)).  One block per row (grid-stride); sums of squares in float64 as on the CPU."""
    rows = x.shape[0]
    n = x.shape[1]
    tid = cuda.threadIdx.x
    nth = cuda.blockDim.x
    sm = cuda.shared.array(SM_F64, np.float64)
    has_bias = bias.shape[0] == n
    norm = w2.shape[0] == n
    for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
        if mode == ADD_NORMED:
            ss = F64(0.0)
            for i in range(tid, n, nth):
                v = a[r, i]
                ss += F64(F32(v * v))
            sc = rms_scale(block_sum(ss, sm), n, eps)
            for i in range(tid, n, nth):
                x[r, i] = F32(x[r, i] + F32(F32(a[r, i] * sc) * w1[i]))
        elif mode == ADD:
            for i in range(tid, n, nth):
                y = a[r, i]
                if has_bias:
                    y = F32(y + bias[i])
                x[r, i] = F32(y + x[r, i])
        if norm:
            # each thread reads back only the elements it wrote
            ss = F64(0.0)
            for i in range(tid, n, nth):
                v = x[r, i]
                ss += F64(F32(v * v))
            sc = rms_scale(block_sum(ss, sm), n, eps)
            for i in range(tid, n, nth):
                h[r, i] = F32(F32(x[r, i] * sc) * w2[i])
            if kind != NO_CODES:
                cuda.syncthreads()  # a block's elements come from several threads
                for b in range(tid, n // block_elems(kind), nth):
                    code_block(h, r, b, kind, q, d, s, bs)
        cuda.syncthreads()


@cuda.jit(device=True)
def _rope_angle_gemma(pos, i, theta_scale, freq_scale):
    """kernels.rope_neox's angle of pair ``i`` at position ``pos``."""
    theta = F32(pos)
    for _ in range(i):
        theta = F32(theta * theta_scale)
    return F32(F64(freq_scale) * F64(theta))


@cuda.jit(cache=True)
def gemma_qk_rope_kv(
    qkv,
    q_off,
    k_off,
    v_off,
    q_norm,
    k_norm,
    eps,
    theta_scale,
    freq_scale,
    q_scale,
    round_f16,
    qout,
    kc,
    vc,
    sp,
    qpos,
):
    """One token of Gemma 3's attention input, from the (flat) q‖k‖v mat-mul output: per head
    RMSNorm (q_norm / k_norm), RoPE NEOX at the token's position ``pos = qpos[0]`` (in device
    memory, so that a captured CUDA graph replays it for any token); the query scaled by ``q_scale``
    (and fp16 rounded with ``round_f16``) into qout (1, heads, d); keys and values as fp16 bits into
    the cache slot ``pos % slots``, the slot's position into ``sp``.  One block per query or KV head
    (grid-stride) -- kernels.rmsnorm_rows, rope_neox and kv_write in one."""
    nh = qout.shape[1]
    hd = qout.shape[2]
    nkv = kc.shape[1]
    half = hd // 2
    pos = qpos[0]
    slot = pos % kc.shape[0]
    tid = cuda.threadIdx.x
    nth = cuda.blockDim.x
    sm = cuda.shared.array(SM_F64, np.float64)
    for hh in range(cuda.blockIdx.x, nh + nkv, cuda.gridDim.x):
        is_q = hh < nh
        kh = hh - nh
        base = q_off + hh * hd if is_q else k_off + kh * hd
        w = q_norm if is_q else k_norm
        ss = F64(0.0)
        for i in range(tid, hd, nth):
            v = qkv[base + i]
            ss += F64(F32(v * v))
        sc = rms_scale(block_sum(ss, sm), hd, eps)
        for i in range(tid, half, nth):
            ang = _rope_angle_gemma(pos, i, theta_scale, freq_scale)
            c = F32(math.cos(F64(ang)))
            s = F32(math.sin(F64(ang)))
            x0 = F32(F32(qkv[base + i] * sc) * w[i])
            x1 = F32(F32(qkv[base + i + half] * sc) * w[i + half])
            y0 = F32(F32(x0 * c) - F32(x1 * s))
            y1 = F32(F32(x0 * s) + F32(x1 * c))
            if is_q:
                if q_scale != 1.0:
                    y0 = F32(y0 * q_scale)
                    y1 = F32(y1 * q_scale)
                if round_f16:
                    y0 = f16_round(y0)
                    y1 = f16_round(y1)
                qout[0, hh, i] = y0
                qout[0, hh, i + half] = y1
            else:
                kc[slot, kh, i] = np.uint16(f16_bits(y0))
                kc[slot, kh, i + half] = np.uint16(f16_bits(y1))
        if not is_q:
            for j in range(tid, hd, nth):
                vc[slot, kh, j] = np.uint16(f16_bits(qkv[v_off + kh * hd + j]))
        cuda.syncthreads()
    if cuda.blockIdx.x == 0 and tid == 0:
        sp[slot] = pos


@cuda.jit(device=True)
def _head_value(qkv, bias, has_bias, idx, has_norm, sc, w, i):
    """Element ``i`` of a head at ``idx`` of the flat q‖k‖v output: + bias, then * sc * w[i]."""
    y = qkv[idx]
    if has_bias:
        y = F32(y + bias[idx])
    if has_norm:
        y = F32(F32(y * sc) * w[i])
    return y


@cuda.jit(device=True)
def _scale_round(y, scale, scale_first):
    """ops_kernels.scale_round with fp16 rounding."""
    if scale_first:
        return f16_round(F32(y * scale))
    return F32(f16_round(y) * scale)


@cuda.jit(cache=True)
def ext_qk_rope_kv(
    qkv, q_off, k_off, v_off, bias, q_norm, k_norm, eps, n_rot, theta_scale, freq_scale, freq_factors,
    mscale, neox, q_scale, scale_first, qout, kc, vc, sp, qpos,
):  # fmt: skip
    """One token of the llama family's attention input, from the (flat) q‖k‖v mat-mul output: the
    biases (``bias`` laid out like ``qkv``, when it has elements), qwen3's per-head RMSNorm (when
    ``q_norm`` has d elements), RoPE at ``pos = qpos[0]`` (device memory, as gemma_qk_rope_kv) in
    NORM or NEOX mode with frequency factors and ``mscale`` on the first ``n_rot`` dimensions; the
    query's scale and fp16 rounding in the architecture's order into qout (1, heads, d); keys and
    values as fp16 bits into the cache slot ``pos % slots``, the slot's position into ``sp``.  One block
    per query or KV head -- ops_kernels.take_cols, rope_ext, scale_round and kernels.rmsnorm_rows,
    kv_write in one."""
    nh = qout.shape[1]
    hd = qout.shape[2]
    nkv = kc.shape[1]
    half = n_rot // 2
    pos = qpos[0]
    slot = pos % kc.shape[0]
    has_bias = bias.shape[0] == qkv.shape[0]
    has_norm = q_norm.shape[0] == hd
    tid = cuda.threadIdx.x
    nth = cuda.blockDim.x
    sm = cuda.shared.array(SM_F64, np.float64)
    for hh in range(cuda.blockIdx.x, nh + nkv, cuda.gridDim.x):
        is_q = hh < nh
        kh = hh - nh
        base = q_off + hh * hd if is_q else k_off + kh * hd
        w = q_norm if is_q else k_norm
        sc = F32(1.0)
        if has_norm:
            ss = F64(0.0)
            for i in range(tid, hd, nth):
                v = _head_value(qkv, bias, has_bias, base + i, False, sc, w, i)
                ss += F64(F32(v * v))
            sc = rms_scale(block_sum(ss, sm), hd, eps)
        for k in range(tid, hd - half, nth):
            # k < half: the pair (i0, i1) of rotation k; after: dimension n_rot + (k - half) as is
            if k < half:
                theta = F32(pos)
                for _ in range(k):
                    theta = F32(theta * theta_scale)
                ang = F32(freq_scale * F32(theta / freq_factors[k]))
                c = F32(F32(math.cos(F64(ang))) * mscale)
                s = F32(F32(math.sin(F64(ang))) * mscale)
                i0 = k if neox else 2 * k
                i1 = k + half if neox else 2 * k + 1
                x0 = _head_value(qkv, bias, has_bias, base + i0, has_norm, sc, w, i0)
                x1 = _head_value(qkv, bias, has_bias, base + i1, has_norm, sc, w, i1)
                y0 = F32(F32(x0 * c) - F32(x1 * s))
                y1 = F32(F32(x0 * s) + F32(x1 * c))
            else:
                i0 = n_rot + k - half
                i1 = i0
                y0 = _head_value(qkv, bias, has_bias, base + i0, has_norm, sc, w, i0)
                y1 = y0
            if is_q:
                qout[0, hh, i0] = _scale_round(y0, q_scale, scale_first)
                qout[0, hh, i1] = _scale_round(y1, q_scale, scale_first)
            else:
                kc[slot, kh, i0] = np.uint16(f16_bits(y0))
                kc[slot, kh, i1] = np.uint16(f16_bits(y1))
        if not is_q:
            for j in range(tid, hd, nth):
                y = _head_value(qkv, bias, has_bias, v_off + kh * hd + j, False, sc, w, j)
                vc[slot, kh, j] = np.uint16(f16_bits(y))
        cuda.syncthreads()
    if cuda.blockIdx.x == 0 and tid == 0:
        sp[slot] = pos


@cuda.jit(device=True)
def _glu(gu, g_off, u_off, gate, i):
    v = gu[g_off + i]
    up = gu[u_off + i]
    if gate == SILU:
        e = F32(math.exp(F64(-v)))
        return F32(F32(v / F32(F32(1.0) + e)) * up)
    if gate == GELU:
        g = _gelu(v)
    elif v <= F32(-10.0):
        g = F32(0.0)
    elif v >= F32(10.0):
        g = v
    else:
        g = f16_round(_gelu(f16_round(v)))
    return F32(g * up)


def glu_chunk(threads: int, kind: int) -> int:
    """Elements per block of :func:`glu_quant`: whole code blocks, about one per thread."""
    be = 256 if kind == Q8_K else 32
    return be * max(1, threads // be)


@cuda.jit(cache=True)
def glu_quant(gu, g_off, u_off, gate, f, kind, q, d, s, bs):
    """f (1, n) = gate(gu[g_off + i]) * gu[u_off + i] from the (flat) gate‖up mat-mul output, with
    ``gate`` SILU (ops_kernels.swiglu), GELU or GELU_F16 (kernels.geglu, plain or through ggml's
    fp16 table); then its codes (``kind``).  A block takes chunks of :func:`glu_chunk` elements
    (grid-stride): its threads gate one element each, then quantize one code block each."""
    n = f.shape[1]
    be = block_elems(kind)
    tid = cuda.threadIdx.x
    nth = cuda.blockDim.x
    per = max(1, nth // be)
    chunk = per * be
    for c0 in range(cuda.blockIdx.x * chunk, n, cuda.gridDim.x * chunk):
        for i in range(c0 + tid, min(n, c0 + chunk), nth):
            f[0, i] = _glu(gu, g_off, u_off, gate, i)
        cuda.syncthreads()
        b = c0 // be + tid
        if tid < per and b * be < n:
            code_block(f, 0, b, kind, q, d, s, bs)
        cuda.syncthreads()


@cuda.jit(cache=True)
def attention_quant(q, kc, vc, slot_pos, ns, qpos, window, round_f16, scores, out, flat, kind, qc, d, s, bs):
    """kernels.attention of one token (q, out (1, H, D)), then the codes (``kind``) of each head's
    output from ``flat``, out's (1, H*D) view; D must be a multiple of the code block.  One block
    per head (grid-stride).  ``ns < 0``: the slots filled at the token's position, from qpos."""
    nh = q.shape[1]
    ns = filled_slots(ns, kc, qpos)
    per = q.shape[2] // block_elems(kind)
    tid = cuda.threadIdx.x
    smf = cuda.shared.array(SM_F64, np.float64)
    for h in range(cuda.blockIdx.x, nh, cuda.gridDim.x):
        attend(q, kc, vc, slot_pos, ns, qpos, window, round_f16, scores, out, h, smf)
        for b in range(h * per + tid, h * per + per, cuda.blockDim.x):
            code_block(flat, 0, b, kind, qc, d, s, bs)
