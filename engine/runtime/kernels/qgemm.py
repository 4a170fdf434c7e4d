"""Quantized mat-mat (prefill): ``qgemm(w, x) == matvec(w, x)`` bit for bit, several times faster.

:func:`~engine.runtime.kernels.qmatmul.matvec` walks the tokens one by one for every weight row: it
decodes the row's blocks again for each token and streams the whole activation matrix once per
row.  :func:`qgemm` tiles the product instead (llama.cpp's batched CPU path does the same): a tile
of weight rows is decoded once, then multiplied by every token, so the decode cost and the
weight traffic are paid once per tile instead of once per token.

The numbers are the same as :func:`matvec`'s, not merely close: every output element goes through
the same float operations in the same order, so prefill and decode logits stay identical.

- Q5_0 (``matvec`` keeps 16 float lanes per row across the blocks, then sums the lanes in
  order): a block of rows is decoded to f32 once; the activations are dequantized (as in
  ``matvec``) and transposed to (cols, tokens) so that the SIMD lanes run across tokens: each lane
  does exactly the scalar sequence of ``matvec``'s lane, and there is no horizontal sum in the hot
  loop.  Two rows share every activation load; the 2 × 16 × 64-token accumulator tile lives on the
  stack (:func:`_stack_f32`) so that LLVM knows it aliases nothing and vectorizes the token loop
  with no run-time checks (Numba's heap arrays would need them, and Numba runs no SLP vectorizer).
- Q8_0: ``matvec``'s own kernel at every size: per block one ``pmaddwd`` of int8 codes into 16
  exact integer lanes, converted and scaled into 16 f32 lanes (:mod:`.simd`), two rows × four
  tokens per pass (2048 × 640 × 512 tokens: 53 GMAC/s on one Zen 5 thread, against 20 for the
  float-lane kernel it replaced and ~0.4-0.7x of that for a token-tiled float kernel).
- Q4_0: ``matvec``'s own kernel at every size too: its four-blocks-per-pass integer kernel runs
  512 tokens ~4x faster than a token-tiled integer kernel whose 32-element blocks each end in a
  horizontal sum (36 vs 160 ms for 2048 x 640 at one thread).
- Q4_K, Q5_K, Q6_K (``matvec`` forms an exact integer sum per block, then one scalar float
  update per block): the codes of a block of rows are decoded once to int16 with the K-quant
  sub-block scale already multiplied in (``sc · q`` fits in int16 for every type), so a 256-element
  block's integer sum is one long int16 × int8 reduction (``vpmaddwd`` / ``vpdpwssd``) with one
  horizontal sum per block instead of per 16/32 elements; the integer sum is exact whatever the
  order, and the float update is ``matvec``'s expression.

Below :data:`MATVEC_BELOW` tokens (a few; 16 for Q5_0, whose tiles are 64 tokens) ``qgemm`` runs
``matvec``'s kernel, so it can be called for any token count.

Memory: per-thread scratch of a few row blocks (kilobytes to ~64 KB) plus one transposed copy of
the (dequantized) activations; weights are never dequantized as a whole.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from engine.runtime.kernels._config import KERNEL
from engine.runtime.kernels.qmatmul import QWeight, matvec, quantize_act
from engine.runtime.kernels.simd import dot_i16_i8, dot_i16x16

_R = 2  # rows per micro-tile of the float-lane kernels (they share every activation load)
_TT = 64  # tokens per micro-tile of the float-lane kernels (SIMD lanes run across tokens)
_RB = 16  # rows per block of the float-lane kernels (decoded once, reused by every token tile)
_RI = 8  # rows per block of the integer kernels

# Below this many tokens qgemm runs matvec's kernel (same numbers by definition): the Q5_0 kernel
# pads tokens to whole 64-token tiles, and a row block's decode only pays off over a few tokens.
# Measured crossovers on the 2-vCPU EPYC (noisy): Q5_0 ~16, Q4_K ~4-8, Q6_K ~2 tokens.
MATVEC_BELOW = {"Q4_0": 1 << 62, "Q5_0": 16, "Q8_0": 1 << 62, "Q4_K": 4, "Q5_K": 4, "Q6_K": 2}


def _stack_f32(nelem: int):
    """An intrinsic returning a pointer to ``nelem`` f32 on the stack (an entry-block alloca)."""

    @intrinsic
    def stack(typingctx):
        def codegen(context, builder, signature, args):
            return cgutils.alloca_once(builder, ir.FloatType(), size=nelem)

        return types.CPointer(types.float32)(), codegen

    return stack


_acc16 = _stack_f32(_R * 16 * _TT)
_sum = _stack_f32(_TT)
_NO_MINS = np.zeros((1, 16), np.int16)  # Q6_K: no mins / bsums
_NO_BSUMS = np.zeros((1, 16), np.int16)


# ============================================================================ float-lane kernels


@njit(**KERNEL, parallel=True)
def _gemm_q5_0(qs, qh, d, xT, out):
    """Q5_0 rows × dequantized Q8_0 activations ``xT`` (cols, tokens padded to _TT): lane j
    accumulates ``(lo·x_j + hi·x_{j+16})·d`` over the blocks, then the 16 lanes are summed in
    order, exactly as :func:`~engine.runtime.kernels.qmatmul._mv_q5_0`."""
    rows = qs.shape[0]
    nb = d.shape[1]
    k = nb * 32
    npad = xT.shape[1]
    n = out.shape[0]
    nrb = (rows + _RB - 1) // _RB
    for c in prange(nrb):
        r0 = c * _RB
        rn = min(_RB, rows - r0)
        wf = np.zeros((_RB, k), np.float32)
        ds = np.zeros((_RB, nb), np.float32)
        for i in range(rn):
            r = r0 + i
            for b in range(nb):
                h = np.int32(qh[r, b])
                ds[i, b] = d[r, b]
                for j in range(16):
                    v = np.int32(qs[r, b * 16 + j])
                    wf[i, b * 32 + j] = np.float32(((v & 15) | (((h >> j) & 1) << 4)) - 16)
                    wf[i, b * 32 + 16 + j] = np.float32(((v >> 4) | (((h >> (j + 16)) & 1) << 4)) - 16)
        acc = carray(_acc16(), (_R, 16, _TT))
        sv = carray(_sum(), _TT)
        wl = np.empty(_R, np.float32)
        wh = np.empty(_R, np.float32)
        dv = np.empty(_R, np.float32)
        for tb in range(npad // _TT):
            t0 = tb * _TT
            tn = min(_TT, n - t0)
            for pi in range((rn + _R - 1) // _R):
                p = pi * _R
                for i in range(_R):
                    for j in range(16):
                        for t in range(_TT):
                            acc[i, j, t] = 0.0
                for b in range(nb):
                    o = b * 32
                    for i in range(_R):
                        dv[i] = ds[p + i, b]
                    for j in range(16):
                        for i in range(_R):
                            wl[i] = wf[p + i, o + j]
                            wh[i] = wf[p + i, o + 16 + j]
                        for t in range(_TT):
                            x1 = xT[o + j, t0 + t]
                            x2 = xT[o + 16 + j, t0 + t]
                            for i in range(_R):
                                acc[i, j, t] += (wl[i] * x1 + wh[i] * x2) * dv[i]
                for i in range(min(_R, rn - p)):
                    for t in range(_TT):
                        sv[t] = 0.0
                    for j in range(16):
                        for t in range(_TT):
                            sv[t] += acc[i, j, t]
                    for t in range(tn):
                        out[t0 + t, r0 + p + i] = sv[t]


# ============================================================================ integer kernels


@njit(**KERNEL)
def _kq_tile(w, ds, dm, ms, has_min, i0, xq, xd, xb, t, res):
    """Rows ``i0, i0+1`` of a decoded row block × tokens ``t..t+3``: per block the exact integer
    sums (:func:`~.simd.dot_i16_i8`, and with ``has_min`` :func:`~.simd.dot_i16x16` for
    ``Σ m·bsum``), then ``matvec``'s float update in block order, into ``res`` (2 × 4)."""
    nb = ds.shape[1]
    for u in range(8):
        res[u] = 0.0
    for b in range(nb):
        o = b * 256
        for u in range(4):
            xr = xq[t + u]
            xdb = xd[t + u, b]
            for r in range(2):
                i = i0 + r
                sumi = dot_i16_i8(w[i], o, xr, o, 8)
                if has_min:
                    summ = dot_i16x16(ms[i], b * 16, xb[t + u], b * 16)
                    res[4 * r + u] += xdb * (ds[i, b] * np.float32(sumi) - dm[i, b] * np.float32(summ))
                else:
                    res[4 * r + u] += xdb * ds[i, b] * np.float32(sumi)


