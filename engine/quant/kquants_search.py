# ruff: noqa: E741  (`l` as in ggml-quants.c, for line-by-line review against the C source)
"""llama.cpp's K-quant scale searches, ported bit for bit (ggml/src/ggml-quants.c).

Two implementations of every helper:

- ``nb_*``: scalar Numba ports of the C functions, one group of ``n`` values at a time, called
  from the per-block kernels in :mod:`engine.quant.kquants`;
- ``np_*``: NumPy reference versions that run the same search on many groups at once (rows of a
  2-D array). They keep C's evaluation order (sequential sums in index order, C's association of
  products, float32 everywhere) so that both give llama.cpp's bytes; tests compare the two.

Bit-exactness rules followed throughout: every literal is float32, ints are converted to float32
before they meet a float, ``nearest_int`` is C's magic-number trick (round half to even inside
its range, and the same garbage as C outside it), no fastmath (no FMA contraction, no
reassociation), float division by zero gives inf/nan as in C.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from engine.quant._simd import qkx_errors, qkx_products, qx_products

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
_MAGIC = F32(12582912.0)  # 1.5 * 2**23

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


# --------------------------------------------------------------------------- bit casts, rounding


@intrinsic
def _f32_as_i32(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _u32_as_f32(typingctx, x):
    """Reinterpret the low 32 bits of an integer as a float32."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        if x.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(x), codegen


@njit(inline="always", **_JIT)
def nearest_int(fval):
    """C ``nearest_int``: ``fval + 12582912.f``, low 23 bits minus ``0x400000``."""
    bits = np.int64(_f32_as_i32(F32(fval + _MAGIC)))
    return (bits & 0x007FFFFF) - 0x00400000


@njit(inline="always", **_JIT)
def fp32_to_fp16_bits(f):
    """ggml_compute_fp32_to_fp16 (round to nearest even, NaN -> 0x7E00 with sign)."""
    f = F32(f)
    base = (abs(f) * F32(5.192296858534828e33)) * F32(7.703719777548943e-34)  # 2**112, 2**-110
    w = np.uint32(_f32_as_i32(f))
    shl1_w = np.uint32(w + w)
    sign = w & np.uint32(0x80000000)
    bias = shl1_w & np.uint32(0xFF000000)
    if bias < np.uint32(0x71000000):
        bias = np.uint32(0x71000000)
    base = _u32_as_f32(np.uint32((bias >> np.uint32(1)) + np.uint32(0x07800000))) + base
    bits = np.uint32(_f32_as_i32(base))
    exp_bits = (bits >> np.uint32(13)) & np.uint32(0x00007C00)
    mantissa_bits = bits & np.uint32(0x00000FFF)
    nonsign = np.uint32(exp_bits + mantissa_bits)
    if shl1_w > np.uint32(0xFF000000):
        nonsign = np.uint32(0x7E00)
    return np.uint16((sign >> np.uint32(16)) | nonsign)


@njit(inline="always", **_JIT)
def fp16_bits_to_fp32(h):
    """IEEE half -> float32 (exact)."""
    h = np.uint32(h)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exp = (h >> np.uint32(10)) & np.uint32(0x1F)
    man = h & np.uint32(0x3FF)
    if exp == 0:
        mag = F32(man) * F32(5.960464477539063e-08)  # 2**-24, exact
        return _u32_as_f32(np.uint32(_f32_as_i32(mag)) | sign)
    if exp == 31:
        return _u32_as_f32(sign | np.uint32(0x7F800000) | (man << np.uint32(13)))
    return _u32_as_f32(sign | ((exp + np.uint32(112)) << np.uint32(23)) | (man << np.uint32(13)))


@njit(inline="always", **_JIT)
def fp16_round(f):
    """float32 -> fp16 -> float32, as C's GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(f))."""
    return fp16_bits_to_fp32(fp32_to_fp16_bits(f))


def np_nearest_int(f: np.ndarray) -> np.ndarray:
    """Vectorised C ``nearest_int`` (int64 result)."""
    v = (np.asarray(f, dtype=F32) + _MAGIC).astype(F32)
    return ((v.view(np.int32) & 0x007FFFFF) - 0x00400000).astype(np.int64)


