"""Explicit 8-lane float32 vector code for the quantizers' candidate searches (Numba intrinsics).

LLVM does not vectorize these loops by itself (Numba arrays carry no aliasing information, so the
SLP vectorizer gives up on the unrolled lanes).  The intrinsics here emit ``<8 x float>`` IR
directly.  Every lane performs exactly the scalar C operations in C's order (IEEE float32, no
fast-math flags, no contraction into FMA), so the results are bit-identical to the scalar code.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_F32 = ir.FloatType()
_V8F = ir.VectorType(_F32, 8)
_V8I8 = ir.VectorType(ir.IntType(8), 8)
_I32 = ir.IntType(32)


def _splat(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    one = builder.insert_element(ir.Constant(_V8F, ir.Undefined), v, ir.Constant(_I32, 0))
    zeros = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)
    return builder.shuffle_vector(one, ir.Constant(_V8F, ir.Undefined), zeros)


def _data(context, builder, ty, val) -> ir.Value:
    return context.make_array(ty)(context, builder, val).data


@intrinsic
def score8(typingctx, g, goff, xv, xo, wv, wo, n, scale, qa, qb, acc):
    """acc[0:8] = per lane j: sum over i < n of (w[i] * d) * d, d = scale * q - x[i], in C order.

    ``q = float(g[goff + 8*i + j]) * qa + qb`` (``g`` int8; with qa = 1, qb = 0 that is the grid value
    itself, exactly); ``x[i] = xv[xo + i]``, ``w[i] = wv[wo + i]`` (float32).  The sum starts at 0.0f
    and adds term by term, like ``d2 += weight[i]*diff*diff`` in llama.cpp's neighbour searches.
    """
    ok = (
        isinstance(g, types.Array)
        and g.dtype == types.int8
        and all(isinstance(a, types.Array) and a.dtype == types.float32 for a in (xv, wv, acc))
        and all(isinstance(a, types.Integer) for a in (goff, xo, wo, n))
        and all(a == types.float32 for a in (scale, qa, qb))
    )
    if not ok:
        return None
    sig = types.void(g, goff, xv, xo, wv, wo, n, scale, qa, qb, acc)

    def codegen(context, builder, signature, args):
        g_, goff_, xv_, xo_, wv_, wo_, n_, scale_, qa_, qb_, acc_ = args
        ta = signature.args
        gp = _data(context, builder, ta[0], g_)
        xp = _data(context, builder, ta[2], xv_)
        wp = _data(context, builder, ta[4], wv_)
        ap = _data(context, builder, ta[10], acc_)
        i64 = ir.IntType(64)
        goff_ = context.cast(builder, goff_, ta[1], types.int64)
        xo_ = context.cast(builder, xo_, ta[3], types.int64)
        wo_ = context.cast(builder, wo_, ta[5], types.int64)
        n_ = context.cast(builder, n_, ta[6], types.int64)
        sv = _splat(builder, scale_)
        qav = _splat(builder, qa_)
        qbv = _splat(builder, qb_)
        accp = cgutils.alloca_once_value(builder, ir.Constant(_V8F, None))
        with cgutils.for_range(builder, n_) as loop:
            i = loop.index
            p = builder.gep(gp, [builder.add(goff_, builder.mul(i, ir.Constant(i64, 8)))])
            gv = builder.load(builder.bitcast(p, _V8I8.as_pointer()), align=1)
            q = builder.fadd(builder.fmul(builder.sitofp(gv, _V8F), qav), qbv)
            xi = _splat(builder, builder.load(builder.gep(xp, [builder.add(xo_, i)])))
            wi = _splat(builder, builder.load(builder.gep(wp, [builder.add(wo_, i)])))
            d = builder.fsub(builder.fmul(sv, q), xi)
            t = builder.fmul(builder.fmul(wi, d), d)
            builder.store(builder.fadd(builder.load(accp), t), accp)
        builder.store(builder.load(accp), builder.bitcast(ap, _V8F.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------- sorted-table rounding

_V8I32 = ir.VectorType(_I32, 8)


def _splat_const(v: float) -> ir.Constant:
    return ir.Constant(_V8F, [float(v)] * 8)


def _pick8(builder: ir.IRBuilder, v: ir.Value, table: tuple[float, ...]) -> tuple[ir.Value, ir.Value]:
    """best_index_int8(table, v) per lane and the table value there, as (<8 x i32>, <8 x float>).

    Same comparisons as ggml's binary search, for every float (NaN included): ``ml`` counts the
    interior values with ``!(v < t)``, ``lo`` / ``hi`` are the values at ``ml`` / ``ml + 1``.
    """
    n = len(table)
    ml = ir.Constant(_V8I32, None)
    lo = _splat_const(table[0])
    for k in range(1, n - 1):
        ge = builder.fcmp_unordered(">=", v, _splat_const(table[k]))  # !(v < t)
        ml = builder.add(ml, builder.zext(ge, _V8I32))
        lo = builder.select(ge, _splat_const(table[k]), lo)
    hi = _splat_const(table[n - 1])
    for k in range(n - 2, 0, -1):
        lt = builder.fcmp_ordered("<", v, _splat_const(table[k]))
        hi = builder.select(lt, _splat_const(table[k]), hi)
    first = builder.fcmp_ordered("<", builder.fsub(v, lo), builder.fsub(hi, v))
    idx = builder.select(first, ml, builder.add(ml, ir.Constant(_V8I32, [1] * 8)))
    q = builder.select(first, lo, hi)
    top = builder.fcmp_ordered(">=", v, _splat_const(table[n - 1]))
    idx = builder.select(top, ir.Constant(_V8I32, [n - 1] * 8), idx)
    q = builder.select(top, _splat_const(table[n - 1]), q)
    bottom = builder.fcmp_ordered("<=", v, _splat_const(table[0]))
    idx = builder.select(bottom, ir.Constant(_V8I32, None), idx)
    q = builder.select(bottom, _splat_const(table[0]), q)
    return idx, q


def _vload(builder: ir.IRBuilder, base: ir.Value, off: ir.Value) -> ir.Value:
    return builder.load(builder.bitcast(builder.gep(base, [off]), _V8F.as_pointer()), align=4)


def _vstore(builder: ir.IRBuilder, v: ir.Value, base: ir.Value, off: ir.Value, vt: ir.Type = _V8F) -> None:
    builder.store(v, builder.bitcast(builder.gep(base, [off]), vt.as_pointer()), align=4)


def make_table_kernels(table: tuple[float, ...]):
    """(trial_products, indices) intrinsics for one sorted table of exactly representable values.

    - ``trial_products(x, o, idd, weight, tqx, tq2)``: for j < 32, with ``v = idd * x[o+j]`` and
      ``q`` the table value best_index_int8 picks for v: ``tqx[j] = (weight[j]*q) * x[o+j]``,
      ``tq2[j] = (weight[j]*q) * q`` (the products of C's ``sumqx += w*q*x; sumq2 += w*q*q``);
    - ``indices(x, o, idd, L, lo)``: ``L[lo+j] = best_index_int8(table, idd * x[o+j])``, j < 32
      (L int64).
    """

    def _ok_arrays(*arrs) -> bool:
        return all(isinstance(a, types.Array) and a.dtype == types.float32 for a in arrs)

    @intrinsic
    def trial_products(typingctx, x, o, idd, weight, tqx, tq2):
        if not (_ok_arrays(x, weight, tqx, tq2) and isinstance(o, types.Integer) and idd == types.float32):
            return None
        sig = types.void(x, o, idd, weight, tqx, tq2)

        def codegen(context, builder, signature, args):
            x_, o_, idd_, w_, tqx_, tq2_ = args
            ta = signature.args
            xp = _data(context, builder, ta[0], x_)
            wp = _data(context, builder, ta[3], w_)
            ap = _data(context, builder, ta[4], tqx_)
            bp = _data(context, builder, ta[5], tq2_)
            o_ = context.cast(builder, o_, ta[1], types.int64)
            iv = _splat(builder, idd_)
            i64 = ir.IntType(64)
            for c in range(4):
                off = ir.Constant(i64, 8 * c)
                xv = _vload(builder, xp, builder.add(o_, off))
                _, q = _pick8(builder, builder.fmul(iv, xv), table)
                wq = builder.fmul(_vload(builder, wp, off), q)
                _vstore(builder, builder.fmul(wq, xv), ap, off)
                _vstore(builder, builder.fmul(wq, q), bp, off)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def indices(typingctx, x, o, idd, L, lo):
        ok = (
            _ok_arrays(x)
            and isinstance(L, types.Array)
            and L.dtype == types.int64
            and isinstance(o, types.Integer)
            and isinstance(lo, types.Integer)
            and idd == types.float32
        )
        if not ok:
            return None
        sig = types.void(x, o, idd, L, lo)

        def codegen(context, builder, signature, args):
            x_, o_, idd_, L_, lo_ = args
            ta = signature.args
            xp = _data(context, builder, ta[0], x_)
            lp = _data(context, builder, ta[3], L_)
            o_ = context.cast(builder, o_, ta[1], types.int64)
            lo_ = context.cast(builder, lo_, ta[4], types.int64)
            iv = _splat(builder, idd_)
            i64 = ir.IntType(64)
            v8i64 = ir.VectorType(i64, 8)
            for c in range(4):
                off = ir.Constant(i64, 8 * c)
                xv = _vload(builder, xp, builder.add(o_, off))
                idx, _ = _pick8(builder, builder.fmul(iv, xv), table)
                _vstore(builder, builder.sext(idx, v8i64), lp, builder.add(lo_, off), v8i64)
            return context.get_dummy_value()

        return sig, codegen

    return trial_products, indices


# ----------------------------------------------------------------------------- k-quant trial products

_MAGIC = 12582912.0  # ggml nearest_int: 1.5 * 2**23


def _is_c(a: types.Type, dtype: types.Type) -> bool:
    return isinstance(a, types.Array) and a.dtype == dtype and a.layout == "C" and a.ndim == 1


def _nearest_int8(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """ggml nearest_int per lane: bits(v + 12582912.f) & 0x7fffff, minus 0x400000 (<8 x i32>)."""
    bits = builder.bitcast(builder.fadd(v, _splat_const(_MAGIC)), _V8I32)
    m = builder.and_(bits, ir.Constant(_V8I32, [0x7FFFFF] * 8))
    return builder.sub(m, ir.Constant(_V8I32, [0x400000] * 8))


def _clamp8(builder: ir.IRBuilder, v: ir.Value, lo: ir.Value, hi: ir.Value) -> ir.Value:
    """max(lo, min(hi, v)) on <8 x i32>."""
    v = builder.select(builder.icmp_signed("<", hi, v), hi, v)
    return builder.select(builder.icmp_signed("<", v, lo), lo, v)


def _splat_i32(builder: ir.IRBuilder, v: ir.Value) -> ir.Value:
    v = builder.trunc(v, _I32) if v.type.width > 32 else builder.sext(v, _I32) if v.type.width < 32 else v
    one = builder.insert_element(ir.Constant(_V8I32, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(_V8I32, ir.Undefined), ir.Constant(_V8I32, [0] * 8))


@intrinsic
def qx_products(typingctx, x, w, iscale, nmax, n, tx, t2):
    """make_qx_quants' trial terms for j < n (n a multiple of 8), float32 C order per lane:

    ``l = clamp(nearest_int(iscale*x[j]), -nmax, nmax-1)``, ``tx[j] = (w[j]*x[j])*l``,
    ``t2[j] = (w[j]*l)*l`` (C: ``sumlx += w*x[i]*l; suml2 += w*l*l``).
    """
    f32 = types.float32
    ok = (
        all(_is_c(a, f32) for a in (x, w, tx, t2))
        and iscale == f32
        and isinstance(nmax, types.Integer)
        and isinstance(n, types.Integer)
    )
    if not ok:
        return None
    sig = types.void(x, w, iscale, nmax, n, tx, t2)

    def codegen(context, builder, signature, args):
        x_, w_, is_, nmax_, n_, tx_, t2_ = args
        ta = signature.args
        xp = _data(context, builder, ta[0], x_)
        wp = _data(context, builder, ta[1], w_)
        ap = _data(context, builder, ta[5], tx_)
        bp = _data(context, builder, ta[6], t2_)
        nmax_ = context.cast(builder, nmax_, ta[3], types.int64)
        n_ = context.cast(builder, n_, ta[4], types.int64)
        hi = _splat_i32(builder, builder.sub(nmax_, ir.Constant(nmax_.type, 1)))
        lo = _splat_i32(builder, builder.neg(nmax_))
        iv = _splat(builder, is_)
        i64 = ir.IntType(64)
        with cgutils.for_range(builder, builder.ashr(n_, ir.Constant(i64, 3))) as loop:
            off = builder.mul(loop.index, ir.Constant(i64, 8))
            xv = _vload(builder, xp, off)
            wv = _vload(builder, wp, off)
            fl = builder.sitofp(_clamp8(builder, _nearest_int8(builder, builder.fmul(iv, xv)), lo, hi), _V8F)
            _vstore(builder, builder.fmul(builder.fmul(wv, xv), fl), ap, off)
            _vstore(builder, builder.fmul(builder.fmul(wv, fl), fl), bp, off)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def qkx_products(typingctx, x, w, iscale, mn, nmax, n, laux, tl, tl2, txl):
    """make_qkx2/3_quants' trial for j < n (n a multiple of 8), float32 C order per lane:

    ``l = clamp(nearest_int(iscale*(x[j] - mn)), 0, nmax)`` stored in ``laux`` (uint8),
    ``tl[j] = w[j]*l``, ``tl2[j] = (w[j]*l)*l``, ``txl[j] = (w[j]*l)*x[j]``.
    """
    f32 = types.float32
    ok = (
        all(_is_c(a, f32) for a in (x, w, tl, tl2, txl))
        and _is_c(laux, types.uint8)
        and iscale == f32
        and mn == f32
        and isinstance(nmax, types.Integer)
        and isinstance(n, types.Integer)
    )
    if not ok:
        return None
    sig = types.void(x, w, iscale, mn, nmax, n, laux, tl, tl2, txl)

    def codegen(context, builder, signature, args):
        x_, w_, is_, mn_, nmax_, n_, la_, tl_, tl2_, txl_ = args
        ta = signature.args
        xp = _data(context, builder, ta[0], x_)
        wp = _data(context, builder, ta[1], w_)
        lp = _data(context, builder, ta[6], la_)
        p1 = _data(context, builder, ta[7], tl_)
        p2 = _data(context, builder, ta[8], tl2_)
        p3 = _data(context, builder, ta[9], txl_)
        nmax_ = context.cast(builder, nmax_, ta[4], types.int64)
        n_ = context.cast(builder, n_, ta[5], types.int64)
        hi = _splat_i32(builder, nmax_)
        lo = ir.Constant(_V8I32, None)
        iv = _splat(builder, is_)
        mv = _splat(builder, mn_)
        i64 = ir.IntType(64)
        with cgutils.for_range(builder, builder.ashr(n_, ir.Constant(i64, 3))) as loop:
            off = builder.mul(loop.index, ir.Constant(i64, 8))
            xv = _vload(builder, xp, off)
            wv = _vload(builder, wp, off)
            li = _clamp8(builder, _nearest_int8(builder, builder.fmul(iv, builder.fsub(xv, mv))), lo, hi)
            _vstore(builder, builder.trunc(li, _V8I8), lp, off, _V8I8)
            fl = builder.sitofp(li, _V8F)
            wl = builder.fmul(wv, fl)
            _vstore(builder, wl, p1, off)
            _vstore(builder, builder.fmul(wl, fl), p2, off)
            _vstore(builder, builder.fmul(wl, xv), p3, off)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def qkx_errors(typingctx, x, w, laux, scale, mn, n, use_mad, terr):
    """make_qkx2/3_quants' error terms for j < n (n a multiple of 8), float32 C order per lane:

    ``diff = scale*laux[j] + mn - x[j]``, ``terr[j] = w[j] * (use_mad ? fabsf(diff) : diff*diff)``.
    """
    f32 = types.float32
    ok = (
        all(_is_c(a, f32) for a in (x, w, terr))
        and _is_c(laux, types.uint8)
        and scale == f32
        and mn == f32
        and isinstance(n, types.Integer)
        and isinstance(use_mad, types.Boolean)
    )
    if not ok:
        return None
    sig = types.void(x, w, laux, scale, mn, n, use_mad, terr)

    def codegen(context, builder, signature, args):
        x_, w_, la_, sc_, mn_, n_, mad_, te_ = args
        ta = signature.args
        xp = _data(context, builder, ta[0], x_)
        wp = _data(context, builder, ta[1], w_)
        lp = _data(context, builder, ta[2], la_)
        ep = _data(context, builder, ta[7], te_)
        n_ = context.cast(builder, n_, ta[5], types.int64)
        mad = context.cast(builder, mad_, ta[6], types.boolean)
        sv = _splat(builder, sc_)
        mv = _splat(builder, mn_)
        i64 = ir.IntType(64)
        absmask = ir.Constant(_V8I32, [0x7FFFFFFF] * 8)
        with cgutils.for_range(builder, builder.ashr(n_, ir.Constant(i64, 3))) as loop:
            off = builder.mul(loop.index, ir.Constant(i64, 8))
            xv = _vload(builder, xp, off)
            wv = _vload(builder, wp, off)
            lv = builder.load(builder.bitcast(builder.gep(lp, [off]), _V8I8.as_pointer()), align=1)
            fl = builder.uitofp(lv, _V8F)
            diff = builder.fsub(builder.fadd(builder.fmul(sv, fl), mv), xv)
            ad = builder.bitcast(builder.and_(builder.bitcast(diff, _V8I32), absmask), _V8F)
            d = builder.select(mad, ad, builder.fmul(diff, diff))
            _vstore(builder, builder.fmul(wv, d), ep, off)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def requant(typingctx, x, xo, add, dl, lo, hi, bias, L, n):
    """The k-quants' final requantization, 8 lanes: for j < n (n a multiple of 8), k = xo + j,
    ``L[k] = clamp(nearest_int((x[k] + add) / dl), lo, hi) + bias`` (L int8 or uint8).

    Pass add = 0 for C's ``nearest_int(x / dl)``: for finite x, ``x + 0`` only turns -0 into +0,
    and nearest_int(+-0 / dl) is 0 either way.
    """
    f32 = types.float32
    ok = (
        _is_c(x, f32)
        and isinstance(L, types.Array)
        and L.layout == "C"
        and L.dtype in (types.int8, types.uint8)
        and add == f32
        and dl == f32
        and all(isinstance(a, types.Integer) for a in (xo, lo, hi, bias, n))
    )
    if not ok:
        return None
    sig = types.void(x, xo, add, dl, lo, hi, bias, L, n)

    def codegen(context, builder, signature, args):
        x_, xo_, add_, dl_, lo_, hi_, bias_, L_, n_ = args
        ta = signature.args
        xp = _data(context, builder, ta[0], x_)
        lp = _data(context, builder, ta[7], L_)
        xo_ = context.cast(builder, xo_, ta[1], types.int64)
        n_ = context.cast(builder, n_, ta[8], types.int64)
        lov = _splat_i32(builder, context.cast(builder, lo_, ta[4], types.int64))
        hiv = _splat_i32(builder, context.cast(builder, hi_, ta[5], types.int64))
        bv = _splat_i32(builder, context.cast(builder, bias_, ta[6], types.int64))
        av = _splat(builder, add_)
        dv = _splat(builder, dl_)
        i64 = ir.IntType(64)
        with cgutils.for_range(builder, builder.ashr(n_, ir.Constant(i64, 3))) as loop:
            off = builder.add(xo_, builder.mul(loop.index, ir.Constant(i64, 8)))
            v = builder.fdiv(builder.fadd(_vload(builder, xp, off), av), dv)
            li = builder.add(_clamp8(builder, _nearest_int8(builder, v), lov, hiv), bv)
            _vstore(builder, builder.trunc(li, _V8I8), lp, off, _V8I8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def mxfp4_indices(typingctx, x, xo, d, idx):
    """ggml best_index_mxfp4 for x[xo:xo+32] at scale d into idx[0:32] (uint8), 8 lanes at a time.

    C scans all 16 entries and keeps the first strict minimum of ``fabsf(kvalues[i]*d - x)``; only
    entry 0 and the seven entries of x's sign can win (see :mod:`engine.quant.mxfp4`), scanned in
    the same order with the same comparisons.  ``kvalues[i]*d`` is exact (d a power of two).
    """
    ok = (
        _is_c(x, types.float32)
        and _is_c(idx, types.uint8)
        and d == types.float32
        and isinstance(xo, types.Integer)
    )
    if not ok:
        return None
    sig = types.void(x, xo, d, idx)

    def codegen(context, builder, signature, args):
        x_, xo_, d_, idx_ = args
        ta = signature.args
        xp = _data(context, builder, ta[0], x_)
        ip = _data(context, builder, ta[3], idx_)
        xo_ = context.cast(builder, xo_, ta[1], types.int64)
        dv = _splat(builder, d_)
        i64 = ir.IntType(64)
        absmask = ir.Constant(_V8I32, [0x7FFFFFFF] * 8)

        def fabs(v):
            return builder.bitcast(builder.and_(builder.bitcast(v, _V8I32), absmask), _V8F)

        for c in range(4):
            off = ir.Constant(i64, 8 * c)
            xv = _vload(builder, xp, builder.add(xo_, off))
            neg = builder.fcmp_ordered("<", xv, _splat_const(0.0))  # Kvant's split: x >= 0 or not
            base = builder.select(neg, ir.Constant(_V8I32, [8] * 8), ir.Constant(_V8I32, None))
            best = ir.Constant(_V8I32, None)
            best_err = fabs(xv)
            for i, v in enumerate((1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0), start=1):
                c_pos = builder.fmul(_splat_const(v), dv)
                c_neg = builder.fmul(_splat_const(-v), dv)
                err = fabs(builder.fsub(builder.select(neg, c_neg, c_pos), xv))
                better = builder.fcmp_ordered("<", err, best_err)
                best = builder.select(better, builder.add(base, ir.Constant(_V8I32, [i] * 8)), best)
                best_err = builder.select(better, err, best_err)
            _vstore(builder, builder.trunc(best, _V8I8), ip, off, _V8I8)
        return context.get_dummy_value()

    return sig, codegen
