"""Fused single-token (decode) kernels: the small per-layer steps between the mat-vecs, one Numba
call each instead of several kernels plus NumPy temporaries.

Every kernel here does, value for value, the arithmetic of the unfused path it replaces, in the
same order (:func:`~engine.runtime.kernels.ops.rmsnorm`, :func:`~.actquant.quantize_q8_0` and
:func:`~.actquant.dequant_act`, :func:`~.actquant.quantize_q8_k`, :func:`~.ops.rope_neox`,
:func:`~.ops.rope`, :func:`~.ops.geglu`, :func:`~.ops.swiglu`, the f16 KV cache write, and
:func:`~.attention.attention` for one query), so decode logits are bit-for-bit those of the
unfused path; ``tests/test_fused.py`` holds each kernel equal to the unfused kernels.

They run single-threaded (no ``parallel``): each touches a few KB, less than what waking a thread
pool costs, and under load a parallel launch waits for a descheduled thread.  They write into
caller-owned buffers (no allocation per token) and take 1-D vectors for one token.

Activation outputs (what a mat-vec consumes), selected by flags:

- ``xs`` (K,) f32: the Q8_0-quantized activation, dequantized (the input of the Q5_0 / Q8_0
  kernels, ``dequant_act(*quantize_q8_0(h))``); ``q0`` (K,) int8, ``d0`` (K/32,) f32: its codes;
- ``qk`` (K,) int8, ``dk`` (K/256,) f32, ``bk`` (K/16,) int32: the Q8_K quantization;
- ``h`` (K,) f32: the activation itself (for any other weight type).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from engine.quant._common import f16_bits_to_f32, f32_to_f16_bits
from engine.runtime.kernels._config import KERNEL
from engine.runtime.kernels.attention import _attend
from engine.runtime.kernels.fmath import fma32
from engine.runtime.kernels.ops import _gelu1

# which activation formats a fused kernel writes (bit flags)
ACT_F32 = 1  # h
ACT_Q8_0 = 2  # xs, q0, d0
ACT_Q8_K = 4  # qk, dk, bk


# ---------------------------------------------------------------------------- building blocks


@njit(**KERNEL, inline="always")
def _rms_scale(x, eps):
    """ggml's RMSNorm scale of the vector x: squares summed in float64."""
    n = x.shape[0]
    s = 0.0
    for i in range(n):
        v = x[i]
        s += np.float64(np.float32(v * v))
    mean = np.float32(s / n)
    return np.float32(np.float32(1.0) / np.float32(math.sqrt(np.float32(mean + eps))))


@njit(**KERNEL, inline="always")
def _q8_0(h, q0, d0, xs):
    """quantize_q8_0 of one row, and its dequantized values (dequant_act)."""
    nb = h.shape[0] // 32
    for b in range(nb):
        o = b * 32
        amax = np.float32(0.0)
        for j in range(32):
            a = abs(h[o + j])
            if a > amax:
                amax = a
        dd = np.float32(amax / np.float32(127.0))
        db = f16_bits_to_f32(f32_to_f16_bits(dd))
        d0[b] = db
        idd = np.float32(np.float32(127.0) / amax) if amax != 0 else np.float32(0.0)
        for j in range(32):
            c = np.int8(np.rint(h[o + j] * idd))
            q0[o + j] = c
            xs[o + j] = np.float32(c) * db


@njit(**KERNEL, inline="always")
def _q8_k(h, qk, dk, bk):
    """quantize_q8_k of one row."""
    nb = h.shape[0] // 256
    for b in range(nb):
        o = b * 256
        amax = np.float32(0.0)
        vmax = np.float32(0.0)
        for j in range(256):
            a = abs(h[o + j])
            if a > amax:
                amax = a
                vmax = h[o + j]
        if amax == 0:
            dk[b] = 0.0
            for j in range(256):
                qk[o + j] = 0
        else:
            iscale = np.float32(np.float32(-127.0) / vmax)
            for j in range(256):
                v = np.rint(np.float32(iscale * h[o + j]))
                qk[o + j] = np.int8(min(127.0, v))
            dk[b] = np.float32(np.float32(1.0) / iscale)
        for g in range(16):
            s = 0
            for j in range(16):
                s += qk[o + 16 * g + j]
            bk[b * 16 + g] = s


