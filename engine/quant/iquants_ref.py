# ruff: noqa: E741  (`l` as in ggml-quants.c)
"""NumPy reference implementations of the grid IQ quantizers (slow; for tests on small inputs).

Written independently of the Numba kernels in :mod:`engine.quant.iquants_search`, straight from
ggml-quants.c, one sub-block at a time: element-wise steps are NumPy float32 vector operations
(identical rounding to C's scalar float math), C's sequential float sums are ``np.cumsum`` (NumPy's
accumulate is strictly left to right), the neighbour searches evaluate every neighbour at once and
take the first strict minimum, and the scale searches scan candidates in C's order.  Both must give
the same bytes; ``tests/test_quant_iquants.py`` holds them equal.
"""

from __future__ import annotations

import numpy as np

from engine.errors import QuantError
from engine.quant.iq_tables import quant_tables
from engine.quant.kquants_search import np_make_qp_quants, np_nearest_int

F32 = np.float32
QK_K = 256
FLT_MAX = F32(3.4028234663852886e38)
TYPE_SIZE = {"IQ2_XXS": 66, "IQ2_XS": 74, "IQ2_S": 82, "IQ3_XXS": 98, "IQ3_S": 110, "IQ1_S": 50, "IQ1_M": 56}


class _Abort(Exception):
    pass


def _ssum(a: np.ndarray) -> F32:
    """C's ``s = 0; for (...) s += a[i];`` in float32."""
    return F32(np.cumsum(a.astype(F32), dtype=F32)[-1]) if a.size else F32(0.0)


def _nint(v) -> int:
    return int(np_nearest_int(np.asarray([v], dtype=F32))[0])


def _f16_bytes(v: F32) -> bytes:
    return np.array([v], dtype=F32).astype(np.float16).tobytes()


def _neighbours(t, u: int) -> np.ndarray:
    off = -int(t.kmap[u]) - 1
    n = int(t.neighbours[off])
    return t.neighbours[off + 1 : off + 1 + n].astype(np.int64)


def _first_min(d2: np.ndarray) -> int:
    """Index of the first strict minimum below FLT_MAX (C: if (d2 < best) ...), or -1."""
    d2 = np.where(np.isnan(d2), np.inf, d2)
    j = int(np.argmin(d2))
    return j if d2[j] < FLT_MAX else -1


# ----------------------------------------------------------------------------- IQ2_* / IQ3_*

_IQ23 = {
    # bs, gs, bits, kmaxq, is range, step, eps (None: max == 0), fudge, parity signs
    "IQ2_XXS": (32, 8, 2, 3, range(-6, 7), F32(0.1), F32(1e-15), F32(1.0), True),
    "IQ2_XS": (16, 8, 2, 3, range(-9, 10), F32(0.1), F32(1e-15), F32(1.0), True),
    "IQ2_S": (16, 8, 2, 3, range(-9, 10), F32(0.1), F32(1e-8), F32(0.9875), False),
    "IQ3_XXS": (32, 4, 3, 8, range(-15, 16), F32(0.2), F32(1e-8), F32(1.0125), True),
    "IQ3_S": (32, 4, 3, 8, range(-9, 10), F32(0.2), None, F32(1.033), False),
}


def _iq23_snap(t, xval, waux, scale, id_, L, bits, kmaxq, gs, k):
    """Levels of group k at inverse scale id_, snapped onto the grid; returns (on_grid, index)."""
    sl = slice(gs * k, gs * (k + 1))
    l = np.clip(np_nearest_int(F32(0.5) * ((id_ * xval[sl]).astype(F32) - F32(1))), 0, kmaxq - 1)
    L[sl] = l
    u = int((l << (bits * np.arange(gs))).sum())
    gi = int(t.kmap[u])
    if gi >= 0:
        return True, gi
    nb = _neighbours(t, u)
    q = t.grid[nb].astype(F32)  # (n, gs)
    diff = (scale * q).astype(F32) - xval[sl]
    d2 = np.cumsum((waux[sl] * diff).astype(F32) * diff, axis=1, dtype=F32)[:, -1]
    j = _first_min(d2)
    if j < 0:
        raise _Abort("no neighbour")
    gi = int(nb[j])
    L[sl] = (t.grid[gi].astype(np.int64) - 1) // 2
    return False, gi


