"""Whole-row vector quantizers for the types whose C code is a few operations per element.

Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (without an importance matrix), TQ1_0, TQ2_0: llama.cpp quantizes
these with a short scalar loop per element, so their speed is set by how many instructions each
element costs and by memory bandwidth.  The intrinsics here emit one loop over a row's blocks as
LLVM IR on ``<16 x float>`` vectors (AVX-512 registers; LLVM splits them on narrower machines), and
fold the input's finiteness check into the same pass (no second read of the input).

Every lane performs C's scalar operations in C's order (IEEE float32, no fast-math, no FMA
contraction).  What C does sequentially and is not order-independent is done exactly:

- ``amax``: the maximum of ``|x|`` as the maximum of the absolute values' integer bits (the same
  order for non-negative floats; NaN and inf bits sort above every finite value, which is also how
  a block is found to be non-finite);
- the signed maximum of Q4_0 / Q5_0 (the *first* element of largest magnitude) and the min / max of
  Q4_1 / Q5_1 (the first element equal to the extreme value: C's strict comparisons keep the first,
  which decides the sign of a zero) through the bit mask of matching lanes and its lowest set bit;
- x86's float-to-int conversions (``cvttss2si``: truncation, INT_MIN for NaN and out-of-range
  values) through a range check, so subnormal scales, whose inverse is infinite, give C's bytes;
- ``roundf`` / ``lroundf`` as ``llvm.round`` (half away from zero, exact);
- fp16 scales through ``fptrunc`` (IEEE round-to-nearest-even, as ggml's bit-trick conversion
  for every finite float: checked once on all of them, and in the tests at every fp16 rounding
  boundary and against llama.cpp's bytes).

Each intrinsic returns the number of blocks of the row holding a NaN or an infinity; the caller
raises :class:`~engine.errors.QuantError` when any row has one (the bytes are then discarded).
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from engine.quant._simd import _is_c

_F32 = ir.FloatType()
_I1 = ir.IntType(1)
_I8 = ir.IntType(8)
_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VF = ir.VectorType(_F32, 16)
_VI = ir.VectorType(_I32, 16)
_VB = ir.VectorType(_I8, 16)

_INT_MIN = -(2**31)
_ABS = 0x7FFFFFFF
_EXP = 0x7F800000  # |x| bits >= this: inf or NaN


def _cf(v: float) -> ir.Constant:
    return ir.Constant(_VF, [float(v)] * 16)


def _ci(v: int) -> ir.Constant:
    return ir.Constant(_VI, [int(v)] * 16)


def native_half(context) -> bool:
    """Whether the compile target converts float to fp16 in hardware (F16C on x86; every ARM64).
    Without it LLVM lowers ``fptrunc`` to half into a call of ``__truncsfhf2``, which Numba's JIT
    cannot resolve (the process aborts), so :func:`half_bits` spells the conversion out."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    feats = getattr(context.codegen(), "_tm_features", None)
    if feats is None:  # pragma: no cover - older Numba: ask LLVM about the host
        import llvmlite.binding as llb

        feats = llb.get_host_cpu_features().flatten()
    return "+f16c" in feats


def _like(ty: ir.Type, k: int | float) -> ir.Constant:
    """The constant ``k`` of type ``ty``, a scalar or a vector (every lane ``k``)."""
    return ir.Constant(ty, [k] * ty.count) if isinstance(ty, ir.VectorType) else ir.Constant(ty, k)