def np_seq_sum(a: np.ndarray) -> np.ndarray:
    """Sum along the last axis strictly left to right in float32 (C loop order)."""
    acc = a[..., 0].astype(F32)
    for i in range(1, a.shape[-1]):
        acc = acc + a[..., i]
    return acc


# --------------------------------------------------------------------------- Numba ports


@njit(**_JIT)
def nb_make_qx_quants(n, nmax, x, L, rmse_type, qw, use_qw, scr):
    """make_qx_quants; ``L`` int8; weights ``qw`` when ``use_qw`` else by ``rmse_type``.

    ``scr``: float32 (3, >= n) scratch (weights, trial products); n a multiple of 8.
    """
    mx = F32(0.0)
    amax = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    fnmax = F32(nmax)
    iscale = -fnmax / mx
    if rmse_type == 0:
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            L[i] = nmax + l
        return F32(1.0) / iscale
    return_early = False
    if rmse_type < 0:
        rmse_type = -rmse_type
        return_early = True
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
        w = _qx_weight(x[i], i, rmse_type, qw, use_qw)
        fl = F32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    scale = sumlx / suml2 if suml2 != F32(0.0) else F32(0.0)
    if return_early:
        return F32(0.5) * (scale + F32(1.0) / iscale) if suml2 > F32(0.0) else F32(1.0) / iscale
    best = scale * sumlx
    wv = scr[0, :n]
    tx = scr[1, :n]
    t2 = scr[2, :n]
    for i in range(n):
        wv[i] = _qx_weight(x[i], i, rmse_type, qw, use_qw)
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        iscale = -(fnmax + F32(0.1) * F32(is_)) / mx
        qx_products(x, wv, iscale, nmax, n, tx, t2)  # the terms in 8 lanes, then C's sums
        sumlx = F32(0.0)
        suml2 = F32(0.0)
        for i in range(n):
            sumlx += tx[i]
            suml2 += t2[i]
        if suml2 > F32(0.0) and sumlx * sumlx > best * suml2:
            for i in range(n):
                l = nearest_int(iscale * x[i])
                L[i] = nmax + max(-nmax, min(nmax - 1, l))
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(inline="always", **_JIT)
def _qx_weight(xi, i, rmse_type, qw, use_qw):
    if use_qw:
        return qw[i]
    if rmse_type == 1:
        return xi * xi
    if rmse_type == 2:
        return F32(1.0)
    if rmse_type == 3:
        return abs(xi)
    return np.sqrt(abs(xi))