def _iq23_refit(weight, xval, L):
    q = (2 * L + 1).astype(F32)
    return _ssum((weight * xval).astype(F32) * q), _ssum((weight * q).astype(F32) * q)


def _iq23_superblock(name, t, x, qw) -> bytes:
    bs, gs, bits, kmaxq, trials, step, eps, fudge, parity = _IQ23[name]
    ngs = bs // gs
    sumx2 = _ssum(x * x)
    sigma2 = F32(sumx2 / F32(QK_K)) if name in ("IQ2_XXS", "IQ2_XS") else F32(F32(2) * sumx2 / F32(QK_K))
    nsub = QK_K // bs
    scales = np.zeros(nsub, F32)
    sub_idx: list = [None] * nsub
    sub_signs: list = [None] * nsub
    for ib in range(nsub):
        xb = x[bs * ib : bs * (ib + 1)]
        if qw is not None:
            weight = (qw[bs * ib : bs * (ib + 1)] * np.sqrt((sigma2 + xb * xb).astype(F32))).astype(F32)
        elif name == "IQ2_S":
            weight = (F32(0.25) * sigma2 + xb * xb).astype(F32)
        else:
            weight = (xb * xb).astype(F32)
        waux = np.sqrt(weight).astype(F32)
        xval = np.abs(xb).astype(F32)
        signs = []
        for k in range(bs // 8):
            neg = xb[8 * k : 8 * k + 8] < 0
            s = int((neg.astype(np.int64) << np.arange(8)).sum())
            if parity:
                if neg.sum() % 2:
                    xs = xb[8 * k : 8 * k + 8]
                    ax = ((weight[8 * k : 8 * k + 8] * xs).astype(F32) * xs).astype(F32)
                    imin = int(np.argmin(ax))  # first minimum == C's strict '<' scan
                    xval[8 * k + imin] = -xval[8 * k + imin]
                    s ^= 1 << imin
                s &= 127
            signs.append(s)
        mx = xval[0]
        for v in xval[1:]:
            mx = mx if mx > v else v
        L = np.zeros(bs, np.int64)
        if (eps is None and mx == 0) or (eps is not None and mx < eps):
            continue
        best = F32(0.0)
        if name == "IQ2_XXS":
            sc, Lq = np_make_qp_quants(kmaxq + 1, xval[None, :], weight[None, :])
            scale = F32(sc[0])
            L = ((Lq[0].astype(np.int64) + 128) & 0xFF) - 128
            denom = F32(scale * F32(kmaxq))
            if denom <= 0:
                continue
        else:
            scale = F32(mx / F32(2 * kmaxq - 1))
            denom = mx
        ongrid = [name != "IQ3_S"] * ngs
        for is_ in trials:
            id_ = F32(F32(F32(2 * kmaxq - 1) + F32(F32(is_) * step)) / denom)
            this_scale = F32(F32(1) / id_)
            Laux = np.zeros(bs, np.int64)
            aux = [
                _iq23_snap(t, xval, waux, this_scale, id_, Laux, bits, kmaxq, gs, k)[0] for k in range(ngs)
            ]
            sumqx, sumq2 = _iq23_refit(weight, xval, Laux)
            if sumq2 > 0 and F32(sumqx * sumqx) > F32(best * sumq2):
                scale = F32(sumqx / sumq2)
                best = F32(scale * sumqx)
                L = Laux
                ongrid = aux
        if scale > 0 and (name == "IQ2_XXS" or not all(ongrid)):
            id_ = F32(F32(1) / scale)
            L = L.copy()
            for k in range(ngs):
                if ongrid[k] and name not in ("IQ2_XXS", "IQ3_S"):
                    continue
                _iq23_snap(t, xval, waux, scale, id_, L, bits, kmaxq, gs, k)
            sumqx, sumq2 = _iq23_refit(weight, xval, L)
            if sumq2 > 0:
                scale = F32(sumqx / sumq2)
        if scale < 0:
            scale = -scale
            signs = [(~s) & (127 if parity else 255) for s in signs]
        idx = []
        for k in range(ngs):
            lk = L[gs * k : gs * (k + 1)]
            u = int((lk << (bits * np.arange(gs))).sum())
            if lk.min() < 0 or u >= t.kmap.size or t.kmap[u] < 0:
                raise _Abort("off grid")
            idx.append(int(t.kmap[u]))
        if not scale >= 0:
            raise _Abort("scale")
        scales[ib] = scale
        sub_idx[ib] = idx
        sub_signs[ib] = signs
    max_scale = F32(0.0)
    for ib in range(nsub):  # MAX() over the sub-blocks in order (same as the running max in C)
        if sub_idx[ib] is not None:
            max_scale = max_scale if max_scale > scales[ib] else scales[ib]
    return _iq23_pack(name, sub_idx, sub_signs, scales, max_scale, fudge)


def _iq23_pack(name, sub_idx, sub_signs, scales, max_scale, fudge) -> bytes:
    y = np.zeros(TYPE_SIZE[name], np.uint8)
    if not max_scale and name in ("IQ2_XXS", "IQ2_XS", "IQ3_XXS"):
        return y.tobytes()
    ls = np.zeros(len(scales), np.int64)
    if max_scale:
        d = F32(max_scale / F32(31))
        y[0:2] = np.frombuffer(_f16_bytes(F32(d * fudge)), np.uint8)
        id_ = F32(F32(1) / d)
        ls = np.clip(np_nearest_int(F32(0.5) * ((id_ * scales).astype(F32) - F32(1))), 0, 15)
    qpos = 0
    for ib, idx in enumerate(sub_idx):
        if idx is None:
            if name == "IQ2_XXS":
                y[6 + 8 * ib + 3] |= ls[ib] << 4
            elif name == "IQ3_XXS":
                y[66 + 4 * ib + 3] |= ls[ib] << 4
            continue
        sg = sub_signs[ib]
        if name in ("IQ2_XXS", "IQ3_XXS"):
            aux = sg[0] | (sg[1] << 7) | (sg[2] << 14) | (sg[3] << 21) | (int(ls[ib]) << 28)
            base = 2 + 8 * ib
            y[base : base + len(idx)] = idx
            so = 6 + 8 * ib if name == "IQ2_XXS" else 66 + 4 * ib
            y[so : so + 4] = np.frombuffer(np.uint32(aux).tobytes(), np.uint8)
        elif name == "IQ2_XS":
            for k in range(2):
                v = idx[k] | (sg[k] << 9)
                y[2 + 2 * (2 * ib + k) : 4 + 2 * (2 * ib + k)] = (v & 255, v >> 8)
        elif name == "IQ2_S":
            for k in range(2):
                i8 = 2 * ib + k
                y[2 + i8] = idx[k] & 255
                y[66 + i8 // 4] |= (idx[k] >> 8) << (2 * (i8 % 4))
                y[34 + i8] = sg[k]
        else:  # IQ3_S: qs / signs are written at running positions that skip empty sub-blocks
            for k in range(8):
                y[2 + 8 * qpos + k] = idx[k] & 255
                y[66 + ib] |= (idx[k] >> 8) << k
            y[74 + 4 * qpos : 78 + 4 * qpos] = sg
            qpos += 1
    if max_scale:
        for ib in range(len(scales)):
            if name in ("IQ2_XS", "IQ2_S"):
                y[(66 if name == "IQ2_XS" else 74) + ib // 2] |= ls[ib] << (4 * (ib % 2))
            elif name == "IQ3_S":
                y[106 + ib // 2] |= ls[ib] << (4 * (ib % 2))
    return y.tobytes()


# ----------------------------------------------------------------------------- IQ1_S / IQ1_M

DELTA = F32(0.125)
X_P = np.array([F32(-1) + DELTA, DELTA, F32(1) + DELTA], dtype=F32)
X_M = np.array([F32(-1) - DELTA, -DELTA, F32(1) - DELTA], dtype=F32)


def _iq1_snap(t, L, k, xflat, base, weight, scale, xx):
    """kmap lookup of group k, else iq1_find_best_neighbour2; returns (on_grid, index)."""
    lk = L[8 * k : 8 * k + 8]
    u = int((lk << (2 * np.arange(8))).sum())
    gi = int(t.kmap[u])
    if gi >= 0:
        return True, gi
    nb = _neighbours(t, u)
    w = weight[8 * k : 8 * k + 8]
    q = xx[(t.grid[nb].astype(np.int64) - 1) // 2]
    diff = (scale * q).astype(F32) - xflat[base : base + 8]
    j = _first_min(np.cumsum((w * diff).astype(F32) * diff, axis=1, dtype=F32)[:, -1])
    if j >= 0:
        gi = int(nb[j])
    else:  # C's fallback reads xval[i] with i the grid index (see iquants_search._iq1_neighbour)
        ng = t.grid.shape[0]
        if base + ng > xflat.size:
            raise _Abort("no neighbour")
        q = xx[(t.grid.astype(np.int64) - 1) // 2]
        diff = (scale * q).astype(F32) - xflat[base : base + ng][:, None]
        j = _first_min(np.cumsum((w * diff).astype(F32) * diff, axis=1, dtype=F32)[:, -1])
        if j < 0:
            raise _Abort("no neighbour")
        gi = j
    L[8 * k : 8 * k + 8] = (t.grid[gi].astype(np.int64) - 1) // 2
    return False, gi


def _split_search(sumx, sumw, bs):
    """IQ1_S's exhaustive (i1, i2, shift) search in C's order."""
    best_score, scale, best = -FLT_MAX, None, None
    for i1 in range(bs + 1):
        for i2 in range(i1, bs + 1):
            a, b, c = F32(sumx[i1] - sumx[0]), F32(sumx[i2] - sumx[i1]), F32(sumx[bs] - sumx[i2])
            wa, wb, wc = F32(sumw[i1] - sumw[0]), F32(sumw[i2] - sumw[i1]), F32(sumw[bs] - sumw[i2])
            for shift, xs in ((1, X_P), (-1, X_M)):
                sumqx = F32(F32(a * xs[0]) + F32(b * xs[1])) + F32(c * xs[2])
                sumq2 = F32(F32(F32(wa * xs[0]) * xs[0]) + F32(F32(wb * xs[1]) * xs[1])) + F32(
                    F32(wc * xs[2]) * xs[2]
                )
                if sumq2 > 0 and F32(sumqx * sumqx) > F32(best_score * sumq2):
                    scale = F32(sumqx / sumq2)
                    best_score = F32(scale * sumqx)
                    best = (i1, i2, shift)
    return scale, best


def _split_search_m(px, pw, bs):
    """IQ1_M's search over (i1, i2, sign pair) with the per-half prefix sums, in C's order."""
    p2, m2 = X_P[2], X_M[2]
    cp1 = F32(F32(X_P[0] * X_P[0]) - F32(X_P[1] * X_P[1]))
    cp2 = F32(F32(X_P[1] * X_P[1]) - F32(X_P[2] * X_P[2]))
    cm1 = F32(F32(X_M[0] * X_M[0]) - F32(X_M[1] * X_M[1]))
    cm2 = F32(F32(X_M[1] * X_M[1]) - F32(X_M[2] * X_M[2]))
    best_score, scale, best = -FLT_MAX, None, None
    for i1 in range(bs + 1):
        for i2 in range(i1, bs + 1):
            qx_p, qx_m, q2_p, q2_m = [], [], [], []
            for h in range(2):
                sx = F32(px[h][i1] + px[h][i2])
                qx_p.append(F32(F32(px[h][bs] * p2) - sx))
                qx_m.append(F32(F32(px[h][bs] * m2) - sx))
                q2_p.append(
                    F32(F32(F32(F32(pw[h][bs] * p2) * p2) + F32(pw[h][i1] * cp1)) + F32(pw[h][i2] * cp2))
                )
                q2_m.append(
                    F32(F32(F32(F32(pw[h][bs] * m2) * m2) + F32(pw[h][i1] * cm1)) + F32(pw[h][i2] * cm2))
                )
            sqx = (qx_p[0] + qx_p[1], qx_p[0] + qx_m[1], qx_m[0] + qx_p[1], qx_m[0] + qx_m[1])
            sq2 = (q2_p[0] + q2_p[1], q2_p[0] + q2_m[1], q2_m[0] + q2_p[1], q2_m[0] + q2_m[1])
            for k in range(4):
                if sq2[k] > 0 and F32(sqx[k] * sqx[k]) > F32(best_score * sq2[k]):
                    scale = F32(sqx[k] / sq2[k])
                    best_score = F32(scale * sqx[k])
                    best = (i1, i2, k)
    return scale, best


def _iq1_superblock(name, t, xflat, xo, qw) -> bytes:
    is_m = name == "IQ1_M"
    bs = 16 if is_m else 32
    x = xflat[xo : xo + QK_K]
    sigma2 = F32(F32(F32(2) * _ssum(x * x)) / F32(QK_K))
    y = np.zeros(TYPE_SIZE[name], np.uint8)
    nsub = QK_K // bs
    scales = np.zeros(nsub, F32)
    shifts = np.full(nsub, 0 if is_m else 1, np.int64)
    max_scale = F32(0.0)
    for ib in range(nsub):
        o = bs * ib
        xb = x[o : o + bs]
        if qw is not None:
            weight = (qw[o : o + bs] * np.sqrt((sigma2 + xb * xb).astype(F32))).astype(F32)
        else:
            weight = (xb * xb).astype(F32)
        mx = F32(np.max(np.abs(xb)))
        if mx < (F32(1e-7) if is_m else F32(1e-12)):
            continue
        order = np.argsort(xb, kind="stable")
        wx = (weight[order] * xb[order]).astype(F32)
        if is_m:
            half = order >= bs // 2
            px = [
                np.concatenate([[F32(0)], np.cumsum(np.where(half == h, wx, F32(0)), dtype=F32)])
                for h in (0, 1)
            ]
            pw = [
                np.concatenate([[F32(0)], np.cumsum(np.where(half == h, weight[order], F32(0)), dtype=F32)])
                for h in (0, 1)
            ]
            scale, best = _split_search_m(px, pw, bs)
        else:
            sumx = np.concatenate([[F32(0)], np.cumsum(wx, dtype=F32)])
            sumw = np.concatenate([[F32(0)], np.cumsum(weight[order], dtype=F32)])
            scale, best = _split_search(sumx, sumw, bs)
        if best is None:
            continue
        i1, i2, shift = best
        L = np.empty(bs, np.int64)
        L[order] = np.where(np.arange(bs) < i1, 0, np.where(np.arange(bs) < i2, 1, 2))
        if scale < 0:
            L = 2 - L
            scale = -scale
            shift = 3 - shift if is_m else -shift
        if is_m:
            xxs = [X_P if shift < 2 else X_M, X_P if shift % 2 == 0 else X_M]
        else:
            xxs = [X_P if shift == 1 else X_M] * 4
        snaps = [_iq1_snap(t, L, k, xflat, xo + o + 8 * k, weight, scale, xxs[k]) for k in range(bs // 8)]
        index = [gi for _, gi in snaps]
        if not all(on for on, _ in snaps):
            q = np.concatenate([xxs[k][(t.grid[index[k]].astype(np.int64) - 1) // 2] for k in range(bs // 8)])
            sumqx = _ssum((weight * q).astype(F32) * xb)
            sumq2 = _ssum((weight * q).astype(F32) * q)
            if sumqx > 0 and sumq2 > 0:
                scale = F32(sumqx / sumq2)
        if is_m:
            y[2 * ib : 2 * ib + 2] = (index[0] & 255, index[1] & 255)
            y[32 + ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
        else:
            y[2 + 4 * ib : 6 + 4 * ib] = [i & 255 for i in index]
            h = sum((i >> 8) << (3 * k) for k, i in enumerate(index))
            y[34 + 2 * ib : 36 + 2 * ib] = (h & 255, h >> 8)
        if not scale >= 0:
            raise _Abort("scale")
        scales[ib] = scale
        shifts[ib] = shift
        max_scale = max_scale if max_scale > scale else scale
    if not max_scale:
        return y.tobytes()
    d = F32(max_scale / F32(15))
    id_ = F32(F32(1) / d)
    ls = np.clip(np_nearest_int(F32(0.5) * ((id_ * scales).astype(F32) - F32(1))), 0, 7)
    if not is_m:
        y[0:2] = np.frombuffer(_f16_bytes(F32(d * F32(1.125))), np.uint8)
        for ib in range(nsub):
            y[35 + 2 * ib] |= (ls[ib] | (8 if shifts[ib] == -1 else 0)) << 4
        return y.tobytes()
    sc = [0, 0, 0, 0]
    qx_terms, q2_terms = [], []
    for ib in range(nsub):
        sc[ib // 4] |= int(ls[ib]) << (3 * (ib % 4))
        y[32 + ib] |= (0x00, 0x80, 0x08, 0x88)[shifts[ib]]
        xb = x[bs * ib : bs * (ib + 1)]
        if qw is not None:
            weight = (qw[bs * ib : bs * (ib + 1)] * np.sqrt((sigma2 + xb * xb).astype(F32))).astype(F32)
        else:
            weight = (xb * xb).astype(F32)
        sh = shifts[ib]
        qs = []
        for k in range(2):
            xx = (X_P if sh < 2 else X_M) if k == 0 else (X_P if sh % 2 == 0 else X_M)
            gi = int(y[2 * ib + k]) + ((int(y[32 + ib]) << (8 - 4 * k)) & 0x700)
            qs.append((xx[(t.grid[gi].astype(np.int64) - 1) // 2] * F32(2 * ls[ib] + 1)).astype(F32))
        q = np.concatenate(qs)
        qx_terms.append((weight * q).astype(F32) * xb)
        q2_terms.append((weight * q).astype(F32) * q)
    sumqx = _ssum(np.concatenate(qx_terms))
    sumq2 = _ssum(np.concatenate(q2_terms))
    if sumq2 > 0:
        d = F32(sumqx / sumq2)
    s = int(np.frombuffer(_f16_bytes(F32(d * F32(1.1125))), np.uint16)[0])
    sc[0] |= (s & 0x000F) << 12
    sc[1] |= (s & 0x00F0) << 8
    sc[2] |= (s & 0x0F00) << 4
    sc[3] |= s & 0xF000
    y[48:56] = np.frombuffer(np.array(sc, dtype="<u2").tobytes(), np.uint8)
    return y.tobytes()


# ----------------------------------------------------------------------------- entry point


def quantize_ref(name: str, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """llama.cpp's bytes for ``x`` (rows x n, float32), computed in NumPy; QuantError on its aborts."""
    x = np.ascontiguousarray(x, dtype=F32)
    rows = x.shape[0]
    t = quant_tables(name)
    qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=F32)
    xflat = x.reshape(-1)
    out = []
    with np.errstate(all="ignore"):  # C's float overflow to inf / nan is part of the behaviour
        for r in range(rows):
            out.append(_row(name, t, x, xflat, r, qw))
    return np.stack(out)


def _row(name, t, x, xflat, r, qw) -> np.ndarray:
    n = x.shape[1]
    blocks = []
    for b in range(n // QK_K):
        qb = None if qw is None else qw[b * QK_K : (b + 1) * QK_K]
        try:
            if name in ("IQ1_S", "IQ1_M"):
                blocks.append(_iq1_superblock(name, t, xflat, r * n + b * QK_K, qb))
            else:
                blocks.append(_iq23_superblock(name, t, x[r, b * QK_K : (b + 1) * QK_K], qb))
        except _Abort as e:
            raise QuantError(f"Cannot quantize to {name}: llama.cpp aborts on row {r} ({e}).") from None
    return np.frombuffer(b"".join(blocks), np.uint8)
