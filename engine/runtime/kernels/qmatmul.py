"""Quantized weights: repack at load, dequantize row ranges, and integer mat-vec on the blocks.

A GGUF weight of ``R`` rows × ``K`` columns (numpy order) is repacked once, losslessly, into
separate arrays per block field (:class:`QWeight`): integer codes stay in their packed bits, fp16
scales become f32, K-quant 6-bit scales and mins are unpacked to bytes.  Nothing is dequantized
to floats at load.

The mat-vec kernels follow llama.cpp's CPU dot products: activations are quantized per block
(Q8_0 for Q4_0/Q5_0/Q8_0, Q8_K for Q4_K/Q5_K/Q6_K, see :mod:`.actquant`), each block's dot
product is an exact integer sum, then scaled.  ``out[t, r] = Σ_k W[r, k] · x[t, k]``.

Every type has a Numba kernel (multi-threaded over rows) and a NumPy reference
(:func:`matmul_ref`: float64 over exactly dequantized weights and activations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from engine.errors import ModelError
from engine.runtime.kernels._config import KERNEL
from engine.runtime.kernels.actquant import dequant_act, quantize_q8_0, quantize_q8_k

# ggml type ids -> (name, block elements, block bytes)
QTYPES: dict[int, tuple[str, int, int]] = {
    2: ("Q4_0", 32, 18),
    6: ("Q5_0", 32, 22),
    8: ("Q8_0", 32, 34),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
}
ACT_Q8_K = frozenset({"Q4_K", "Q5_K", "Q6_K"})


@dataclass(frozen=True, eq=False)
class QWeight:
    """A quantized weight matrix (rows × cols, numpy order), repacked into per-field arrays."""

    qtype: str
    rows: int
    cols: int
    fields: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.fields)


# ============================================================================ repacking


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _kscales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unpack Q4_K/Q5_K 6-bit scales and mins: s (..., 12) uint8 -> sc, m (..., 8) uint8."""
    sc = np.empty((*s.shape[:-1], 8), np.uint8)
    m = np.empty_like(sc)
    sc[..., :4] = s[..., 0:4] & 63
    m[..., :4] = s[..., 4:8] & 63
    sc[..., 4:] = (s[..., 8:12] & 0xF) | ((s[..., 0:4] >> 6) << 4)
    m[..., 4:] = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return sc, m


def repack(raw: np.ndarray, ggml_type: int, rows: int, cols: int) -> QWeight:
    """Split GGML blocks (``raw``: the tensor's bytes) into a :class:`QWeight`, bits unchanged."""
    if ggml_type not in QTYPES:
        raise ModelError(f"no CPU kernel for GGML type {ggml_type}")
    name, bk, bb = QTYPES[ggml_type]
    if cols % bk:
        raise ModelError(f"{name} row of {cols} elements is not a whole number of {bk}-element blocks")
    nb = cols // bk
    blk = np.asarray(raw, np.uint8).reshape(rows, nb, bb)

    def c(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a).reshape(rows, -1)

    if name == "Q8_0":
        fields = (c(blk[:, :, 2:34].view(np.int8)), c(_f16(blk[:, :, 0:2])))
    elif name == "Q4_0":
        fields = (c(blk[:, :, 2:18]), c(_f16(blk[:, :, 0:2])))
    elif name == "Q5_0":
        qh = np.ascontiguousarray(blk[:, :, 2:6]).view(np.uint32)[..., 0]
        fields = (c(blk[:, :, 6:22]), c(qh), c(_f16(blk[:, :, 0:2])))
    elif name in ("Q4_K", "Q5_K"):
        sc, m = _kscales(blk[:, :, 4:16])
        qs = blk[:, :, 16:144] if name == "Q4_K" else blk[:, :, 48:176]
        fields = (c(qs), c(sc), c(m), c(_f16(blk[:, :, 0:2])), c(_f16(blk[:, :, 2:4])))
        if name == "Q5_K":
            fields = (*fields, c(blk[:, :, 16:48]))
    else:  # Q6_K
        fields = (
            c(blk[:, :, 0:128]),
            c(blk[:, :, 128:192]),
            c(blk[:, :, 192:208].view(np.int8)),
            c(_f16(blk[:, :, 208:210])),
        )
    return QWeight(name, rows, cols, fields)


