"""Causal attention of a batch of queries over a KV cache, with an optional sliding window.

The cache is addressed by slot; ``slot_pos[s]`` is the position held in slot ``s`` (-1: empty), so
the same kernel serves a plain cache and a ring buffer.  Query ``t`` at position ``qpos[t]`` sees
slot ``s`` when ``0 <= slot_pos[s] <= qpos[t]`` and, with a window ``w > 0``,
``qpos[t] - slot_pos[s] < w`` (llama.cpp's LLAMA_SWA_TYPE_STANDARD).  Queries arrive already
scaled.  With ``round_f16`` the probabilities are rounded to fp16 before they weight V, as
llama.cpp's CPU path does with an f16 cache (its KQ·V mat-mul converts them).

:func:`attention` (Numba, threads over query × head) and :func:`attention_ref` (NumPy, BLAS per
head) agree to f32 rounding.  :func:`attention_kt` reads the keys transposed (a cache kept with
``k_transposed``): each score is the same sequential f32 sum over D as :func:`attention`'s, so the
results are bit-identical, but the sums of all slots advance together (vectorized across slots) and
one pass over the keys serves every query head of a KV head: the prefill's fast path.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from engine.quant._common import f16_bits_to_f32, f32_to_f16_bits
from engine.runtime.kernels._config import KERNEL


@njit(**KERNEL, parallel=True)
def attention(q, k, v, slot_pos, qpos, window, round_f16):
    """q (n, H, D), k/v (slots, Hkv, D), slot_pos (slots,), qpos (n,) -> (n, H, D)."""
    n, nh, d = q.shape
    ns, nkv, _ = k.shape
    group = nh // nkv
    out = np.zeros((n, nh, d), np.float32)
    scores = np.empty((n * nh, ns), np.float32)
    for i in prange(n * nh):
        t = i // nh
        h = i % nh
        kh = h // group
        p = qpos[t]
        m = -np.inf
        for s in range(ns):
            sp = slot_pos[s]
            if sp < 0 or sp > p or (window > 0 and p - sp >= window):
                scores[i, s] = -np.inf
                continue
            acc = np.float32(0.0)
            for j in range(d):
                acc += q[t, h, j] * k[s, kh, j]
            scores[i, s] = acc
            m = max(m, acc)
        total = 0.0
        for s in range(ns):
            if scores[i, s] != -np.inf:
                e = np.float32(math.exp(np.float32(scores[i, s] - m)))
                scores[i, s] = e
                total += e
            else:
                scores[i, s] = 0.0
        inv = np.float32(1.0 / total)
        for s in range(ns):
            if scores[i, s] != 0.0:
                pr = np.float32(scores[i, s] * inv)
                if round_f16:
                    pr = f16_bits_to_f32(f32_to_f16_bits(pr))
                for j in range(d):
                    out[t, h, j] += pr * v[s, kh, j]
    return out


@njit(**KERNEL, parallel=True)
def attention_kt(q, kt, v, slot_pos, ns, qpos, window, round_f16):
    """:func:`attention` with the keys transposed: ``kt`` (Hkv, D, slots) and ``v`` (slots, Hkv, D)
    whole (C-contiguous; slices would not vectorize), of which the first ``ns`` slots are read.
    Threads over query × KV head; per query only the slot range holding visible positions is summed."""
    n, nh, d = q.shape
    nkv = kt.shape[0]
    group = nh // nkv
    out = np.zeros((n, nh, d), np.float32)
    scores = np.empty((n * nkv, group, max(ns, 1)), np.float32)
    for i in prange(n * nkv):
        t = i // nkv
        kh = i % nkv
        p = qpos[t]
        lo = ns
        hi = 0
        for s in range(ns):
            sp = slot_pos[s]
            if sp >= 0 and sp <= p and (window <= 0 or p - sp < window):
                lo = min(lo, s)
                hi = s + 1
        sc = scores[i]
        for g in range(group):
            for s in range(lo, hi):
                sc[g, s] = 0.0
        w = hi - lo
        for j in range(d):
            krow = kt[kh, j, lo:hi]  # non-negative indices from 0: the loop below vectorizes
            for g in range(group):
                qj = q[t, kh * group + g, j]
                srow = sc[g, lo:hi]
                for s in range(w):
                    srow[s] += qj * krow[s]
        for g in range(group):
            h = kh * group + g
            m = -np.inf
            for s in range(lo, hi):
                sp = slot_pos[s]
                if sp < 0 or sp > p or (window > 0 and p - sp >= window):
                    sc[g, s] = -np.inf
                else:
                    m = max(m, sc[g, s])
            total = 0.0
            for s in range(lo, hi):
                if sc[g, s] != -np.inf:
                    e = np.float32(math.exp(np.float32(sc[g, s] - m)))
                    sc[g, s] = e
                    total += e
                else:
                    sc[g, s] = 0.0
            inv = np.float32(1.0 / total)
            for s in range(lo, hi):
                if sc[g, s] != 0.0:
                    pr = np.float32(sc[g, s] * inv)
                    if round_f16:
                        pr = f16_bits_to_f32(f32_to_f16_bits(pr))
                    for j in range(d):
                        out[t, h, j] += pr * v[s, kh, j]
    return out


def attention_ref(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    slot_pos: np.ndarray,
    qpos: np.ndarray,
    window: int,
    round_f16: bool,
) -> np.ndarray:
    """NumPy reference of :func:`attention` (per head: one BLAS mat-mul for scores, one for V)."""
    n, nh, d = q.shape
    nkv = k.shape[1]
    group = nh // nkv
    sp = slot_pos[None, :]
    qp = qpos[:, None]
    mask = (sp >= 0) & (sp <= qp)
    if window > 0:
        mask &= qp - sp < window
    out = np.empty((n, nh, d), np.float32)
    for h in range(nh):
        kh = h // group
        s = q[:, h, :] @ k[:, kh, :].T
        s = np.where(mask, s, np.float32(-np.inf))
        e = np.exp(s - s.max(axis=1, keepdims=True)).astype(np.float32)
        p = e * (1.0 / e.astype(np.float64).sum(axis=1, keepdims=True)).astype(np.float32)
        if round_f16:
            p = p.astype(np.float16).astype(np.float32)
        out[:, h, :] = p @ v[:, kh, :]
    return out
