"""Causal attention of a batch of queries over a KV cache, in llama.cpp's CPU arithmetic.

The cache is addressed by slot; ``slot_pos[s]`` is the position held in slot ``s`` (-1: empty).
Query ``t`` at position ``qpos[t]`` sees position ``p`` when ``p <= qpos[t]`` and, with a window
``w > 0``, ``qpos[t] - p < w`` (llama.cpp's LLAMA_SWA_TYPE_STANDARD).  Queries arrive already
scaled and, with an f16 cache (``round_f16``), already rounded to f16, as llama.cpp's K·Q mat-mul
converts them.  Position ``p`` lives in slot ``p % S`` (``S = len(slot_pos)``); a cache that wraps
(a ring) has ``S`` a multiple of 64 (:class:`~engine.runtime.kv_cache.KVCache` sizes it so), so a
slot's index and its position agree modulo 64.

**The arithmetic** is llama.cpp's non-flash-attention CPU graph with its KV cells holding
positions (a single sequence), as its x86 AVX-512 build computes it, bit for bit:

- K·Q (each score a dot product over the head dimension D).  A batch of two or more queries goes
  through tinyBLAS (llamafile's sgemm): 16 lanes, lane ``l`` summing dimensions ``l, l+16, ...``
  in order (one fused multiply-add each), then the lanes as ``_mm512_reduce_add_ps``'s tree
  (``i + (i+8)``, ``i + (i+4)``, ``i + (i+2)``, ``0 + 1``).  One query (decode) goes through
  ``ggml_vec_dot_f16``: 64 lanes (dimension ``d`` in lane ``d % 64``), folded ``(A0 + A2) +
  (A1 + A3)`` by 16-lane quarter, then the same tree; dimensions past the last multiple of 64
  are added after it in double.  tinyBLAS needs D % 16 == 0, otherwise the batch takes the
  decode form too.
- softmax: ``ggml_v_expf`` (its AVX-512 polynomial) of ``score - max``; the exponentials summed
  per 16 cells (cells ``16c .. 16c+15``, the masked ones as 0) by the same tree, those sums
  added in double, the probabilities multiplied by ``f32(1 / sum)``.
- KQ·V: probabilities rounded to f16 with an f16 cache; then, as K·Q, tinyBLAS's 16 lanes over
  cells (cell ``c`` in lane ``c % 16``) for a batch, ``ggml_vec_dot_f16``'s 64 for one query.

With f16 inputs every product is exact in f32, so these sums do not depend on FMA; with an f32
cache the multiply-adds are fused where the CPU has FMA (as llama.cpp's are).

:func:`attention_ref` is the NumPy definition (by position, whatever the slot order);
:func:`attention_kt` (keys transposed: ``kt`` (Hkv, D, >= S slots)) is the Numba kernel, and
:func:`attention` runs it on untransposed keys.  Scores advance 16 slots at a time in SIMD
registers, lane sums live in registers across slots, and one pass over V serves the four query
heads of a KV head.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from engine._jit import INLINE
from engine.runtime.kernels._config import KERNEL
from engine.runtime.kernels.fmath import f64_from_bits, fma32, fma32_ref, fmadd32, round_f16
from engine.runtime.kernels.simd import (
    _V16F,
    _f32_ptr,
    _fma_into,
    _hsum_f32,
    _is_f32_vector,
    acc16,
    load16,
    store16,
)

# ---------------------------------------------------------------------------- SIMD pieces


@intrinsic
def fma16(typingctx, acc, x, off, s):
    """``acc += x[off:off+16] * s`` lane-wise, fused (one rounding) where the CPU has FMA."""
    if not _is_f32_vector(x):
        return None

    def codegen(context, builder, signature, args):
        accp, xa, xoff, scale = args
        xv = builder.load(_f32_ptr(context, builder, signature.args[1], xa, xoff), align=4)
        _fma_into(context, builder, accp, xv, scale, 16)
        return context.get_dummy_value()

    return types.void(acc, x, off, types.float32), codegen


@intrinsic
def fma16x(typingctx, acc, x, off, y, yoff):
    """``acc += x[off:off+16] * y[yoff]`` lane-wise (:func:`fma16` with the scalar read from an
    array without Python's negative-index wrap-around: the key loops' hot path)."""
    if not (_is_f32_vector(x) and _is_f32_vector(y)):
        return None

    def codegen(context, builder, signature, args):
        accp, xa, xoff, ya, yo = args
        xv = builder.load(_f32_ptr(context, builder, signature.args[1], xa, xoff), align=4)
        ydata = context.make_array(signature.args[3])(context, builder, ya).data
        yv = builder.load(builder.gep(ydata, [yo]))
        _fma_into(context, builder, accp, xv, yv, 16)
        return context.get_dummy_value()

    return types.void(acc, x, off, y, yoff), codegen


@intrinsic
def add16(typingctx, acc, other):
    """``acc += other`` lane-wise (two 16-lane accumulators)."""

    def codegen(context, builder, signature, args):
        ap = builder.bitcast(args[0], _V16F.as_pointer())
        bp = builder.bitcast(args[1], _V16F.as_pointer())
        builder.store(builder.fadd(builder.load(ap), builder.load(bp)), ap)
        return context.get_dummy_value()

    return types.void(acc, other), codegen


@intrinsic
def tree16(typingctx, x, off):
    """``x[off:off+16]`` summed as ``_mm512_reduce_add_ps`` does (halves added lane-wise)."""
    if not _is_f32_vector(x):
        return None

    def codegen(context, builder, signature, args):
        v = builder.load(_f32_ptr(context, builder, signature.args[0], args[0], args[1]), align=4)
        return _hsum_f32(builder, v, 16)

    return types.float32(x, off), codegen


# ---------------------------------------------------------------------------- exp (ggml_v_expf)

_R = np.float32(float.fromhex("0x1.8p23"))
_LOG2E = np.float32(float.fromhex("0x1.715476p+0"))
_LN2_HI = np.float32(float.fromhex("0x1.62e4p-1"))
_LN2_LO = np.float32(float.fromhex("0x1.7f7d1cp-20"))
_P0 = np.float32(float.fromhex("0x1.0e4020p-7"))
_P1 = np.float32(float.fromhex("0x1.573e2ep-5"))
_P2 = np.float32(float.fromhex("0x1.555e66p-3"))
_P3 = np.float32(float.fromhex("0x1.fffdb6p-2"))
_P4 = np.float32(float.fromhex("0x1.ffffecp-1"))
_ONE = np.float32(1.0)


@njit(**INLINE)
def expf(x):
    """``e^x`` for an f32 ``x``, as llama.cpp's AVX-512 ``ggml_v_expf`` computes each lane: a
    degree-5 polynomial on the reduced argument, scaled by ``2^n`` (``vscalefps``: one rounding)."""
    z = fma32(x, _LOG2E, _R)
    n = z - _R
    b = fma32(-n, _LN2_LO, fma32(-n, _LN2_HI, x))
    u = b * b
    j = fma32(fma32(fma32(_P0, b, _P1), u, fma32(_P2, b, _P3)), u, fma32(_P4, b, _ONE))
    nc = min(max(n, np.float32(-192.0)), np.float32(192.0))
    scale = f64_from_bits(np.uint64(np.int64(nc) + 1023) << np.uint64(52))  # 2^n, exact
    res = np.float32(np.float64(j) * scale)
    if abs(n) > 192.0:
        return np.float32(0.0) if n <= 0.0 else np.float32(np.inf)
    return res


def expf_ref(x: np.ndarray) -> np.ndarray:
    """NumPy reference of :func:`expf` (element-wise)."""
    x = np.asarray(x, np.float32)
    with np.errstate(all="ignore"):
        z = fma32_ref(x, _LOG2E, _R)
        n = (z - _R).astype(np.float32)
        b = fma32_ref(-n, _LN2_LO, fma32_ref(-n, _LN2_HI, x))
        u = (b * b).astype(np.float32)
        j = fma32_ref(
            fma32_ref(fma32_ref(_P0, b, _P1), u, fma32_ref(_P2, b, _P3)), u, fma32_ref(_P4, b, _ONE)
        )
        ni = np.where(np.abs(n) > 192, 0, n).astype(np.int64)
        res = (j.astype(np.float64) * np.ldexp(1.0, ni)).astype(np.float32)
        alt = np.where(n <= 0, np.float32(0.0), np.float32(np.inf))
    return np.where(np.abs(n) > 192, alt, res).astype(np.float32)


# ---------------------------------------------------------------------------- NumPy definition


def _tree16_ref(v: np.ndarray) -> np.ndarray:
    """(..., 16) -> (...): ``_mm512_reduce_add_ps``'s tree."""
    v = v.astype(np.float32)
    while v.shape[-1] > 1:
        h = v.shape[-1] // 2
        v = (v[..., :h] + v[..., h:]).astype(np.float32)
    return v[..., 0]