@njit(**KERNEL, inline="always")
def _emit(h, flags, xs, q0, d0, qk, dk, bk):
    if flags & ACT_Q8_0:
        _q8_0(h, q0, d0, xs)
    if flags & ACT_Q8_K:
        _q8_k(h, qk, dk, bk)


# ---------------------------------------------------------------------------- norms + residual


@njit(**KERNEL)
def rms_act(x, w, eps, h, flags, xs, q0, d0, qk, dk, bk):
    """h = rmsnorm(x) * w, then h's activation formats (``flags``)."""
    scale = _rms_scale(x, eps)
    for i in range(x.shape[0]):
        h[i] = np.float32(x[i] * scale) * w[i]
    _emit(h, flags, xs, q0, d0, qk, dk, bk)


@njit(**KERNEL)
def add_rms_act(x, a, wa, has_wa, eps, w, h, flags, xs, q0, d0, qk, dk, bk):
    """x += rmsnorm(a) * wa (x += a when not ``has_wa``), in place; then h = rmsnorm(x) * w and
    h's activation formats (``flags``)."""
    n = x.shape[0]
    if has_wa:
        sa = _rms_scale(a, eps)
        for i in range(n):
            x[i] = x[i] + np.float32(a[i] * sa) * wa[i]
    else:
        for i in range(n):
            x[i] = a[i] + x[i]
    scale = _rms_scale(x, eps)
    for i in range(n):
        h[i] = np.float32(x[i] * scale) * w[i]
    _emit(h, flags, xs, q0, d0, qk, dk, bk)


@njit(**KERNEL)
def add_rms(x, a, wa, eps):
    """x += rmsnorm(a) * wa, in place."""
    sa = _rms_scale(a, eps)
    for i in range(x.shape[0]):
        x[i] = x[i] + np.float32(a[i] * sa) * wa[i]


@njit(**KERNEL)
def act(h, flags, xs, q0, d0, qk, dk, bk):
    """The activation formats (``flags``) of h."""
    _emit(h, flags, xs, q0, d0, qk, dk, bk)


@njit(**KERNEL)
def embed_q8_0(qs, d, row, scale, out):
    """Row ``row`` of a Q8_0 matrix, dequantized, times ``scale`` (f32): the token embedding."""
    for j in range(out.shape[0]):
        out[j] = np.float32(d[row, j >> 5] * np.float32(qs[row, j])) * scale


# ---------------------------------------------------------------------------- gating


@njit(**KERNEL)
def gelu_f16_table():
    """ggml's GELU table: for every fp16 bit pattern ``b``, fp16(gelu_tanh(value of b)) as f32
    (what :func:`~engine.runtime.kernels.ops.geglu` computes for |x| < 10 with ``fp16_table``)."""
    t = np.empty(65536, np.float32)
    for b in range(65536):
        t[b] = f16_bits_to_f32(f32_to_f16_bits(_gelu1(f16_bits_to_f32(b))))
    return t


@njit(**KERNEL)
def geglu_act(gate, up, fp16_table, table, h, flags, xs, q0, d0, qk, dk, bk):
    """h = gelu_tanh(gate) * up (ops.geglu; with ``fp16_table`` through ``table``, from
    :func:`gelu_f16_table`), then h's activation formats."""
    for i in range(gate.shape[0]):
        v = gate[i]
        if fp16_table:
            if v <= -10.0:
                g = np.float32(0.0)
            elif v >= 10.0:
                g = v
            else:
                g = table[f32_to_f16_bits(v)]
        else:
            g = _gelu1(v)
        h[i] = g * up[i]
    _emit(h, flags, xs, q0, d0, qk, dk, bk)


@njit(**KERNEL)
def swiglu_act(gate, up, h, flags, xs, q0, d0, qk, dk, bk):
    """h = silu(gate) * up (ops.swiglu), then h's activation formats."""
    one = np.float32(1.0)
    for i in range(gate.shape[0]):
        v = gate[i]
        e = np.float32(math.exp(-v))
        h[i] = np.float32(v / np.float32(one + e)) * up[i]
    _emit(h, flags, xs, q0, d0, qk, dk, bk)


# ---------------------------------------------------------------------------- q/k: norm, rope, cache