@njit(**_JIT)
def nb_make_q3_quants(n, nmax, x, L, do_rmse):
    """make_q3_quants; ``L`` int8."""
    mx = F32(0.0)
    amax = F32(0.0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    if amax < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    iscale = -F32(nmax) / mx
    if do_rmse:
        sumlx = F32(0.0)
        suml2 = F32(0.0)
        for i in range(n):
            l = nearest_int(iscale * x[i])
            l = max(-nmax, min(nmax - 1, l))
            L[i] = l
            w = x[i] * x[i]
            fl = F32(l)
            sumlx += w * x[i] * fl
            suml2 += w * fl * fl
        for _itry in range(5):
            n_changed = 0
            for i in range(n):
                w = x[i] * x[i]
                fli = F32(L[i])
                slx = sumlx - w * x[i] * fli
                if slx > F32(0.0):
                    sl2 = suml2 - w * fli * fli
                    new_l = nearest_int(x[i] * sl2 / slx)
                    new_l = max(-nmax, min(nmax - 1, new_l))
                    if new_l != L[i]:
                        fnl = F32(new_l)
                        slx += w * x[i] * fnl
                        sl2 += w * fnl * fnl
                        if sl2 > F32(0.0) and slx * slx * suml2 > sumlx * sumlx * sl2:
                            L[i] = new_l
                            sumlx = slx
                            suml2 = sl2
                            n_changed += 1
            if n_changed == 0:
                break
        for i in range(n):
            L[i] += nmax
        return sumlx / suml2 if suml2 > F32(0.0) else F32(0.0)
    for i in range(n):
        l = nearest_int(iscale * x[i])
        l = max(-nmax, min(nmax - 1, l))
        L[i] = l + nmax
    return F32(1.0) / iscale


@njit(**_JIT)
def _nb_make_qkx_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, flat_is_le, scr):
    """Shared body of make_qkx2_quants / make_qkx3_quants (weights given). Returns (scale, the_min).

    ``scr``: float32 (3, >= n) scratch for the trial terms; n a multiple of 8.
    """
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w += w
        sum_x += w * x[i]
    if mn > F32(0.0):
        mn = F32(0.0)
    flat = (mx <= mn) if flat_is_le else (mx == mn)
    if flat:
        for i in range(n):
            L[i] = 0
        return F32(0.0), -mn
    fnmax = F32(nmax)
    iscale = fnmax / (mx - mn)
    scale = F32(1.0) / iscale
    best_error = F32(0.0)
    for i in range(n):
        l = nearest_int(iscale * (x[i] - mn))
        L[i] = max(0, min(nmax, l))
        diff = scale * F32(L[i]) + mn - x[i]
        diff = abs(diff) if use_mad else diff * diff
        best_error += weights[i] * diff
    if nstep < 1:
        return scale, -mn
    tl = scr[0, :n]
    tl2 = scr[1, :n]
    txl = scr[2, :n]
    for is_ in range(nstep + 1):
        iscale = (rmin + rdelta * F32(is_) + fnmax) / (mx - mn)
        # the terms in 8 lanes, then C's three sums in C's order
        qkx_products(x, weights, iscale, mn, nmax, n, Laux, tl, tl2, txl)
        sum_l = F32(0.0)
        sum_l2 = F32(0.0)
        sum_xl = F32(0.0)
        for i in range(n):
            sum_l += tl[i]
            sum_l2 += tl2[i]
            sum_xl += txl[i]
        det = sum_w * sum_l2 - sum_l * sum_l  # C: D
        if det > F32(0.0):
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            if this_min > F32(0.0):
                this_min = F32(0.0)
                this_scale = sum_xl / sum_l2
            qkx_errors(x, weights, Laux, this_scale, this_min, n, use_mad, tl)
            cur_error = F32(0.0)
            for i in range(n):
                cur_error += tl[i]
            if cur_error < best_error:
                for i in range(n):
                    L[i] = Laux[i]
                best_error = cur_error
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(**_JIT)
def nb_make_qkx2_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, scr):
    """make_qkx2_quants; ``L``/``Laux`` uint8. Returns (scale, the_min)."""
    return _nb_make_qkx_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, False, scr)


@njit(**_JIT)
def nb_make_qkx3_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, scr):
    """make_qkx3_quants with explicit weights; ``L``/``Laux`` uint8. Returns (scale, the_min)."""
    return _nb_make_qkx_quants(n, nmax, x, weights, L, Laux, rmin, rdelta, nstep, use_mad, True, scr)


@njit(**_JIT)
def nb_make_qp_quants(n, nmax, x, L, quant_weights):
    """make_qp_quants; ``L`` uint8 (C stores ints into uint8_t: wraps mod 256)."""
    mx = F32(0.0)
    for i in range(n):
        mx = mx if mx > x[i] else x[i]
    if mx < GROUP_MAX_EPS:
        for i in range(n):
            L[i] = 0
        return F32(0.0)
    fnmax = F32(nmax)
    iscale = fnmax / mx
    for i in range(n):
        L[i] = np.uint8(nearest_int(iscale * x[i]) & 0xFF)
    scale = F32(1.0) / iscale
    best_mse = F32(0.0)
    for i in range(n):
        diff = x[i] - scale * F32(L[i])
        w = quant_weights[i]
        best_mse += w * diff * diff
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (F32(0.1) * F32(is_) + fnmax) / mx
        scale_is = F32(1.0) / iscale_is
        mse = F32(0.0)
        for i in range(n):
            l = min(nmax, nearest_int(iscale_is * x[i]))
            diff = x[i] - scale_is * F32(l)
            w = quant_weights[i]
            mse += w * diff * diff
        if mse < best_mse:
            best_mse = mse
            iscale = iscale_is
    sumlx = F32(0.0)
    suml2 = F32(0.0)
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = np.uint8(l & 0xFF)
        w = quant_weights[i]
        fl = F32(l)
        sumlx += w * x[i] * fl
        suml2 += w * fl * fl
    for _itry in range(5):
        n_changed = 0
        for i in range(n):
            w = quant_weights[i]
            fli = F32(L[i])
            slx = sumlx - w * x[i] * fli
            sl2 = suml2 - w * fli * fli
            if slx > F32(0.0) and sl2 > F32(0.0):
                new_l = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new_l != np.int64(L[i]):
                    fnl = F32(new_l)
                    slx += w * x[i] * fnl
                    sl2 += w * fnl * fnl
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = np.uint8(new_l & 0xFF)
                        sumlx = slx
                        suml2 = sl2
                        n_changed += 1
        if n_changed == 0:
            break
    return sumlx / suml2 if suml2 > F32(0.0) else F32(0.0)