def half_bits(b: ir.IRBuilder, v: ir.Value, native: bool) -> ir.Value:
    """fp16 bits of a float or a vector of floats (i16 lanes), round-to-nearest-even: ``fptrunc``
    where the target has the instruction, else ggml_compute_fp32_to_fp16's own bit arithmetic
    (the same result for every finite float)."""
    n = v.type.count if isinstance(v.type, ir.VectorType) else 0
    i16 = ir.VectorType(_I16, n) if n else _I16
    if native:
        return b.bitcast(b.fptrunc(v, ir.VectorType(ir.HalfType(), n) if n else ir.HalfType()), i16)
    it = ir.VectorType(_I32, n) if n else _I32
    ft = v.type
    ci, cf = functools.partial(_like, it), functools.partial(_like, ft)
    w = b.bitcast(v, it)
    absf = b.bitcast(b.and_(w, ci(_ABS)), ft)
    base = b.fmul(b.fmul(absf, cf(2.0**112)), cf(2.0**-110))
    shl1 = b.shl(w, ci(1))
    sign = b.and_(w, ci(-(2**31)))
    bias = b.and_(shl1, ci(0xFF000000 - 2**32))
    bias = b.select(b.icmp_unsigned("<", bias, ci(0x71000000)), ci(0x71000000), bias)
    base = b.fadd(b.bitcast(b.add(b.lshr(bias, ci(1)), ci(0x07800000)), ft), base)
    bits = b.bitcast(base, it)
    nonsign = b.add(b.and_(b.lshr(bits, ci(13)), ci(0x7C00)), b.and_(bits, ci(0x0FFF)))
    nan = b.icmp_unsigned(">", shl1, ci(0xFF000000 - 2**32))
    out = b.or_(b.lshr(sign, ci(16)), b.select(nan, ci(0x7E00), nonsign))
    return b.trunc(out, i16)


def half_to_float(b: ir.IRBuilder, h: ir.Value, native: bool) -> ir.Value:
    """The float (or floats) of fp16 bits ``h`` (i16 or i16 lanes), exactly: ``fpext`` where the
    target has the instruction, else ggml_compute_fp16_to_fp32's bit arithmetic."""
    n = h.type.count if isinstance(h.type, ir.VectorType) else 0
    ft = ir.VectorType(_F32, n) if n else _F32
    if native:
        return b.fpext(b.bitcast(h, ir.VectorType(ir.HalfType(), n) if n else ir.HalfType()), ft)
    it = ir.VectorType(_I32, n) if n else _I32
    ci, cf = functools.partial(_like, it), functools.partial(_like, ft)
    w = b.shl(b.zext(h, it), ci(16))
    sign = b.and_(w, ci(-(2**31)))
    two_w = b.add(w, w)
    normalized = b.fmul(b.bitcast(b.add(b.lshr(two_w, ci(4)), ci(0xE0 << 23)), ft), cf(2.0**-112))
    denormalized = b.fsub(b.bitcast(b.or_(b.lshr(two_w, ci(17)), ci(126 << 23)), ft), cf(0.5))
    small = b.icmp_unsigned("<", two_w, ci(1 << 27))
    mag = b.select(small, b.bitcast(denormalized, it), b.bitcast(normalized, it))
    return b.bitcast(b.or_(sign, mag), ft)