def _dot_ref(a: np.ndarray, b: np.ndarray, batched: bool) -> np.ndarray:
    """Dot products along the last axis of ``a`` (..., K) and ``b`` (K,) in llama.cpp's form
    (tinyBLAS when ``batched`` and K % 16 == 0, else ``ggml_vec_dot``)."""
    k = a.shape[-1]
    prod = lambda lo, hi: a[..., lo:hi].astype(np.float64) * b[lo:hi].astype(np.float64)  # noqa: E731
    if batched and k % 16 == 0:
        acc = np.zeros((*a.shape[:-1], 16), np.float32)
        for l0 in range(0, k, 16):
            acc = (prod(l0, l0 + 16) + acc).astype(np.float32)  # exact product, one rounding
        return _tree16_ref(acc)
    k64 = k // 64 * 64
    acc = np.zeros((*a.shape[:-1], 64), np.float32)
    for l0 in range(0, k64, 64):
        acc = (prod(l0, l0 + 64) + acc).astype(np.float32)
    q = [acc[..., 16 * j : 16 * j + 16] for j in range(4)]
    s = _tree16_ref(((q[0] + q[2]).astype(np.float32) + (q[1] + q[3]).astype(np.float32)).astype(np.float32))
    if k64 < k:  # ggml_vec_dot's leftovers: f32 products added in double
        s = s.astype(np.float64)
        for i in range(k64, k):
            s = s + (a[..., i].astype(np.float32) * b[i].astype(np.float32)).astype(np.float64)
        s = s.astype(np.float32)
    return s


