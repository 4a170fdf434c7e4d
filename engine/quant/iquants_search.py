# ruff: noqa: E741  (`l` as in ggml-quants.c, for line-by-line review against the C source)
"""Per-super-block Numba ports of llama.cpp's grid IQ quantizers (ggml/src/ggml-quants.c).

- :func:`iq23_block`: ``quantize_row_iq2_xxs_impl``, ``quantize_row_iq2_xs_impl``,
  ``quantize_row_iq2_s_impl``, ``quantize_row_iq3_xxs_impl`` (grid 256) and ``quantize_row_iq3_s_impl``
  -- one search shape (per sub-block: signs split off, trial scales, grid snap through ``kmap`` or
  the neighbour lists, weighted refit) with the per-type differences as parameters;
- :func:`iq1s_block` / :func:`iq1m_block`: ``quantize_row_iq1_s_impl`` / ``quantize_row_iq1_m_impl``
  (exhaustive 3-level split search on the sorted sub-block, then grid snap).

Bit-exactness rules as in :mod:`engine.quant.kquants_search`: float32 everywhere, C's association
(``w*x*q`` is ``(w*x)*q``), sequential sums, C ``nearest_int``, no fastmath.  C's ``qsort`` of the
IQ1 sub-block is glibc's merge sort, i.e. stable: a stable insertion sort gives the same order.

Each kernel writes one super-block into ``y`` (``type_size`` bytes, zeroed by the caller) and returns
0, or an error code where llama.cpp hits a ``GGML_ASSERT`` / ``GGML_ABORT`` (it aborts the process):
:data:`ERR_NO_NEIGHBOUR`, :data:`ERR_OFF_GRID`, :data:`ERR_SCALE`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine.quant._simd import score8
from engine.quant.kquants_search import fp32_to_fp16_bits, nb_make_qp_quants, nearest_int

F32 = np.float32
QK_K = 256
FLT_MAX = F32(3.4028234663852886e38)
_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}

ERR_NO_NEIGHBOUR = 1  # GGML_ASSERT(grid_index >= 0) in a neighbour search
ERR_OFF_GRID = 2  # "Oops: found point not on grid"
ERR_SCALE = 3  # GGML_ASSERT(scale >= 0)

# iq23_block kinds
IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S = 0, 1, 2, 3, 4

# per kind: sub-block size, grid point size, bits per level, kMaxQ
_BS = (32, 16, 16, 32, 32)
_GS = (8, 8, 8, 4, 4)
_BITS = (2, 2, 2, 3, 3)
_KMAXQ = (3, 3, 3, 8, 8)
# trial range and step of the scale search
_IS_LO = (-6, -9, -9, -15, -9)
_STEP = (F32(0.1), F32(0.1), F32(0.1), F32(0.2), F32(0.2))
# sub-blocks whose max is below this are skipped (IQ3_S: max == 0)
_EPS = (F32(1e-15), F32(1e-15), F32(1e-8), F32(1e-8), F32(0.0))
# super-block scale fudge factor
_FUDGE = (F32(1.0), F32(1.0), F32(0.9875), F32(1.0125), F32(1.033))


@njit(inline="always", **_JIT)
def _put_u16(y, off, v):
    y[off] = np.uint8(v & 0xFF)
    y[off + 1] = np.uint8((v >> 8) & 0xFF)


@njit(inline="always", **_JIT)
def _max(a, b):
    """C's MAX(a, b): ((a) > (b) ? (a) : (b))."""
    return a if a > b else b


