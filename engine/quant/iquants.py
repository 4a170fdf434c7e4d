"""Grid IQ types: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S ("1.58-bit" to 3.4-bit).

Quantization is llama.cpp's ``ggml_quantize_chunk`` bit for bit (kernels in
:mod:`engine.quant.iquants_search`, lookup tables in :mod:`engine.quant.iq_tables`), with or without
an importance matrix.  llama.cpp refuses IQ2_XXS, IQ2_XS and IQ1_S without one
(``ggml_quantize_requires_imatrix``); ``engine.quant.quantize`` raises :class:`QuantError` there.
Inputs on which llama.cpp aborts (``GGML_ASSERT`` in a neighbour search, typically fp32 overflow of
``x*x`` for |x| ~ 1e30) raise :class:`QuantError` too.

Dequantization is ``gguf.quants.dequantize`` bit for bit (same float32 operation order), in Numba.

Block layouts (bytes): IQ2_XXS ``d; u32 qs[16]`` (66) · IQ2_XS ``d; u16 qs[32]; scales[8]`` (74) ·
IQ2_S ``d; qs[32]; signs[32]; qh[8]; scales[8]`` (82) · IQ3_XXS ``d; qs[64]; u32 scales_signs[8]``
(98) · IQ3_S ``d; qs[64]; qh[8]; signs[32]; scales[4]`` (110) · IQ1_S ``d; qs[32]; u16 qh[8]`` (50) ·
IQ1_M ``qs[32]; qh[16]; u16 scales[4]`` with the fp16 scale in their top nibbles (56).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from engine.errors import QuantError
from engine.quant import iquants_search as S
from engine.quant.format import QuantFormat
from engine.quant.iq_tables import dequant_grid, ksigns, neighbour_blocks, quant_tables
from engine.quant.kquants_search import fp16_bits_to_fp32

F32 = np.float32
QK_K = 256
_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}

# name -> (ggml id, type size, llama.cpp requires an imatrix)
TYPES: dict[str, tuple[int, int, bool]] = {
    "IQ2_XXS": (16, 66, True),
    "IQ2_XS": (17, 74, True),
    "IQ3_XXS": (18, 98, False),
    "IQ1_S": (19, 50, True),
    "IQ3_S": (21, 110, False),
    "IQ2_S": (22, 82, False),
    "IQ1_M": (29, 56, False),
}
_IQ23_KIND = {
    "IQ2_XXS": S.IQ2_XXS,
    "IQ2_XS": S.IQ2_XS,
    "IQ2_S": S.IQ2_S,
    "IQ3_XXS": S.IQ3_XXS,
    "IQ3_S": S.IQ3_S,
}
_DEQ_TABLE = {
    "IQ2_XXS": "KGRID_2BIT_256",
    "IQ2_XS": "KGRID_2BIT_512",
    "IQ2_S": "KGRID_2BIT_1024",
    "IQ3_XXS": "KGRID_256",
    "IQ3_S": "KGRID_512",
    "IQ1_S": "KGRID_1BIT_2048",
    "IQ1_M": "KGRID_1BIT_2048",
}
_ERRORS = {
    S.ERR_NO_NEIGHBOUR: "no grid neighbour wins the search (GGML_ASSERT(grid_index >= 0))",
    S.ERR_OFF_GRID: "a point ends off the grid (GGML_ABORT 'found point not on grid')",
    S.ERR_SCALE: "a sub-block scale is not >= 0 (GGML_ASSERT(scale >= 0))",
}

# ============================================================================ quantize: row drivers


@njit(parallel=True, **_JIT)
def _iq23_rows(kind, x, qw, has_qw, out, err, grid, kmap, neigh, kblk, nbg, nchunks):
    nrows = x.shape[0]
    nb = x.shape[1] // QK_K
    ts = out.shape[1] // nb
    scr_f = np.zeros((nchunks, 4, 32), np.float32)
    scr_i = np.zeros((nchunks, 7, 32), np.int64)
    scales = np.zeros((nchunks, 16), np.float32)
    for c in prange(nchunks):
        for r in range(c * nrows // nchunks, (c + 1) * nrows // nchunks):
            for b in range(nb):
                yb = out[r, b * ts : (b + 1) * ts]
                yb[:] = 0
                xb = x[r, b * QK_K : (b + 1) * QK_K]
                qb = qw[b * QK_K : (b + 1) * QK_K]
                sf, si, sc = scr_f[c], scr_i[c], scales[c]
                # literal kinds: one specialization per type, its sizes and branches constant-folded
                if kind == S.IQ2_XXS:
                    e = S.iq23_block(0, xb, qb, has_qw, yb, grid, kmap, neigh, kblk, nbg, sf, si, sc)
                elif kind == S.IQ2_XS:
                    e = S.iq23_block(1, xb, qb, has_qw, yb, grid, kmap, neigh, kblk, nbg, sf, si, sc)
                elif kind == S.IQ2_S:
                    e = S.iq23_block(2, xb, qb, has_qw, yb, grid, kmap, neigh, kblk, nbg, sf, si, sc)
                elif kind == S.IQ3_XXS:
                    e = S.iq23_block(3, xb, qb, has_qw, yb, grid, kmap, neigh, kblk, nbg, sf, si, sc)
                else:
                    e = S.iq23_block(4, xb, qb, has_qw, yb, grid, kmap, neigh, kblk, nbg, sf, si, sc)
                if e:
                    err[r] = e
                    break


@njit(parallel=True, **_JIT)
def _iq1_rows(is_m, x, qw, has_qw, out, err, grid, kmap, neigh, kblk, nbg, nchunks):
    nrows, n = x.shape
    nb = n // QK_K
    ts = out.shape[1] // nb
    xflat = x.reshape(-1)
    weight = np.zeros((nchunks, 32), np.float32)
    sumx = np.zeros((nchunks, 2, 33), np.float32)
    sumw = np.zeros((nchunks, 2, 33), np.float32)
    idx = np.zeros((nchunks, 32), np.int64)
    L = np.zeros((nchunks, 32), np.int64)
    scales = np.zeros((nchunks, 16), np.float32)
    shifts = np.zeros((nchunks, 16), np.int64)
    acc = np.zeros((nchunks, 8), np.float32)
    for c in prange(nchunks):
        for r in range(c * nrows // nchunks, (c + 1) * nrows // nchunks):
            for b in range(nb):
                yb = out[r, b * ts : (b + 1) * ts]
                yb[:] = 0
                xo = r * n + b * QK_K
                qb = qw[b * QK_K : (b + 1) * QK_K]
                if is_m:
                    e = S.iq1m_block(
                        xflat, xo, qb, has_qw, yb, grid, kmap, neigh, kblk, nbg, weight[c], sumx[c], sumw[c],
                        idx[c], L[c], scales[c], shifts[c], acc[c],
                    )  # fmt: skip
                else:
                    e = S.iq1s_block(
                        xflat, xo, qb, yb, grid, kmap, neigh, kblk, nbg, weight[c], sumx[c, 0], sumw[c, 0],
                        idx[c], L[c], scales[c], shifts[c], acc[c],
                    )  # fmt: skip
                if e:
                    err[r] = e
                    break


def _chunks(nrows: int) -> int:
    return max(1, min(nrows, 4 * numba.get_num_threads()))


def _quantize(name: str, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    _, ts, needs = TYPES[name]
    if imatrix is None and needs:  # engine.quant.quantize checks first; kernels need it too
        raise QuantError(
            f"Missing importance matrix for {name}: llama.cpp refuses to quantize it without one."
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    nrows, n = x.shape
    nb = n // QK_K
    qw = np.zeros(n, np.float32) if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    out = np.zeros((nrows, nb * ts), np.uint8)
    if nrows == 0 or nb == 0:
        return out
    t = quant_tables(name)
    err = np.zeros(nrows, np.int32)
    if name in _IQ23_KIND:
        kblk, nbg = neighbour_blocks(name)
        _iq23_rows(
            _IQ23_KIND[name],
            x,
            qw,
            imatrix is not None,
            out,
            err,
            t.grid,
            t.kmap,
            t.neighbours,
            kblk,
            nbg,
            _chunks(nrows),
        )
    else:
        kblk, nbg = neighbour_blocks(name)
        _iq1_rows(
            name == "IQ1_M",
            x,
            qw,
            imatrix is not None,
            out,
            err,
            t.grid,
            t.kmap,
            t.neighbours,
            kblk,
            nbg,
            _chunks(nrows),
        )
    bad = np.flatnonzero(err)
    if bad.size:
        r = int(bad[0])
        raise QuantError(
            f"Cannot quantize to {name}: llama.cpp aborts on row {r} of this input: {_ERRORS[int(err[r])]}. "
            f"Values this large (max |x| = {float(np.max(np.abs(x[r]))):.3g}) overflow its float32 search."
        )
    return out


# ============================================================================ dequantize (gguf-py order)


@njit(inline="always", **_JIT)
def _f16(q, off):
    return fp16_bits_to_fp32(np.int64(q[off]) | (np.int64(q[off + 1]) << 8))


@njit(inline="always", **_JIT)
def _u32(q, off):
    return (
        np.int64(q[off])
        | (np.int64(q[off + 1]) << 8)
        | (np.int64(q[off + 2]) << 16)
        | (np.int64(q[off + 3]) << 24)
    )


@njit(inline="always", **_JIT)
def _sgn(pm, s, j):
    # pm = [1, -1] passed in at run time: a literal select would let LLVM turn the multiply into a
    # negation, which flips the sign of NaN where NumPy's multiply keeps it.
    return pm[(s >> j) & 1]


@njit(parallel=True, **_JIT)
def _dequantize_blocks(kind, blocks, out, grid, ks, pm):
    for bi in prange(blocks.shape[0]):
        q = blocks[bi]
        y = out[bi]
        if kind == S.IQ2_XXS or kind == S.IQ3_XXS:
            d = _f16(q, 0)
            xxs2 = kind == S.IQ2_XXS
            for ib in range(8):
                aux = _u32(q, 6 + 8 * ib) if xxs2 else _u32(q, 66 + 4 * ib)
                db = F32(F32(d * F32(F32(0.5) + F32(aux >> 28))) * (F32(0.25) if xxs2 else F32(0.5)))
                for k in range(4):
                    s = np.int64(ks[(aux >> (7 * k)) & 127])
                    for j in range(8):
                        e = 32 * ib + 8 * k + j
                        if xxs2:
                            g = np.int64(q[2 + 8 * ib + k])
                            v = grid[g, j]
                        else:
                            g = np.int64(q[2 + 8 * ib + 2 * k + j // 4])
                            v = grid[g, j % 4]
                        y[e] = F32(db * v) * _sgn(pm, s, j)
        elif kind == S.IQ2_XS or kind == S.IQ2_S:
            d = _f16(q, 0)
            sc0 = 66 if kind == S.IQ2_XS else 74
            for i in range(32):  # groups of 8
                ls = (np.int64(q[sc0 + i // 4]) >> (4 * ((i // 2) % 2))) & 0xF
                db = F32(F32(d * F32(F32(0.5) + F32(ls))) * F32(0.25))
                if kind == S.IQ2_XS:
                    v16 = np.int64(q[2 + 2 * i]) | (np.int64(q[3 + 2 * i]) << 8)
                    g = v16 & 511
                    s = np.int64(ks[v16 >> 9])
                else:
                    g = np.int64(q[2 + i]) | (((np.int64(q[66 + i // 4]) >> (2 * (i % 4))) & 3) << 8)
                    s = np.int64(q[34 + i])
                for j in range(8):
                    y[8 * i + j] = F32(db * grid[g, j]) * _sgn(pm, s, j)
        elif kind == S.IQ3_S:
            d = _f16(q, 0)
            for ib in range(8):
                ls = (np.int64(q[106 + ib // 2]) >> (4 * (ib % 2))) & 0xF
                db = F32(d * F32(1 + 2 * ls))
                for k in range(8):  # groups of 4
                    i = 8 * ib + k
                    g = np.int64(q[2 + i]) | (((np.int64(q[66 + i // 8]) >> (i % 8)) & 1) << 8)
                    s = np.int64(q[74 + i // 2])
                    for j in range(4):
                        y[4 * i + j] = F32(db * grid[g, j]) * _sgn(pm, s, 4 * (i % 2) + j)
        elif kind == 5:  # IQ1_S
            d = _f16(q, 0)
            for ib in range(8):
                qh = np.int64(q[34 + 2 * ib]) | (np.int64(q[35 + 2 * ib]) << 8)
                dl = F32(d * F32(2 * ((qh >> 12) & 7) + 1))
                delta = -S.IQ1_DELTA if qh & 0x8000 else S.IQ1_DELTA
                for k in range(4):
                    g = np.int64(q[2 + 4 * ib + k]) | (((qh >> (3 * k)) & 7) << 8)
                    for j in range(8):
                        y[32 * ib + 8 * k + j] = F32(dl * F32(grid[g, j] + delta))
        else:  # IQ1_M
            sc = np.empty(4, np.int64)
            for i in range(4):
                sc[i] = np.int64(q[48 + 2 * i]) | (np.int64(q[49 + 2 * i]) << 8)
            h = (sc[0] >> 12) | ((sc[1] >> 8) & 0xF0) | ((sc[2] >> 4) & 0xF00) | (sc[3] & 0xF000)
            d = fp16_bits_to_fp32(h)
            for b in range(16):  # sub-blocks of 16
                dl = F32(d * F32(2 * ((sc[b // 4] >> (3 * (b % 4))) & 7) + 1))
                qh = np.int64(q[32 + b])
                for hh in range(2):
                    nib = (qh >> (4 * hh)) & 0xF
                    g = np.int64(q[2 * b + hh]) | ((nib & 7) << 8)
                    delta = -S.IQ1_DELTA if nib & 8 else S.IQ1_DELTA
                    for j in range(8):
                        y[16 * b + 8 * hh + j] = F32(dl * F32(grid[g, j] + delta))


_PM = np.array([1.0, -1.0], dtype=np.float32)
_DEQ_KIND = {**_IQ23_KIND, "IQ1_S": 5, "IQ1_M": 6}


def _dequantize(name: str, blocks: np.ndarray) -> np.ndarray:
    ts = TYPES[name][1]
    blocks = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, ts)
    out = np.empty((blocks.shape[0], QK_K), np.float32)
    if blocks.shape[0]:
        _dequantize_blocks(_DEQ_KIND[name], blocks, out, dequant_grid(_DEQ_TABLE[name]), ksigns(), _PM)
    return out


def _make_format(name: str) -> QuantFormat:
    gid, ts, needs = TYPES[name]
    return QuantFormat(
        name=name,
        ggml_id=gid,
        block_size=QK_K,
        type_size=ts,
        dequantize=lambda blocks: _dequantize(name, blocks),
        quantize=lambda x, imatrix: _quantize(name, x, imatrix),
        needs_imatrix=needs,
        uses_imatrix=True,
    )


FORMATS: dict[str, QuantFormat] = {name: _make_format(name) for name in TYPES}