# --------------------------------------------------------------------------- NumPy references
# Each works on G groups at once: x has shape (G, n); results are per group.


def first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(signed value, |value|) of the first largest |x| per row, C's strict '>' scan from 0."""
    amax = np.zeros(x.shape[0], F32)
    mx = np.zeros(x.shape[0], F32)
    ax = np.abs(x)
    for i in range(x.shape[1]):
        upd = ax[:, i] > amax
        amax = np.where(upd, ax[:, i], amax)
        mx = np.where(upd, x[:, i], mx)
    return mx, amax


def np_make_qx_quants(nmax: int, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants with rmse_type 1 and explicit weights ``w`` (x*x when C passes NULL)."""
    mx, amax = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    fnmax = F32(nmax)

    def trial(iscale):
        l = np.clip(np_nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        fl = l.astype(F32)
        return l, np_seq_sum(w * x * fl), np_seq_sum(w * fl * fl)

    l, sumlx, suml2 = trial(-fnmax / mx)
    L = l + nmax
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0.0)).astype(F32)
    best = scale * sumlx
    for is_ in range(-9, 10):
        if is_ == 0:
            continue
        l, sumlx, suml2 = trial(-(fnmax + F32(0.1) * F32(is_)) / mx)
        upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(upd[:, None], l + nmax, L)
        scale = np.where(upd, sumlx / suml2, scale).astype(F32)
        best = np.where(upd, scale * sumlx, best).astype(F32)
    L = np.where(zero[:, None], 0, L)
    scale = np.where(zero, F32(0.0), scale).astype(F32)
    return scale, L


def np_make_q3_quants(nmax: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants with do_rmse=true."""
    mx, amax = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    L = np.clip(np_nearest_int((-F32(nmax) / mx)[:, None] * x), -nmax, nmax - 1)
    w = x * x
    fl = L.astype(F32)
    sumlx = np_seq_sum(w * x * fl)
    suml2 = np_seq_sum(w * fl * fl)
    for _itry in range(5):
        changed = np.zeros(x.shape[0], bool)
        for i in range(x.shape[1]):
            wi, xi, li = w[:, i], x[:, i], L[:, i]
            fli = li.astype(F32)
            slx = sumlx - wi * xi * fli
            sl2 = suml2 - wi * fli * fli
            new_l = np.clip(np_nearest_int(xi * sl2 / slx), -nmax, nmax - 1)
            fnl = new_l.astype(F32)
            slx = slx + wi * xi * fnl
            sl2 = sl2 + wi * fnl * fnl
            upd = (
                (sumlx - wi * xi * fli > 0)
                & (new_l != li)
                & (sl2 > 0)
                & (slx * slx * suml2 > sumlx * sumlx * sl2)
            )
            L[:, i] = np.where(upd, new_l, li)
            sumlx = np.where(upd, slx, sumlx).astype(F32)
            suml2 = np.where(upd, sl2, suml2).astype(F32)
            changed |= upd
        if not changed.any():  # a pass without change is a fixed point: later passes change nothing
            break
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0.0)).astype(F32)
    return np.where(zero, F32(0.0), scale).astype(F32), np.where(zero[:, None], 0, L + nmax)