@njit(inline="always", **_JIT)
def _iq23_neighbour(u, kmap, neigh, kblk, nbg, xval, o, waux, scale, L, gs, acc):
    """iq2_find_best_neighbour / iq3_find_best_neighbour for the off-grid point ``u``.

    Writes L[o:o+gs]; returns the grid index, -1 when none wins.  The candidates are scored 8 at a
    time, one per lane (``nbg``, see :func:`engine.quant.iq_tables.neighbour_blocks`): every lane's
    d2 is the C sum in C order, and the first strict minimum wins as in C.
    """
    off = -np.int64(kmap[u]) - 1
    n = np.int64(neigh[off])
    b0 = np.int64(kblk[u])
    best_d2 = FLT_MAX
    best_j = -1
    for b in range((n + 7) >> 3):
        score8(nbg, (b0 + b) * 8 * gs, xval, o, waux, o, gs, scale, F32(1.0), F32(0.0), acc)
        for jj in range(min(8, n - 8 * b)):
            if acc[jj] < best_d2:
                best_d2 = acc[jj]
                best_j = 8 * b + jj
    if best_j < 0:
        return -1
    for i in range(gs):
        L[o + i] = (np.int64(nbg[b0 + (best_j >> 3), i, best_j & 7]) - 1) // 2
    return np.int64(neigh[off + 1 + best_j])


@njit(inline="always", **_JIT)
def _snap(id_, xval, L, o, gs, bits, kmaxq):
    """Round one grid point's levels at inverse scale id_ into L[o:o+gs]; returns their index u."""
    u = 0
    for i in range(gs):
        l = nearest_int(F32(F32(0.5) * F32(F32(id_ * xval[o + i]) - F32(1.0))))
        l = max(0, min(kmaxq - 1, l))
        L[o + i] = l
        u |= l << (bits * i)
    return u


@njit(inline="always", **_JIT)
def _refit(n, weight, xval, L):
    sumqx = F32(0.0)
    sumq2 = F32(0.0)
    for i in range(n):
        w = weight[i]
        q = F32(2 * np.int64(L[i]) + 1)
        sumqx = F32(sumqx + F32(F32(w * xval[i]) * q))
        sumq2 = F32(sumq2 + F32(F32(w * q) * q))
    return sumqx, sumq2


