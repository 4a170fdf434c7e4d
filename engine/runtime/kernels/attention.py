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
from engine.runtime.kernels.simd import acc16, axpy16, load16, store16


@njit(**KERNEL, parallel=True)
def attention(q, k, v, slot_pos, qpos, window, round_f16):
    """q (n, H, D), k/v (slots, Hkv, D), slot_pos (slots,), qpos (n,) -> (n, H, D)."""
    n, nh, d = q.shape
    ns, nkv, _ = k.shape
    group = nh // nkv
    out = np.zeros((n, nh, d), np.float32)
    scores = np.empty((n * nh, ns), np.float32)
    for item in prange(n * nh):
        u = item // nh  # queries zig-zag (0, n-1, 1, ...): balanced causal work per thread
        t = u // 2 if u % 2 == 0 else n - 1 - u // 2
        h = item % nh
        i = t * nh + h
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


_KT_ROWS = 8  # key dimensions per pass over the slots in _scores_kt


@njit(**KERNEL)
def _scores_kt(qh, ktf, base, nslot, lo, hi, srow):
    """``srow[s] = Σ_j qh[j] · kt[j, s]`` for slots ``lo <= s < hi``, each a sequential f32 sum over
    j (the keys of one KV head at ``ktf[base + j·nslot + s]``).  The sums advance :data:`_KT_ROWS`
    dimensions per pass over the slots, 64 slots at a time in registers (then 16-slot and
    single-slot tails): the key rows stream contiguously, and the partial sums are read and
    written once per pass instead of once per dimension."""
    d = qh.shape[0]
    for s in range(lo, hi):
        srow[s] = 0.0
    for j0 in range(0, d, _KT_ROWS):
        j1 = min(d, j0 + _KT_ROWS)
        s0 = lo
        while s0 + 64 <= hi:
            a0 = acc16()
            a1 = acc16()
            a2 = acc16()
            a3 = acc16()
            load16(a0, srow, s0)
            load16(a1, srow, s0 + 16)
            load16(a2, srow, s0 + 32)
            load16(a3, srow, s0 + 48)
            for j in range(j0, j1):
                off = base + j * nslot + s0
                qj = qh[j]
                axpy16(a0, ktf, off, qj)
                axpy16(a1, ktf, off + 16, qj)
                axpy16(a2, ktf, off + 32, qj)
                axpy16(a3, ktf, off + 48, qj)
            store16(a0, srow, s0)
            store16(a1, srow, s0 + 16)
            store16(a2, srow, s0 + 32)
            store16(a3, srow, s0 + 48)
            s0 += 64
        # 16-slot chunks, the last one partly past hi where the key rows and srow have room
        # (srow's slots past hi are scratch: their sums are computed and never read)
        end = min(nslot, srow.shape[0])
        while s0 < hi and s0 + 16 <= end:
            a0 = acc16()
            load16(a0, srow, s0)
            for j in range(j0, j1):
                axpy16(a0, ktf, base + j * nslot + s0, qh[j])
            store16(a0, srow, s0)
            s0 += 16
        for s in range(s0, hi):
            acc = srow[s]
            for j in range(j0, j1):
                acc += qh[j] * ktf[base + j * nslot + s]
            srow[s] = acc