def attention_ref(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    slot_pos: np.ndarray,
    qpos: np.ndarray,
    window: int,
    round_f16: bool,
    kq_scale: float = 1.0,
) -> np.ndarray:
    """NumPy definition of the kernels' result: q (n, H, D), k/v (slots, Hkv, D) -> (n, H, D).

    Slots are placed at their positions (cells); a batch of ``n >= 2`` queries takes tinyBLAS's
    form, one query ``ggml_vec_dot``'s (see the module docstring)."""
    n, nh, d = q.shape
    nkv = k.shape[1]
    group = nh // nkv
    batched = n >= 2
    out = np.zeros((n, nh, d), np.float32)
    valid = slot_pos >= 0
    for t in range(n):
        p = int(qpos[t])
        vis = valid & (slot_pos <= p)
        if window > 0:
            vis &= p - slot_pos < window
        pos = slot_pos[vis]
        if pos.size == 0:
            continue
        c0 = int(pos.min()) // 64 * 64  # cells from a multiple of 64: lanes and chunks by position
        ncell = (p - c0) // 64 * 64 + 64
        cells = np.zeros(ncell, bool)
        cells[pos - c0] = True
        kk = np.zeros((ncell, nkv, d), np.float32)
        vv = np.zeros((ncell, nkv, d), np.float32)
        kk[pos - c0] = k[vis]
        vv[pos - c0] = v[vis]
        for h in range(nh):
            kh = h // group
            s = _dot_ref(kk[:, kh, :], q[t, h], batched and d % 16 == 0) * np.float32(kq_scale)
            m = s[cells].max()
            e = np.where(cells, expf_ref(np.where(cells, s - m, 0).astype(np.float32)), np.float32(0))
            total = 0.0
            for c in _tree16_ref(e.reshape(-1, 16)):
                total += float(c)
            pr = (e * np.float32(1.0 / total)).astype(np.float32)
            if round_f16:
                pr = pr.astype(np.float16).astype(np.float32)
            out[t, h] = _dot_ref(np.ascontiguousarray(vv[:, kh, :].T), pr, batched and d % 4 == 0)
    return out


# ---------------------------------------------------------------------------- Numba kernels


@njit(**INLINE)
def _visible(sp, p, window):
    return sp >= 0 and sp <= p and (window <= 0 or p - sp < window)


@njit(**INLINE)
def _segments(p, window, ns, nslots):
    """The slot ranges ``[a0, a1)``, ``[b0, b1)`` holding the positions query ``p`` may see, in
    position order (position ``x`` in slot ``x % nslots``; the second range is empty unless the
    ring wraps between them)."""
    first = 0 if window <= 0 else max(0, p - window + 1)
    first = max(first, p - ns + 1)
    if first > p:
        return 0, 0, 0, 0
    a = first % nslots
    z = p % nslots
    if first // nslots == p // nslots:
        return a, z + 1, 0, 0
    return a, nslots, 0, z + 1


