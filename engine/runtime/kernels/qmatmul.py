"""Quantized weights: repack at load, dequantize row ranges, and integer mat-vec on the blocks.

A GGUF weight of ``R`` rows × ``K`` columns (numpy order) is repacked once, losslessly, into
separate arrays per block field (:class:`QWeight`): integer codes stay in their packed bits, fp16
scales become f32, packed 4/6-bit scales are unpacked to bytes.  Nothing is dequantized to floats
at load.  Every weight type of :data:`QTYPES` is supported: F32, F16, BF16, the legacy 32-element
types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4), the K-quants (Q2_K … Q6_K), the IQ types
(IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_XS) and the ternary TQ1_0 / TQ2_0.

The mat-vec kernels follow llama.cpp's CPU dot products (``ggml_vec_dot_*`` of ggml-cpu):
activations are converted to the weight type's ``vec_dot_type`` (:data:`VEC_DOT_TYPE`: Q8_0,
Q8_1, Q8_K, or F16 / BF16 / F32 for float weights, see :mod:`.actquant`), each block's dot
product is an exact integer sum, then scaled.  ``out[t, r] = Σ_k W[r, k] · x[t, k]``.

Q4_0, Q5_0, Q8_0, Q4_K, Q5_K and Q6_K have hand-tuned kernels here; the other types' kernels are
in :mod:`.qkernels`.  Every type has a Numba kernel (multi-threaded over rows) and a NumPy
reference (:func:`matmul_ref`: float64 over exactly dequantized weights and activations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numba import carray, njit, prange

from engine.errors import ModelError
from engine.runtime.kernels import qkernels as qk
from engine.runtime.kernels._config import KERNEL
from engine.runtime.kernels.actquant import (
    dequant_act,
    quantize_q8_0,
    quantize_q8_1,
    quantize_q8_k,
    round_bf16,
    round_f16,
)
from engine.runtime.kernels.fmath import fma32, fma32_ref, fmadd32
from engine.runtime.kernels.simd import (
    acc8,
    acc16,
    acc_q8,
    dot_q8_block,
    hsum4,
    hsum8,
    hsum_q8,
    kq_mins4,
    kq_mins4x2,
    kq_minsum,
    q4k_block,
    q4k_block2,
    q4k_isum,
    q4k_tok16,
    q4k_tok16x2,
    q5k_block,
    q5k_block2,
    q6k_block,
    q6k_block2,
    q6k_tok16,
    q6k_tok16x2,
)

# ggml type ids -> (name, block elements, block bytes)
QTYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}
# activation format each weight type's dot product takes (llama.cpp's type_traits_cpu vec_dot_type)
VEC_DOT_TYPE: dict[str, str] = {
    name: (
        name
        if name in ("F32", "F16", "BF16")
        else "Q8_1"
        if name in ("Q4_1", "Q5_1")
        else "Q8_0"
        if bk == 32
        else "Q8_K"
    )
    for name, bk, _ in QTYPES.values()
}
ACT_Q8_K = frozenset(n for n, v in VEC_DOT_TYPE.items() if v == "Q8_K")
_FLOATS = frozenset({"F32", "F16", "BF16"})


REPACK_SLICE_BYTES = 4 << 20  # bytes of blocks repacked per NumPy call (bounds GIL holds at load)


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


def _type_name(ggml_type: int) -> str:
    try:
        import gguf

        return f"{gguf.GGMLQuantizationType(ggml_type).name} (GGML type {ggml_type})"
    except (ImportError, ValueError):
        return f"GGML type {ggml_type}"


def repack(
    raw: np.ndarray, ggml_type: int, rows: int, cols: int, copied: Callable[[int, int], None] | None = None
) -> QWeight:
    """Split GGML blocks (``raw``: the tensor's bytes) into a :class:`QWeight`, bits unchanged.
    ``copied(start, stop)`` is told each byte range of ``raw`` once it has been copied out of it
    (a large tensor is repacked in slices; the loader then lets go of those pages)."""
    if ggml_type not in QTYPES:
        supported = ", ".join(n for n, _, _ in QTYPES.values())
        raise ModelError(f"no CPU kernel for weights of type {_type_name(ggml_type)}; supported: {supported}")
    name, bk, bb = QTYPES[ggml_type]
    if cols % bk:
        raise ModelError(f"{name} row of {cols} elements is not a whole number of {bk}-element blocks")
    nb = cols // bk
    raw = np.asarray(raw, np.uint8)
    if raw.size != rows * nb * bb:
        raise ModelError(f"{name} weight of {rows}x{cols} needs {rows * nb * bb} bytes, got {raw.size}")
    blk = raw.reshape(rows, nb, bb)
    step = max(1, REPACK_SLICE_BYTES // (nb * bb))
    if rows <= step:
        return QWeight(name, rows, cols, _repack_rows(name, blk))
    # Slice by slice into preallocated fields: each NumPy copy holds the GIL, and one copy of a
    # 160 MB output matrix stalls every other Python thread (the GUI) for ~50 ms.
    first = _repack_rows(name, blk[:step])
    fields = tuple(np.empty((rows, *f.shape[1:]), f.dtype) for f in first)
    for f, part in zip(fields, first, strict=True):
        f[:step] = part
    row_bytes = nb * bb
    if copied is not None:
        copied(0, step * row_bytes)
    for r0 in range(step, rows, step):
        for f, part in zip(fields, _repack_rows(name, blk[r0 : r0 + step]), strict=True):
            f[r0 : r0 + part.shape[0]] = part
        if copied is not None:
            copied(r0 * row_bytes, min(rows, r0 + step) * row_bytes)
    return QWeight(name, rows, cols, fields)


@njit(**KERNEL, parallel=True)
def _q5_0_codes(qs, qh):
    """The 5-bit values of Q5_0 blocks as int8 codes (-16..15), in Q8_0's element order."""
    rows, nb = qh.shape
    out = np.empty((rows, nb * 32), np.int8)
    for r in prange(rows):
        for b in range(nb):
            h = np.int64(qh[r, b])
            for j in range(16):
                v = np.int64(qs[r, b * 16 + j])
                out[r, b * 32 + j] = np.int8(((v & 15) | (((h >> j) & 1) << 4)) - 16)
                out[r, b * 32 + 16 + j] = np.int8(((v >> 4) | (((h >> (j + 16)) & 1) << 4)) - 16)
    return out


def widen_q5_0(w: QWeight) -> QWeight:
    """A Q5_0 weight as Q8_0 fields: the same values (every 5-bit code is an int8) with the same
    scales, so the Q8_0 kernels run it: about twice as fast per weight (no bit unpacking in the hot
    loop) for 34 bytes per 32 weights instead of 22.  Other types are returned unchanged."""
    if w.qtype != "Q5_0":
        return w
    qs, qh, d = w.fields
    return QWeight("Q8_0", w.rows, w.cols, (_q5_0_codes(qs, qh), d))


def _repack_rows(name: str, blk: np.ndarray) -> tuple[np.ndarray, ...]:
    """The fields of the blocks ``blk`` (rows, blocks per row, bytes per block)."""
    rows = blk.shape[0]

    def c(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a).reshape(rows, -1)

    def u16(a: np.ndarray) -> np.ndarray:
        return c(np.ascontiguousarray(a).view(np.uint16))

    def u32(a: np.ndarray) -> np.ndarray:
        return c(np.ascontiguousarray(a).view(np.uint32))

    if name == "Q8_0":
        fields = (c(blk[:, :, 2:34].view(np.int8)), c(_f16(blk[:, :, 0:2])))
    elif name in ("Q4_0", "IQ4_NL"):
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
    elif name == "Q6_K":
        fields = (
            c(blk[:, :, 0:128]),
            c(blk[:, :, 128:192]),
            c(blk[:, :, 192:208].view(np.int8)),
            c(_f16(blk[:, :, 208:210])),
        )
    else:
        fields = _repack_more(name, blk, c, u16, u32)
    return fields


def _q3k_scales(s: np.ndarray) -> np.ndarray:
    """Q3_K's 16 six-bit scales (..., 12) -> int8 (..., 16), minus 32."""
    j = np.arange(16)
    lo = np.where(j < 8, s[..., j % 8] & 0xF, s[..., j % 8] >> 4)
    hi = (s[..., 8 + j % 4] >> (2 * (j // 4))) & 3
    return ((lo | (hi << 4)).astype(np.int16) - 32).astype(np.int8)


def _repack_more(name: str, blk: np.ndarray, c, u16, u32) -> tuple[np.ndarray, ...]:
    """Fields of the types whose kernels live in :mod:`.qkernels` (see their argument lists)."""
    if name == "F32":  # copies: fields never alias the (memory-mapped) file
        return (c(blk.view(np.float32)).copy(),)
    if name in ("F16", "BF16"):
        return (u16(blk).copy(),)
    if name == "Q4_1":
        return (c(blk[:, :, 4:20]), c(_f16(blk[:, :, 0:2])), c(_f16(blk[:, :, 2:4])))
    if name == "Q5_1":
        return (c(blk[:, :, 8:24]), u32(blk[:, :, 4:8]), c(_f16(blk[:, :, 0:2])), c(_f16(blk[:, :, 2:4])))
    if name == "MXFP4":
        # E8M0 exponent -> 2^(e-128) (GGML_E8M0_TO_FP32_HALF), exact in f32 (subnormal for e < 2)
        e = blk[:, :, 0].astype(np.int32)
        half = np.ldexp(np.float32(1.0), e - 128).astype(np.float32)
        return (c(blk[:, :, 1:17]), c(half))
    if name == "Q2_K":
        sc = blk[:, :, 0:16]
        return (
            c(blk[:, :, 16:80]),
            c(sc & 0xF),
            c(sc >> 4),
            c(_f16(blk[:, :, 80:82])),
            c(_f16(blk[:, :, 82:84])),
        )
    if name == "Q3_K":
        return (
            c(blk[:, :, 32:96]),
            c(blk[:, :, 0:32]),
            c(_q3k_scales(blk[:, :, 96:108])),
            c(_f16(blk[:, :, 108:110])),
        )
    if name == "IQ4_XS":
        h = np.ascontiguousarray(blk[:, :, 2:4]).view(np.uint16)[..., 0].astype(np.int32)
        lo = blk[:, :, 4:8]
        ib = np.arange(8)
        ls = ((lo[..., ib // 2] >> (4 * (ib % 2))) & 0xF) | (((h[..., None] >> (2 * ib)) & 3) << 4)
        return (c(blk[:, :, 8:136]), c((ls - 32).astype(np.int8)), c(_f16(blk[:, :, 0:2])))
    if name == "TQ1_0":
        return (c(blk[:, :, 0:48]), c(blk[:, :, 48:52]), c(_f16(blk[:, :, 52:54])))
    if name == "TQ2_0":
        return (c(blk[:, :, 0:64]), c(_f16(blk[:, :, 64:66])))
    d = c(_f16(blk[:, :, 0:2]))
    if name == "IQ2_XXS":
        q = blk[:, :, 2:66].reshape(*blk.shape[:2], 8, 8)
        return (c(q[..., 0:4]), u32(q[..., 4:8]), d * np.float32(0.125))
    if name == "IQ2_XS":
        return (u16(blk[:, :, 2:66]), c(blk[:, :, 66:74]), d * np.float32(0.125))
    if name == "IQ2_S":
        return (
            c(blk[:, :, 2:34]),
            c(blk[:, :, 34:66]),
            c(blk[:, :, 66:74]),
            c(blk[:, :, 74:82]),
            d * np.float32(0.125),
        )
    if name == "IQ3_XXS":
        return (c(blk[:, :, 2:66]), u32(blk[:, :, 66:98]), d * np.float32(0.25))
    if name == "IQ3_S":
        return (c(blk[:, :, 2:66]), c(blk[:, :, 66:74]), c(blk[:, :, 74:106]), c(blk[:, :, 106:110]), d)
    if name == "IQ1_S":
        return (c(blk[:, :, 2:34]), u16(blk[:, :, 34:50]), d * np.float32(0.125))
    if name == "IQ1_M":
        sc = np.ascontiguousarray(blk[:, :, 48:56]).view(np.uint16).astype(np.uint32)
        bits = (
            (sc[..., 0] >> 12)
            | ((sc[..., 1] >> 8) & 0x00F0)
            | ((sc[..., 2] >> 4) & 0x0F00)
            | (sc[..., 3] & 0xF000)
        )
        dm = bits.astype(np.uint16).view(np.float16).astype(np.float32)
        return (c(blk[:, :, 0:32]), c(blk[:, :, 32:48]), u16(blk[:, :, 48:56]), c(dm * np.float32(0.125)))
    raise AssertionError(name)


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
    name = w.qtype
    if name == "Q8_0":
        return _dq_q8_0(f[0], f[1], r0, r1)
    if name == "Q4_0":
        return _dq_q4_0(f[0], f[1], r0, r1)
    if name == "Q5_0":
        return _dq_q5_0(f[0], f[1], f[2], r0, r1)
    if name == "Q4_K":
        return _dq_qk(f[0], f[1], f[2], f[3], f[4], _NO_QH, False, r0, r1)
    if name == "Q5_K":
        return _dq_qk(f[0], f[1], f[2], f[3], f[4], f[5], True, r0, r1)
    if name == "Q6_K":
        return _dq_q6_k(f[0], f[1], f[2], f[3], r0, r1)
    if name == "F32":
        return f[0][r0:r1].copy()
    if name in ("IQ4_NL", "MXFP4"):
        return qk.dq_lut4(f[0], f[1], _lut(name), r0, r1)
    fn, extra = _MORE[name]
    return getattr(qk, "dq_" + fn)(*f, *extra(), r0, r1)


def _lut(name: str) -> np.ndarray:
    return qk.KVALUES_IQ4NL if name in ("IQ4_NL", "IQ4_XS") else qk.KVALUES_MXFP4


def _grid(name: str):
    def extra() -> tuple[np.ndarray, ...]:
        t = qk.tables()
        if name in ("IQ1_S", "IQ1_M"):
            return (t["iq1s"],)
        if name in ("IQ2_S", "IQ3_S"):
            return (t[name.lower().replace("_", "")], t["sign8"])
        return (t[name.lower().replace("_", "")], t["sign8"], t["ksigns"])

    return extra


# qtype -> (suffix of the qkernels mv_/dq_ kernels, extra arguments after the fields)
_MORE = {
    "F16": ("f16", tuple),
    "BF16": ("bf16", tuple),
    "Q4_1": ("q4_1", tuple),
    "Q5_1": ("q5_1", tuple),
    "Q2_K": ("q2_k", tuple),
    "Q3_K": ("q3_k", tuple),
    "IQ4_XS": ("iq4_xs", lambda: (qk.KVALUES_IQ4NL,)),
    "TQ1_0": ("tq1_0", tuple),
    "TQ2_0": ("tq2_0", tuple),
    **{
        n: (n.lower(), _grid(n)) for n in ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M")
    },
}


# ============================================================================ integer mat-vec


_ROW_CHUNK = 256  # rows per thread task of the one-token float-lane kernels
# With many tokens a row is a lot of work: small tasks keep both threads busy on the 256- and
# 640-row matrices (one or three 256-row tasks left a thread idle: k, v and o in prefill).
_FINE_CHUNK_TOKENS = 8
_FINE_CHUNK = 16


@njit(**KERNEL)
def _q8_0_dot1(q, d, x, xd):
    """One Q8_0 row · one Q8_0 activation row: per block, 8 exact integer sums of 4 products
    (:func:`~.simd.dot_q8_block`) converted to f32, times ``d · xd``, added into 8 f32 lanes;
    the lanes summed as a fixed tree: llama.cpp's x86 Q8_0 arithmetic.  Every Q8_0 product goes
    through exactly this arithmetic (:func:`_q8_0_dot2x4` too), whatever the token count, so
    prefill equals decode bit for bit."""
    a = acc_q8()
    for b in range(d.shape[0]):
        o = b * 32
        dot_q8_block(a, q, o, x, o, d[b] * xd[b])
    return hsum_q8(a)


@njit(**KERNEL)
def _q8_0_dot2x4(q0, q1, e0, e1, xq, xd, t, res):
    """:func:`_q8_0_dot1` for 2 rows × tokens ``t..t+3`` at once (each row block is loaded
    once for 4 tokens, each token block once for 2 rows; 8 independent accumulators)."""
    a0 = acc_q8()
    a1 = acc_q8()
    a2 = acc_q8()
    a3 = acc_q8()
    a4 = acc_q8()
    a5 = acc_q8()
    a6 = acc_q8()
    a7 = acc_q8()
    x0 = xq[t]
    x1 = xq[t + 1]
    x2 = xq[t + 2]
    x3 = xq[t + 3]
    d0 = xd[t]
    d1 = xd[t + 1]
    d2 = xd[t + 2]
    d3 = xd[t + 3]
    for b in range(e0.shape[0]):
        o = b * 32
        f0 = e0[b]
        f1 = e1[b]
        dot_q8_block(a0, q0, o, x0, o, f0 * d0[b])
        dot_q8_block(a1, q0, o, x1, o, f0 * d1[b])
        dot_q8_block(a2, q0, o, x2, o, f0 * d2[b])
        dot_q8_block(a3, q0, o, x3, o, f0 * d3[b])
        dot_q8_block(a4, q1, o, x0, o, f1 * d0[b])
        dot_q8_block(a5, q1, o, x1, o, f1 * d1[b])
        dot_q8_block(a6, q1, o, x2, o, f1 * d2[b])
        dot_q8_block(a7, q1, o, x3, o, f1 * d3[b])
    res[0] = hsum_q8(a0)
    res[1] = hsum_q8(a1)
    res[2] = hsum_q8(a2)
    res[3] = hsum_q8(a3)
    res[4] = hsum_q8(a4)
    res[5] = hsum_q8(a5)
    res[6] = hsum_q8(a6)
    res[7] = hsum_q8(a7)


@njit(**KERNEL, parallel=True)
def _mv_q8_0(qs, d, xq, xd, out):
    """Q8_0 rows · Q8_0 activations (codes ``xq`` (n, K) int8, scales ``xd`` (n, K/32)):
    :func:`_q8_0_dot1` for every (token, row), two rows × four tokens at a time."""
    rows = qs.shape[0]
    n = xq.shape[0]
    ch = _ROW_CHUNK if n < _FINE_CHUNK_TOKENS else _FINE_CHUNK
    nch = (rows + ch - 1) // ch
    n4 = n - n % 4
    for c in prange(nch):
        res = np.empty(8, np.float32)
        r1 = min(rows, c * ch + ch)
        r = c * ch
        while r + 1 < r1:
            for t in range(0, n4, 4):
                _q8_0_dot2x4(qs[r], qs[r + 1], d[r], d[r + 1], xq, xd, t, res)
                for i in range(4):
                    out[t + i, r] = res[i]
                    out[t + i, r + 1] = res[4 + i]
            for t in range(n4, n):
                out[t, r] = _q8_0_dot1(qs[r], d[r], xq[t], xd[t])
                out[t, r + 1] = _q8_0_dot1(qs[r + 1], d[r + 1], xq[t], xd[t])
            r += 2
        if r < r1:
            for t in range(n):
                out[t, r] = _q8_0_dot1(qs[r], d[r], xq[t], xd[t])


@njit(**KERNEL, parallel=True)
def _mv_q5_0(qs, qh, d, xs, out):
    """Q5_0 rows · dequantized Q8_0 activations ``xs`` (n, K): 16 f32 lanes accumulate
    ``(lo·x_j + hi·x_{j+16})·d`` across blocks (one horizontal sum per row, not per block)."""
    rows = qs.shape[0]
    nb = d.shape[1]
    n = xs.shape[0]
    ch = _ROW_CHUNK if n < _FINE_CHUNK_TOKENS else _FINE_CHUNK
    nch = (rows + ch - 1) // ch
    for c in prange(nch):
        acc = np.empty(16, np.float32)
        for r in range(c * ch, min(rows, c * ch + ch)):
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
    # Four blocks per pass through 1-D slices with four int32 accumulators: LLVM vectorizes this
    # shape (pmaddwd); one accumulator over 2-D computed indices stayed scalar (1.7 GB/s).  The
    # integer block sums and the float accumulation order are unchanged, so results are identical.
    rows = qs.shape[0]
    nb = d.shape[1]
    n = xq.shape[0]
    nb4 = nb - nb % 4
    for r in prange(rows):
        for t in range(n):
            acc = np.float32(0.0)
            for b in range(0, nb4, 4):
                q = qs[r, b * 16 : b * 16 + 64]
                x = xq[t, b * 32 : b * 32 + 128]
                s0 = np.int32(0)
                s1 = np.int32(0)
                s2 = np.int32(0)
                s3 = np.int32(0)
                for j in range(16):
                    v0 = np.int32(q[j])
                    v1 = np.int32(q[16 + j])
                    v2 = np.int32(q[32 + j])
                    v3 = np.int32(q[48 + j])
                    s0 = np.int32(
                        s0 + ((v0 & 15) - 8) * np.int32(x[j]) + ((v0 >> 4) - 8) * np.int32(x[16 + j])
                    )
                    s1 = np.int32(
                        s1 + ((v1 & 15) - 8) * np.int32(x[32 + j]) + ((v1 >> 4) - 8) * np.int32(x[48 + j])
                    )
                    s2 = np.int32(
                        s2 + ((v2 & 15) - 8) * np.int32(x[64 + j]) + ((v2 >> 4) - 8) * np.int32(x[80 + j])
                    )
                    s3 = np.int32(
                        s3 + ((v3 & 15) - 8) * np.int32(x[96 + j]) + ((v3 >> 4) - 8) * np.int32(x[112 + j])
                    )
                acc += np.float32(s0) * (d[r, b] * xd[t, b])
                acc += np.float32(s1) * (d[r, b + 1] * xd[t, b + 1])
                acc += np.float32(s2) * (d[r, b + 2] * xd[t, b + 2])
                acc += np.float32(s3) * (d[r, b + 3] * xd[t, b + 3])
            for b in range(nb4, nb):
                s = np.int32(0)
                for j in range(16):
                    v = np.int32(qs[r, b * 16 + j])
                    s = np.int32(s + ((v & 15) - 8) * np.int32(xq[t, b * 32 + j]))
                    s = np.int32(s + ((v >> 4) - 8) * np.int32(xq[t, b * 32 + 16 + j]))
                acc += np.float32(s) * (d[r, b] * xd[t, b])
            out[t, r] = acc


# K-quants: llama.cpp's x86 arithmetic (engine.runtime.kernels.simd, K-quant section) for every
# (token, row), whatever the token count: 2 rows x 4 tokens per pass (each row block unpacked once
# for 4 tokens, each token block loaded once for 2 rows), the rest one (row, token) at a time.
_KQ_ROWS = 16  # rows per thread task
_KQ_TOKENS = 64  # tokens per pass over a task's rows (their activations stay in cache)


@njit(**KERNEL)
def _q4k_dot1(qs, sc, mn, d, dmin, xq, xd, xb):
    """One Q4_K row · one Q8_K activation row (codes ``xq``, scales ``xd``, block sums ``xb``),
    llama.cpp's ``ggml_vec_dot_q4_K_q8_K`` (x86) bit for bit."""
    a = acc8()
    m = acc8()
    for b in range(d.shape[0]):
        q4k_block(a, qs, b * 128, sc, b * 8, xq, b * 256, xd[b] * d[b])
        kq_mins4(m, mn, b * 8, xb, b * 16, -xd[b] * dmin[b])
    return hsum8(a, 0) + hsum4(m, 0)


@njit(**KERNEL)
def _q5k_dot1(qs, qh, sc, mn, d, dmin, xq, xd, xb):
    """One Q5_K row · one Q8_K activation row, llama.cpp's ``ggml_vec_dot_q5_K_q8_K`` (x86)."""
    a = acc8()
    summs = np.float32(0.0)
    for b in range(d.shape[0]):
        q5k_block(a, qs, b * 128, qh, b * 32, sc, b * 8, xq, b * 256, xd[b] * d[b])
        summs = fmadd32(-xd[b] * dmin[b], np.float32(kq_minsum(mn, b * 8, xb, b * 16)), summs)
    return hsum8(a, 0) + summs


@njit(**KERNEL)
def _q6k_dot1(ql, qh, sc, d, xq, xd, xb):
    """One Q6_K row · one Q8_K activation row, llama.cpp's ``ggml_vec_dot_q6_K_q8_K`` (x86)."""
    a = acc8()
    for b in range(d.shape[0]):
        q6k_block(a, ql, b * 128, qh, b * 64, sc, b * 16, xq, b * 256, xb, b * 16, xd[b] * d[b])
    return hsum8(a, 0)


@njit(**KERNEL)
def _q4k_dot2x4(qs, sc, mn, d, dmin, r, xq, xd, xb, t, res):
    """:func:`_q4k_dot1` for rows ``r, r+1`` × tokens ``t..t+3`` into ``res`` (row-major 2 × 4);
    two tokens share each 16-lane accumulator (the same lanes, side by side)."""
    q0, q1, s0, s1, m0, m1 = qs[r], qs[r + 1], sc[r], sc[r + 1], mn[r], mn[r + 1]
    d0, d1, n0, n1 = d[r], d[r + 1], dmin[r], dmin[r + 1]
    a0, a1, a2, a3 = acc16(), acc16(), acc16(), acc16()
    c0, c1, c2, c3 = acc8(), acc8(), acc8(), acc8()
    x0, x1, x2, x3 = xq[t], xq[t + 1], xq[t + 2], xq[t + 3]
    e0, e1, e2, e3 = xd[t], xd[t + 1], xd[t + 2], xd[t + 3]
    b0, b1, b2, b3 = xb[t], xb[t + 1], xb[t + 2], xb[t + 3]
    for b in range(d0.shape[0]):
        o, so, xo, bo = b * 128, b * 8, b * 256, b * 16
        f0, f1, g0, g1 = d0[b], d1[b], n0[b], n1[b]
        q4k_block2(a0, q0, o, s0, so, x0, x1, xo, e0[b] * f0, e1[b] * f0)
        q4k_block2(a1, q0, o, s0, so, x2, x3, xo, e2[b] * f0, e3[b] * f0)
        q4k_block2(a2, q1, o, s1, so, x0, x1, xo, e0[b] * f1, e1[b] * f1)
        q4k_block2(a3, q1, o, s1, so, x2, x3, xo, e2[b] * f1, e3[b] * f1)
        kq_mins4x2(c0, m0, so, b0, b1, bo, -e0[b] * g0, -e1[b] * g0)
        kq_mins4x2(c1, m0, so, b2, b3, bo, -e2[b] * g0, -e3[b] * g0)
        kq_mins4x2(c2, m1, so, b0, b1, bo, -e0[b] * g1, -e1[b] * g1)
        kq_mins4x2(c3, m1, so, b2, b3, bo, -e2[b] * g1, -e3[b] * g1)
    res[0] = hsum8(a0, 0) + hsum4(c0, 0)
    res[1] = hsum8(a0, 8) + hsum4(c0, 4)
    res[2] = hsum8(a1, 0) + hsum4(c1, 0)
    res[3] = hsum8(a1, 8) + hsum4(c1, 4)
    res[4] = hsum8(a2, 0) + hsum4(c2, 0)
    res[5] = hsum8(a2, 8) + hsum4(c2, 4)
    res[6] = hsum8(a3, 0) + hsum4(c3, 0)
    res[7] = hsum8(a3, 8) + hsum4(c3, 4)


@njit(**KERNEL)
def _q5k_dot2x4(qs, qh, sc, mn, d, dmin, r, xq, xd, xb, t, res):
    """:func:`_q5k_dot1` for rows ``r, r+1`` × tokens ``t..t+3`` (as :func:`_q4k_dot2x4`)."""
    q0, q1, h0, h1, s0, s1, m0, m1 = qs[r], qs[r + 1], qh[r], qh[r + 1], sc[r], sc[r + 1], mn[r], mn[r + 1]
    d0, d1, n0, n1 = d[r], d[r + 1], dmin[r], dmin[r + 1]
    a0, a1, a2, a3 = acc16(), acc16(), acc16(), acc16()
    x0, x1, x2, x3 = xq[t], xq[t + 1], xq[t + 2], xq[t + 3]
    e0, e1, e2, e3 = xd[t], xd[t + 1], xd[t + 2], xd[t + 3]
    b0, b1, b2, b3 = xb[t], xb[t + 1], xb[t + 2], xb[t + 3]
    z = np.float32(0.0)
    u0, u1, u2, u3, u4, u5, u6, u7 = z, z, z, z, z, z, z, z
    for b in range(d0.shape[0]):
        o, ho, so, xo, bo = b * 128, b * 32, b * 8, b * 256, b * 16
        f0, f1, g0, g1 = d0[b], d1[b], n0[b], n1[b]
        q5k_block2(a0, q0, o, h0, ho, s0, so, x0, x1, xo, e0[b] * f0, e1[b] * f0)
        q5k_block2(a1, q0, o, h0, ho, s0, so, x2, x3, xo, e2[b] * f0, e3[b] * f0)
        q5k_block2(a2, q1, o, h1, ho, s1, so, x0, x1, xo, e0[b] * f1, e1[b] * f1)
        q5k_block2(a3, q1, o, h1, ho, s1, so, x2, x3, xo, e2[b] * f1, e3[b] * f1)
        u0 = fmadd32(-e0[b] * g0, np.float32(kq_minsum(m0, so, b0, bo)), u0)
        u1 = fmadd32(-e1[b] * g0, np.float32(kq_minsum(m0, so, b1, bo)), u1)
        u2 = fmadd32(-e2[b] * g0, np.float32(kq_minsum(m0, so, b2, bo)), u2)
        u3 = fmadd32(-e3[b] * g0, np.float32(kq_minsum(m0, so, b3, bo)), u3)
        u4 = fmadd32(-e0[b] * g1, np.float32(kq_minsum(m1, so, b0, bo)), u4)
        u5 = fmadd32(-e1[b] * g1, np.float32(kq_minsum(m1, so, b1, bo)), u5)
        u6 = fmadd32(-e2[b] * g1, np.float32(kq_minsum(m1, so, b2, bo)), u6)
        u7 = fmadd32(-e3[b] * g1, np.float32(kq_minsum(m1, so, b3, bo)), u7)
    res[0] = hsum8(a0, 0) + u0
    res[1] = hsum8(a0, 8) + u1
    res[2] = hsum8(a1, 0) + u2
    res[3] = hsum8(a1, 8) + u3
    res[4] = hsum8(a2, 0) + u4
    res[5] = hsum8(a2, 8) + u5
    res[6] = hsum8(a3, 0) + u6
    res[7] = hsum8(a3, 8) + u7


@njit(**KERNEL)
def _q6k_dot2x4(ql, qh, sc, d, r, xq, xd, xb, t, res):
    """:func:`_q6k_dot1` for rows ``r, r+1`` × tokens ``t..t+3`` (as :func:`_q4k_dot2x4`)."""
    l0, l1, h0, h1, s0, s1, d0, d1 = ql[r], ql[r + 1], qh[r], qh[r + 1], sc[r], sc[r + 1], d[r], d[r + 1]
    a0, a1, a2, a3 = acc16(), acc16(), acc16(), acc16()
    x0, x1, x2, x3 = xq[t], xq[t + 1], xq[t + 2], xq[t + 3]
    e0, e1, e2, e3 = xd[t], xd[t + 1], xd[t + 2], xd[t + 3]
    b0, b1, b2, b3 = xb[t], xb[t + 1], xb[t + 2], xb[t + 3]
    for b in range(d0.shape[0]):
        o, ho, so, xo = b * 128, b * 64, b * 16, b * 256
        f0, f1 = d0[b], d1[b]
        q6k_block2(a0, l0, o, h0, ho, s0, so, x0, x1, xo, b0, b1, so, e0[b] * f0, e1[b] * f0)
        q6k_block2(a1, l0, o, h0, ho, s0, so, x2, x3, xo, b2, b3, so, e2[b] * f0, e3[b] * f0)
        q6k_block2(a2, l1, o, h1, ho, s1, so, x0, x1, xo, b0, b1, so, e0[b] * f1, e1[b] * f1)
        q6k_block2(a3, l1, o, h1, ho, s1, so, x2, x3, xo, b2, b3, so, e2[b] * f1, e3[b] * f1)
    res[0] = hsum8(a0, 0)
    res[1] = hsum8(a0, 8)
    res[2] = hsum8(a1, 0)
    res[3] = hsum8(a1, 8)
    res[4] = hsum8(a2, 0)
    res[5] = hsum8(a2, 8)
    res[6] = hsum8(a3, 0)
    res[7] = hsum8(a3, 8)


# Q4_K as llama.cpp computes it for weights of a multiple of 8 rows: its CPU "repack" buffer
# (ggml_gemm_q4_K_8x8_q8_K for the first n - n % 4 activation columns, ggml_gemv_q4_K_8x8_q8_K for
# the others; the arithmetic is described in engine.runtime.kernels.simd, "Q4_K × Q8_K, repack").
# The gemm columns run 16 at a time, one per f32 lane (q4k_tok16x2), from the rows' codes unpacked
# to bytes once per task and the columns' Q8_K codes interleaved by 4 (_q8k_tok16).
_TOK = 16  # activation columns per lane group
_TOK_GROUPS = 4  # lane groups (64 columns) per pass over a task's rows (their activations stay in cache)


def q4k_gemm_cols(n: int) -> int:
    """How many of ``n`` activation columns llama.cpp's repacked Q4_K mat-mul runs through its
    gemm (``n - n % 4``: none below 4); the other columns go through its gemv."""
    return n - n % 4


@njit(**KERNEL, parallel=True)
def _q8k_tok16(xq, xd, xbs, ncols, sums, mult):
    """The first ``ncols`` columns of Q8_K activations in the tok16 intrinsics' layout, 16
    columns per group (the last group padded with zero columns): codes ``xT`` (G, K·16) int8
    interleaved by 4, block sums ``bT`` (G, K/(16·sums)·16) int32 (``mult`` times the sum of
    ``sums`` consecutive 16-element sums: Q4_K's 32-element sums with ``sums=2, mult=1``, Q6_K's
    ``-32·`` 16-element sums with ``sums=1, mult=-32``), scales ``dx`` (G, K/256·16) f32."""
    k = xq.shape[1]
    nb = xd.shape[1]
    ns = nb * 16 // sums
    ng = (ncols + _TOK - 1) // _TOK
    xT = np.zeros((ng, k * _TOK), np.int8)
    bT = np.zeros((ng, ns * _TOK), np.int32)
    dx = np.zeros((ng, nb * _TOK), np.float32)
    for g in prange(ng):
        for lane in range(min(_TOK, ncols - g * _TOK)):
            t = g * _TOK + lane
            for e in range(k):
                xT[g, (e >> 2) * 64 + lane * 4 + (e & 3)] = xq[t, e]
            for s in range(ns):
                acc = 0
                for i in range(sums):
                    acc += xbs[t, sums * s + i]
                bT[g, s * _TOK + lane] = mult * acc
            for b in range(nb):
                dx[g, b * _TOK + lane] = xd[t, b]
    return xT, bT, dx


@njit(**KERNEL)
def _q4k_codes(q, out):
    """One Q4_K row's packed nibbles ``q`` (K/2) as bytes in element order into ``out`` (K)."""
    for b in range(q.shape[0] // 128):
        for c in range(4):
            for li in range(32):
                v = q[b * 128 + 32 * c + li]
                out[b * 256 + 64 * c + li] = v & 15
                out[b * 256 + 64 * c + 32 + li] = v >> 4


@njit(**KERNEL)
def _q4k_gemv1(qs, sc, mn, d, dmin, xq, xd, xb):
    """One Q4_K row · one Q8_K activation column, llama.cpp's ``ggml_gemv_q4_K_8x8_q8_K`` bit for
    bit: per block ``acc = fma(f32(Σ sc·dot), d·xd, acc)``, ``accm = fma(f32(Σ mn·bsum), dmin·xd,
    accm)`` (exact integers), then ``acc - accm``."""
    acc = np.float32(0.0)
    accm = np.float32(0.0)
    for b in range(d.shape[0]):
        i = q4k_isum(qs, b * 128, sc, b * 8, xq, b * 256)
        im = kq_minsum(mn, b * 8, xb, b * 16)
        acc = fma32(np.float32(i), d[b] * xd[b], acc)
        accm = fma32(np.float32(im), dmin[b] * xd[b], accm)
    return acc - accm


@njit(**KERNEL, parallel=True)
def _mv_q4k_repack(qs, sc, mn, d, dmin, xq, xd, xbs, out, ngemm, xT, bT, dx):
    """Q4_K rows · Q8_K activations as llama.cpp's repacked Q4_K: columns ``< ngemm`` with the
    gemm's arithmetic (activations ``xT, bT, dx`` from :func:`_q8k_tok16`), the others with
    :func:`_q4k_gemv1`."""
    rows = qs.shape[0]
    n = xq.shape[0]
    nb = d.shape[1]
    ng = xT.shape[0]
    for c in prange((rows + _KQ_ROWS - 1) // _KQ_ROWS):
        r0 = c * _KQ_ROWS
        r1 = min(rows, r0 + _KQ_ROWS)
        if ng > 0:
            codes = np.empty((_KQ_ROWS, nb * 256), np.uint8)
            for r in range(r0, r1):
                _q4k_codes(qs[r], codes[r - r0])
            for g0 in range(0, ng, _TOK_GROUPS):
                r = r0
                while r < r1:
                    two = r + 1 < r1
                    for g in range(g0, min(ng, g0 + _TOK_GROUPS)):
                        p0, m0, p1, m1 = acc16(), acc16(), acc16(), acc16()
                        for b in range(nb):
                            if two:
                                q4k_tok16x2(
                                    p0, m0, p1, m1, codes[r - r0], codes[r + 1 - r0], b * 256,
                                    sc[r], sc[r + 1], mn[r], mn[r + 1], b * 8,
                                    xT[g], b * 4096, bT[g], b * 128, dx[g], b * _TOK,
                                    d[r, b], dmin[r, b], d[r + 1, b], dmin[r + 1, b],
                                )  # fmt: skip
                            else:
                                q4k_tok16(
                                    p0, m0, codes[r - r0], b * 256, sc[r], mn[r], b * 8,
                                    xT[g], b * 4096, bT[g], b * 128, dx[g], b * _TOK, d[r, b], dmin[r, b],
                                )  # fmt: skip
                        a0, z0, a1, z1 = (
                            carray(p0, _TOK),
                            carray(m0, _TOK),
                            carray(p1, _TOK),
                            carray(m1, _TOK),
                        )
                        for lane in range(min(_TOK, ngemm - g * _TOK)):
                            out[g * _TOK + lane, r] = a0[lane] - z0[lane]
                            if two:
                                out[g * _TOK + lane, r + 1] = a1[lane] - z1[lane]
                    r += 2 if two else 1
        for r in range(r0, r1):
            for t in range(ngemm, n):
                out[t, r] = _q4k_gemv1(qs[r], sc[r], mn[r], d[r], dmin[r], xq[t], xd[t], xbs[t])


@njit(**KERNEL)
def _q4k_llama(qs, sc, mn, d, dmin, xq, xd, xbs, out, ngemm):
    """:func:`_mv_q4k_repack` with its activations prepared."""
    if ngemm > 0:
        xT, bT, dx = _q8k_tok16(xq, xd, xbs, ngemm, 2, 1)
    else:  # decode: no parallel region to start for nothing
        xT, bT, dx = np.zeros((0, 1), np.int8), np.zeros((0, 1), np.int32), np.zeros((0, 1), np.float32)
    _mv_q4k_repack(qs, sc, mn, d, dmin, xq, xd, xbs, out, ngemm, xT, bT, dx)


# Q6_K as llama.cpp computes it for 8 or more activation columns: its CPU "tiled" mat-mul
# (ggml_compute_forward_mul_mat_tiled; the arithmetic is described in engine.runtime.kernels.simd,
# "Q6_K × Q8_K, tiled"), for every column of the call; fewer columns go through its vec_dot.
# The columns run 16 at a time, one per f32 lane (q6k_tok16x2), as the Q4_K gemm's do.
Q6K_TILED_MIN = 8  # llama.cpp's ggml_tiled_min_batch


def q6k_tiled(n: int) -> bool:
    """Whether llama.cpp runs a Q6_K mat-mul of ``n`` activation columns through its tiled kernel
    (else ``ggml_vec_dot_q6_K_q8_K`` per column)."""
    return n >= Q6K_TILED_MIN


@njit(**KERNEL)
def _q8k_tok16_q6(xq, xd, xbs):
    """Every column of Q8_K activations in :func:`~.simd.q6k_tok16`'s layout (:func:`_q8k_tok16`
    with ``-32·`` the 16-element sums)."""
    return _q8k_tok16(xq, xd, xbs, xq.shape[0], 1, -32)


@njit(**KERNEL)
def _q6k_codes(ql, qh, out):
    """One Q6_K row's codes (0..63, ``ql`` K/2 low nibbles, ``qh`` K/4 high bit pairs) as bytes
    in element order into ``out`` (K)."""
    for b in range(ql.shape[0] // 128):
        for h in range(2):
            lo = b * 128 + 64 * h
            ho = b * 64 + 32 * h
            e = b * 256 + 128 * h
            for li in range(32):
                a = ql[lo + li]
                a2 = ql[lo + 32 + li]
                hb = qh[ho + li]
                out[e + li] = (a & 15) | ((hb & 3) << 4)
                out[e + 32 + li] = (a2 & 15) | (((hb >> 2) & 3) << 4)
                out[e + 64 + li] = (a >> 4) | (((hb >> 4) & 3) << 4)
                out[e + 96 + li] = (a2 >> 4) | (((hb >> 6) & 3) << 4)


@njit(**KERNEL, parallel=True)
def _mv_q6k_tiled(ql, qh, sc, d, out, xT, bT, dx):
    """Q6_K rows · every Q8_K activation column (``xT, bT, dx`` from :func:`_q8k_tok16_q6`) with
    llama.cpp's tiled arithmetic (:func:`~.simd.q6k_tok16`), two rows × 16 columns at a time."""
    rows = ql.shape[0]
    n = out.shape[0]
    nb = d.shape[1]
    ng = xT.shape[0]
    for c in prange((rows + _KQ_ROWS - 1) // _KQ_ROWS):
        r0 = c * _KQ_ROWS
        r1 = min(rows, r0 + _KQ_ROWS)
        codes = np.empty((_KQ_ROWS, nb * 256), np.uint8)
        for r in range(r0, r1):
            _q6k_codes(ql[r], qh[r], codes[r - r0])
        for g0 in range(0, ng, _TOK_GROUPS):
            r = r0
            while r < r1:
                two = r + 1 < r1
                for g in range(g0, min(ng, g0 + _TOK_GROUPS)):
                    p0, p1 = acc16(), acc16()
                    for b in range(nb):
                        if two:
                            q6k_tok16x2(
                                p0, p1, codes[r - r0], codes[r + 1 - r0], b * 256, sc[r], sc[r + 1], b * 16,
                                xT[g], b * 4096, bT[g], b * 256, dx[g], b * _TOK, d[r, b], d[r + 1, b],
                            )  # fmt: skip
                        else:
                            q6k_tok16(
                                p0, codes[r - r0], b * 256, sc[r], b * 16,
                                xT[g], b * 4096, bT[g], b * 256, dx[g], b * _TOK, d[r, b],
                            )  # fmt: skip
                    a0, a1 = carray(p0, _TOK), carray(p1, _TOK)
                    for lane in range(min(_TOK, n - g * _TOK)):
                        out[g * _TOK + lane, r] = a0[lane]
                        if two:
                            out[g * _TOK + lane, r + 1] = a1[lane]
                r += 2 if two else 1


@njit(**KERNEL, parallel=True)
def _mv_qk(qs, sc, mn, d, dmin, qh, has_qh, xq, xd, xbs, out):
    """Q4_K (``has_qh`` False) / Q5_K rows · Q8_K activations (codes ``xq`` (n, K), scales ``xd``
    (n, K/256), block sums ``xbs`` (n, K/16) int32): :func:`_q4k_dot1` / :func:`_q5k_dot1` for
    every (token, row), two rows × four tokens at a time.  Q4_K weights of a multiple of 8 rows
    (those llama.cpp repacks) go to :func:`_q4k_llama` instead, with llama.cpp's column rule
    (:func:`q4k_gemm_cols`)."""
    rows = qs.shape[0]
    n = xq.shape[0]
    n4 = n - n % 4
    if not has_qh and rows % 8 == 0:
        _q4k_llama(qs, sc, mn, d, dmin, xq, xd, xbs, out, n4)
        return
    for c in prange((rows + _KQ_ROWS - 1) // _KQ_ROWS):
        res = np.empty(8, np.float32)
        r0 = c * _KQ_ROWS
        r1 = min(rows, r0 + _KQ_ROWS)
        r2 = r0 + (r1 - r0) // 2 * 2  # rows r0..r2 in pairs
        for t0 in range(0, n4, _KQ_TOKENS):
            for r in range(r0, r2, 2):
                for t in range(t0, min(t0 + _KQ_TOKENS, n4), 4):
                    if has_qh:
                        _q5k_dot2x4(qs, qh, sc, mn, d, dmin, r, xq, xd, xbs, t, res)
                    else:
                        _q4k_dot2x4(qs, sc, mn, d, dmin, r, xq, xd, xbs, t, res)
                    for i in range(4):
                        out[t + i, r] = res[i]
                        out[t + i, r + 1] = res[4 + i]
        for r in range(r0, r1):
            for t in range(n4 if r < r2 else 0, n):
                if has_qh:
                    out[t, r] = _q5k_dot1(qs[r], qh[r], sc[r], mn[r], d[r], dmin[r], xq[t], xd[t], xbs[t])
                else:
                    out[t, r] = _q4k_dot1(qs[r], sc[r], mn[r], d[r], dmin[r], xq[t], xd[t], xbs[t])


@njit(**KERNEL, parallel=True)
def _mv_q6k_vecdot(ql, qh, sc, d, xq, xd, xbs, out):
    """Q6_K rows · Q8_K activations with ``ggml_vec_dot_q6_K_q8_K``'s arithmetic (as
    :func:`_mv_qk`): :func:`_q6k_dot1` for every (token, row), two rows × four tokens at a time."""
    rows = ql.shape[0]
    n = xq.shape[0]
    n4 = n - n % 4
    for c in prange((rows + _KQ_ROWS - 1) // _KQ_ROWS):
        res = np.empty(8, np.float32)
        r0 = c * _KQ_ROWS
        r1 = min(rows, r0 + _KQ_ROWS)
        r2 = r0 + (r1 - r0) // 2 * 2
        for t0 in range(0, n4, _KQ_TOKENS):
            for r in range(r0, r2, 2):
                for t in range(t0, min(t0 + _KQ_TOKENS, n4), 4):
                    _q6k_dot2x4(ql, qh, sc, d, r, xq, xd, xbs, t, res)
                    for i in range(4):
                        out[t + i, r] = res[i]
                        out[t + i, r + 1] = res[4 + i]
        for r in range(r0, r1):
            for t in range(n4 if r < r2 else 0, n):
                out[t, r] = _q6k_dot1(ql[r], qh[r], sc[r], d[r], xq[t], xd[t], xbs[t])


@njit(**KERNEL)
def _q6k_llama(ql, qh, sc, d, xq, xd, xbs, out, tiled):
    """Q6_K rows · Q8_K activations with llama.cpp's tiled arithmetic (``tiled``,
    :func:`_mv_q6k_tiled`) or its vec_dot's (:func:`_mv_q6k_vecdot`)."""
    if tiled:
        xT, bT, dx = _q8k_tok16_q6(xq, xd, xbs)
        _mv_q6k_tiled(ql, qh, sc, d, out, xT, bT, dx)
    else:
        _mv_q6k_vecdot(ql, qh, sc, d, xq, xd, xbs, out)


@njit(**KERNEL)
def _mv_q6_k(ql, qh, sc, d, xq, xd, xbs, out):
    """Q6_K rows · Q8_K activations as llama.cpp computes them: its tiled mat-mul for 8 or more
    activation rows (:func:`q6k_tiled`), ``ggml_vec_dot_q6_K_q8_K`` below (decode)."""
    _q6k_llama(ql, qh, sc, d, xq, xd, xbs, out, xq.shape[0] >= Q6K_TILED_MIN)


def quantize_act(w: QWeight, x: np.ndarray):
    """Convert activations ``x`` (n, cols) the way llama.cpp does for a weight of ``w``'s type:
    Q8_0 / Q8_K: (codes, scales[, bsums]); Q8_1: (codes, scales, sums); F16 / BF16 / F32: a
    1-tuple of f32 activations holding the type's rounded values."""
    x = np.ascontiguousarray(x, np.float32)
    vdt = VEC_DOT_TYPE[w.qtype]
    if vdt == "Q8_K":
        return quantize_q8_k(x)
    if vdt == "Q8_0":
        return quantize_q8_0(x)
    if vdt == "Q8_1":
        return quantize_q8_1(x)
    if vdt == "F16":
        return (round_f16(x),)
    if vdt == "BF16":
        return (round_bf16(x),)
    return (x,)


class SharedActivations:
    """Activations ``x`` converted once per ``vec_dot_type`` and shared by every weight that
    reads them (q/k/v, gate/up): :func:`quantize_act` is a pure function of the type and ``x``."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self._by_type: dict[str, tuple] = {}

    def for_weight(self, w: QWeight) -> tuple:
        vdt = VEC_DOT_TYPE[w.qtype]
        act = self._by_type.get(vdt)
        if act is None:
            act = self._by_type[vdt] = quantize_act(w, self.x)
        return act


def act_float(act) -> np.ndarray:
    """The float activations (n, K) that :func:`quantize_act`'s result stands for."""
    return act[0] if len(act) == 1 else dequant_act(act[0], act[1])


def matvec(
    w: QWeight, x: np.ndarray, out: np.ndarray | None = None, act=None, gemm_cols: int | None = None
) -> np.ndarray:
    """``x @ W.T`` for a few rows of activations (decode), on the quantized blocks.

    ``gemm_cols``: for Q4_K weights of a multiple of 8 rows (which llama.cpp repacks), how many
    leading activation rows take its gemm's arithmetic rather than its gemv's (default
    :func:`q4k_gemm_cols`, llama.cpp's rule for one call); ignored for other weights."""
    act = quantize_act(w, x) if act is None else act
    n = act[0].shape[0]
    if out is None:
        out = np.empty((n, w.rows), np.float32)
    if w.qtype == "Q4_K" and w.rows % 8 == 0:
        ng = q4k_gemm_cols(n) if gemm_cols is None else int(gemm_cols)
        if not 0 <= ng <= n:
            raise ValueError(f"gemm_cols={gemm_cols} for {n} activation rows")
        f = w.fields
        _q4k_llama(f[0], f[1], f[2], f[3], f[4], act[0], act[1], act[2], out, ng)
        return out
    f = w.fields
    name = w.qtype
    if name == "Q8_0":
        _mv_q8_0(f[0], f[1], act[0], act[1], out)
    elif name == "Q4_0":
        _mv_q4_0(f[0], f[1], act[0], act[1], out)
    elif name == "Q5_0":
        _mv_q5_0(f[0], f[1], f[2], dequant_act(act[0], act[1]), out)
    elif name == "Q4_K":
        _mv_qk(f[0], f[1], f[2], f[3], f[4], _NO_QH, False, act[0], act[1], act[2], out)
    elif name == "Q5_K":
        _mv_qk(f[0], f[1], f[2], f[3], f[4], f[5], True, act[0], act[1], act[2], out)
    elif name == "Q6_K":
        _mv_q6_k(f[0], f[1], f[2], f[3], act[0], act[1], act[2], out)
    elif name == "F32":
        qk.mv_f32(f[0], act[0], out)
    elif name in ("IQ4_NL", "MXFP4"):
        qk.mv_lut4(f[0], f[1], _lut(name), act[0], act[1], out)
    else:
        fn, extra = _MORE[name]
        # activations the kernel takes: float (F16/BF16), codes+scales(+sums / +bsums for Q2_K)
        a = act if name in ("Q4_1", "Q5_1", "Q2_K", "F16", "BF16") else act[:2]
        getattr(qk, "mv_" + fn)(*f, *extra(), *a, out)
    return out


def _q8_1_correction(w: QWeight, act) -> np.ndarray | None:
    """Q4_1/Q5_1: llama.cpp adds ``m · s`` per block with ``s = fp16(d·Σq)``, not ``m · d·Σq``:
    the difference ``Σ_b m_b (s_b - d_b Σq_b)`` (n, rows), or None for other types."""
    if VEC_DOT_TYPE[w.qtype] != "Q8_1":
        return None
    q, d, s = act
    n = q.shape[0]
    exact = q.reshape(n, d.shape[1], -1).astype(np.int32).sum(axis=2).astype(np.float64) * d
    return ((s.astype(np.float64) - exact) @ w.fields[-1].astype(np.float64).T).astype(np.float32)


def matmul_dense(w: QWeight, x: np.ndarray, act=None, chunk_rows: int = 4096) -> np.ndarray:
    """``x @ W.T`` for many rows (prefill): same converted activations, weights dequantized one
    row chunk at a time, f32 BLAS.  Agrees with :func:`matvec` to f32 rounding."""
    act = quantize_act(w, x) if act is None else act
    xf = act_float(act)
    out = np.empty((xf.shape[0], w.rows), np.float32)
    for r0 in range(0, w.rows, chunk_rows):
        r1 = min(w.rows, r0 + chunk_rows)
        np.matmul(xf, dequantize_rows(w, r0, r1).T, out=out[:, r0:r1])
    corr = _q8_1_correction(w, act)
    if corr is not None:
        out += corr
    return out


def q4k_repack_ref(w: QWeight, xq: np.ndarray, xd: np.ndarray, xb: np.ndarray, gemm_cols: int) -> np.ndarray:
    """NumPy reference of llama.cpp's repacked Q4_K mat-mul (what :func:`matvec` computes for Q4_K
    weights of a multiple of 8 rows): Q8_K activations ``xq, xd, xb`` (n, ...), the first
    ``gemm_cols`` columns with ``ggml_gemm_q4_K_8x8_q8_K``'s arithmetic (an f32 fused multiply-add
    per 64-element sub-block pair), the others with ``ggml_gemv_q4_K_8x8_q8_K``'s (one per block);
    exact integers, :func:`~.fmath.fma32_ref` for the fused steps.  (n, rows) f32."""
    qs, sc, mn, d, dmin = w.fields
    rows, nb = d.shape
    n = xq.shape[0]
    q = qs.reshape(rows, nb, 4, 32).astype(np.int64)
    codes = np.empty((rows, nb, 8, 32), np.int64)
    codes[:, :, 0::2] = q & 15
    codes[:, :, 1::2] = q >> 4
    dots = np.einsum("rbse,tbse->trbs", codes, xq.reshape(n, nb, 8, 32).astype(np.int64))
    isc = dots * sc.reshape(rows, nb, 8).astype(np.int64)  # (n, rows, nb, 8)
    b32 = xb.reshape(n, nb, 8, 2).astype(np.int64).sum(-1)
    imin = b32[:, None] * mn.reshape(rows, nb, 8).astype(np.int64)
    per_pair = np.arange(n) < gemm_cols
    acc = np.zeros((n, rows), np.float32)
    accm = np.zeros((n, rows), np.float32)
    for b in range(nb):
        s = d[None, :, b] * xd[:, b, None]  # f32 products, as the kernels form them
        sm = dmin[None, :, b] * xd[:, b, None]
        for p in range(4):
            i = np.where(per_pair[:, None], isc[:, :, b, 2 * p : 2 * p + 2].sum(-1), isc[:, :, b].sum(-1))
            im = np.where(per_pair[:, None], imin[:, :, b, 2 * p : 2 * p + 2].sum(-1), imin[:, :, b].sum(-1))
            gv = per_pair[:, None] | (p == 0)  # gemv columns: one step per block
            acc = np.where(gv, fma32_ref(i.astype(np.float32), s, acc), acc)
            accm = np.where(gv, fma32_ref(im.astype(np.float32), sm, accm), accm)
    return (acc - accm).astype(np.float32)


def q6k_tiled_ref(w: QWeight, xq: np.ndarray, xd: np.ndarray) -> np.ndarray:
    """NumPy reference of llama.cpp's tiled Q6_K mat-mul (what :func:`matvec` computes for Q6_K
    weights and 8 or more activation rows): Q8_K activations ``xq, xd`` (n, ...); per block the
    exact integer ``Σ_s sc[s]·Σ_e (code - 32)·x``, times the row's scale in f32, fused into the
    accumulator times the column's scale (:func:`~.fmath.fma32_ref`).  (n, rows) f32."""
    ql, qh, sc, d = w.fields
    rows, nb = d.shape
    n = xq.shape[0]
    lo = ql.reshape(rows, nb, 2, 2, 32).astype(np.int64)  # [h][ql half][li]
    hi = qh.reshape(rows, nb, 2, 1, 32).astype(np.int64)
    q = np.empty((rows, nb, 2, 4, 32), np.int64)
    q[:, :, :, 0:2] = (lo & 15) | (((hi >> np.array([0, 2]).reshape(2, 1)) & 3) << 4)
    q[:, :, :, 2:4] = (lo >> 4) | (((hi >> np.array([4, 6]).reshape(2, 1)) & 3) << 4)
    q = q.reshape(rows, nb, 16, 16) - 32
    dots = np.einsum("rbse,tbse->trbs", q, xq.reshape(n, nb, 16, 16).astype(np.int64))
    isum = (dots * sc.reshape(rows, nb, 16).astype(np.int64)).sum(-1)  # (n, rows, nb)
    acc = np.zeros((n, rows), np.float32)
    for b in range(nb):
        r = isum[:, :, b].astype(np.float32) * d[None, :, b]  # f32 product, as the kernel forms it
        acc = fma32_ref(r, np.broadcast_to(xd[:, b, None], r.shape).astype(np.float32), acc)
    return acc.astype(np.float32)


def matmul_ref(w_f32: np.ndarray, qtype: str, x: np.ndarray, w_min: np.ndarray | None = None) -> np.ndarray:
    """NumPy reference: activations converted as llama.cpp does, exact float64 products.

    ``w_f32``: the exactly dequantized weights (rows, K).  Q4_1 / Q5_1 also need ``w_min``, the
    weights' per-block minimum ``m`` (rows, K/32): llama.cpp multiplies it by the activation
    block sum rounded to fp16 (Q8_1's ``s``), which this reference reproduces."""
    from engine.runtime.kernels.actquant import (
        quantize_q8_0_ref,
        quantize_q8_1_ref,
        quantize_q8_k_ref,
        round_bf16_ref,
        round_f16_ref,
    )

    x = np.ascontiguousarray(x, np.float32)
    vdt = VEC_DOT_TYPE[qtype]
    w64 = w_f32.astype(np.float64)
    if vdt in ("F32", "F16", "BF16"):
        xf = {"F32": lambda a: a, "F16": round_f16_ref, "BF16": round_bf16_ref}[vdt](x)
        return (xf.astype(np.float64) @ w64.T).astype(np.float32)
    act = {"Q8_K": quantize_q8_k_ref, "Q8_0": quantize_q8_0_ref, "Q8_1": quantize_q8_1_ref}[vdt](x)
    n, k = act[0].shape
    bs = k // act[1].shape[1]
    xf = (act[0].reshape(n, -1, bs).astype(np.float64) * act[1][:, :, None]).reshape(n, k)
    out = xf @ w64.T
    if vdt == "Q8_1":
        if w_min is None:
            raise ValueError(f"matmul_ref of {qtype} needs the weights' block minimums (w_min)")
        sums = act[0].reshape(n, -1, bs).astype(np.int64).sum(axis=2) * act[1].astype(np.float64)
        out += (act[2].astype(np.float64) - sums) @ np.asarray(w_min, np.float64).T
    return out.astype(np.float32)