# ============================================================================ dequantize rows


@njit(**KERNEL, parallel=True)
def _dq_q8_0(qs, d, r0, r1):
    k = qs.shape[1]
    out = np.empty((r1 - r0, k), np.float32)
    for i in prange(r1 - r0):
        r = r0 + i
        for j in range(k):
            out[i, j] = d[r, j >> 5] * np.float32(qs[r, j])
    return out


@njit(**KERNEL, parallel=True)
def _dq_q4_0(qs, d, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 32), np.float32)
    for i in prange(r1 - r0):
        r = r0 + i
        for b in range(nb):
            db = d[r, b]
            for j in range(16):
                v = qs[r, b * 16 + j]
                out[i, b * 32 + j] = db * np.float32(np.int32(v & 15) - 8)
                out[i, b * 32 + j + 16] = db * np.float32(np.int32(v >> 4) - 8)
    return out


@njit(**KERNEL, parallel=True)
def _dq_q5_0(qs, qh, d, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 32), np.float32)
    for i in prange(r1 - r0):
        r = r0 + i
        for b in range(nb):
            db = d[r, b]
            h = qh[r, b]
            for j in range(16):
                v = qs[r, b * 16 + j]
                lo = np.int32(v & 15) | np.int32(((h >> j) & 1) << 4)
                hi = np.int32(v >> 4) | np.int32(((h >> (j + 16)) & 1) << 4)
                out[i, b * 32 + j] = db * np.float32(lo - 16)
                out[i, b * 32 + j + 16] = db * np.float32(hi - 16)
    return out