@njit(**INLINE)
def _kq16(qh, ktf, base, nslot, b, srow):
    """tinyBLAS's scores of slots ``b .. b+15``: lane ``l`` sums dimensions ``l, l+16, ...`` (fused
    multiply-adds), the 16 lanes then added as ``_mm512_reduce_add_ps``'s tree; vectorized across
    the slots (one register per lane).  D % 16 == 0; keys at ``ktf[base + j·nslot + s]``."""
    d = qh.shape[0]
    a0 = acc16()
    a1 = acc16()
    a2 = acc16()
    a3 = acc16()
    a4 = acc16()
    a5 = acc16()
    a6 = acc16()
    a7 = acc16()
    a8 = acc16()
    a9 = acc16()
    a10 = acc16()
    a11 = acc16()
    a12 = acc16()
    a13 = acc16()
    a14 = acc16()
    a15 = acc16()
    for i0 in range(0, d, 16):
        o = base + i0 * nslot + b
        fma16(a0, ktf, o, qh[i0])
        fma16(a1, ktf, o + nslot, qh[i0 + 1])
        fma16(a2, ktf, o + 2 * nslot, qh[i0 + 2])
        fma16(a3, ktf, o + 3 * nslot, qh[i0 + 3])
        fma16(a4, ktf, o + 4 * nslot, qh[i0 + 4])
        fma16(a5, ktf, o + 5 * nslot, qh[i0 + 5])
        fma16(a6, ktf, o + 6 * nslot, qh[i0 + 6])
        fma16(a7, ktf, o + 7 * nslot, qh[i0 + 7])
        fma16(a8, ktf, o + 8 * nslot, qh[i0 + 8])
        fma16(a9, ktf, o + 9 * nslot, qh[i0 + 9])
        fma16(a10, ktf, o + 10 * nslot, qh[i0 + 10])
        fma16(a11, ktf, o + 11 * nslot, qh[i0 + 11])
        fma16(a12, ktf, o + 12 * nslot, qh[i0 + 12])
        fma16(a13, ktf, o + 13 * nslot, qh[i0 + 13])
        fma16(a14, ktf, o + 14 * nslot, qh[i0 + 14])
        fma16(a15, ktf, o + 15 * nslot, qh[i0 + 15])
    add16(a0, a8)
    add16(a1, a9)
    add16(a2, a10)
    add16(a3, a11)
    add16(a4, a12)
    add16(a5, a13)
    add16(a6, a14)
    add16(a7, a15)
    add16(a0, a4)
    add16(a1, a5)
    add16(a2, a6)
    add16(a3, a7)
    add16(a0, a2)
    add16(a1, a3)
    add16(a0, a1)
    store16(a0, srow, b)


@njit(**INLINE)
def _kq16x4(qt, h0, ktf, base, nslot, b, sc, g0, tmp):
    """:func:`_kq16` for the four heads ``h0..h0+3`` of ``qt`` (H, D) into rows ``g0..g0+3`` of
    ``sc``: lanes ``l`` and ``l+8`` (the tree's first pair) for four heads in 8 registers, so every
    key load serves four heads; their sums go through ``tmp`` (4·8·16) for the rest of the tree."""
    d = qt.shape[1]
    q0 = qt[h0]
    q1 = qt[h0 + 1]
    q2 = qt[h0 + 2]
    q3 = qt[h0 + 3]
    for r in range(8):
        a0 = acc16()
        a1 = acc16()
        a2 = acc16()
        a3 = acc16()
        c0 = acc16()
        c1 = acc16()
        c2 = acc16()
        c3 = acc16()
        for i0 in range(0, d, 16):
            j = i0 + r
            o = base + j * nslot + b
            o8 = o + 8 * nslot
            fma16x(a0, ktf, o, q0, j)
            fma16x(a1, ktf, o, q1, j)
            fma16x(a2, ktf, o, q2, j)
            fma16x(a3, ktf, o, q3, j)
            fma16x(c0, ktf, o8, q0, j + 8)
            fma16x(c1, ktf, o8, q1, j + 8)
            fma16x(c2, ktf, o8, q2, j + 8)
            fma16x(c3, ktf, o8, q3, j + 8)
        add16(a0, c0)
        add16(a1, c1)
        add16(a2, c2)
        add16(a3, c3)
        store16(a0, tmp, r * 16)
        store16(a1, tmp, (8 + r) * 16)
        store16(a2, tmp, (16 + r) * 16)
        store16(a3, tmp, (24 + r) * 16)
    for g in range(4):
        _fold8(tmp, g * 128, sc[g0 + g], b)


@njit(**INLINE)
def _fold8(tmp, o, srow, b):
    """``srow[b:b+16]`` = rows ``0..7`` of ``tmp[o:o+128]`` (16 lanes each: the tree's pair sums
    ``l + (l+8)``) folded as the rest of the tree: ``r + (r+4)``, ``r + (r+2)``, ``0 + 1``."""
    x0 = acc16()
    x1 = acc16()
    x2 = acc16()
    x3 = acc16()
    y = acc16()
    load16(x0, tmp, o)
    load16(y, tmp, o + 64)
    add16(x0, y)
    load16(x1, tmp, o + 16)
    load16(y, tmp, o + 80)
    add16(x1, y)
    load16(x2, tmp, o + 32)
    load16(y, tmp, o + 96)
    add16(x2, y)
    load16(x3, tmp, o + 48)
    load16(y, tmp, o + 112)
    add16(x3, y)
    add16(x0, x2)
    add16(x1, x3)
    add16(x0, x1)
    store16(x0, srow, b)