@njit(**KERNEL)
def _scores_kt4(qt, h0, ktf, base, nslot, lo, hi, sc, g0):
    """:func:`_scores_kt` for the four heads ``h0..h0+3`` of ``qt`` (H, D) sharing one KV head, into
    rows ``g0..g0+3`` of ``sc``: every key load serves four heads (64 slots × 4 heads in 16
    registers), the same sequential sum per score."""
    d = qt.shape[1]
    r0 = sc[g0]
    r1 = sc[g0 + 1]
    r2 = sc[g0 + 2]
    r3 = sc[g0 + 3]
    s64 = lo + (hi - lo) // 64 * 64
    for s in range(lo, s64):
        r0[s] = 0.0
        r1[s] = 0.0
        r2[s] = 0.0
        r3[s] = 0.0
    for j0 in range(0, d, _KT_ROWS):
        j1 = min(d, j0 + _KT_ROWS)
        for s0 in range(lo, s64, 64):
            a00 = acc16()
            a01 = acc16()
            a02 = acc16()
            a03 = acc16()
            a10 = acc16()
            a11 = acc16()
            a12 = acc16()
            a13 = acc16()
            a20 = acc16()
            a21 = acc16()
            a22 = acc16()
            a23 = acc16()
            a30 = acc16()
            a31 = acc16()
            a32 = acc16()
            a33 = acc16()
            load16(a00, r0, s0)
            load16(a01, r0, s0 + 16)
            load16(a02, r0, s0 + 32)
            load16(a03, r0, s0 + 48)
            load16(a10, r1, s0)
            load16(a11, r1, s0 + 16)
            load16(a12, r1, s0 + 32)
            load16(a13, r1, s0 + 48)
            load16(a20, r2, s0)
            load16(a21, r2, s0 + 16)
            load16(a22, r2, s0 + 32)
            load16(a23, r2, s0 + 48)
            load16(a30, r3, s0)
            load16(a31, r3, s0 + 16)
            load16(a32, r3, s0 + 32)
            load16(a33, r3, s0 + 48)
            for j in range(j0, j1):
                off = base + j * nslot + s0
                q0 = qt[h0, j]
                q1 = qt[h0 + 1, j]
                q2 = qt[h0 + 2, j]
                q3 = qt[h0 + 3, j]
                axpy16(a00, ktf, off, q0)
                axpy16(a10, ktf, off, q1)
                axpy16(a20, ktf, off, q2)
                axpy16(a30, ktf, off, q3)
                axpy16(a01, ktf, off + 16, q0)
                axpy16(a11, ktf, off + 16, q1)
                axpy16(a21, ktf, off + 16, q2)
                axpy16(a31, ktf, off + 16, q3)
                axpy16(a02, ktf, off + 32, q0)
                axpy16(a12, ktf, off + 32, q1)
                axpy16(a22, ktf, off + 32, q2)
                axpy16(a32, ktf, off + 32, q3)
                axpy16(a03, ktf, off + 48, q0)
                axpy16(a13, ktf, off + 48, q1)
                axpy16(a23, ktf, off + 48, q2)
                axpy16(a33, ktf, off + 48, q3)
            store16(a00, r0, s0)
            store16(a01, r0, s0 + 16)
            store16(a02, r0, s0 + 32)
            store16(a03, r0, s0 + 48)
            store16(a10, r1, s0)
            store16(a11, r1, s0 + 16)
            store16(a12, r1, s0 + 32)
            store16(a13, r1, s0 + 48)
            store16(a20, r2, s0)
            store16(a21, r2, s0 + 16)
            store16(a22, r2, s0 + 32)
            store16(a23, r2, s0 + 48)
            store16(a30, r3, s0)
            store16(a31, r3, s0 + 16)
            store16(a32, r3, s0 + 32)
            store16(a33, r3, s0 + 48)
    if s64 < hi:  # the last slots, head by head
        for g in range(4):
            _scores_kt(qt[h0 + g], ktf, base, nslot, s64, hi, sc[g0 + g])