@njit(**KERNEL)
def _kq_rows(w, ds, dm, ms, has_min, rn, xq, xd, xb, out, r0):
    """Every token × the ``rn`` decoded rows of a block: :func:`_kq_tile` for 2 rows × 4 tokens,
    then the single row and the last tokens with the same arithmetic."""
    n = xq.shape[0]
    nb = ds.shape[1]
    n4 = n - n % 4
    res = np.empty(8, np.float32)
    for i0 in range(0, rn - 1, 2):
        for t in range(0, n4, 4):
            _kq_tile(w, ds, dm, ms, has_min, i0, xq, xd, xb, t, res)
            for u in range(4):
                out[t + u, r0 + i0] = res[u]
                out[t + u, r0 + i0 + 1] = res[4 + u]
    for i in range(rn):
        t0 = n4 if i < rn - rn % 2 else 0
        for t in range(t0, n):
            acc = np.float32(0.0)
            for b in range(nb):
                o = b * 256
                sumi = dot_i16_i8(w[i], o, xq[t], o, 8)
                if has_min:
                    summ = dot_i16x16(ms[i], b * 16, xb[t], b * 16)
                    acc += xd[t, b] * (ds[i, b] * np.float32(sumi) - dm[i, b] * np.float32(summ))
                else:
                    acc += xd[t, b] * ds[i, b] * np.float32(sumi)
            out[t, r0 + i] = acc