@njit(**KERNEL, parallel=True)
def _dq_qk(qs, sc, mn, d, dmin, qh, has_qh, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for i in prange(r1 - r0):
        r = r0 + i
        for b in range(nb):
            for c in range(4):
                d1 = d[r, b] * np.float32(sc[r, b * 8 + 2 * c])
                m1 = dmin[r, b] * np.float32(mn[r, b * 8 + 2 * c])
                d2 = d[r, b] * np.float32(sc[r, b * 8 + 2 * c + 1])
                m2 = dmin[r, b] * np.float32(mn[r, b * 8 + 2 * c + 1])
                for li in range(32):
                    v = qs[r, b * 128 + 32 * c + li]
                    lo = np.int32(v & 15)
                    hi = np.int32(v >> 4)
                    if has_qh:
                        h = qh[r, b * 32 + li]
                        lo |= np.int32(((h >> (2 * c)) & 1) << 4)
                        hi |= np.int32(((h >> (2 * c + 1)) & 1) << 4)
                    out[i, b * 256 + 64 * c + li] = d1 * np.float32(lo) - m1
                    out[i, b * 256 + 64 * c + 32 + li] = d2 * np.float32(hi) - m2
    return out


@njit(**KERNEL, parallel=True)
def _dq_q6_k(ql, qh, sc, d, r0, r1):
    nb = d.shape[1]
    out = np.empty((r1 - r0, nb * 256), np.float32)
    for i in prange(r1 - r0):
        r = r0 + i
        for b in range(nb):
            db = d[r, b]
            for h in range(2):
                for li in range(32):
                    a = ql[r, b * 128 + 64 * h + li]
                    a2 = ql[r, b * 128 + 64 * h + 32 + li]
                    hb = qh[r, b * 64 + 32 * h + li]
                    q1 = np.int32(a & 15) | np.int32((hb & 3) << 4)
                    q2 = np.int32(a2 & 15) | np.int32(((hb >> 2) & 3) << 4)
                    q3 = np.int32(a >> 4) | np.int32(((hb >> 4) & 3) << 4)
                    q4 = np.int32(a2 >> 4) | np.int32(((hb >> 6) & 3) << 4)
                    e = b * 256 + 128 * h + li
                    s = b * 16 + 8 * h + li // 16
                    out[i, e] = db * np.float32(sc[r, s]) * np.float32(q1 - 32)
                    out[i, e + 32] = db * np.float32(sc[r, s + 2]) * np.float32(q2 - 32)
                    out[i, e + 64] = db * np.float32(sc[r, s + 4]) * np.float32(q3 - 32)
                    out[i, e + 96] = db * np.float32(sc[r, s + 6]) * np.float32(q4 - 32)
    return out


_NO_QH = np.zeros((1, 1), np.uint8)


def dequantize_rows(w: QWeight, r0: int = 0, r1: int | None = None) -> np.ndarray:
    """Rows ``r0:r1`` of ``w`` as f32 (the values llama.cpp's dequantizers give)."""
    r1 = w.rows if r1 is None else r1
    f = w.fields
    if w.qtype == "Q8_0":
        return _dq_q8_0(f[0], f[1], r0, r1)
    if w.qtype == "Q4_0":
        return _dq_q4_0(f[0], f[1], r0, r1)
    if w.qtype == "Q5_0":
        return _dq_q5_0(f[0], f[1], f[2], r0, r1)
    if w.qtype == "Q4_K":
        return _dq_qk(f[0], f[1], f[2], f[3], f[4], _NO_QH, False, r0, r1)
    if w.qtype == "Q5_K":
        return _dq_qk(f[0], f[1], f[2], f[3], f[4], f[5], True, r0, r1)
    return _dq_q6_k(f[0], f[1], f[2], f[3], r0, r1)


# ============================================================================ integer mat-vec


_ROW_CHUNK = 256


@njit(**KERNEL, parallel=True)
def _mv_q8_0(qs, d, xs, out):
    """Q8_0 rows · dequantized Q8_0 activations ``xs`` (n, K).  The 32 lanes of a block accumulate
    across blocks (one horizontal sum per row, not per block): the products q·x are exact in f32,
    so this equals the integer formulation up to f32 summation order, at ~4x its speed."""
    rows = qs.shape[0]
    nb = d.shape[1]
    n = xs.shape[0]
    nch = (rows + _ROW_CHUNK - 1) // _ROW_CHUNK
    for c in prange(nch):
        acc = np.empty(32, np.float32)
        for r in range(c * _ROW_CHUNK, min(rows, c * _ROW_CHUNK + _ROW_CHUNK)):
            for t in range(n):
                for j in range(32):
                    acc[j] = 0.0
                for b in range(nb):
                    db = d[r, b]
                    o = b * 32
                    for j in range(32):
                        acc[j] += np.float32(qs[r, o + j]) * xs[t, o + j] * db
                s = np.float32(0.0)
                for j in range(32):
                    s += acc[j]
                out[t, r] = s


@njit(**KERNEL, parallel=True)
def _mv_q5_0(qs, qh, d, xs, out):
    """Q5_0 rows · dequantized Q8_0 activations, 16-lane accumulation (see :func:`_mv_q8_0`)."""
    rows = qs.shape[0]
    nb = d.shape[1]
    n = xs.shape[0]
    nch = (rows + _ROW_CHUNK - 1) // _ROW_CHUNK
    for c in prange(nch):
        acc = np.empty(16, np.float32)
        for r in range(c * _ROW_CHUNK, min(rows, c * _ROW_CHUNK + _ROW_CHUNK)):
            for t in range(n):
                for j in range(16):
                    acc[j] = 0.0
                for b in range(nb):
                    db = d[r, b]
                    h = qh[r, b]
                    o = b * 32
                    for j in range(16):
                        v = np.int32(qs[r, b * 16 + j])
                        lo = ((v & 15) | np.int32(((h >> j) & 1) << 4)) - 16
                        hi = ((v >> 4) | np.int32(((h >> (j + 16)) & 1) << 4)) - 16
                        acc[j] += (np.float32(lo) * xs[t, o + j] + np.float32(hi) * xs[t, o + 16 + j]) * db
                s = np.float32(0.0)
                for j in range(16):
                    s += acc[j]
                out[t, r] = s


@njit(**KERNEL, parallel=True)
def _mv_q4_0(qs, d, xq, xd, out):
    rows = qs.shape[0]
    nb = d.shape[1]
    n = xq.shape[0]
    for r in prange(rows):
        for t in range(n):
            acc = np.float32(0.0)
            for b in range(nb):
                s = np.int32(0)
                for j in range(16):
                    v = np.int32(qs[r, b * 16 + j])
                    s = np.int32(s + ((v & 15) - 8) * np.int32(xq[t, b * 32 + j]))
                    s = np.int32(s + ((v >> 4) - 8) * np.int32(xq[t, b * 32 + 16 + j]))
                acc += np.float32(s) * (d[r, b] * xd[t, b])
            out[t, r] = acc


@njit(**KERNEL, parallel=True)
def _mv_qk(qs, sc, mn, d, dmin, qh, has_qh, xq, xd, xbs, out):
    rows = qs.shape[0]
    nb = d.shape[1]
    n = xq.shape[0]
    for r in prange(rows):
        for t in range(n):
            acc = np.float32(0.0)
            for b in range(nb):
                sumi = np.int32(0)
                for c in range(4):
                    slo = np.int32(0)
                    shi = np.int32(0)
                    o = b * 256 + 64 * c
                    for li in range(32):
                        v = np.int32(qs[r, b * 128 + 32 * c + li])
                        lo = v & 15
                        hi = v >> 4
                        if has_qh:
                            hb = np.int32(qh[r, b * 32 + li])
                            lo |= ((hb >> (2 * c)) & 1) << 4
                            hi |= ((hb >> (2 * c + 1)) & 1) << 4
                        slo = np.int32(slo + lo * np.int32(xq[t, o + li]))
                        shi = np.int32(shi + hi * np.int32(xq[t, o + 32 + li]))
                    sumi += np.int32(sc[r, b * 8 + 2 * c]) * slo + np.int32(sc[r, b * 8 + 2 * c + 1]) * shi
                summ = np.int32(0)
                for s in range(8):
                    summ += np.int32(mn[r, b * 8 + s]) * (xbs[t, b * 16 + 2 * s] + xbs[t, b * 16 + 2 * s + 1])
                acc += xd[t, b] * (d[r, b] * np.float32(sumi) - dmin[r, b] * np.float32(summ))
            out[t, r] = acc


@njit(**KERNEL, parallel=True)
def _mv_q6_k(ql, qh, sc, d, xq, xd, out):
    rows = ql.shape[0]
    nb = d.shape[1]
    n = xq.shape[0]
    for r in prange(rows):
        for t in range(n):
            acc = np.float32(0.0)
            for b in range(nb):
                sumi = np.int32(0)
                for h in range(2):
                    for g in range(2):
                        s1 = np.int32(0)
                        s2 = np.int32(0)
                        s3 = np.int32(0)
                        s4 = np.int32(0)
                        e = b * 256 + 128 * h + 16 * g
                        for m in range(16):
                            li = 16 * g + m
                            a = np.int32(ql[r, b * 128 + 64 * h + li])
                            a2 = np.int32(ql[r, b * 128 + 64 * h + 32 + li])
                            hb = np.int32(qh[r, b * 64 + 32 * h + li])
                            q1 = ((a & 15) | ((hb & 3) << 4)) - 32
                            q2 = ((a2 & 15) | (((hb >> 2) & 3) << 4)) - 32
                            q3 = ((a >> 4) | (((hb >> 4) & 3) << 4)) - 32
                            q4 = ((a2 >> 4) | (((hb >> 6) & 3) << 4)) - 32
                            s1 = np.int32(s1 + q1 * np.int32(xq[t, e + m]))
                            s2 = np.int32(s2 + q2 * np.int32(xq[t, e + 32 + m]))
                            s3 = np.int32(s3 + q3 * np.int32(xq[t, e + 64 + m]))
                            s4 = np.int32(s4 + q4 * np.int32(xq[t, e + 96 + m]))
                        s = b * 16 + 8 * h + g
                        sumi += (
                            np.int32(sc[r, s]) * s1
                            + np.int32(sc[r, s + 2]) * s2
                            + np.int32(sc[r, s + 4]) * s3
                            + np.int32(sc[r, s + 6]) * s4
                        )
                acc += xd[t, b] * d[r, b] * np.float32(sumi)
            out[t, r] = acc


def quantize_act(w: QWeight, x: np.ndarray):
    """Quantize activations ``x`` (n, cols) the way llama.cpp does for a weight of ``w``'s type."""
    x = np.ascontiguousarray(x, np.float32)
    if w.qtype in ACT_Q8_K:
        return quantize_q8_k(x)
    return quantize_q8_0(x)


def matvec(w: QWeight, x: np.ndarray, out: np.ndarray | None = None, act=None) -> np.ndarray:
    """``x @ W.T`` for a few rows of activations (decode), on the quantized blocks."""
    act = quantize_act(w, x) if act is None else act
    n = act[0].shape[0]
    if out is None:
        out = np.empty((n, w.rows), np.float32)
    f = w.fields
    if w.qtype == "Q8_0":
        _mv_q8_0(f[0], f[1], dequant_act(act[0], act[1]), out)
    elif w.qtype == "Q4_0":
        _mv_q4_0(f[0], f[1], act[0], act[1], out)
    elif w.qtype == "Q5_0":
        _mv_q5_0(f[0], f[1], f[2], dequant_act(act[0], act[1]), out)
    elif w.qtype == "Q4_K":
        _mv_qk(f[0], f[1], f[2], f[3], f[4], _NO_QH, False, act[0], act[1], act[2], out)
    elif w.qtype == "Q5_K":
        _mv_qk(f[0], f[1], f[2], f[3], f[4], f[5], True, act[0], act[1], act[2], out)
    else:
        _mv_q6_k(f[0], f[1], f[2], f[3], act[0], act[1], out)
    return out


def matmul_dense(w: QWeight, x: np.ndarray, act=None, chunk_rows: int = 16384) -> np.ndarray:
    """``x @ W.T`` for many rows (prefill): same quantized activations, weights dequantized one
    row chunk at a time, f32 BLAS.  Agrees with :func:`matvec` to f32 rounding."""
    act = quantize_act(w, x) if act is None else act
    xf = dequant_act(act[0], act[1])
    out = np.empty((xf.shape[0], w.rows), np.float32)
    for r0 in range(0, w.rows, chunk_rows):
        r1 = min(w.rows, r0 + chunk_rows)
        np.matmul(xf, dequantize_rows(w, r0, r1).T, out=out[:, r0:r1])
    return out


def matmul_ref(w_f32: np.ndarray, qtype: str, x: np.ndarray) -> np.ndarray:
    """NumPy reference: activations quantized as llama.cpp does, exact float64 products."""
    from engine.runtime.kernels.actquant import quantize_q8_0_ref, quantize_q8_k_ref

    x = np.ascontiguousarray(x, np.float32)
    act = quantize_q8_k_ref(x) if qtype in ACT_Q8_K else quantize_q8_0_ref(x)
    n, k = act[0].shape
    bs = k // act[1].shape[1]
    xf = (act[0].reshape(n, -1, bs).astype(np.float64) * act[1][:, :, None]).reshape(n, k)
    return (xf @ w_f32.astype(np.float64).T).astype(np.float32)