@njit(**INLINE)
def _tree_rows(buf, rows, width):
    """``buf[0, :width]`` = rows ``0 .. rows-1`` (16 or 64) of ``buf`` folded lane-wise as llama.cpp
    does: 64 rows as ``ggml_vec_dot``'s quarters ``(A0 + A2) + (A1 + A3)`` first, then 16 as
    ``_mm512_reduce_add_ps``'s tree."""
    if rows == 64:
        for r in range(16):
            for x in range(width):
                buf[r, x] = (buf[r, x] + buf[r + 32, x]) + (buf[r + 16, x] + buf[r + 48, x])
    h = 8
    while h >= 1:
        for r in range(h):
            for x in range(width):
                buf[r, x] += buf[r + h, x]
        h //= 2


@njit(**INLINE)
def _kq64(qh, ktf, base, nslot, b, srow, cb):
    """``ggml_vec_dot``'s scores of slots ``b .. b+15``: 64 lanes over D (dimension ``j`` in lane
    ``j % 64``), folded ``(A0 + A2) + (A1 + A3)`` and by tree; the dimensions past the last
    multiple of 64 then added in double.  ``cb`` (64, 16) scratch."""
    d = qh.shape[0]
    d64 = d // 64 * 64
    for r in range(64):
        p0 = acc16()
        for i0 in range(0, d64, 64):
            fma16(p0, ktf, base + (i0 + r) * nslot + b, qh[i0 + r])
        store16(p0, cb[r], 0)
    _tree_rows(cb, 64, 16)
    for x in range(16):
        if d64 < d:
            s = np.float64(cb[0, x])
            for j in range(d64, d):
                s += np.float64(qh[j] * ktf[base + j * nslot + b + x])
            srow[b + x] = np.float32(s)
        else:
            srow[b + x] = cb[0, x]


@njit(**INLINE)
def _kq64v(qh, ktf, base, nslot, b, srow, cb):
    """:func:`_kq64` for D % 64 == 0 in registers: per lane ``l`` the four quarters' sums
    ``P_j`` (dimensions ``64i + 16j + l``) folded ``(P0 + P2) + (P1 + P3)`` at once, then the 16
    lanes' tree through ``cb`` (>= 256 floats)."""
    d = qh.shape[0]
    for r in range(16):
        p0 = acc16()
        p1 = acc16()
        p2 = acc16()
        p3 = acc16()
        for i0 in range(0, d, 64):
            o = base + (i0 + r) * nslot + b
            fma16x(p0, ktf, o, qh, i0 + r)
            fma16x(p1, ktf, o + 16 * nslot, qh, i0 + 16 + r)
            fma16x(p2, ktf, o + 32 * nslot, qh, i0 + 32 + r)
            fma16x(p3, ktf, o + 48 * nslot, qh, i0 + 48 + r)
        add16(p0, p2)
        add16(p1, p3)
        add16(p0, p1)
        store16(p0, cb, r * 16)
    _fold16(cb, srow, b)


@njit(**INLINE)
def _fold16(cb, srow, b):
    """``srow[b:b+16]`` = the 16 rows of ``cb[0:256]`` (16 lanes each) added as
    ``_mm512_reduce_add_ps``'s tree: ``r + (r+8)``, then :func:`_fold8`'s steps."""
    x = acc16()
    y = acc16()
    for r in range(8):
        load16(x, cb, r * 16)
        load16(y, cb, (r + 8) * 16)
        add16(x, y)
        store16(x, cb, r * 16)
    _fold8(cb, 0, srow, b)