class _Emit:
    """LLVM IR for one block at a time: 16-lane loads, reductions, conversions, stores."""

    def __init__(self, builder: ir.IRBuilder, xp: ir.Value, op: ir.Value, native_half: bool = True):
        self.b = builder
        self.xp = xp  # float* (row input)
        self.op = op  # i8* (row output)
        self.native_half = native_half  # the target converts to fp16 itself (see half_bits)

    def call(self, name: str, ret: ir.Type, args: list[ir.Value]) -> ir.Value:
        fn = cgutils.get_or_insert_function(self.b.module, ir.FunctionType(ret, [a.type for a in args]), name)
        return self.b.call(fn, args)

    # ---------------------------------------------------------------- memory
    def load(self, off: ir.Value) -> ir.Value:
        p = self.b.bitcast(self.b.gep(self.xp, [off]), _VF.as_pointer())
        return self.b.load(p, align=4)

    def load1(self, off: ir.Value) -> ir.Value:
        return self.b.load(self.b.gep(self.xp, [off]))

    def store_bytes(self, off: ir.Value, v: ir.Value) -> None:
        """The low bytes of the 16 i32 lanes ``v`` at out[off:off+16]."""
        p = self.b.bitcast(self.b.gep(self.op, [off]), _VB.as_pointer())
        self.b.store(self.b.trunc(v, _VB), p, align=1)

    def store_int(self, off: ir.Value, v: ir.Value) -> None:
        """A scalar integer (i8 / i16 / i32) at out[off], little-endian, unaligned."""
        p = self.b.bitcast(self.b.gep(self.op, [off]), v.type.as_pointer())
        self.b.store(v, p, align=1)

    def at(self, base: ir.Value, k: int) -> ir.Value:
        return self.b.add(base, ir.Constant(_I64, k))

    # ---------------------------------------------------------------- lanes
    def abs_bits(self, v: ir.Value) -> ir.Value:
        return self.b.and_(self.b.bitcast(v, _VI), _ci(_ABS))

    def umax(self, a: ir.Value, c: ir.Value) -> ir.Value:
        return self.b.select(self.b.icmp_unsigned(">", a, c), a, c)

    def reduce_umax(self, v: ir.Value) -> ir.Value:
        return self.call("llvm.vector.reduce.umax.v16i32", _I32, [v])

    def fold(self, v: ir.Value, pick: Callable[[ir.Value, ir.Value], ir.Value]) -> ir.Value:
        """Reduce the 16 lanes of ``v`` pairwise with ``pick`` (an order-independent min or max)."""
        w = 16
        while w > 1:
            h = w // 2
            lo = self.b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, h), list(range(h))))
            hi = self.b.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, h), list(range(h, w))))
            v = pick(lo, hi)
            w = h
        return self.b.extract_element(v, ir.Constant(_I32, 0))

    def fmin(self, a: ir.Value, c: ir.Value) -> ir.Value:
        return self.b.select(self.b.fcmp_ordered("<", a, c), a, c)

    def fmax(self, a: ir.Value, c: ir.Value) -> ir.Value:
        return self.b.select(self.b.fcmp_ordered(">", a, c), a, c)

    def splat(self, s: ir.Value) -> ir.Value:
        vt = ir.VectorType(s.type, 16)
        one = self.b.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(_I32, 0))
        return self.b.shuffle_vector(one, ir.Constant(vt, ir.Undefined), ir.Constant(_VI, [0] * 16))

    def mask32(self, lo: ir.Value, hi: ir.Value) -> ir.Value:
        """The <16 x i1> masks of elements 0..15 and 16..31 as one i32 (bit j: element j)."""
        a = self.b.zext(self.b.bitcast(lo, _I16), _I32)
        c = self.b.zext(self.b.bitcast(hi, _I16), _I32)
        return self.b.or_(a, self.b.shl(c, ir.Constant(_I32, 16)))

    def first(self, mask: ir.Value) -> ir.Value:
        """Index (i64, 0..31) of the lowest set bit of an i32 mask (31 masks an empty one)."""
        tz = self.call("llvm.cttz.i32", _I32, [mask, ir.Constant(_I1, 0)])
        return self.b.zext(self.b.and_(tz, ir.Constant(_I32, 31)), _I64)

    def round(self, v: ir.Value) -> ir.Value:
        return self.call("llvm.round.v16f32", _VF, [v])

    def cvtt(self, v: ir.Value) -> ir.Value:
        """x86 ``cvttps2dq``: truncation toward zero, INT_MIN for NaN and values outside int32."""
        ok = self.b.and_(
            self.b.fcmp_ordered(">=", v, _cf(-(2.0**31))), self.b.fcmp_ordered("<", v, _cf(2.0**31))
        )
        t = self.b.fptosi(self.b.select(ok, v, _cf(0.0)), _VI)
        return self.b.select(ok, t, _ci(_INT_MIN))

    def int8(self, v: ir.Value) -> ir.Value:
        """C's ``(int8_t)`` of an int32 lane: its low byte, sign-extended."""
        s = ir.Constant(_VI, [24] * 16)
        return self.b.ashr(self.b.shl(v, s), s)

    def smin(self, v: ir.Value, k: int) -> ir.Value:
        return self.b.select(self.b.icmp_signed("<", v, _ci(k)), v, _ci(k))

    # ---------------------------------------------------------------- scalars
    def f16(self, s: ir.Value) -> ir.Value:
        """fp16 bits (i16) of a float: IEEE round-to-nearest-even, as ggml_compute_fp32_to_fp16."""
        return half_bits(self.b, s, self.native_half)

    def inv(self, d: ir.Value) -> ir.Value:
        """C's ``d ? 1.0f/d : 0.0f``."""
        z = ir.Constant(_F32, 0.0)
        return self.b.select(self.b.fcmp_unordered("!=", d, z), self.b.fdiv(ir.Constant(_F32, 1.0), d), z)

    def bad(self, amax_bits: ir.Value) -> ir.Value:
        """1 (i64) when a block's largest |x| bits are inf or NaN, else 0."""
        return self.b.zext(self.b.icmp_unsigned(">=", amax_bits, ir.Constant(_I32, _EXP)), _I64)