@njit(**KERNEL)
def qk_rope_cache(
    q,
    k,
    v,
    q_norm,
    k_norm,
    has_norm,
    eps,
    pos,
    n_rot,
    base,
    freq_scale,
    freq_factors,
    mscale,
    neox,
    gemma_rope,
    scale,
    scale_first,
    round_f16,
    qo,
    kc,
    vc,
    kt,
    has_kt,
    slot_pos,
    slot,
):
    """One token's queries and keys: per-head RMSNorm (``has_norm``), RoPE, and the query scale
    (``scale_first``: scale then round to f16, else round then scale); K and V go to slot
    ``slot`` of the cache (rounded to f16 with ``round_f16``; with ``has_kt`` the keys go to ``kt``
    (Hkv, D, slots) instead of ``kc``), and ``slot_pos[slot] = pos``.

    ``q`` (H*D,), ``k``/``v`` (Hkv*D,) are the mat-vec outputs (q and k are changed in place);
    ``qo`` (H, D) receives the query attention reads.  ``gemma_rope``: ops.rope_neox's arithmetic
    (the whole head, no factors); otherwise ops.rope's (NORM or NEOX over the first n_rot)."""
    nh, d = qo.shape
    nkv = vc.shape[1]
    half = n_rot // 2
    if has_norm:
        for hh in range(nh):
            o = hh * d
            s = _rms_scale(q[o : o + d], eps)
            for i in range(d):
                q[o + i] = np.float32(q[o + i] * s) * q_norm[i]
        for hh in range(nkv):
            o = hh * d
            s = _rms_scale(k[o : o + d], eps)
            for i in range(d):
                k[o + i] = np.float32(k[o + i] * s) * k_norm[i]
    if gemma_rope:
        theta_scale = np.float32(math.pow(np.float32(base), np.float32(-2.0) / np.float32(d)))
        theta = np.float32(pos)
        for i in range(half):
            ang = np.float32(freq_scale * theta)
            c = np.float32(math.cos(ang))
            sn = np.float32(math.sin(ang))
            for hh in range(nh):
                o = hh * d
                x0 = q[o + i]
                x1 = q[o + i + half]
                q[o + i] = fma32(x0, c, -(x1 * sn))
                q[o + i + half] = fma32(x0, sn, x1 * c)
            for hh in range(nkv):
                o = hh * d
                x0 = k[o + i]
                x1 = k[o + i + half]
                k[o + i] = fma32(x0, c, -(x1 * sn))
                k[o + i + half] = fma32(x0, sn, x1 * c)
            theta = np.float32(theta * theta_scale)
    else:
        theta_scale = np.float32(math.pow(np.float32(base), np.float32(-2.0) / np.float32(n_rot)))
        fs = np.float32(freq_scale)
        ms = np.float32(mscale)
        theta = np.float32(pos)
        for i in range(half):
            ang = np.float32(fs * np.float32(theta / freq_factors[i]))
            c = np.float32(np.float32(math.cos(ang)) * ms)
            sn = np.float32(np.float32(math.sin(ang)) * ms)
            if neox:
                i0 = i
                i1 = i + half
            else:
                i0 = 2 * i
                i1 = 2 * i + 1
            for hh in range(nh):
                o = hh * d
                x0 = q[o + i0]
                x1 = q[o + i1]
                q[o + i0] = fma32(x0, c, -(x1 * sn))
                q[o + i1] = fma32(x0, sn, x1 * c)
            for hh in range(nkv):
                o = hh * d
                x0 = k[o + i0]
                x1 = k[o + i1]
                k[o + i0] = fma32(x0, c, -(x1 * sn))
                k[o + i1] = fma32(x0, sn, x1 * c)
            theta = np.float32(theta * theta_scale)
    for hh in range(nh):
        for i in range(d):
            val = q[hh * d + i]
            if scale_first:
                val = np.float32(val * scale)
                if round_f16:
                    val = f16_bits_to_f32(f32_to_f16_bits(val))
            else:
                if round_f16:
                    val = f16_bits_to_f32(f32_to_f16_bits(val))
                val = np.float32(val * scale)
            qo[hh, i] = val
    for hh in range(nkv):
        for i in range(d):
            kv = k[hh * d + i]
            vv = v[hh * d + i]
            if round_f16:
                kv = f16_bits_to_f32(f32_to_f16_bits(kv))
                vv = f16_bits_to_f32(f32_to_f16_bits(vv))
            vc[slot, hh, i] = vv
            if has_kt:
                kt[hh, i, slot] = kv
            else:
                kc[slot, hh, i] = kv
    slot_pos[slot] = pos