@njit(**KERNEL)
def _weighted_v4(sc, g0, lo, hi, vf, base, stride, ot, h0):
    """:func:`_weighted_v` for four heads at once (probability rows ``g0..g0+3`` of ``sc``, output
    rows ``h0..h0+3`` of ``ot`` (H, D)): every V load serves four heads.  Zero probabilities are
    added too (``x + 0·v == x`` for the finite V of a cache, and the sums start at +0.0, so
    skipping them or not gives the same bits)."""
    d = ot.shape[1]
    p0 = sc[g0]
    p1 = sc[g0 + 1]
    p2 = sc[g0 + 2]
    p3 = sc[g0 + 3]
    o0 = ot[h0]
    o1 = ot[h0 + 1]
    o2 = ot[h0 + 2]
    o3 = ot[h0 + 3]
    d64 = d // 64 * 64
    for j0 in range(0, d64, 64):
        a00 = acc16()
        a01 = acc16()
        a02 = acc16()
        a03 = acc16()
        a10 = acc16()
        a11 = acc16()
        a12 = acc16()
        a13 = acc16()
        a20 = acc16()
        a21 = acc16()
        a22 = acc16()
        a23 = acc16()
        a30 = acc16()
        a31 = acc16()
        a32 = acc16()
        a33 = acc16()
        load16(a00, o0, j0)
        load16(a01, o0, j0 + 16)
        load16(a02, o0, j0 + 32)
        load16(a03, o0, j0 + 48)
        load16(a10, o1, j0)
        load16(a11, o1, j0 + 16)
        load16(a12, o1, j0 + 32)
        load16(a13, o1, j0 + 48)
        load16(a20, o2, j0)
        load16(a21, o2, j0 + 16)
        load16(a22, o2, j0 + 32)
        load16(a23, o2, j0 + 48)
        load16(a30, o3, j0)
        load16(a31, o3, j0 + 16)
        load16(a32, o3, j0 + 32)
        load16(a33, o3, j0 + 48)
        for s in range(lo, hi):
            off = base + s * stride + j0
            e0 = p0[s]
            e1 = p1[s]
            e2 = p2[s]
            e3 = p3[s]
            axpy16(a00, vf, off, e0)
            axpy16(a10, vf, off, e1)
            axpy16(a20, vf, off, e2)
            axpy16(a30, vf, off, e3)
            axpy16(a01, vf, off + 16, e0)
            axpy16(a11, vf, off + 16, e1)
            axpy16(a21, vf, off + 16, e2)
            axpy16(a31, vf, off + 16, e3)
            axpy16(a02, vf, off + 32, e0)
            axpy16(a12, vf, off + 32, e1)
            axpy16(a22, vf, off + 32, e2)
            axpy16(a32, vf, off + 32, e3)
            axpy16(a03, vf, off + 48, e0)
            axpy16(a13, vf, off + 48, e1)
            axpy16(a23, vf, off + 48, e2)
            axpy16(a33, vf, off + 48, e3)
        store16(a00, o0, j0)
        store16(a01, o0, j0 + 16)
        store16(a02, o0, j0 + 32)
        store16(a03, o0, j0 + 48)
        store16(a10, o1, j0)
        store16(a11, o1, j0 + 16)
        store16(a12, o1, j0 + 32)
        store16(a13, o1, j0 + 48)
        store16(a20, o2, j0)
        store16(a21, o2, j0 + 16)
        store16(a22, o2, j0 + 32)
        store16(a23, o2, j0 + 48)
        store16(a30, o3, j0)
        store16(a31, o3, j0 + 16)
        store16(a32, o3, j0 + 32)
        store16(a33, o3, j0 + 48)
    if d64 < d:  # the last dimensions, head by head
        for g in range(4):
            _weighted_v(sc[g0 + g], lo, hi, vf, base + d64, stride, ot[h0 + g, d64:])


@njit(**KERNEL)
def _weighted_v(pr, lo, hi, vf, base, stride, orow):
    """``orow[j] += pr[s] · v[s, j]`` over slots ``lo <= s < hi`` with ``pr[s] != 0``, in slot order
    for every j (V of one KV head at ``vf[base + s·stride + j]``): 128 output lanes in registers
    per pass over the slots, then 16-lane and single-lane tails."""
    d = orow.shape[0]
    j0 = 0
    while j0 + 128 <= d:
        a0 = acc16()
        a1 = acc16()
        a2 = acc16()
        a3 = acc16()
        a4 = acc16()
        a5 = acc16()
        a6 = acc16()
        a7 = acc16()
        load16(a0, orow, j0)
        load16(a1, orow, j0 + 16)
        load16(a2, orow, j0 + 32)
        load16(a3, orow, j0 + 48)
        load16(a4, orow, j0 + 64)
        load16(a5, orow, j0 + 80)
        load16(a6, orow, j0 + 96)
        load16(a7, orow, j0 + 112)
        for s in range(lo, hi):
            p = pr[s]
            if p != 0.0:
                off = base + s * stride + j0
                axpy16(a0, vf, off, p)
                axpy16(a1, vf, off + 16, p)
                axpy16(a2, vf, off + 32, p)
                axpy16(a3, vf, off + 48, p)
                axpy16(a4, vf, off + 64, p)
                axpy16(a5, vf, off + 80, p)
                axpy16(a6, vf, off + 96, p)
                axpy16(a7, vf, off + 112, p)
        store16(a0, orow, j0)
        store16(a1, orow, j0 + 16)
        store16(a2, orow, j0 + 32)
        store16(a3, orow, j0 + 48)
        store16(a4, orow, j0 + 64)
        store16(a5, orow, j0 + 80)
        store16(a6, orow, j0 + 96)
        store16(a7, orow, j0 + 112)
        j0 += 128
    while j0 + 16 <= d:
        a0 = acc16()
        load16(a0, orow, j0)
        for s in range(lo, hi):
            p = pr[s]
            if p != 0.0:
                axpy16(a0, vf, base + s * stride + j0, p)
        store16(a0, orow, j0)
        j0 += 16
    for j in range(j0, d):
        acc = orow[j]
        for s in range(lo, hi):
            p = pr[s]
            if p != 0.0:
                acc += p * vf[base + s * stride + j]
        orow[j] = acc