# ============================================================================ blocks of 32


def _absmax32(e: _Emit, xo: ir.Value) -> tuple[ir.Value, ir.Value, list[ir.Value], list[ir.Value]]:
    """(max |x| bits, the first element of that magnitude (+0 when all are zero), x, |x| bits)."""
    xs = [e.load(xo), e.load(e.at(xo, 16))]
    ab = [e.abs_bits(v) for v in xs]
    m = e.reduce_umax(e.umax(ab[0], ab[1]))
    ms = e.splat(m)
    j = e.first(e.mask32(*(e.b.icmp_unsigned("==", a, ms) for a in ab)))
    vmax = e.load1(e.b.add(xo, j))
    vmax = e.b.select(e.b.icmp_unsigned("==", m, ir.Constant(_I32, 0)), ir.Constant(_F32, 0.0), vmax)
    return m, vmax, xs, ab


def _minmax32(e: _Emit, xo: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value, list[ir.Value]]:
    """(max |x| bits, min, max, x): min and max the first elements equal to the extreme values."""
    xs = [e.load(xo), e.load(e.at(xo, 16))]
    m = e.reduce_umax(e.umax(e.abs_bits(xs[0]), e.abs_bits(xs[1])))
    out = []
    for pick in (e.fmin, e.fmax):
        v = e.splat(e.fold(pick(xs[0], xs[1]), pick))
        j = e.first(e.mask32(*(e.b.fcmp_ordered("==", a, v) for a in xs)))
        out.append(e.load1(e.b.add(xo, j)))
    return m, out[0], out[1], xs


def _q8_0(e: _Emit, xo: ir.Value, po: ir.Value) -> ir.Value:
    """quantize_row_q8_0_ref: d = amax/127, qs = roundf(x * (1/d))."""
    xs = [e.load(xo), e.load(e.at(xo, 16))]
    m = e.reduce_umax(e.umax(e.abs_bits(xs[0]), e.abs_bits(xs[1])))
    d = e.b.fdiv(e.b.bitcast(m, _F32), ir.Constant(_F32, 127.0))
    iv = e.splat(e.inv(d))
    e.store_int(po, e.f16(d))
    for k, v in enumerate(xs):
        e.store_bytes(e.at(po, 2 + 16 * k), e.cvtt(e.round(e.b.fmul(v, iv))))
    return e.bad(m)