@njit(**KERNEL, parallel=True)
def _gemm_qk(qs, sc, mn, d, dmin, qh, has_qh, xq, xd, xb, out):
    """Q4_K / Q5_K rows × Q8_K activations (``xb``: the bsums as int16): per block the exact
    ``Σ sc·q·x`` (scales folded into the int16 codes) and ``Σ m·bsum`` (mins spread over the 16
    bsums of a block), then ``matvec``'s float update in block order."""
    rows = qs.shape[0]
    nb = d.shape[1]
    k = nb * 256
    nrb = (rows + _RI - 1) // _RI
    for c in prange(nrb):
        r0 = c * _RI
        rn = min(_RI, rows - r0)
        w = np.zeros((_RI, k), np.int16)
        ds = np.zeros((_RI, nb), np.float32)
        dm = np.zeros((_RI, nb), np.float32)
        ms = np.zeros((_RI, nb * 16), np.int16)
        for i in range(rn):
            r = r0 + i
            for b in range(nb):
                ds[i, b] = d[r, b]
                dm[i, b] = dmin[r, b]
                for s in range(16):
                    ms[i, b * 16 + s] = mn[r, b * 8 + s // 2]
                for cc in range(4):
                    s1 = np.int16(sc[r, b * 8 + 2 * cc])
                    s2 = np.int16(sc[r, b * 8 + 2 * cc + 1])
                    for li in range(32):
                        v = np.int16(qs[r, b * 128 + 32 * cc + li])
                        lo = v & 15
                        hi = v >> 4
                        if has_qh:
                            hb = np.int16(qh[r, b * 32 + li])
                            lo |= ((hb >> (2 * cc)) & 1) << 4
                            hi |= ((hb >> (2 * cc + 1)) & 1) << 4
                        w[i, b * 256 + 64 * cc + li] = s1 * lo
                        w[i, b * 256 + 64 * cc + 32 + li] = s2 * hi
        _kq_rows(w, ds, dm, ms, True, rn, xq, xd, xb, out, r0)


@njit(**KERNEL, parallel=True)
def _gemm_q6_k(ql, qh, sc, d, xq, xd, out):
    """Q6_K rows × Q8_K activations: per block the exact ``Σ sc·(q-32)·x`` (scales folded into the
    int16 codes), then ``acc += x_d·d·sumi`` in block order, as ``matvec``."""
    rows = ql.shape[0]
    nb = d.shape[1]
    k = nb * 256
    nrb = (rows + _RI - 1) // _RI
    for c in prange(nrb):
        r0 = c * _RI
        rn = min(_RI, rows - r0)
        w = np.zeros((_RI, k), np.int16)
        ds = np.zeros((_RI, nb), np.float32)
        for i in range(rn):
            r = r0 + i
            for b in range(nb):
                ds[i, b] = d[r, b]
                for h in range(2):
                    for li in range(32):
                        a = np.int16(ql[r, b * 128 + 64 * h + li])
                        a2 = np.int16(ql[r, b * 128 + 64 * h + 32 + li])
                        hb = np.int16(qh[r, b * 64 + 32 * h + li])
                        s = b * 16 + 8 * h + li // 16
                        e = b * 256 + 128 * h + li
                        w[i, e] = np.int16(sc[r, s]) * (((a & 15) | ((hb & 3) << 4)) - 32)
                        w[i, e + 32] = np.int16(sc[r, s + 2]) * (((a2 & 15) | (((hb >> 2) & 3) << 4)) - 32)
                        w[i, e + 64] = np.int16(sc[r, s + 4]) * (((a >> 4) | (((hb >> 4) & 3) << 4)) - 32)
                        w[i, e + 96] = np.int16(sc[r, s + 6]) * (((a2 >> 4) | (((hb >> 6) & 3) << 4)) - 32)
        _kq_rows(w, ds, ds, _NO_MINS, False, rn, xq, xd, _NO_BSUMS, out, r0)


# ============================================================================ entry point

_NO_QH = np.zeros((1, 1), np.uint8)


@njit(**KERNEL, parallel=True)
def _transposed_act(q, d, npad):
    """Dequantized activations, ``q · d`` in f32 as :func:`~.actquant.dequant_act` computes them,
    transposed to (cols, tokens) and padded with zeros to ``npad`` tokens."""
    n, k = q.shape
    bs = k // d.shape[1]
    xT = np.empty((k, npad), np.float32)
    for e in prange(k):
        for t in range(n):
            xT[e, t] = np.float32(q[t, e]) * d[t, e // bs]
        for t in range(n, npad):
            xT[e, t] = 0.0
    return xT


def qgemm(w: QWeight, x: np.ndarray, out: np.ndarray | None = None, act=None) -> np.ndarray:
    """``x @ W.T`` for many tokens (prefill): ``x`` (n, cols) f32 -> (n, rows) f32, equal bit for
    bit to :func:`~engine.runtime.kernels.qmatmul.matvec` (same arguments)."""
    act = quantize_act(w, x) if act is None else act
    n = act[0].shape[0]
    if out is None:
        out = np.empty((n, w.rows), np.float32)
    if n == 0:
        return out
    if n < MATVEC_BELOW.get(w.qtype, 1 << 62):
        # Q8_0 and Q4_0 always: matvec's kernels measured faster than token-tiled versions (see
        # the module docstring). Types without a tiled kernel (all but Q5_0 and the K-quants
        # above) run matvec too.
        return matvec(w, x, out=out, act=act)
    f = w.fields
    if w.qtype == "Q5_0":
        _gemm_q5_0(f[0], f[1], f[2], _transposed_act(act[0], act[1], -(-n // _TT) * _TT), out)
    elif w.qtype == "Q4_K":
        _gemm_qk(f[0], f[1], f[2], f[3], f[4], _NO_QH, False, act[0], act[1], act[2].astype(np.int16), out)
    elif w.qtype == "Q5_K":
        _gemm_qk(f[0], f[1], f[2], f[3], f[4], f[5], True, act[0], act[1], act[2].astype(np.int16), out)
    else:
        _gemm_q6_k(f[0], f[1], f[2], f[3], act[0], act[1], out)
    return out