# ---------------------------------------------------------------------------- attention, one query


@njit(**KERNEL, parallel=True)
def attend_one(q, kt, v, slot_pos, ns, pos, window, round_f16, kq_scale, scores, out):
    """:func:`~engine.runtime.kernels.attention.attention_kt` for one query at position ``pos``
    (llama.cpp's one-query arithmetic, ``ggml_vec_dot``'s) over the first ``ns`` slots: ``q``
    (H, D), ``kt`` (Hkv, D, nslot), ``v`` (slots, Hkv, D) (whole, C-contiguous); ``kq_scale``
    the scores' factor in the softmax (1 for pre-scaled queries); ``scores``
    (H, >= nslot) scratch; ``out`` (H*D,).  Threads take heads."""
    nh, d = q.shape
    nkv = kt.shape[0]
    group = nh // nkv
    nslot = kt.shape[2]
    ktf = kt.reshape(kt.size)
    vf = v.reshape(v.size)
    ot = out.reshape(nh, d)
    for h in prange(nh):
        g = h % group
        _attend(
            q,
            h // group,
            group,
            g,
            g + 1,
            ktf,
            nslot,
            vf,
            nkv,
            slot_pos,
            ns,
            pos,
            window,
            round_f16,
            np.float32(kq_scale),
            False,
            scores[h : h + 1],
            ot,
        )


# ---------------------------------------------------------------------------- decode plumbing (Python)


class ActBuffers:
    """Preallocated activation buffers for one input width ``k`` (one token): ``h`` and whichever
    of its quantized forms the mat-vecs reading it need (``flags``, set by :func:`matvec_call`).
    The 1-D views go to the fused kernels, the (1, k) arrays to the mat-vec kernels."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.flags = 0
        self.h2 = np.zeros((1, k), np.float32)
        self.xs2 = np.zeros((1, k), np.float32)
        self.q02 = np.zeros((1, k), np.int8)
        self.d02 = np.zeros((1, max(1, k // 32)), np.float32)
        self.qk2 = np.zeros((1, k), np.int8)
        self.dk2 = np.zeros((1, max(1, k // 256)), np.float32)
        self.bk2 = np.zeros((1, max(1, k // 16)), np.int32)
        self.h, self.xs, self.q0, self.d0 = self.h2[0], self.xs2[0], self.q02[0], self.d02[0]
        self.qk, self.dk, self.bk = self.qk2[0], self.dk2[0], self.bk2[0]

    def outs(self) -> tuple:
        """The trailing arguments of the fused ``*_act`` kernels: flags and output buffers."""
        return (self.flags, self.xs, self.q0, self.d0, self.qk, self.dk, self.bk)


def matvec_call(w, buf: ActBuffers, out: np.ndarray):
    """``(fn, args)`` such that ``fn(*args)`` writes ``matvec(w, buf.h2)`` into ``out`` (1, rows),
    bit for bit, reading the quantized activations the fused kernels leave in ``buf`` (flags are
    added to ``buf.flags``).  Types without a direct kernel call go through ``matvec``."""
    from engine.runtime.kernels import qmatmul as qm

    f = w.fields
    name = w.qtype
    if name == "Q8_0":
        buf.flags |= ACT_Q8_0
        return qm._mv_q8_0, (f[0], f[1], buf.q02, buf.d02, out)
    if name == "Q5_0":
        buf.flags |= ACT_Q8_0
        return qm._mv_q5_0, (f[0], f[1], f[2], buf.xs2, out)
    if name == "Q4_0":
        buf.flags |= ACT_Q8_0
        return qm._mv_q4_0, (f[0], f[1], buf.q02, buf.d02, out)
    if name == "Q4_K":
        buf.flags |= ACT_Q8_K
        return qm._mv_qk, (*f[:5], qm._NO_QH, False, buf.qk2, buf.dk2, buf.bk2, out)
    if name == "Q5_K":
        buf.flags |= ACT_Q8_K
        return qm._mv_qk, (*f[:5], f[5], True, buf.qk2, buf.dk2, buf.bk2, out)
    if name == "Q6_K":
        buf.flags |= ACT_Q8_K
        return qm._mv_q6_k, (*f[:4], buf.qk2, buf.dk2, buf.bk2, out)

    def generic(w=w, h2=buf.h2, out=out):
        qm.matvec(w, h2, out=out)

    return generic, ()