def _q4_0_q5_0(nmax: int) -> Callable[[_Emit, ir.Value, ir.Value], ir.Value]:
    """quantize_row_q4_0_ref (nmax 8) / q5_0 (16): d = max / -nmax, MIN(2nmax-1, (int8_t)(x/d + nmax+.5))."""

    def emit(e: _Emit, xo: ir.Value, po: ir.Value) -> ir.Value:
        m, vmax, xs, _ = _absmax32(e, xo)
        d = e.b.fdiv(vmax, ir.Constant(_F32, -float(nmax)))
        iv = e.splat(e.inv(d))
        e.store_int(po, e.f16(d))
        q = [e.smin(e.int8(e.cvtt(e.b.fadd(e.b.fmul(v, iv), _cf(nmax + 0.5)))), 2 * nmax - 1) for v in xs]
        _pack(e, po, 2, q, nmax == 16)
        return e.bad(m)

    return emit


def _q4_1_q5_1(nmax: int) -> Callable[[_Emit, ir.Value, ir.Value], ir.Value]:
    """quantize_row_q4_1_ref (nmax 15: MIN(15, (int8_t)...)) / q5_1 (31: (uint8_t)(int)...)."""

    def emit(e: _Emit, xo: ir.Value, po: ir.Value) -> ir.Value:
        m, vmin, vmax, xs = _minmax32(e, xo)
        d = e.b.fdiv(e.b.fsub(vmax, vmin), ir.Constant(_F32, float(nmax)))
        iv = e.splat(e.inv(d))
        e.store_int(po, e.f16(d))
        e.store_int(e.at(po, 2), e.f16(vmin))
        mv = e.splat(vmin)
        q = [e.cvtt(e.b.fadd(e.b.fmul(e.b.fsub(v, mv), iv), _cf(0.5))) for v in xs]
        if nmax == 15:
            q = [e.smin(e.int8(v), 15) for v in q]
        _pack(e, po, 4, q, nmax == 31)
        return e.bad(m)

    return emit


def _pack(e: _Emit, po: ir.Value, at: int, q: list[ir.Value], five: bool) -> None:
    """Nibbles of the 32 quants (low bytes, as uint8) at po+at; for 5-bit types first qh (u32: bit j
    = bit 4 of quant j), then the nibbles."""
    lo, hi = (e.b.and_(v, _ci(0xFF)) for v in q)
    if five:
        bits = [e.b.icmp_unsigned("!=", e.b.and_(v, _ci(0x10)), _ci(0)) for v in (lo, hi)]
        e.store_int(e.at(po, at), e.mask32(*bits))
        lo, hi = e.b.and_(lo, _ci(0x0F)), e.b.and_(hi, _ci(0x0F))
        at += 4
    e.store_bytes(e.at(po, at), e.b.or_(lo, e.b.shl(hi, _ci(4))))


# ============================================================================ ternary (256)