@njit(**KERNEL, parallel=True)
def attention_kt(q, kt, v, slot_pos, ns, qpos, window, round_f16):
    """:func:`attention` with the keys transposed: ``kt`` (Hkv, D, slots) and ``v`` (slots, Hkv, D)
    whole (C-contiguous), of which the first ``ns`` slots are read.  Threads over query × KV
    head; per query only the slot range holding visible positions is summed.  Each score is the
    same sequential sum over D as :func:`attention`'s and each output the same sequential sum
    over slots (zero probabilities add nothing there either), so the results are bit-identical:
    the sums just advance 16-64 at a time in SIMD registers (:mod:`.simd`)."""
    n, nh, d = q.shape
    nkv = kt.shape[0]
    nslot = kt.shape[2]
    group = nh // nkv
    ktf = kt.reshape(kt.size)
    vf = v.reshape(v.size)
    out = np.zeros((n, nh, d), np.float32)
    for item in prange(n * nkv):
        # queries in the order 0, n-1, 1, n-2, ...: causal queries cost in proportion to their
        # position, and prange hands each thread a contiguous range; this balances the ranges
        u = item // nkv
        t = u // 2 if u % 2 == 0 else n - 1 - u // 2
        kh = item % nkv
        p = qpos[t]
        lo = ns
        hi = 0
        for s in range(ns):
            sp = slot_pos[s]
            if sp >= 0 and sp <= p and (window <= 0 or p - sp < window):
                lo = min(lo, s)
                hi = s + 1
        sc = np.empty((group, ns + 16), np.float32)  # + 16: _scores_kt's last chunk
        g4 = group // 4 * 4
        for g in range(0, g4, 4):
            _scores_kt4(q[t], kh * group + g, ktf, kh * d * nslot, nslot, lo, hi, sc, g)
        for g in range(g4, group):
            _scores_kt(q[t, kh * group + g], ktf, kh * d * nslot, nslot, lo, hi, sc[g])
        for g in range(group):
            srow = sc[g]
            m = -np.inf
            for s in range(lo, hi):
                sp = slot_pos[s]
                if sp < 0 or sp > p or (window > 0 and p - sp >= window):
                    srow[s] = -np.inf
                else:
                    m = max(m, srow[s])
            total = 0.0
            for s in range(lo, hi):
                if srow[s] != -np.inf:
                    e = np.float32(math.exp(np.float32(srow[s] - m)))
                    srow[s] = e
                    total += e
                else:
                    srow[s] = 0.0
            inv = np.float32(1.0 / total)
            for s in range(lo, hi):
                if srow[s] != 0.0:
                    pr = np.float32(srow[s] * inv)
                    if round_f16:
                        pr = f16_bits_to_f32(f32_to_f16_bits(pr))
                    srow[s] = pr
        for g in range(0, g4, 4):
            _weighted_v4(sc, g, lo, hi, vf, kh * d, nkv * d, out[t], kh * group + g)
        for g in range(g4, group):
            _weighted_v(sc[g], lo, hi, vf, kh * d, nkv * d, out[t, kh * group + g])
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