def np_make_qkx_quants(
    nmax: int,
    x: np.ndarray,
    weights: np.ndarray,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants / make_qkx3_quants (identical for finite x and given weights).

    Returns (scale, the_min, L)."""
    rmin, rdelta = F32(rmin), F32(rdelta)
    mn = x[:, 0].copy()
    mx = x[:, 0].copy()
    sum_w = weights[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, x.shape[1]):
        mn = np.where(x[:, i] < mn, x[:, i], mn)
        mx = np.where(x[:, i] > mx, x[:, i], mx)
        sum_w = sum_w + weights[:, i]
        sum_x = sum_x + weights[:, i] * x[:, i]
    mn = np.where(mn > 0, F32(0.0), mn).astype(F32)
    flat = ~(mx > mn)
    fnmax = F32(nmax)

    def err(scale, L, mn_):
        diff = scale[:, None] * L.astype(F32) + mn_[:, None] - x
        diff = np.abs(diff) if use_mad else diff * diff
        return np_seq_sum(weights * diff)

    iscale = fnmax / (mx - mn)
    scale = (F32(1.0) / iscale).astype(F32)
    L = np.clip(np_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    best = err(scale, L, mn)
    for is_ in range(nstep + 1):
        iscale = (rmin + rdelta * F32(is_) + fnmax) / (mx - mn)
        la = np.clip(np_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        fl = la.astype(F32)
        sum_l = np_seq_sum(weights * fl)
        sum_l2 = np_seq_sum(weights * fl * fl)
        sum_xl = np_seq_sum(weights * fl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min = np.where(pos, F32(0.0), this_min).astype(F32)
        this_scale = np.where(pos, sum_xl / sum_l2, this_scale).astype(F32)
        cur = err(this_scale, la, this_min)
        upd = (D > 0) & (cur < best)
        L = np.where(upd[:, None], la, L)
        best = np.where(upd, cur, best).astype(F32)
        scale = np.where(upd, this_scale, scale).astype(F32)
        mn = np.where(upd, this_min, mn).astype(F32)
    L = np.where(flat[:, None], 0, L)
    scale = np.where(flat, F32(0.0), scale).astype(F32)
    return scale, (-mn).astype(F32), L


def np_make_qp_quants(nmax: int, x: np.ndarray, qw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_qp_quants; L returned as the uint8 C stores."""
    mx = np.zeros(x.shape[0], F32)
    for i in range(x.shape[1]):
        mx = np.where(mx > x[:, i], mx, x[:, i])
    zero = mx < GROUP_MAX_EPS
    fnmax = F32(nmax)

    def mse(scale, l):
        diff = x - scale[:, None] * l.astype(F32)
        return np_seq_sum(qw * diff * diff)

    iscale = fnmax / mx
    best = mse(F32(1.0) / iscale, (np_nearest_int(iscale[:, None] * x) & 0xFF))
    for is_ in range(-4, 5):
        if is_ == 0:
            continue
        iscale_is = (F32(0.1) * F32(is_) + fnmax) / mx
        m = mse(F32(1.0) / iscale_is, np.minimum(nmax, np_nearest_int(iscale_is[:, None] * x)))
        upd = m < best
        best = np.where(upd, m, best).astype(F32)
        iscale = np.where(upd, iscale_is, iscale).astype(F32)
    l = np.minimum(nmax, np_nearest_int(iscale[:, None] * x))
    L = l & 0xFF
    fl = l.astype(F32)
    sumlx = np_seq_sum(qw * x * fl)
    suml2 = np_seq_sum(qw * fl * fl)
    for _itry in range(5):
        changed = np.zeros(x.shape[0], bool)
        for i in range(x.shape[1]):
            wi, xi, li = qw[:, i], x[:, i], L[:, i]
            fli = li.astype(F32)
            slx = sumlx - wi * xi * fli
            sl2 = suml2 - wi * fli * fli
            ok = (slx > 0) & (sl2 > 0)
            new_l = np.minimum(nmax, np_nearest_int(xi * sl2 / slx))
            fnl = new_l.astype(F32)
            slx = slx + wi * xi * fnl
            sl2 = sl2 + wi * fnl * fnl
            upd = ok & (new_l != li) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[:, i] = np.where(upd, new_l & 0xFF, li)
            sumlx = np.where(upd, slx, sumlx).astype(F32)
            suml2 = np.where(upd, sl2, suml2).astype(F32)
            changed |= upd
        if not changed.any():
            break
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0.0)).astype(F32)
    return np.where(zero, F32(0.0), scale).astype(F32), np.where(zero[:, None], 0, L)