def _absmax256(e: _Emit, xo: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(max |x| bits, the splat of C's ``amax ? 1/amax : 0``)."""
    acc = e.abs_bits(e.load(xo))
    for k in range(1, 16):
        acc = e.umax(acc, e.abs_bits(e.load(e.at(xo, 16 * k))))
    m = e.reduce_umax(acc)
    return m, e.splat(e.inv(e.b.bitcast(m, _F32)))


def _trits(e: _Emit, xo: ir.Value, k: int, iv: ir.Value) -> ir.Value:
    """C's ``lroundf(x * id) + 1`` of x[xo+k : xo+k+16] as i32 lanes (the low bits C keeps: lroundf's
    LONG_MIN for NaN / inf gives 1)."""
    r = e.round(e.b.fmul(e.load(e.at(xo, k)), iv))
    ok = e.b.fcmp_ordered("<", e.call("llvm.fabs.v16f32", _VF, [r]), _cf(2.0**31))
    t = e.b.fptosi(e.b.select(ok, r, _cf(0.0)), _VI)
    return e.b.select(ok, e.b.add(t, _ci(1)), _ci(1))


def _tq2_0(e: _Emit, xo: ir.Value, po: ir.Value) -> ir.Value:
    """quantize_row_tq2_0_ref: qs[32j+m] = sum_k (trit(x[128j + m + 32k]) & 3) << 2k; d last."""
    m, iv = _absmax256(e, xo)
    for j in range(2):
        for h in range(2):
            acc = _ci(0)
            for k in range(4):
                t = e.b.and_(_trits(e, xo, 128 * j + 32 * k + 16 * h, iv), _ci(3))
                acc = e.b.or_(acc, e.b.shl(t, _ci(2 * k)))
            e.store_bytes(e.at(po, 32 * j + 16 * h), acc)
    e.store_int(e.at(po, 64), e.f16(e.b.bitcast(m, _F32)))
    return e.bad(m)


def _tq1_byte(e: _Emit, q: ir.Value) -> ir.Value:
    """C's ``((uint16_t)q * 256 + 242) / 243`` of uint8 lanes."""
    return e.b.udiv(e.b.add(e.b.mul(q, _ci(256)), _ci(242)), _ci(243))


def _tq1_0(e: _Emit, xo: ir.Value, po: ir.Value) -> ir.Value:
    """quantize_row_tq1_0_ref: qs[0:32] five trits of x[m + 32n], qs[32:48] of x[160 + m + 16n],
    qh[4] four trits of x[240 + j + 4n] (and a zero trit), each byte q*3+t in uint8, rescaled."""
    m, iv = _absmax256(e, xo)
    three = _ci(3)
    mask = _ci(0xFF)
    for base, step, halves, out in ((0, 32, 2, 0), (160, 16, 1, 32)):
        for h in range(halves):
            q = _ci(0)
            for n in range(5):
                t = _trits(e, xo, base + 16 * h + step * n, iv)
                q = e.b.and_(e.b.add(e.b.mul(q, three), t), mask)
            e.store_bytes(e.at(po, out + 16 * h), _tq1_byte(e, q))
    # qh: byte j from the trits of elements 240 + j + 4n, n = 0..3 (lanes j, j+4, j+8, j+12)
    t = _trits(e, xo, 240, iv)
    q = _ci(0)
    for n in range(4):
        idx = ir.Constant(_VI, [(4 * n + i) % 16 if i < 4 else 0 for i in range(16)])
        tn = e.b.shuffle_vector(t, t, idx)
        q = e.b.and_(e.b.add(e.b.mul(q, three), tn), mask)
    q = e.b.and_(e.b.mul(q, three), mask)
    qb = e.b.trunc(_tq1_byte(e, q), _VB)
    for j in range(4):
        e.store_int(e.at(po, 48 + j), e.b.extract_element(qb, ir.Constant(_I32, j)))
    e.store_int(e.at(po, 52), e.f16(e.b.bitcast(m, _F32)))
    return e.bad(m)


# ============================================================================ row intrinsics


def _row_intrinsic(emit: Callable[[_Emit, ir.Value, ir.Value], ir.Value], qk: int, ts: int):
    """An intrinsic ``f(x, out) -> int64``: quantize the row ``x`` (float32, C) into ``out`` (uint8, C;
    len(x) // qk blocks of ts bytes); returns how many blocks hold a NaN or an infinity."""

    @intrinsic
    def row(typingctx, x, out):
        if not (_is_c(x, types.float32) and _is_c(out, types.uint8)):
            return None
        sig = types.int64(x, out)

        def codegen(context, builder, signature, args):
            xa = context.make_array(signature.args[0])(context, builder, args[0])
            oa = context.make_array(signature.args[1])(context, builder, args[1])
            nb = builder.sdiv(builder.extract_value(xa.shape, 0), ir.Constant(_I64, qk))
            e = _Emit(builder, xa.data, oa.data, native_half(context))
            count = cgutils.alloca_once_value(builder, ir.Constant(_I64, 0))
            with cgutils.for_range(builder, nb) as loop:
                i = loop.index
                bad = emit(e, builder.mul(i, ir.Constant(_I64, qk)), builder.mul(i, ir.Constant(_I64, ts)))
                builder.store(builder.add(builder.load(count), bad), count)
            return builder.load(count)

        return sig, codegen

    return row


q8_0_row = _row_intrinsic(_q8_0, 32, 34)
q4_0_row = _row_intrinsic(_q4_0_q5_0(8), 32, 18)
q5_0_row = _row_intrinsic(_q4_0_q5_0(16), 32, 22)
q4_1_row = _row_intrinsic(_q4_1_q5_1(15), 32, 20)
q5_1_row = _row_intrinsic(_q4_1_q5_1(31), 32, 24)
tq1_0_row = _row_intrinsic(_tq1_0, 256, 54)
tq2_0_row = _row_intrinsic(_tq2_0, 256, 66)


# ============================================================================ BF16, F16


def _half_span(bf16: bool):
    """An intrinsic ``f(u, out, lo, n) -> int64``: the half-precision bits of the float32 bit
    patterns u[lo:lo+n] into out[lo:lo+n] (uint16), n a multiple of 16; returns how many groups of
    16 hold a NaN or an infinity.

    - BF16 (ggml_fp32_to_bf16_row_ref): ``(u + 0x7fff + ((u >> 16) & 1)) >> 16``, NaN
      ``(u >> 16) | 64``;
    - F16 (ggml_compute_fp32_to_fp16): ``fptrunc``, IEEE round-to-nearest-even with overflow to
      infinity, which ggml's bit trick equals for every finite float (checked once on all 2^32 bit
      patterns; the tests sample them); the NaN encodings differ, but a NaN is an error before the
      bytes are used.
    """

    @intrinsic
    def span(typingctx, u, out, lo, n):
        ok = _is_c(u, types.uint32) and _is_c(out, types.uint16)
        if not (ok and isinstance(lo, types.Integer) and isinstance(n, types.Integer)):
            return None
        sig = types.int64(u, out, lo, n)

        def codegen(context, builder, signature, args):
            ta = signature.args
            up = context.make_array(ta[0])(context, builder, args[0]).data
            op = context.make_array(ta[1])(context, builder, args[1]).data
            lo_ = context.cast(builder, args[2], ta[2], types.int64)
            n_ = context.cast(builder, args[3], ta[3], types.int64)
            vh = ir.VectorType(_I16, 16)
            e = _Emit(builder, up, op, native_half(context))
            count = cgutils.alloca_once_value(builder, ir.Constant(_I64, 0))
            sixteen = _ci(16)
            with cgutils.for_range(builder, builder.ashr(n_, ir.Constant(_I64, 4))) as loop:
                off = builder.add(lo_, builder.shl(loop.index, ir.Constant(_I64, 4)))
                v = builder.load(builder.bitcast(builder.gep(up, [off]), _VI.as_pointer()), align=4)
                a = builder.and_(v, _ci(_ABS))
                if bf16:
                    hi = builder.lshr(v, sixteen)
                    bias = builder.add(_ci(0x7FFF), builder.and_(hi, _ci(1)))
                    rounded = builder.trunc(builder.lshr(builder.add(v, bias), sixteen), vh)
                    quiet = builder.trunc(builder.or_(hi, _ci(64)), vh)
                    h = builder.select(builder.icmp_unsigned(">", a, _ci(_EXP)), quiet, rounded)
                else:
                    h = half_bits(builder, builder.bitcast(v, _VF), e.native_half)
                dst = builder.bitcast(builder.gep(op, [off]), vh.as_pointer())
                builder.store(h, dst, align=2)
                builder.store(builder.add(builder.load(count), e.bad(e.reduce_umax(a))), count)
            return builder.load(count)

        return sig, codegen

    return span


bf16_span = _half_span(True)
f16_span = _half_span(False)