@njit(**INLINE)
def _pv64(prow, a0, a1, b0, b1, vf, base, stride, orow, part):
    """:func:`_pv_lanes` with 64 lanes (``ggml_vec_dot``: one query) for D % 64 == 0 in registers:
    per 64 dimensions and lane ``l``, the four quarters' sums (slots ``s % 64 == 16j + l``) in 16
    registers, folded ``(A0 + A2) + (A1 + A3)`` into ``part[l]``, then the 16 lanes' tree;
    ``part`` (16, >= 64)."""
    d = orow.shape[0]
    for j0 in range(0, d, 64):
        for r in range(16):
            c00 = acc16()
            c01 = acc16()
            c02 = acc16()
            c03 = acc16()
            c10 = acc16()
            c11 = acc16()
            c12 = acc16()
            c13 = acc16()
            c20 = acc16()
            c21 = acc16()
            c22 = acc16()
            c23 = acc16()
            c30 = acc16()
            c31 = acc16()
            c32 = acc16()
            c33 = acc16()
            for sg in range(2):
                lo = a0 if sg == 0 else b0
                hi = a1 if sg == 0 else b1
                s = lo + (r - lo) % 64  # quarter 0 of lane r; quarters 1..3 at +16, +32, +48
                s1 = lo + (16 + r - lo) % 64
                s2 = lo + (32 + r - lo) % 64
                s3 = lo + (48 + r - lo) % 64
                while s < hi:
                    off = base + s * stride + j0
                    fma16x(c00, vf, off, prow, s)
                    fma16x(c01, vf, off + 16, prow, s)
                    fma16x(c02, vf, off + 32, prow, s)
                    fma16x(c03, vf, off + 48, prow, s)
                    s += 64
                while s1 < hi:
                    off = base + s1 * stride + j0
                    fma16x(c10, vf, off, prow, s1)
                    fma16x(c11, vf, off + 16, prow, s1)
                    fma16x(c12, vf, off + 32, prow, s1)
                    fma16x(c13, vf, off + 48, prow, s1)
                    s1 += 64
                while s2 < hi:
                    off = base + s2 * stride + j0
                    fma16x(c20, vf, off, prow, s2)
                    fma16x(c21, vf, off + 16, prow, s2)
                    fma16x(c22, vf, off + 32, prow, s2)
                    fma16x(c23, vf, off + 48, prow, s2)
                    s2 += 64
                while s3 < hi:
                    off = base + s3 * stride + j0
                    fma16x(c30, vf, off, prow, s3)
                    fma16x(c31, vf, off + 16, prow, s3)
                    fma16x(c32, vf, off + 32, prow, s3)
                    fma16x(c33, vf, off + 48, prow, s3)
                    s3 += 64
            add16(c00, c20)
            add16(c01, c21)
            add16(c02, c22)
            add16(c03, c23)
            add16(c10, c30)
            add16(c11, c31)
            add16(c12, c32)
            add16(c13, c33)
            add16(c00, c10)
            add16(c01, c11)
            add16(c02, c12)
            add16(c03, c13)
            row = part[r]
            store16(c00, row, 0)
            store16(c01, row, 16)
            store16(c02, row, 32)
            store16(c03, row, 48)
        _tree_rows(part, 16, 64)
        for j in range(64):
            orow[j0 + j] = part[0, j]


