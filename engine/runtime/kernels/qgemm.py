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
- Q8_0: ``matvec``'s own kernel at every size (llama.cpp's x86 arithmetic: 8 integer lanes of
  4-product sums per block, ``vpdpbusd`` or ``pmaddwd``, fused into 8 f32 lanes kept across blocks,
  :mod:`.simd`), two rows × four tokens per pass (2048 × 640 × 512 tokens: 68 GMAC/s on one Zen 5
  thread, against 20 for the float-lane kernel it replaced and ~0.4-0.7x of that for a
  token-tiled float kernel).
- Q4_0: ``matvec``'s own kernel at every size too: its four-blocks-per-pass integer kernel runs
  512 tokens ~4x faster than a token-tiled integer kernel whose 32-element blocks each end in a
  horizontal sum (36 vs 160 ms for 2048 x 640 at one thread).
- Q4_K, Q5_K, Q6_K: ``matvec``'s own kernels at every size too (llama.cpp's x86 arithmetic: 8
  integer lanes per block into 8 f32 lanes kept across blocks, :mod:`.simd`), two rows × four
  tokens per pass with each row block unpacked once for the four tokens (640 × 2048 × 512 tokens
  on one Zen 5 thread: Q4_K ~90, Q6_K ~88 GMAC/s, against ~45 and ~60-74 for the int16 row-block
  kernels they replaced, which summed each block horizontally).  From 8 tokens Q6_K runs
  llama.cpp's tiled arithmetic instead (its ``ggml_compute_forward_mul_mat_tiled``: 16 token lanes
  per f32 vector, one fused multiply-add per block; ~175 GMAC/s there).

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

_R = 2  # rows per micro-tile of the float-lane kernels (they share every activation load)
_TT = 64  # tokens per micro-tile of the float-lane kernels (SIMD lanes run across tokens)
_RB = 16  # rows per block of the float-lane kernels (decoded once, reused by every token tile)

# Below this many tokens qgemm runs matvec's kernel (same numbers by definition): the Q5_0 kernel
# pads tokens to whole 64-token tiles, and a row block's decode only pays off over a few tokens.
# Measured crossover on the 2-vCPU EPYC (noisy): Q5_0 ~16 tokens.
MATVEC_BELOW = {"Q5_0": 16}  # the one type with a token-tiled kernel of its own


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


# ============================================================================ entry point


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
    if w.qtype != "Q5_0" or n < MATVEC_BELOW["Q5_0"]:
        # Q8_0, Q4_0 and the K-quants always: matvec's kernels are the tiled ones there (see the
        # module docstring). Types without a tiled kernel (all but Q5_0) run matvec too.
        return matvec(w, x, out=out, act=act)
    f = w.fields
    _gemm_q5_0(f[0], f[1], f[2], _transposed_act(act[0], act[1], -(-n // _TT) * _TT), out)
    return out