@njit(**_JIT)
def iq23_block(kind, x, qw, has_qw, y, grid, kmap, neigh, kblk, nbg, scr_f, scr_i, scales):
    """One super-block of IQ2_XXS/IQ2_XS/IQ2_S/IQ3_XXS/IQ3_S into y (zeroed); 0 or an error code.

    scr_f: float32 (4, 32) scratch (weight, waux, xval, neighbour scores); scr_i: int64 (7, 32)
    scratch (L, Laux, on-grid flags, their trial copy, signs, make_qp_quants levels, grid indices);
    scales float32 (16,); kblk / nbg: :func:`engine.quant.iq_tables.neighbour_blocks`.
    """
    bs = _BS[kind]
    gs = _GS[kind]
    bits = _BITS[kind]
    kmaxq = _KMAXQ[kind]
    ngs = bs // gs
    parity = kind in (IQ2_XXS, IQ2_XS, IQ3_XXS)
    weight = scr_f[0]
    waux = scr_f[1]
    xval = scr_f[2]
    acc = scr_f[3]
    L = scr_i[0]
    Laux = scr_i[1]
    ongrid = scr_i[2]
    ongrid_aux = scr_i[3]
    signs = scr_i[4]
    Lq = scr_i[5]
    gidx = scr_i[6]

    sumx2 = F32(0.0)
    for i in range(QK_K):
        sumx2 = F32(sumx2 + F32(x[i] * x[i]))
    sigma2 = F32(sumx2 / F32(QK_K)) if kind in (IQ2_XXS, IQ2_XS) else F32(F32(F32(2.0) * sumx2) / F32(QK_K))

    qpos = 2  # IQ3_S: C advances its qs / signs pointers only past non-empty sub-blocks
    spos = 74
    max_scale = F32(0.0)
    for ib in range(QK_K // bs):
        o = bs * ib
        for i in range(bs):
            xi = x[o + i]
            if has_qw:
                weight[i] = F32(qw[o + i] * F32(np.sqrt(F32(sigma2 + F32(xi * xi)))))
            elif kind == IQ2_S:
                weight[i] = F32(F32(F32(0.25) * sigma2) + F32(xi * xi))
            else:
                weight[i] = F32(xi * xi)
        for i in range(bs):
            waux[i] = F32(np.sqrt(weight[i]))
        for k in range(bs // 8):
            nflip = 0
            s = 0
            for i in range(8):
                xi = x[o + 8 * k + i]
                if xi >= 0:
                    xval[8 * k + i] = xi
                else:
                    xval[8 * k + i] = -xi
                    nflip += 1
                    s |= 1 << i
            if parity:
                if nflip % 2:
                    imin = 0
                    xi = x[o + 8 * k]
                    mn = F32(F32(weight[8 * k] * xi) * xi)
                    for i in range(1, 8):
                        xi = x[o + 8 * k + i]
                        ax = F32(F32(weight[8 * k + i] * xi) * xi)
                        if ax < mn:
                            mn = ax
                            imin = i
                    xval[8 * k + imin] = -xval[8 * k + imin]
                    s ^= 1 << imin
                s &= 127
            signs[k] = s
        mx = xval[0]
        for i in range(1, bs):
            mx = _max(mx, xval[i])
        for i in range(bs):
            L[i] = 0
        if (kind == IQ3_S and mx == 0) or (kind != IQ3_S and mx < _EPS[kind]):
            scales[ib] = F32(0.0)
            continue
        best = F32(0.0)
        if kind == IQ2_XXS:
            scale = nb_make_qp_quants(32, kmaxq + 1, xval, Lq, weight)
            for i in range(32):
                L[i] = ((Lq[i] + 128) & 0xFF) - 128  # C stores make_qp_quants' uint8 in int8
            denom = F32(scale * F32(kmaxq))  # eff_max
            if denom <= 0:
                scales[ib] = F32(0.0)
                continue
        else:
            scale = F32(mx / F32(2 * kmaxq - 1))
            denom = mx
        for k in range(ngs):
            ongrid[k] = kind != IQ3_S
        step = _STEP[kind]
        for is_ in range(_IS_LO[kind], -_IS_LO[kind] + 1):
            id_ = F32(F32(F32(2 * kmaxq - 1) + F32(F32(is_) * step)) / denom)
            this_scale = F32(F32(1.0) / id_)
            for k in range(ngs):
                u = _snap(id_, xval, Laux, gs * k, gs, bits, kmaxq)
                ongrid_aux[k] = 1
                if kmap[u] < 0:
                    ongrid_aux[k] = 0
                    gi = _iq23_neighbour(
                        u, kmap, neigh, kblk, nbg, xval, gs * k, waux, this_scale, Laux, gs, acc
                    )
                    if gi < 0:
                        return ERR_NO_NEIGHBOUR
            sumqx, sumq2 = _refit(bs, weight, xval, Laux)
            if sumq2 > 0 and F32(sumqx * sumqx) > F32(best * sumq2):
                scale = F32(sumqx / sumq2)
                best = F32(scale * sumqx)
                for i in range(bs):
                    L[i] = Laux[i]
                for k in range(ngs):
                    ongrid[k] = ongrid_aux[k]
        n_off = 0
        for k in range(ngs):
            if not ongrid[k]:
                n_off += 1
        if scale > 0 and (kind == IQ2_XXS or n_off > 0):
            id_ = F32(F32(1.0) / scale)
            for k in range(ngs):
                if ongrid[k] and kind != IQ2_XXS and kind != IQ3_S:
                    continue
                u = _snap(id_, xval, L, gs * k, gs, bits, kmaxq)
                if kmap[u] < 0:
                    gi = _iq23_neighbour(u, kmap, neigh, kblk, nbg, xval, gs * k, waux, scale, L, gs, acc)
                    if gi < 0:
                        return ERR_NO_NEIGHBOUR
            sumqx, sumq2 = _refit(bs, weight, xval, L)
            if sumq2 > 0:
                scale = F32(sumqx / sumq2)
        if scale < 0:
            scale = -scale
            for k in range(bs // 8):
                signs[k] = (~signs[k]) & (127 if parity else 255)
        for k in range(ngs):
            u = 0
            for i in range(gs):
                u |= np.int64(L[gs * k + i]) << (bits * i)
            if u < 0 or u >= kmap.shape[0] or kmap[u] < 0:
                return ERR_OFF_GRID
            gidx[k] = kmap[u]
        # pack this sub-block
        if kind == IQ2_XXS:
            aux = 0
            for k in range(4):
                y[2 + 8 * ib + k] = np.uint8(gidx[k])
                aux |= signs[k] << (7 * k)
            for b in range(4):
                y[6 + 8 * ib + b] = np.uint8((aux >> (8 * b)) & 0xFF)
        elif kind == IQ2_XS:
            for k in range(2):
                _put_u16(y, 2 + 2 * (2 * ib + k), gidx[k] | (signs[k] << 9))
        elif kind == IQ2_S:
            for k in range(2):
                i8 = 2 * ib + k
                y[2 + i8] = np.uint8(gidx[k] & 255)
                y[66 + i8 // 4] |= np.uint8((gidx[k] >> 8) << (2 * (i8 % 4)))
                y[34 + i8] = np.uint8(signs[k])
        elif kind == IQ3_XXS:
            aux = signs[0] | (signs[1] << 7) | (signs[2] << 14) | (signs[3] << 21)
            for k in range(8):
                y[2 + 8 * ib + k] = np.uint8(gidx[k])
            for b in range(4):
                y[66 + 4 * ib + b] = np.uint8((aux >> (8 * b)) & 0xFF)
        else:
            for k in range(8):
                y[qpos + k] = np.uint8(gidx[k] & 255)
                y[66 + ib] |= np.uint8((gidx[k] >> 8) << k)
            qpos += 8
            for k in range(4):
                y[spos + k] = np.uint8(signs[k])
            spos += 4
        if not scale >= 0:
            return ERR_SCALE
        scales[ib] = scale
        max_scale = _max(max_scale, scale)

    if not max_scale:
        if kind in (IQ2_XXS, IQ2_XS, IQ3_XXS):
            for i in range(y.shape[0]):  # C quantizes into a local buffer, copied only here
                y[i] = 0
        return 0
    d = F32(max_scale / F32(31.0))
    _put_u16(y, 0, fp32_to_fp16_bits(F32(d * _FUDGE[kind])))
    id_ = F32(F32(1.0) / d)
    for ib in range(QK_K // bs):
        l = nearest_int(F32(F32(0.5) * F32(F32(id_ * scales[ib]) - F32(1.0))))
        l = max(0, min(15, l))
        if kind == IQ2_XXS:
            y[6 + 8 * ib + 3] |= np.uint8(l << 4)
        elif kind in (IQ2_XS, IQ2_S):
            y[(66 if kind == IQ2_XS else 74) + ib // 2] |= np.uint8(l << (4 * (ib % 2)))
        elif kind == IQ3_XXS:
            y[66 + 4 * ib + 3] |= np.uint8(l << 4)
        else:
            y[106 + ib // 2] |= np.uint8(l << (4 * (ib % 2)))
    return 0


# ============================================================================ IQ1_S / IQ1_M

IQ1_DELTA = F32(0.125)
X_P = np.array([F32(-1.0) + IQ1_DELTA, IQ1_DELTA, F32(1.0) + IQ1_DELTA], dtype=np.float32)
X_M = np.array([F32(-1.0) - IQ1_DELTA, -IQ1_DELTA, F32(1.0) - IQ1_DELTA], dtype=np.float32)


@njit(**_JIT)
def _stable_argsort(v, o, n, idx):
    """idx[:n] = the stable ascending order of v[o:o+n] (glibc's qsort is a stable merge sort here)."""
    for j in range(n):
        idx[j] = j
    for j in range(1, n):
        t = idx[j]
        xv = v[o + t]
        p = j - 1
        while p >= 0 and v[o + idx[p]] > xv:
            idx[p + 1] = idx[p]
            p -= 1
        idx[p + 1] = t


@njit(**_JIT)
def _iq1_neighbour(u, kmap, neigh, kblk, nbg, grid, xflat, base, weight, wo, scale, xx, L, lo, acc):
    """iq1_find_best_neighbour2 for the off-grid point ``u``; writes L[lo:lo+8]; -1 when none wins.

    The listed candidates are scored 8 per lane as in :func:`_iq23_neighbour`, with
    ``q = xx[(g - 1) / 2] = g * 0.5 + (xx[0] - 0.5)`` (exact: quarter-integers).
    """
    off = -np.int64(kmap[u]) - 1
    n = np.int64(neigh[off])
    b0 = np.int64(kblk[u])
    best = FLT_MAX
    gi = -1
    qb = F32(xx[0] - F32(0.5))
    for b in range((n + 7) >> 3):
        score8(nbg, (b0 + b) * 64, xflat, base, weight, wo, 8, scale, F32(0.5), qb, acc)
        for jj in range(min(8, n - 8 * b)):
            if acc[jj] < best:
                best = acc[jj]
                gi = np.int64(neigh[off + 1 + 8 * b + jj])
    if gi < 0:
        # C's fallback scans the whole grid and reads xval[i] with i the grid index (past the 8
        # values, into the rest of the input): reproduced while that stays inside the input.
        for i in range(grid.shape[0]):
            if base + i >= xflat.shape[0]:
                return -1
            d2 = F32(0.0)
            for j in range(8):
                q = xx[(np.int64(grid[i, j]) - 1) // 2]
                diff = F32(F32(scale * q) - xflat[base + i])
                d2 = F32(d2 + F32(F32(weight[wo + j] * diff) * diff))
            if d2 < best:
                best = d2
                gi = i
    if gi >= 0:
        for i in range(8):
            L[lo + i] = (np.int64(grid[gi, i]) - 1) // 2
    return gi


@njit(**_JIT)
def _iq1_weights(x, o, n, qw, has_qw, sigma2, weight):
    for i in range(n):
        xi = x[o + i]
        if has_qw:
            weight[i] = F32(qw[o + i] * F32(np.sqrt(F32(sigma2 + F32(xi * xi)))))
        else:
            weight[i] = F32(xi * xi)


@njit(**_JIT)
def _iq1_sigma2(x):
    sumx2 = F32(0.0)
    for i in range(QK_K):
        sumx2 = F32(sumx2 + F32(x[i] * x[i]))
    return F32(F32(F32(2.0) * sumx2) / F32(QK_K))


@njit(**_JIT)
def iq1s_block(
    xflat, xo, qw, y, grid, kmap, neigh, kblk, nbg, weight, sumx, sumw, idx, L, scales, shifts, acc
):
    """One IQ1_S super-block (input xflat[xo:xo+256]) into y (zeroed); 0 or an error code."""
    x = xflat[xo : xo + QK_K]
    bs = 32
    sigma2 = _iq1_sigma2(x)
    index = np.zeros(4, np.int64)
    max_scale = F32(0.0)
    for ib in range(QK_K // bs):
        o = bs * ib
        _iq1_weights(x, o, bs, qw, True, sigma2, weight)
        mx = abs(x[o])
        for i in range(1, bs):
            mx = _max(mx, abs(x[o + i]))
        if mx < F32(1e-12):
            scales[ib] = F32(0.0)
            shifts[ib] = 1
            continue
        _stable_argsort(x, o, bs, idx)
        sumx[0] = F32(0.0)
        sumw[0] = F32(0.0)
        for j in range(bs):
            i = idx[j]
            sumx[j + 1] = F32(sumx[j] + F32(weight[i] * x[o + i]))
            sumw[j + 1] = F32(sumw[j] + weight[i])
        best_score = -FLT_MAX
        scale = mx
        besti1 = -1
        besti2 = -1
        best_shift = 0
        for i1 in range(bs + 1):
            for i2 in range(i1, bs + 1):
                a = F32(sumx[i1] - sumx[0])
                b = F32(sumx[i2] - sumx[i1])
                c = F32(sumx[bs] - sumx[i2])
                wa = F32(sumw[i1] - sumw[0])
                wb = F32(sumw[i2] - sumw[i1])
                wc = F32(sumw[bs] - sumw[i2])
                for sgn in range(2):
                    xs = X_P if sgn == 0 else X_M
                    sumqx = F32(F32(F32(a * xs[0]) + F32(b * xs[1])) + F32(c * xs[2]))
                    sumq2 = F32(
                        F32(F32(F32(wa * xs[0]) * xs[0]) + F32(F32(wb * xs[1]) * xs[1]))
                        + F32(F32(wc * xs[2]) * xs[2])
                    )
                    if sumq2 > 0 and F32(sumqx * sumqx) > F32(best_score * sumq2):
                        scale = F32(sumqx / sumq2)
                        best_score = F32(scale * sumqx)
                        besti1 = i1
                        besti2 = i2
                        best_shift = 1 if sgn == 0 else -1
        if besti1 < 0 or besti2 < 0 or best_shift == 0:
            scales[ib] = F32(0.0)
            shifts[ib] = 1
            continue
        for j in range(bs):
            L[idx[j]] = 0 if j < besti1 else (1 if j < besti2 else 2)
        if scale < 0:
            for j in range(bs):
                L[j] = 2 - L[j]
            scale = -scale
            best_shift = -best_shift
        xx = X_P if best_shift == 1 else X_M
        all_on_grid = True
        for k in range(bs // 8):
            u = 0
            for j in range(8):
                u |= np.int64(L[8 * k + j]) << (2 * j)
            gi = np.int64(kmap[u])
            if gi < 0:
                all_on_grid = False
                gi = _iq1_neighbour(
                    u, kmap, neigh, kblk, nbg, grid, xflat, xo + o + 8 * k, weight, 8 * k, scale, xx, L,
                    8 * k, acc,
                )  # fmt: skip
                if gi < 0:
                    return ERR_NO_NEIGHBOUR
            index[k] = gi
        if not all_on_grid:
            sumqx = F32(0.0)
            sumq2 = F32(0.0)
            for k in range(bs // 8):
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[(np.int64(grid[index[k], j]) - 1) // 2]
                    sumqx = F32(sumqx + F32(F32(w * q) * x[o + 8 * k + j]))
                    sumq2 = F32(sumq2 + F32(F32(w * q) * q))
            if sumqx > 0 and sumq2 > 0:
                scale = F32(sumqx / sumq2)
        h = 0
        for k in range(bs // 8):
            y[2 + 4 * ib + k] = np.uint8(index[k] & 255)
            h |= (index[k] >> 8) << (3 * k)
        _put_u16(y, 34 + 2 * ib, h)
        if not scale >= 0:
            return ERR_SCALE
        scales[ib] = scale
        shifts[ib] = best_shift
        max_scale = _max(max_scale, scale)

    if not max_scale:
        return 0
    d = F32(max_scale / F32(15.0))
    _put_u16(y, 0, fp32_to_fp16_bits(F32(d * F32(1.125))))
    id_ = F32(F32(1.0) / d)
    for ib in range(QK_K // bs):
        l = nearest_int(F32(F32(0.5) * F32(F32(id_ * scales[ib]) - F32(1.0))))
        l = max(0, min(7, l))
        if shifts[ib] == -1:
            l |= 8
        y[34 + 2 * ib + 1] |= np.uint8(l << 4)
    return 0


@njit(**_JIT)
def iq1m_block(
    xflat, xo, qw, has_qw, y, grid, kmap, neigh, kblk, nbg, weight, px, pw, idx, L, scales, shifts, acc
):
    """One IQ1_M super-block (input xflat[xo:xo+256]) into y (zeroed); 0 or an error code."""
    x = xflat[xo : xo + QK_K]
    bs = 16
    sigma2 = _iq1_sigma2(x)
    index = np.zeros(2, np.int64)
    sumqx = np.zeros(4, np.float32)
    sumq2 = np.zeros(4, np.float32)
    p2 = X_P[2]
    m2 = X_M[2]
    cp1 = F32(F32(X_P[0] * X_P[0]) - F32(X_P[1] * X_P[1]))
    cp2 = F32(F32(X_P[1] * X_P[1]) - F32(X_P[2] * X_P[2]))
    cm1 = F32(F32(X_M[0] * X_M[0]) - F32(X_M[1] * X_M[1]))
    cm2 = F32(F32(X_M[1] * X_M[1]) - F32(X_M[2] * X_M[2]))
    max_scale = F32(0.0)
    for ib in range(QK_K // bs):
        o = bs * ib
        _iq1_weights(x, o, bs, qw, has_qw, sigma2, weight)
        mx = abs(x[o])
        for i in range(1, bs):
            mx = _max(mx, abs(x[o + i]))
        if mx < F32(1e-7):
            scales[ib] = F32(0.0)
            shifts[ib] = 0
            continue
        _stable_argsort(x, o, bs, idx)
        best_score = -FLT_MAX
        scale = mx
        besti1 = -1
        besti2 = -1
        best_k = -1
        px[0, 0] = F32(0.0)
        px[1, 0] = F32(0.0)
        pw[0, 0] = F32(0.0)
        pw[1, 0] = F32(0.0)
        for j in range(bs):
            i = idx[j]
            h = 0 if i < bs // 2 else 1
            px[h, j + 1] = F32(px[h, j] + F32(weight[i] * x[o + i]))
            px[1 - h, j + 1] = px[1 - h, j]
            pw[h, j + 1] = F32(pw[h, j] + weight[i])
            pw[1 - h, j + 1] = pw[1 - h, j]
        tx0 = px[0, bs]
        tx1 = px[1, bs]
        tw0 = pw[0, bs]
        tw1 = pw[1, bs]
        for i1 in range(bs + 1):
            for i2 in range(i1, bs + 1):
                sx0 = F32(px[0, i1] + px[0, i2])
                sx1 = F32(px[1, i1] + px[1, i2])
                qxp0 = F32(F32(tx0 * p2) - sx0)
                qxm0 = F32(F32(tx0 * m2) - sx0)
                qxp1 = F32(F32(tx1 * p2) - sx1)
                qxm1 = F32(F32(tx1 * m2) - sx1)
                q2p0 = F32(F32(F32(F32(tw0 * p2) * p2) + F32(pw[0, i1] * cp1)) + F32(pw[0, i2] * cp2))
                q2m0 = F32(F32(F32(F32(tw0 * m2) * m2) + F32(pw[0, i1] * cm1)) + F32(pw[0, i2] * cm2))
                q2p1 = F32(F32(F32(F32(tw1 * p2) * p2) + F32(pw[1, i1] * cp1)) + F32(pw[1, i2] * cp2))
                q2m1 = F32(F32(F32(F32(tw1 * m2) * m2) + F32(pw[1, i1] * cm1)) + F32(pw[1, i2] * cm2))
                sumqx[0] = F32(qxp0 + qxp1)
                sumqx[1] = F32(qxp0 + qxm1)
                sumqx[2] = F32(qxm0 + qxp1)
                sumqx[3] = F32(qxm0 + qxm1)
                sumq2[0] = F32(q2p0 + q2p1)
                sumq2[1] = F32(q2p0 + q2m1)
                sumq2[2] = F32(q2m0 + q2p1)
                sumq2[3] = F32(q2m0 + q2m1)
                for k in range(4):
                    if sumq2[k] > 0 and F32(sumqx[k] * sumqx[k]) > F32(best_score * sumq2[k]):
                        scale = F32(sumqx[k] / sumq2[k])
                        best_score = F32(scale * sumqx[k])
                        besti1 = i1
                        besti2 = i2
                        best_k = k
        if besti1 < 0 or besti2 < 0 or best_k < 0:
            scales[ib] = F32(0.0)
            shifts[ib] = 0
            continue
        for j in range(bs):
            L[idx[j]] = 0 if j < besti1 else (1 if j < besti2 else 2)
        if scale < 0:
            for j in range(bs):
                L[j] = 2 - L[j]
            scale = -scale
            best_k = 3 - best_k
        all_on_grid = True
        for k in range(2):
            xx = (X_P if best_k < 2 else X_M) if k == 0 else (X_P if best_k % 2 == 0 else X_M)
            u = 0
            for j in range(8):
                u |= np.int64(L[8 * k + j]) << (2 * j)
            gi = np.int64(kmap[u])
            if gi < 0:
                all_on_grid = False
                gi = _iq1_neighbour(
                    u, kmap, neigh, kblk, nbg, grid, xflat, xo + o + 8 * k, weight, 8 * k, scale, xx, L,
                    8 * k, acc,
                )  # fmt: skip
                if gi < 0:
                    return ERR_NO_NEIGHBOUR
            index[k] = gi
        if not all_on_grid:
            sqx = F32(0.0)
            sq2 = F32(0.0)
            for k in range(2):
                xx = (X_P if best_k < 2 else X_M) if k == 0 else (X_P if best_k % 2 == 0 else X_M)
                for j in range(8):
                    w = weight[8 * k + j]
                    q = xx[(np.int64(grid[index[k], j]) - 1) // 2]
                    sqx = F32(sqx + F32(F32(w * q) * x[o + 8 * k + j]))
                    sq2 = F32(sq2 + F32(F32(w * q) * q))
            if sqx > 0 and sq2 > 0:
                scale = F32(sqx / sq2)
        y[2 * ib] = np.uint8(index[0] & 255)
        y[2 * ib + 1] = np.uint8(index[1] & 255)
        y[32 + ib] = np.uint8((index[0] >> 8) | ((index[1] >> 8) << 4))
        if not scale >= 0:
            return ERR_SCALE
        scales[ib] = scale
        shifts[ib] = best_k
        max_scale = _max(max_scale, scale)

    if not max_scale:
        return 0
    sc = np.zeros(4, np.int64)
    d = F32(max_scale / F32(15.0))
    id_ = F32(F32(1.0) / d)
    sqx = F32(0.0)
    sq2 = F32(0.0)
    for ib in range(QK_K // bs):
        o = bs * ib
        l = nearest_int(F32(F32(0.5) * F32(F32(id_ * scales[ib]) - F32(1.0))))
        l = max(0, min(7, l))
        sc[ib // 4] |= l << (3 * (ib % 4))
        sh = shifts[ib]
        y[32 + ib] |= np.uint8(0x80 if sh == 1 else (0x08 if sh == 2 else (0x88 if sh == 3 else 0)))
        _iq1_weights(x, o, bs, qw, has_qw, sigma2, weight)
        qh = np.int64(y[32 + ib])
        fl = F32(2 * l + 1)
        for k in range(2):
            xx = (X_P if sh < 2 else X_M) if k == 0 else (X_P if sh % 2 == 0 else X_M)
            gi = np.int64(y[2 * ib + k]) + ((qh << (8 - 4 * k)) & 0x700)
            for j in range(8):
                w = weight[8 * k + j]
                q = F32(xx[(np.int64(grid[gi, j]) - 1) // 2] * fl)
                sqx = F32(sqx + F32(F32(w * q) * x[o + 8 * k + j]))
                sq2 = F32(sq2 + F32(F32(w * q) * q))
    if sq2 > 0:
        d = F32(sqx / sq2)
    s = np.int64(fp32_to_fp16_bits(F32(d * F32(1.1125))))
    sc[0] |= (s & 0x000F) << 12
    sc[1] |= (s & 0x00F0) << 8
    sc[2] |= (s & 0x0F00) << 4
    sc[3] |= s & 0xF000
    for i in range(4):
        _put_u16(y, 48 + 2 * i, sc[i])
    return 0