@njit(**INLINE)
def _softmax_segs(srow, slot_pos, p, window, a0, a1, b0, b1, round_f16_, kq_scale, tmp):
    """Scores of the visible slots in the two ranges -> probabilities, in place: llama.cpp's
    soft_max (scores times ``kq_scale`` in f32, ``ggml_v_expf``, 16-cell sums added in double,
    one f32 reciprocal), rounded to f16 with an f16 cache.  Slots of the ranges that are not
    visible get 0."""
    m = -np.inf
    for sg in range(2):
        lo = a0 if sg == 0 else b0
        hi = a1 if sg == 0 else b1
        for s in range(lo, hi):
            srow[s] = np.float32(srow[s] * kq_scale)
            if _visible(slot_pos[s], p, window):
                m = max(m, srow[s])
    total = 0.0
    for sg in range(2):
        lo = a0 if sg == 0 else b0
        hi = a1 if sg == 0 else b1
        for s in range(lo, hi):  # branch-free: vectorizes
            sp = slot_pos[s]
            vis = (sp >= 0) & (sp <= p) & ((window <= 0) | (p - sp < window))
            e = expf(np.float32(srow[s] - m))
            srow[s] = e if vis else np.float32(0.0)
        for blk in range(lo // 16 * 16, hi, 16):
            if blk >= lo and blk + 16 <= hi:
                total += np.float64(tree16(srow, blk))
            else:  # a block the range only partly covers: its other lanes count as 0
                for x in range(16):
                    s = blk + x
                    tmp[x] = srow[s] if s >= lo and s < hi else np.float32(0.0)
                total += np.float64(tree16(tmp, 0))
    inv = np.float32(1.0 / total)
    for sg in range(2):
        lo = a0 if sg == 0 else b0
        hi = a1 if sg == 0 else b1
        if round_f16_:
            for s in range(lo, hi):
                srow[s] = round_f16(np.float32(srow[s] * inv))
        else:
            for s in range(lo, hi):
                srow[s] = np.float32(srow[s] * inv)


@njit(**INLINE)
def _pv_lanes(prow, a0, a1, b0, b1, lanes, vf, base, stride, orow, part):
    """``orow = Σ_s prow[s] · v[s]`` over the two slot ranges, slot ``s`` in lane ``s % lanes``
    (16: tinyBLAS, 64: ``ggml_vec_dot``), each lane summing its slots in position order with
    fused multiply-adds, the lanes then folded as llama.cpp does.  Any D; ``part`` (>= lanes, D)
    scratch; V of one KV head at ``vf[base + s·stride + j]``."""
    d = orow.shape[0]
    for r in range(lanes):
        for j in range(d):
            part[r, j] = 0.0
    for sg in range(2):
        lo = a0 if sg == 0 else b0
        hi = a1 if sg == 0 else b1
        for s in range(lo, hi):
            pr = prow[s]
            if pr != 0.0:
                row = part[s % lanes]
                off = base + s * stride
                for j in range(d):
                    row[j] = fmadd32(vf[off + j], pr, row[j])
    _tree_rows(part, lanes, d)
    for j in range(d):
        orow[j] = part[0, j]


@njit(**INLINE)
def _pv16x4(sc, g0, a0, a1, b0, b1, vf, base, stride, ot, h0, part):
    """:func:`_pv_lanes` with 16 lanes for the four heads ``h0..h0+3`` (probability rows
    ``g0..g0+3`` of ``sc``) at once, D % 64 == 0: per 64 dimensions and lane, 4 heads × 64 dims in
    16 registers over the lane's slots (every V load serves four heads); ``part`` (16, 256)."""
    d = ot.shape[1]
    p0 = sc[g0]
    p1 = sc[g0 + 1]
    p2 = sc[g0 + 2]
    p3 = sc[g0 + 3]
    for j0 in range(0, d, 64):
        for r in range(16):
            c00 = acc16()
            c01 = acc16()
            c02 = acc16()
            c03 = acc16()
            c10 = acc16()
            c11 = acc16()
            c12 = acc16()
            c13 = acc16()
            c20 = acc16()
            c21 = acc16()
            c22 = acc16()
            c23 = acc16()
            c30 = acc16()
            c31 = acc16()
            c32 = acc16()
            c33 = acc16()
            for sg in range(2):
                lo = a0 if sg == 0 else b0
                hi = a1 if sg == 0 else b1
                s = lo + (r - lo) % 16
                while s < hi:
                    off = base + s * stride + j0
                    fma16x(c00, vf, off, p0, s)
                    fma16x(c10, vf, off, p1, s)
                    fma16x(c20, vf, off, p2, s)
                    fma16x(c30, vf, off, p3, s)
                    fma16x(c01, vf, off + 16, p0, s)
                    fma16x(c11, vf, off + 16, p1, s)
                    fma16x(c21, vf, off + 16, p2, s)
                    fma16x(c31, vf, off + 16, p3, s)
                    fma16x(c02, vf, off + 32, p0, s)
                    fma16x(c12, vf, off + 32, p1, s)
                    fma16x(c22, vf, off + 32, p2, s)
                    fma16x(c32, vf, off + 32, p3, s)
                    fma16x(c03, vf, off + 48, p0, s)
                    fma16x(c13, vf, off + 48, p1, s)
                    fma16x(c23, vf, off + 48, p2, s)
                    fma16x(c33, vf, off + 48, p3, s)
                    s += 16
            row = part[r]
            store16(c00, row, 0)
            store16(c01, row, 16)
            store16(c02, row, 32)
            store16(c03, row, 48)
            store16(c10, row, 64)
            store16(c11, row, 80)
            store16(c12, row, 96)
            store16(c13, row, 112)
            store16(c20, row, 128)
            store16(c21, row, 144)
            store16(c22, row, 160)
            store16(c23, row, 176)
            store16(c30, row, 192)
            store16(c31, row, 208)
            store16(c32, row, 224)
            store16(c33, row, 240)
        _tree_rows(part, 16, 256)
        for g in range(4):
            for j in range(64):
                ot[h0 + g, j0 + j] = part[0, g * 64 + j]


@njit(**KERNEL)
def _attend(
    qt, kh, group, g0, g1, ktf, nslot, vf, nkv, slot_pos, ns, p, window, round_f16, kq_scale, batched, sc, ot
):
    """Query heads ``kh·group + g`` (``g0 <= g < g1``) of one query ``qt`` (H, D) over KV head
    ``kh``: scores in rows ``g - g0`` of ``sc`` (>= g1 - g0, nslot) scratch, then probabilities,
    outputs into rows of ``ot`` (H, D).  ``batched``: the query is one of a batch of two or more
    (tinyBLAS's form), else ``ggml_vec_dot``'s."""
    d = qt.shape[1]
    nslots = slot_pos.shape[0]
    a0, a1, b0, b1 = _segments(p, window, ns, nslots)
    tmp = np.empty(16, np.float32)
    cb = np.empty((64, 16), np.float32)
    cbf = cb.reshape(1024)
    kbase = kh * d * nslot
    tiny_kq = batched and d % 16 == 0
    g4 = g0 + (g1 - g0) // 4 * 4 if tiny_kq else g0
    if g4 > g0:
        t4 = np.empty(512, np.float32)
        for sg in range(2):
            lo = a0 if sg == 0 else b0
            hi = a1 if sg == 0 else b1
            for blk in range(lo // 16 * 16, hi, 16):
                for g in range(g0, g4, 4):
                    _kq16x4(qt, kh * group + g, ktf, kbase, nslot, blk, sc, g - g0, t4)
    for g in range(g0, g1):
        qh = qt[kh * group + g]
        srow = sc[g - g0]
        for sg in range(2):
            lo = a0 if sg == 0 else b0
            hi = a1 if sg == 0 else b1
            for blk in range(lo // 16 * 16, hi, 16):
                if g < g4:
                    break  # scored four heads at a time above
                if tiny_kq:
                    _kq16(qh, ktf, kbase, nslot, blk, srow)
                elif d % 64 == 0:
                    _kq64v(qh, ktf, kbase, nslot, blk, srow, cbf)
                else:
                    _kq64(qh, ktf, kbase, nslot, blk, srow, cb)
        _softmax_segs(srow, slot_pos, p, window, a0, a1, b0, b1, round_f16, kq_scale, tmp)
    tiny_pv = batched and d % 4 == 0
    g4 = g0 + (g1 - g0) // 4 * 4 if tiny_pv and d % 64 == 0 else g0
    if g4 > g0:
        part = np.empty((16, 256), np.float32)
        for g in range(g0, g4, 4):
            _pv16x4(sc, g - g0, a0, a1, b0, b1, vf, kh * d, nkv * d, ot, kh * group + g, part)
    if g4 < g1:
        if not tiny_pv and d % 64 == 0:
            part = np.empty((16, 64), np.float32)
            for g in range(g4, g1):
                _pv64(sc[g - g0], a0, a1, b0, b1, vf, kh * d, nkv * d, ot[kh * group + g], part)
        else:
            lanes = 16 if tiny_pv else 64
            part = np.empty((lanes, d), np.float32)
            for g in range(g4, g1):
                _pv_lanes(sc[g - g0], a0, a1, b0, b1, lanes, vf, kh * d, nkv * d, ot[kh * group + g], part)


@njit(**KERNEL, parallel=True)
def attention_kt(q, kt, v, slot_pos, ns, qpos, window, round_f16, kq_scale):
    """q (n, H, D) over ``kt`` (Hkv, D, nslot) and ``v`` (>= S, Hkv, D) (whole, C-contiguous;
    ``nslot`` >= S a multiple of 16), of which the first ``ns`` slots hold positions
    (``S = len(slot_pos)``; position ``x`` in slot ``x % S``, S % 64 == 0 if the ring wraps)
    -> (n, H, D), as :func:`attention_ref` (``kq_scale``: the scores' f32 factor in the softmax, 1
    for pre-scaled queries).  Threads over query × KV head, queries zig-zag
    (0, n-1, 1, ...): causal queries cost in proportion to their position, and prange hands each
    thread a contiguous range; this balances them."""
    n, nh, d = q.shape
    nkv = kt.shape[0]
    nslot = kt.shape[2]
    group = nh // nkv
    ktf = kt.reshape(kt.size)
    vf = v.reshape(v.size)
    out = np.zeros((n, nh, d), np.float32)
    batched = n >= 2
    for item in prange(n * nkv):
        u = item // nkv
        t = u // 2 if u % 2 == 0 else n - 1 - u // 2
        kh = item % nkv
        sc = np.empty((group, nslot), np.float32)
        _attend(
            q[t],
            kh,
            group,
            0,
            group,
            ktf,
            nslot,
            vf,
            nkv,
            slot_pos,
            ns,
            qpos[t],
            window,
            round_f16,
            np.float32(kq_scale),
            batched,
            sc,
            out[t],
        )
    return out


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    slot_pos: np.ndarray,
    qpos: np.ndarray,
    window: int,
    round_f16: bool,
    kq_scale: float = 1.0,
) -> np.ndarray:
    """:func:`attention_kt` on untransposed keys ``k`` (slots, Hkv, D) in any slot order: the
    slots are first laid out by position (a copy), so the result is :func:`attention_ref`'s."""
    sp = np.asarray(slot_pos, np.int64)
    n, nh, d = q.shape
    nkv = k.shape[1]
    ok = sp >= 0
    if not ok.any():
        return np.zeros((n, nh, d), np.float32)
    c0 = int(sp[ok].min()) // 64 * 64
    ncell = (int(sp[ok].max()) - c0) // 64 * 64 + 64
    cell = sp[ok] % ncell  # position x in slot x % ncell, ncell % 64 == 0: the kernel's layout
    kt = np.zeros((nkv, d, ncell + 16 if ncell % 128 == 0 else ncell), np.float32)  # see kt_width
    kt[:, :, cell] = np.transpose(k[ok], (1, 2, 0))
    vv = np.zeros((ncell, nkv, d), np.float32)
    vv[cell] = v[ok]
    pos = np.full(ncell, -1, np.int64)
    pos[cell] = sp[ok]
    qp = np.asarray(qpos, np.int64)
    q = np.ascontiguousarray(q, np.float32)
    return attention_kt(q, kt, vv, pos, ncell, qp, window, round_f16, np.float32(kq_scale))
