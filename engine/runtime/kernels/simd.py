"""SIMD building blocks that Numba's auto-vectorizer does not find, as Numba intrinsics.

LLVM vectorizes plain loops well, but not the shape a Q8_0 dot product needs: a 32-element
int8 · int8 block summed in integers, converted to float once per block and scaled, with the
partial sums kept in SIMD lanes across blocks (llama.cpp's AVX2 / AVX-512 kernels).  Written as
loops, it either ends every 32-element block in a horizontal sum or multiplies in 32-bit lanes;
both run at a fraction of the shape below.  These intrinsics emit that shape directly as LLVM
vector IR, inlined into the calling ``@njit`` function:

- :func:`acc16`: a zeroed 16-lane f32 accumulator on the stack (LLVM keeps it in a register);
- :func:`acc_q8`, :func:`dot_q8_block`: ``acc += f32(quads(q[qo:qo+32] · x[xo:xo+32])) · s`` in 8
  lanes, where lane ``i`` holds the exact integer sum of the four products
  ``4i..4i+3`` (``pmaddwd``, then adjacent pairs added), the multiply-add fused (one rounding)
  where the CPU has FMA.  This is llama.cpp's own
  Q8_0 arithmetic on x86 (``ggml_vec_dot_q8_0_q8_0``'s AVX2 path and tinyBLAS's ``updot`` +
  ``madd``: 8 lanes of 4-product sums, ``fmadd(d_x·d_y, sum, acc)``), so with the same activation
  codes our Q8_0 products are llama.cpp's, bit for bit;
- :func:`hsum_q8`: the 8 lanes of :func:`dot_q8_block` summed as a fixed tree (4 + 4, 2 + 2, 1 + 1:
  llama.cpp's ``hsum_float_8``);
- :func:`axpy16`, :func:`load16`, :func:`store16`: 16-lane f32 ``acc += x·s``, loads and stores;
- :func:`q4k_block`, :func:`q5k_block`, :func:`q6k_block` (and their two-token forms),
  :func:`kq_mins4`, :func:`kq_minsum`, :func:`acc8`, :func:`hsum8`, :func:`hsum4`
  (and :func:`~.fmath.fmadd32`): llama.cpp's x86 K-quant × Q8_K arithmetic (see the K-quant section below).

Every value is defined by that arithmetic, not by the instruction set: with AVX-512BW the pair
sums are one ``vpmaddwd`` on a zmm register, with AVX2 two on ymm registers, otherwise generic
vector IR that LLVM lowers for the machine; the integer sums are exact, and the float operations
(convert, multiply-add, tree sum) are the same IEEE operations in the same order on every path,
so results are bit-identical across them (a CPU without FMA rounds :func:`dot_q8_block`'s
multiply and add separately, as llama.cpp does there).  ``tests/test_simd.py`` checks the paths
against each other and against a NumPy model of the same arithmetic.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8, _I16, _I32, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.FloatType()
_V32I8 = ir.VectorType(_I8, 32)
_V32I16 = ir.VectorType(_I16, 32)
_V16I16 = ir.VectorType(_I16, 16)
_V16I32 = ir.VectorType(_I32, 16)
_V8I32 = ir.VectorType(_I32, 8)
_V16F = ir.VectorType(_F32, 16)
_V8F = ir.VectorType(_F32, 8)
_V8I64 = ir.VectorType(ir.IntType(64), 8)


def _mask(idx) -> ir.Constant:
    idx = list(idx)
    return ir.Constant(ir.VectorType(_I32, len(idx)), idx)


def _features(context) -> str:
    """The target features Numba compiles for (``+avx512bw,...``): the host's, or NUMBA_CPU_*."""
    feats = getattr(context.codegen(), "_tm_features", None)
    if feats is None:  # pragma: no cover - older Numba: ask LLVM about the host
        import llvmlite.binding as llb

        feats = llb.get_host_cpu_features().flatten()
    return feats


def _pair_sums(builder, q: ir.Value, x: ir.Value, path: str) -> ir.Value:
    """<16 x i32> lane i = q[2i]·x[2i] + q[2i+1]·x[2i+1] of two <32 x i16> vectors."""
    if path == "avx512bw":
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16I32, [_V32I16, _V32I16]), "llvm.x86.avx512.pmaddw.d.512"
        )
        return builder.call(fn, [q, x])
    if path == "avx2":
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V8I32, [_V16I16, _V16I16]), "llvm.x86.avx2.pmadd.wd"
        )
        lo, hi = _mask(range(16)), _mask(range(16, 32))
        a = builder.call(fn, [builder.shuffle_vector(q, q, lo), builder.shuffle_vector(x, x, lo)])
        b = builder.call(fn, [builder.shuffle_vector(q, q, hi), builder.shuffle_vector(x, x, hi)])
        return builder.shuffle_vector(a, b, _mask(range(16)))
    even, odd = _mask(range(0, 32, 2)), _mask(range(1, 32, 2))

    def half(v, m):
        return builder.sext(builder.shuffle_vector(v, v, m), _V16I32)

    return builder.add(builder.mul(half(q, even), half(x, even)), builder.mul(half(q, odd), half(x, odd)))


def has_fma() -> bool:
    """Whether :func:`dot_q8_block` fuses its multiply-add (the CPU Numba compiles for has FMA)."""
    from numba.core.registry import cpu_target

    return _has_fma(cpu_target.target_context)


def _has_fma(context) -> bool:
    return "+fma" in _features(context)


def _path(context, forced: str | None) -> str:
    if forced is not None:
        return forced
    feats = _features(context)
    if "+avx512bw" in feats:
        return "avx512bw"
    if "+avx2" in feats:
        return "avx2"
    return "generic"


def _block_ptr(context, builder, aryty, ary, off):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [off]), _V32I8.as_pointer())


@intrinsic
def acc16(typingctx):
    """A zeroed 16-lane f32 accumulator (a stack slot, promoted to a register by LLVM)."""

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, _V16F)
        builder.store(ir.Constant(_V16F, None), slot)
        return builder.bitcast(slot, _F32.as_pointer())

    return types.CPointer(types.float32)(), codegen


def _q8_path(context, forced: str | None) -> str:
    """The instruction path of the Q8_0 block product: VNNI (``vpdpbusd``: four products per
    lane in one instruction), else the pair sums of :func:`_path` with adjacent pairs added."""
    if forced is not None:
        return forced
    feats = _features(context)
    if ("+avx512vnni" in feats and "+avx512vl" in feats) or "+avxvnni" in feats:
        return "vnni"
    return _path(context, None)


def _quads_vnni(builder, qb: ir.Value, xb: ir.Value) -> ir.Value:
    """<8 x i32> lane i = Σ q[4i..4i+3]·x[4i..4i+3] of two <32 x i8> blocks, llama.cpp's way:
    ``vpdpbusd(0, |q|, sign(x, q))`` (exact: |q| ≤ 128 fits u8, and the activations, never -128,
    change sign without overflow)."""
    mod = builder.module
    absf = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_V32I8, [_V32I8, ir.IntType(1)]), "llvm.abs.v32i8"
    )
    signf = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_V32I8, [_V32I8, _V32I8]), "llvm.x86.avx2.psign.b"
    )
    dpf = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_V8I32, [_V8I32, _V8I32, _V8I32]), "llvm.x86.avx512.vpdpbusd.256"
    )
    aq = builder.call(absf, [qb, ir.Constant(ir.IntType(1), 0)])
    sx = builder.call(signf, [xb, qb])
    zero = ir.Constant(_V8I32, None)
    return builder.call(dpf, [zero, builder.bitcast(aq, _V8I32), builder.bitcast(sx, _V8I32)])


def _fma_into(context, builder, accp, f: ir.Value, scale: ir.Value, n: int) -> None:
    """``acc[0:n] = acc + f·s`` (fused where the CPU has FMA) for an n-lane f32 vector ``f``."""
    vt = ir.VectorType(_F32, n)
    sv = builder.insert_element(ir.Constant(vt, ir.Undefined), scale, ir.Constant(_I32, 0))
    sv = builder.shuffle_vector(sv, sv, _mask([0] * n))
    ap = builder.bitcast(accp, vt.as_pointer())
    if _has_fma(context):  # one rounding: acc + f·s exactly, then rounded
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{n}f32"
        )
        builder.store(builder.call(fma, [f, sv, builder.load(ap)]), ap)
    else:
        builder.store(builder.fadd(builder.load(ap), builder.fmul(f, sv)), ap)


def _make_q8(forced: str | None):
    """(acc_q8, dot_q8_block, hsum_q8) for one instruction path (``None``: this CPU's best).  The 8 quad
    lanes live in the first 8 lanes of the accumulator on the VNNI path and in its even lanes
    otherwise (no cross-lane shuffle per block); each lane sees the same float operations, so
    every path gives the same bits."""

    @intrinsic
    def dot_q8_block(typingctx, acc, q, qo, x, xo, s):
        """``acc += f32(quads(q[qo:qo+32] · x[xo:xo+32])) · s`` (int8 blocks, f32 scale)."""
        if not (isinstance(q, types.Array) and q.dtype == types.int8 and q.ndim == 1):
            return None
        if not (isinstance(x, types.Array) and x.dtype == types.int8 and x.ndim == 1):
            return None

        def codegen(context, builder, signature, args):
            accp, qa, qoff, xa, xoff, scale = args
            qb = builder.load(_block_ptr(context, builder, signature.args[1], qa, qoff), align=1)
            xb = builder.load(_block_ptr(context, builder, signature.args[3], xa, xoff), align=1)
            path = _q8_path(context, forced)
            if path == "vnni":
                _fma_into(
                    context, builder, accp, builder.sitofp(_quads_vnni(builder, qb, xb), _V8F), scale, 8
                )
                return context.get_dummy_value()
            pairs = _pair_sums(builder, builder.sext(qb, _V32I16), builder.sext(xb, _V32I16), path)
            # quads in the even lanes: each 64-bit lane pair (p0, p1) + (p1, 0) = (p0 + p1, p1);
            # the odd lanes carry p1 along and are never read (see hsum_q8)
            hi = builder.lshr(builder.bitcast(pairs, _V8I64), ir.Constant(_V8I64, [32] * 8))
            quads = builder.add(pairs, builder.bitcast(hi, _V16I32))
            _fma_into(context, builder, accp, builder.sitofp(quads, _V16F), scale, 16)
            return context.get_dummy_value()

        return types.void(acc, q, qo, x, xo, types.float32), codegen

    @intrinsic
    def hsum_q8(typingctx, acc):
        """The 8 lanes that ``dot_q8_block`` accumulated in an ``acc_q8`` slot, summed as
        llama.cpp's ``hsum_float_8``: (0-3 + 4-7), then (0-1 + 2-3), then 0 + 1."""

        def codegen(context, builder, signature, args):
            if _q8_path(context, forced) == "vnni":
                return _hsum_f32(builder, builder.load(builder.bitcast(args[0], _V8F.as_pointer())), 8)
            v = builder.load(builder.bitcast(args[0], _V16F.as_pointer()))
            return _hsum_f32(builder, builder.shuffle_vector(v, v, _mask(range(0, 16, 2))), 8)

        return types.float32(acc), codegen

    @intrinsic
    def acc_q8(typingctx):
        """A zeroed accumulator for ``dot_q8_block``: 8 f32 lanes on the VNNI path, else 16."""

        def codegen(context, builder, signature, args):
            vt = _V8F if _q8_path(context, forced) == "vnni" else _V16F
            slot = cgutils.alloca_once(builder, vt)
            builder.store(ir.Constant(vt, None), slot)
            return builder.bitcast(slot, _F32.as_pointer())

        return types.CPointer(types.float32)(), codegen

    return acc_q8, dot_q8_block, hsum_q8


acc_q8, dot_q8_block, hsum_q8 = _make_q8(None)
# the other paths, for tests that hold every path to the same bits
Q8_PATHS = {p: _make_q8(p) for p in ("vnni", "avx512bw", "avx2", "generic")}


def _hsum_f32(builder, v: ir.Value, n: int) -> ir.Value:
    """Lanes summed as a fixed tree: halves added lane-wise (0..n/2-1 + n/2..n-1, ...)."""
    while n > 1:
        h = n // 2
        lo = builder.shuffle_vector(v, v, _mask(range(h)))
        v = builder.fadd(lo, builder.shuffle_vector(v, v, _mask(range(h, n))))
        n = h
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _f32_ptr(context, builder, aryty, ary, off):
    data = context.make_array(aryty)(context, builder, ary).data
    return builder.bitcast(builder.gep(data, [off]), _V16F.as_pointer())


def _is_f32_vector(a) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == 1


@intrinsic
def axpy16(typingctx, acc, x, off, s):
    """``acc += x[off:off+16] * s`` lane-wise (an f32 multiply, then an f32 add: the same two
    roundings as the scalar ``a += x[i] * s``)."""
    if not _is_f32_vector(x):
        return None

    def codegen(context, builder, signature, args):
        accp, xa, xoff, scale = args
        xv = builder.load(_f32_ptr(context, builder, signature.args[1], xa, xoff), align=4)
        sv = builder.insert_element(ir.Constant(_V16F, ir.Undefined), scale, ir.Constant(_I32, 0))
        sv = builder.shuffle_vector(sv, sv, _mask([0] * 16))
        ap = builder.bitcast(accp, _V16F.as_pointer())
        builder.store(builder.fadd(builder.load(ap), builder.fmul(xv, sv)), ap)
        return context.get_dummy_value()

    return types.void(acc, x, off, types.float32), codegen


@intrinsic
def load16(typingctx, acc, x, off):
    """``acc = x[off:off+16]``."""
    if not _is_f32_vector(x):
        return None

    def codegen(context, builder, signature, args):
        accp, xa, xoff = args
        xv = builder.load(_f32_ptr(context, builder, signature.args[1], xa, xoff), align=4)
        builder.store(xv, builder.bitcast(accp, _V16F.as_pointer()))
        return context.get_dummy_value()

    return types.void(acc, x, off), codegen


@intrinsic
def store16(typingctx, acc, x, off):
    """``x[off:off+16] = acc``."""
    if not _is_f32_vector(x):
        return None

    def codegen(context, builder, signature, args):
        accp, xa, xoff = args
        v = builder.load(builder.bitcast(accp, _V16F.as_pointer()))
        builder.store(v, _f32_ptr(context, builder, signature.args[1], xa, xoff), align=4)
        return context.get_dummy_value()

    return types.void(acc, x, off), codegen


def _hsum_i32(builder, v: ir.Value, n: int) -> ir.Value:
    while n > 1:
        h = n // 2
        v = builder.add(
            builder.shuffle_vector(v, v, _mask(range(h))), builder.shuffle_vector(v, v, _mask(range(h, n)))
        )
        n = h
    return builder.extract_element(v, ir.Constant(_I32, 0))


# ============================================================================ K-quants × Q8_K
#
# llama.cpp's x86 ``ggml_vec_dot_{q4,q5,q6}_K_q8_K`` (the AVX2 paths, which its AVX-512 builds
# run too), lane for lane.  Per 256-element block, 8 int32 lanes: lane k sums, over the block's
# eight 32-element chunks, the four products 4k..4k+3 of the unsigned codes with the Q8_K codes
# (``pmaddubsw``) times their sub-block scale (``pmaddwd``); Q6_K's codes are unsigned 0..63 and
# its -32 offset comes off each lane as ``32·(bs[2k]·sc[2k] + bs[2k+1]·sc[2k+1])`` from the
# activations' block sums.  Then ``acc = fma(d_x·d_w, f32(lanes), acc)`` in 8 f32 lanes kept
# across blocks, ``hsum_float_8`` at the end.  Q4_K's mins go into 4 more lanes
# (``acc_m = fma(-d_x·dmin, f32(m·bsum pairs), acc_m)``, summed (0 + 2) + (1 + 3) and added last);
# Q5_K's into a scalar, ``summs = fma(-d_x·dmin, f32(Σ m·bsum), summs)`` (C compilers contract
# llama.cpp's ``summs += dmin * sum`` where the CPU has FMA).  The integer lanes are exact on every
# path (the int16 pair sums are at most 2·63·128), so the paths give the same bits.

_I64 = ir.IntType(64)
_V4F = ir.VectorType(_F32, 4)


def _vec(t: ir.Type, n: int) -> ir.VectorType:
    return ir.VectorType(t, n)


def _kq_path(context, forced: str | None) -> str:
    """The instruction path of the K-quant block products: AVX-512 VNNI (``vpdpwssd`` adds the
    scaled pair sums into the lanes in one instruction), else the paths of :func:`_path`."""
    if forced is not None:
        return forced
    feats = _features(context)
    if "+avx512vnni" in feats and "+avx512bw" in feats:
        return "vnni"
    return _path(context, None)


def _load(context, builder, aryty, ary, off, vt: ir.VectorType, align: int = 1) -> ir.Value:
    """``vt`` loaded from element ``off`` of a 1-D array (unaligned)."""
    data = context.make_array(aryty)(context, builder, ary).data
    off = builder.sext(off, _I64) if off.type.width < 64 else off
    return builder.load(builder.bitcast(builder.gep(data, [off]), vt.as_pointer()), align=align)


def _at(builder, off: ir.Value, k: int) -> ir.Value:
    return builder.add(off, ir.Constant(off.type, k))


def _splat(v: ir.Value, value: int) -> ir.Constant:
    return ir.Constant(v.type, [value] * v.type.count)


def _bits(builder, v: ir.Value, shift: int, mask: int) -> ir.Value:
    """``(v >> shift) & mask`` lane-wise on unsigned bytes."""
    if shift:
        v = builder.lshr(v, _splat(v, shift))
    return builder.and_(v, _splat(v, mask))


def _shl(builder, v: ir.Value, k: int) -> ir.Value:
    return builder.shl(v, _splat(v, k))


def _cat(builder, a: ir.Value, b: ir.Value) -> ir.Value:
    return builder.shuffle_vector(a, b, _mask(range(2 * a.type.count)))


def _half(builder, v: ir.Value, i: int) -> ir.Value:
    h = v.type.count // 2
    return builder.shuffle_vector(v, v, _mask(range(i * h, i * h + h)))


def _kq_madd(builder, codes: ir.Value, x: ir.Value, s16: ir.Value, acc: ir.Value, path: str) -> ir.Value:
    """``acc + pmaddwd(s16, pmaddubsw(codes, x))`` on 64 bytes: <16 x i32> lane i = the four
    products ``codes[4i..4i+3]·x[4i..4i+3]`` times the scale of pair lanes ``2i, 2i+1`` (one scale
    per lane here), llama.cpp's ``_mm256_madd_epi16(scale, _mm256_maddubs_epi16(q, q8))``.  The
    codes are unsigned (≤ 63) and the activations int8, so the int16 pair sums (≤ 2·63·128) never
    saturate and every path computes the same exact integers."""
    mod = builder.module
    v64i8, v32i16 = _vec(_I8, 64), _vec(_I16, 32)
    if path in ("vnni", "avx512bw"):
        ub = cgutils.get_or_insert_function(
            mod, ir.FunctionType(v32i16, [v64i8, v64i8]), "llvm.x86.avx512.pmaddubs.w.512"
        )
        p16 = builder.call(ub, [codes, x])
        if path == "vnni":
            dp = cgutils.get_or_insert_function(
                mod, ir.FunctionType(_V16I32, [_V16I32, _V16I32, _V16I32]), "llvm.x86.avx512.vpdpwssd.512"
            )
            return builder.call(dp, [acc, builder.bitcast(s16, _V16I32), builder.bitcast(p16, _V16I32)])
        wd = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_V16I32, [v32i16, v32i16]), "llvm.x86.avx512.pmaddw.d.512"
        )
        return builder.add(acc, builder.call(wd, [s16, p16]))
    if path == "avx2":
        v32i8, v16i16 = _vec(_I8, 32), _vec(_I16, 16)
        ub = cgutils.get_or_insert_function(
            mod, ir.FunctionType(v16i16, [v32i8, v32i8]), "llvm.x86.avx2.pmadd.ub.sw"
        )
        wd = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_V8I32, [v16i16, v16i16]), "llvm.x86.avx2.pmadd.wd"
        )
        parts = []
        for i in range(2):
            p16 = builder.call(ub, [_half(builder, codes, i), _half(builder, x, i)])
            parts.append(builder.call(wd, [_half(builder, s16, i), p16]))
        return builder.add(acc, _cat(builder, parts[0], parts[1]))
    # generic: the same integers from plain vector IR
    even, odd = _mask(range(0, 64, 2)), _mask(range(1, 64, 2))

    def pick(v, m, ext):
        return ext(builder.shuffle_vector(v, v, m), v32i16)

    p16 = builder.add(
        builder.mul(pick(codes, even, builder.zext), pick(x, even, builder.sext)),
        builder.mul(pick(codes, odd, builder.zext), pick(x, odd, builder.sext)),
    )
    e32, o32 = _mask(range(0, 32, 2)), _mask(range(1, 32, 2))

    def pick32(v, m):
        return builder.sext(builder.shuffle_vector(v, v, m), _V16I32)

    return builder.add(
        acc,
        builder.add(
            builder.mul(pick32(s16, e32), pick32(p16, e32)), builder.mul(pick32(s16, o32), pick32(p16, o32))
        ),
    )


def _fold16(builder, s: ir.Value) -> ir.Value:
    """<16 x i32> -> <8 x i32>: lanes i and i+8 added (the two 32-element halves of each 64)."""
    return builder.add(_half(builder, s, 0), _half(builder, s, 1))


def _pmaddwd(builder, a: ir.Value, b: ir.Value, path: str) -> ir.Value:
    """<n/2 x i32> lane i = a[2i]·b[2i] + a[2i+1]·b[2i+1] of two <n x i16> (n = 8, 16)."""
    n = a.type.count
    if path != "generic":
        name, vi, vo = {8: ("llvm.x86.sse2.pmadd.wd", 8, 4), 16: ("llvm.x86.avx2.pmadd.wd", 16, 8)}[n]
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_vec(_I32, vo), [_vec(_I16, vi), _vec(_I16, vi)]), name
        )
        return builder.call(fn, [a, b])
    even, odd = _mask(range(0, n, 2)), _mask(range(1, n, 2))

    def pick(v, m):
        return builder.sext(builder.shuffle_vector(v, v, m), _vec(_I32, n // 2))

    return builder.add(builder.mul(pick(a, even), pick(b, even)), builder.mul(pick(a, odd), pick(b, odd)))


def _bsums16(context, builder, bt, ba, bo) -> ir.Value:
    """The 16 block sums ``bs[bo:bo+16]`` (int32, |s| ≤ 16·128) as <16 x i16> (exact)."""
    return builder.trunc(_load(context, builder, bt, ba, bo, _V16I32), _vec(_I16, 16))


def _min_prods(context, builder, m, b, path) -> ir.Value:
    """<4 x i32> lane k = ``mn[2k]·(bs[4k] + bs[4k+1]) + mn[2k+1]·(bs[4k+2] + bs[4k+3])`` from
    ``m`` = (type, mn, offset) and ``b`` = (type, bs, offset): llama.cpp's
    ``_mm_madd_epi16(mins, _mm_hadd_epi16(bsums))`` (exact)."""
    bv = _bsums16(context, builder, *b)
    q8s = builder.add(
        builder.shuffle_vector(bv, bv, _mask(range(0, 16, 2))),
        builder.shuffle_vector(bv, bv, _mask(range(1, 16, 2))),
    )
    mv = builder.zext(_load(context, builder, *m, _vec(_I8, 8)), _vec(_I16, 8))
    return _pmaddwd(builder, mv, q8s, path)


def _is_vec(a, dtype) -> bool:
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype == dtype


def _fma_lanes(context, builder, accp, f: ir.Value, scales: list) -> None:
    """``acc[0:n] = acc + f·s`` lane-wise (fused where the CPU has FMA), the n lanes split evenly
    between the f32 ``scales`` (one per 8 lanes here, one per 4 for the mins)."""
    n = f.type.count
    vt = ir.VectorType(_F32, n)
    sv = ir.Constant(vt, ir.Undefined)
    for i, sc in enumerate(scales):
        sv = builder.insert_element(sv, sc, ir.Constant(_I32, i))
    per = n // len(scales)
    sv = builder.shuffle_vector(sv, sv, _mask([i // per for i in range(n)]))
    ap = builder.bitcast(accp, vt.as_pointer())
    if _has_fma(context):
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{n}f32"
        )
        builder.store(builder.call(fma, [f, sv, builder.load(ap)]), ap)
    else:
        builder.store(builder.fadd(builder.load(ap), builder.fmul(f, sv)), ap)


def _join8(builder, sums: list) -> ir.Value:
    """Per-token <16 x i32> lane sums -> one vector of 8 lanes per token: lanes i and i+8 of
    each added (the two 32-element chunks of each 64), tokens one after another."""
    if len(sums) == 1:
        return _fold16(builder, sums[0])
    a, b = sums
    lo = builder.shuffle_vector(a, b, _mask([*range(8), *range(16, 24)]))
    hi = builder.shuffle_vector(a, b, _mask([*range(8, 16), *range(24, 32)]))
    return builder.add(lo, hi)


def _qk_sums(context, builder, path, q, qh, sc, xs) -> list:
    """Per token, the <16 x i32> scaled quad sums of one Q4_K/Q5_K block (halves folded later):
    ``q``, ``qh``, ``sc`` and each of ``xs`` are (type, array, offset); ``qh`` None for Q4_K.
    The codes and scales are unpacked once for all tokens."""
    v32i8, v64i8 = _vec(_I8, 32), _vec(_I8, 64)
    scv = builder.zext(_load(context, builder, *sc, _vec(_I8, 8)), _vec(_I16, 8))
    hv = _load(context, builder, *qh, v32i8) if qh is not None else None
    sums = [ir.Constant(_V16I32, None) for _ in xs]
    for j in range(4):
        qb = _load(context, builder, q[0], q[1], _at(builder, q[2], 32 * j), v32i8)
        lo, hi = _bits(builder, qb, 0, 15), _bits(builder, qb, 4, 15)
        if hv is not None:
            lo = builder.or_(lo, _shl(builder, _bits(builder, hv, 2 * j, 1), 4))
            hi = builder.or_(hi, _shl(builder, _bits(builder, hv, 2 * j + 1, 1), 4))
        codes = _cat(builder, lo, hi)
        s16 = builder.shuffle_vector(scv, scv, _mask([2 * j] * 16 + [2 * j + 1] * 16))
        for u, (xt, xa, xo) in enumerate(xs):
            xv = _load(context, builder, xt, xa, _at(builder, xo, 64 * j), v64i8)
            sums[u] = _kq_madd(builder, codes, xv, s16, sums[u], path)
    return sums


def _q6k_sums(context, builder, path, ql, qh, sc, xs, bss) -> ir.Value:
    """The 8-lane ``sumi - 32·bsc`` of one Q6_K block per token, tokens one after another."""
    v32i8, v64i8 = _vec(_I8, 32), _vec(_I8, 64)
    scv = builder.sext(_load(context, builder, *sc, _vec(_I8, 16)), _vec(_I16, 16))
    sums = [ir.Constant(_V16I32, None) for _ in xs]
    for h in range(2):
        a = _load(context, builder, ql[0], ql[1], _at(builder, ql[2], 64 * h), v64i8)
        a0, a1 = _half(builder, a, 0), _half(builder, a, 1)
        hb = _load(context, builder, qh[0], qh[1], _at(builder, qh[2], 32 * h), v32i8)
        c0 = builder.or_(_bits(builder, a0, 0, 15), _shl(builder, _bits(builder, hb, 0, 3), 4))
        c1 = builder.or_(_bits(builder, a1, 0, 15), _shl(builder, _bits(builder, hb, 2, 3), 4))
        c2 = builder.or_(_bits(builder, a0, 4, 15), _shl(builder, _bits(builder, hb, 4, 3), 4))
        c3 = builder.or_(_bits(builder, a1, 4, 15), _shl(builder, _bits(builder, hb, 6, 3), 4))
        for i, codes in enumerate((_cat(builder, c0, c1), _cat(builder, c2, c3))):
            s16 = builder.shuffle_vector(scv, scv, _mask([8 * h + 4 * i + e // 8 for e in range(32)]))
            for u, (xt, xa, xo) in enumerate(xs):
                xv = _load(context, builder, xt, xa, _at(builder, xo, 128 * h + 64 * i), v64i8)
                sums[u] = _kq_madd(builder, codes, xv, s16, sums[u], path)
    # llama.cpp's -32 offset: lane k minus 32·(bs[2k]·sc[2k] + bs[2k+1]·sc[2k+1])
    bsc = [_pmaddwd(builder, _bsums16(context, builder, bt, ba, bo), scv, path) for bt, ba, bo in bss]
    bsc = bsc[0] if len(bsc) == 1 else _cat(builder, bsc[0], bsc[1])
    return builder.sub(_join8(builder, sums), _shl(builder, bsc, 5))


def _make_kq(forced: str | None):
    """The K-quant block intrinsics for one instruction path (``None``: this CPU's best):
    (q4k_block, q4k_block2, q5k_block, q5k_block2, q6k_block, q6k_block2, kq_mins4, kq_mins4x2,
    kq_minsum).  The ``...2`` forms do two tokens at once (each token's lanes as in the one-token
    form, one after another in the accumulator): the same integers and float operations lane for
    lane, with the weight codes unpacked once."""

    def qk(five: bool, ntok: int):
        def codegen(context, builder, signature, args):
            ty = signature.args
            i = 3
            q = (ty[1], args[1], args[2])
            qh = None
            if five:
                qh = (ty[3], args[3], args[4])
                i = 5
            sc = (ty[i], args[i], args[i + 1])
            xo = args[i + 2 + ntok]
            xs = [(ty[i + 2 + u], args[i + 2 + u], xo) for u in range(ntok)]
            ds = list(args[i + 3 + ntok : i + 3 + 2 * ntok])
            sums = _qk_sums(context, builder, _kq_path(context, forced), q, qh, sc, xs)
            _fma_lanes(
                context, builder, args[0], builder.sitofp(_join8(builder, sums), _vec(_F32, 8 * ntok)), ds
            )
            return context.get_dummy_value()

        return codegen

    def q6(ntok: int):
        def codegen(context, builder, signature, args):
            ty = signature.args
            ql, qh, sc = ((ty[k], args[k], args[k + 1]) for k in (1, 3, 5))
            xo = args[7 + ntok]
            xs = [(ty[7 + u], args[7 + u], xo) for u in range(ntok)]
            b = 8 + ntok
            bo = args[b + ntok]
            bss = [(ty[b + u], args[b + u], bo) for u in range(ntok)]
            ds = list(args[b + ntok + 1 :])
            sumi = _q6k_sums(context, builder, _kq_path(context, forced), ql, qh, sc, xs, bss)
            _fma_lanes(context, builder, args[0], builder.sitofp(sumi, _vec(_F32, 8 * ntok)), ds)
            return context.get_dummy_value()

        return codegen

    def ok(arrays, dtypes) -> bool:
        return all(_is_vec(a, dt) for a, dt in zip(arrays, dtypes, strict=True))

    u8, i8, i32, f32 = types.uint8, types.int8, types.int32, types.float32

    @intrinsic
    def q4k_block(typingctx, acc, q, qo, sc, so, x, xo, d):
        """``acc[0:8] += f32(sumi)·d`` for one Q4_K block (``q[qo:qo+128]`` packed nibbles,
        scales ``sc[so:so+8]``) × Q8_K codes ``x[xo:xo+256]``: lane k of ``sumi`` sums the
        products 4k..4k+3 of each 32-element chunk times the chunk's scale (llama.cpp's AVX2
        lanes), the multiply-add fused where the CPU has FMA."""
        if not ok((q, sc, x), (u8, u8, i8)):
            return None
        return types.void(acc, q, qo, sc, so, x, xo, f32), qk(False, 1)

    @intrinsic
    def q4k_block2(typingctx, acc, q, qo, sc, so, x0, x1, xo, d0, d1):
        """:func:`q4k_block` for two tokens: lanes 0-7 of ``acc`` for ``x0``, 8-15 for ``x1``."""
        if not ok((q, sc, x0, x1), (u8, u8, i8, i8)):
            return None
        return types.void(acc, q, qo, sc, so, x0, x1, xo, f32, f32), qk(False, 2)

    @intrinsic
    def q5k_block(typingctx, acc, q, qo, qh, qho, sc, so, x, xo, d):
        """:func:`q4k_block` for Q5_K: the fifth bits from ``qh[qho:qho+32]``."""
        if not ok((q, qh, sc, x), (u8, u8, u8, i8)):
            return None
        return types.void(acc, q, qo, qh, qho, sc, so, x, xo, f32), qk(True, 1)

    @intrinsic
    def q5k_block2(typingctx, acc, q, qo, qh, qho, sc, so, x0, x1, xo, d0, d1):
        """:func:`q5k_block` for two tokens (as :func:`q4k_block2`)."""
        if not ok((q, qh, sc, x0, x1), (u8, u8, u8, i8, i8)):
            return None
        return types.void(acc, q, qo, qh, qho, sc, so, x0, x1, xo, f32, f32), qk(True, 2)

    @intrinsic
    def q6k_block(typingctx, acc, ql, qlo, qh, qho, sc, so, x, xo, bs, bo, d):
        """``acc[0:8] += f32(sumi - 32·bsc)·d`` for one Q6_K block (``ql[qlo:qlo+128]``,
        ``qh[qho:qho+64]``, int8 scales ``sc[so:so+16]``) × Q8_K codes ``x[xo:xo+256]`` with
        block sums ``bs[bo:bo+16]`` (int32): lane k of ``sumi`` sums the unsigned 6-bit codes'
        products 4k..4k+3 of each 32-element chunk times their 16-element scale, lane k of
        ``bsc`` is ``bs[2k]·sc[2k] + bs[2k+1]·sc[2k+1]`` (llama.cpp's AVX2 lanes: the -32 offset
        through the block sums)."""
        if not ok((ql, qh, sc, x, bs), (u8, u8, i8, i8, i32)):
            return None
        return types.void(acc, ql, qlo, qh, qho, sc, so, x, xo, bs, bo, f32), q6(1)

    @intrinsic
    def q6k_block2(typingctx, acc, ql, qlo, qh, qho, sc, so, x0, x1, xo, bs0, bs1, bo, d0, d1):
        """:func:`q6k_block` for two tokens (as :func:`q4k_block2`)."""
        if not ok((ql, qh, sc, x0, x1, bs0, bs1), (u8, u8, i8, i8, i8, i32, i32)):
            return None
        sig = types.void(acc, ql, qlo, qh, qho, sc, so, x0, x1, xo, bs0, bs1, bo, f32, f32)
        return sig, q6(2)

    @intrinsic
    def kq_mins4(typingctx, acc, mn, mo, bs, bo, dmin):
        """Q4_K's mins: ``acc[0:4] += f32(prod)·dmin`` with lane k of ``prod`` =
        ``mn[2k]·(bs[4k] + bs[4k+1]) + mn[2k+1]·(bs[4k+2] + bs[4k+3])`` (``mn[mo:mo+8]`` uint8,
        ``bs[bo:bo+16]`` int32): llama.cpp's ``acc_m``, fused where the CPU has FMA."""
        if not ok((mn, bs), (u8, i32)):
            return None

        def codegen(context, builder, signature, args):
            ty = signature.args
            p4 = _min_prods(
                context,
                builder,
                (ty[1], args[1], args[2]),
                (ty[3], args[3], args[4]),
                _kq_path(context, forced),
            )
            _fma_lanes(context, builder, args[0], builder.sitofp(p4, _V4F), [args[5]])
            return context.get_dummy_value()

        return types.void(acc, mn, mo, bs, bo, f32), codegen

    @intrinsic
    def kq_mins4x2(typingctx, acc, mn, mo, bs0, bs1, bo, dmin0, dmin1):
        """:func:`kq_mins4` for two tokens: lanes 0-3 of ``acc`` for ``bs0``, 4-7 for ``bs1``."""
        if not ok((mn, bs0, bs1), (u8, i32, i32)):
            return None

        def codegen(context, builder, signature, args):
            ty = signature.args
            path = _kq_path(context, forced)
            m = (ty[1], args[1], args[2])
            p = [_min_prods(context, builder, m, (ty[k], args[k], args[5]), path) for k in (3, 4)]
            _fma_lanes(context, builder, args[0], builder.sitofp(_cat(builder, *p), _V8F), [args[6], args[7]])
            return context.get_dummy_value()

        return types.void(acc, mn, mo, bs0, bs1, bo, f32, f32), codegen

    @intrinsic
    def kq_minsum(typingctx, mn, mo, bs, bo):
        """The exact int32 ``Σ_s mn[mo + s//2] · bs[bo + s]`` over 16 block sums (Q5_K's mins)."""
        if not ok((mn, bs), (u8, i32)):
            return None

        def codegen(context, builder, signature, args):
            ty = signature.args
            p4 = _min_prods(
                context,
                builder,
                (ty[0], args[0], args[1]),
                (ty[2], args[2], args[3]),
                _kq_path(context, forced),
            )
            return _hsum_i32(builder, p4, 4)

        return types.int32(mn, mo, bs, bo), codegen

    return (
        q4k_block,
        q4k_block2,
        q5k_block,
        q5k_block2,
        q6k_block,
        q6k_block2,
        kq_mins4,
        kq_mins4x2,
        kq_minsum,
    )


(q4k_block, q4k_block2, q5k_block, q5k_block2, q6k_block, q6k_block2, kq_mins4, kq_mins4x2, kq_minsum) = (
    _make_kq(None)
)
# the other paths, for tests that hold every path to the same bits
KQ_PATHS = {p: _make_kq(p) for p in ("vnni", "avx512bw", "avx2", "generic")}


@intrinsic
def acc8(typingctx):
    """A zeroed 8-lane f32 accumulator (a stack slot, promoted to a register by LLVM)."""

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, _V8F)
        builder.store(ir.Constant(_V8F, None), slot)
        return builder.bitcast(slot, _F32.as_pointer())

    return types.CPointer(types.float32)(), codegen


def _lanes_at(builder, accp, off, vt):
    off = builder.sext(off, _I64) if off.type.width < 64 else off
    return builder.load(builder.bitcast(builder.gep(accp, [off]), vt.as_pointer()))


@intrinsic
def hsum8(typingctx, acc, off):
    """Lanes ``off..off+7`` of an accumulator summed as llama.cpp's ``hsum_float_8``:
    (0-3 + 4-7), then (0-1 + 2-3), then 0 + 1."""

    def codegen(context, builder, signature, args):
        return _hsum_f32(builder, _lanes_at(builder, args[0], args[1], _V8F), 8)

    return types.float32(acc, off), codegen


@intrinsic
def hsum4(typingctx, acc, off):
    """Lanes ``off..off+3`` of an accumulator summed as llama.cpp sums ``acc_m``:
    (0 + 2) + (1 + 3)."""

    def codegen(context, builder, signature, args):
        return _hsum_f32(builder, _lanes_at(builder, args[0], args[1], _V4F), 4)

    return types.float32(acc, off), codegen


# ============================================================================ Q4_K × Q8_K, repack
#
# llama.cpp runs Q4_K weights whose row count is a multiple of 8 through its CPU "repack" buffer
# (ggml-cpu/repack.cpp, arch/x86/repack.cpp), not through ggml_vec_dot_q4_K_q8_K, and its integer
# sums are grouped differently: per weight row and activation column,
#
# - gemm (``ggml_gemm_q4_K_8x8_q8_K``, the first ne11 - ne11 % 4 columns): for each 64-element
#   pair of sub-blocks ``p`` of each block, the exact int32 ``i = sc[2p]·dot(2p) + sc[2p+1]·dot(2p+1)``
#   goes into ``acc = fma(f32(i), d_w·d_x, acc)`` and ``im = mn[2p]·bs32(2p) + mn[2p+1]·bs32(2p+1)``
#   (bs32: the activations' 32-element sums) into ``accm = fma(f32(im), dmin_w·d_x, accm)``;
#   the result is ``acc - accm``;
# - gemv (``ggml_gemv_q4_K_8x8_q8_K``, every other column, decode included): the same with the
#   integers summed over the whole 256-element block before the one ``fma`` per block.
#
# :func:`q4k_isum` gives the gemv's block integer; :func:`q4k_tok16` / :func:`q4k_tok16x2` run the
# gemm for 16 activation columns at once, one per f32 lane (no horizontal sums: lane t is exactly
# the scalar sequence of column t), from unpacked weight codes and activations laid out
# token-interleaved (see the intrinsics).  The integers are exact on every path, so the paths give
# the same bits.


def _q4r_path(context, forced: str | None) -> str:
    if forced is not None:
        return forced
    feats = _features(context)
    if "+avx512vnni" in feats and "+avx512bw" in feats:
        return "vnni"
    if "+avx512bw" in feats:
        return "avx512bw"
    return "generic"


def _dot4_u8s8(builder, acc: ir.Value, w: ir.Value, x: ir.Value, path: str) -> ir.Value:
    """``acc`` + <16 x i32> lane i = Σ_{j<4} w[4i+j]·x[4i+j] of <64 x i8> ``w`` (unsigned codes
    ≤ 15) and ``x`` (int8): ``vpdpbusd``; without VNNI ``pmaddubsw`` (pair sums ≤ 2·15·128, exact)
    then ``pmaddwd`` by ones; else plain vector IR."""
    mod = builder.module
    v64i8, v32i16 = _vec(_I8, 64), _vec(_I16, 32)
    if path == "vnni":
        dp = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_V16I32, [_V16I32, _V16I32, _V16I32]), "llvm.x86.avx512.vpdpbusd.512"
        )
        return builder.call(dp, [acc, builder.bitcast(w, _V16I32), builder.bitcast(x, _V16I32)])
    if path == "avx512bw":
        ub = cgutils.get_or_insert_function(
            mod, ir.FunctionType(v32i16, [v64i8, v64i8]), "llvm.x86.avx512.pmaddubs.w.512"
        )
        wd = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_V16I32, [v32i16, v32i16]), "llvm.x86.avx512.pmaddw.d.512"
        )
        ones = ir.Constant(v32i16, [1] * 32)
        return builder.add(acc, builder.call(wd, [builder.call(ub, [w, x]), ones]))
    v64i32 = _vec(_I32, 64)
    prod = builder.mul(builder.zext(w, v64i32), builder.sext(x, v64i32))
    for j in range(4):
        acc = builder.add(acc, builder.shuffle_vector(prod, prod, _mask(range(j, 64, 4))))
    return acc


def _splat_val(builder, v: ir.Value, vt: ir.VectorType) -> ir.Value:
    s = builder.insert_element(ir.Constant(vt, ir.Undefined), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(s, s, _mask([0] * vt.count))


def _fma_v(context, builder, accp, f: ir.Value, s: ir.Value) -> None:
    """``acc = fma(f, s, acc)`` on 16 f32 lanes, always fused (llama.cpp's ``_mm*_fmadd_ps``)."""
    ap = builder.bitcast(accp, _V16F.as_pointer())
    fma = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V16F, [_V16F] * 3), "llvm.fma.v16f32"
    )
    builder.store(builder.call(fma, [f, s, builder.load(ap)]), ap)


def _make_q4r(forced: str | None):
    """(q4k_isum, q4k_tok16, q4k_tok16x2) for one instruction path (``None``: this CPU's best)."""
    u8, i8, i32, f32 = types.uint8, types.int8, types.int32, types.float32

    @intrinsic
    def q4k_isum(typingctx, q, qo, sc, so, x, xo):
        """The exact int32 ``Σ_s sc[so+s]·Σ_{e<32} code(32s+e)·x[xo+32s+e]`` of one Q4_K block
        (``q[qo:qo+128]`` packed nibbles, ``sc[so:so+8]``) × Q8_K codes ``x[xo:xo+256]``: the
        integer ``ggml_gemv_q4_K_8x8_q8_K`` scales once per block."""
        if not (_is_vec(q, u8) and _is_vec(sc, u8) and _is_vec(x, i8)):
            return None

        def codegen(context, builder, signature, args):
            ty = signature.args
            path = _kq_path(context, forced)
            sums = _qk_sums(
                context,
                builder,
                path,
                (ty[0], args[0], args[1]),
                None,
                (ty[2], args[2], args[3]),
                [(ty[4], args[4], args[5])],
            )
            return _hsum_i32(builder, sums[0], 16)

        return types.int32(q, qo, sc, so, x, xo), codegen

    def tok16(nrows: int):
        def codegen(context, builder, signature, args):
            ty = signature.args
            path = _q4r_path(context, forced)
            # args: (acc, accm) * nrows, w * nrows, wo, sc * nrows, mn * nrows, so,
            #       xT, xo, bT, bo, dx, dxo, (dw, dmin) * nrows
            accs = [(args[2 * r], args[2 * r + 1]) for r in range(nrows)]
            k = 2 * nrows
            ws = [(ty[k + r], args[k + r]) for r in range(nrows)]
            wo = args[k + nrows]
            k += nrows + 1
            scs = [(ty[k + r], args[k + r]) for r in range(nrows)]
            mns = [(ty[k + nrows + r], args[k + nrows + r]) for r in range(nrows)]
            k += 2 * nrows
            so = args[k]
            (xt, xa, xo), (bt, ba, bo), (dt, da, dxo) = (
                (ty[k + 1], args[k + 1], args[k + 2]),
                (ty[k + 3], args[k + 3], args[k + 4]),
                (ty[k + 5], args[k + 5], args[k + 6]),
            )
            k += 7
            dws = [(args[k + 2 * r], args[k + 2 * r + 1]) for r in range(nrows)]
            dx = _load(context, builder, dt, da, dxo, _V16F, align=4)
            scales = [
                (
                    builder.fmul(_splat_val(builder, dw, _V16F), dx),
                    builder.fmul(_splat_val(builder, dm, _V16F), dx),
                )
                for dw, dm in dws
            ]
            v64i8 = _vec(_I8, 64)
            for p in range(4):
                dots = [[ir.Constant(_V16I32, None)] * 2 for _ in range(nrows)]
                for h in range(2):
                    s = 2 * p + h
                    for g in range(8):
                        xv = _load(context, builder, xt, xa, _at(builder, xo, (s * 8 + g) * 64), v64i8)
                        for r, (wt, wa) in enumerate(ws):
                            w4 = _load(
                                context, builder, wt, wa, _at(builder, wo, s * 32 + 4 * g), _vec(_I8, 4)
                            )
                            w4 = builder.bitcast(w4, _I32)
                            wv = builder.bitcast(_splat_val(builder, w4, _V16I32), v64i8)
                            dots[r][h] = _dot4_u8s8(builder, dots[r][h], wv, xv, path)
                bs0 = _load(context, builder, bt, ba, _at(builder, bo, 32 * p), _V16I32, align=4)
                bs1 = _load(context, builder, bt, ba, _at(builder, bo, 32 * p + 16), _V16I32, align=4)
                for r in range(nrows):

                    def byte(arr, i):
                        v = _load(context, builder, arr[0], arr[1], _at(builder, so, i), _I8)
                        return _splat_val(builder, builder.zext(v, _I32), _V16I32)

                    isum = builder.add(
                        builder.mul(dots[r][0], byte(scs[r], 2 * p)),
                        builder.mul(dots[r][1], byte(scs[r], 2 * p + 1)),
                    )
                    imin = builder.add(
                        builder.mul(bs0, byte(mns[r], 2 * p)), builder.mul(bs1, byte(mns[r], 2 * p + 1))
                    )
                    _fma_v(context, builder, accs[r][0], builder.sitofp(isum, _V16F), scales[r][0])
                    _fma_v(context, builder, accs[r][1], builder.sitofp(imin, _V16F), scales[r][1])
            return context.get_dummy_value()

        return codegen

    def ok_tok(w, sc, mn, xT, bT, dx) -> bool:
        return (
            _is_vec(w, u8)
            and _is_vec(sc, u8)
            and _is_vec(mn, u8)
            and _is_vec(xT, i8)
            and _is_vec(bT, i32)
            and _is_vec(dx, f32)
        )

    @intrinsic
    def q4k_tok16(typingctx, acc, accm, w, wo, sc, mn, so, xT, xo, bT, bo, dx, dxo, dw, dmin):
        """One Q4_K block of one weight row × 16 activation columns (f32 lane t = column t) with
        ``ggml_gemm_q4_K_8x8_q8_K``'s arithmetic: for each sub-block pair p,
        ``acc = fma(f32(sc[2p]·dot(2p) + sc[2p+1]·dot(2p+1)), dw·dx, acc)`` and
        ``accm = fma(f32(mn[2p]·bT(2p) + mn[2p+1]·bT(2p+1)), dmin·dx, accm)``.

        ``w[wo:wo+256]``: the block's codes unpacked to bytes in element order; ``sc``, ``mn``
        ``[so:so+8]``: its scales and mins; ``xT[xo:xo+4096]``: the 16 columns' Q8_K codes of the
        block interleaved by 4 (element e of column t at ``(e//4)·64 + 4t + e%4``);
        ``bT[bo:bo+128]``: their 32-element sums (sub-block s of column t at ``16s + t``);
        ``dx[dxo:dxo+16]``: their scales; ``dw``, ``dmin``: the row's block scales."""
        if not ok_tok(w, sc, mn, xT, bT, dx):
            return None
        sig = types.void(acc, accm, w, wo, sc, mn, so, xT, xo, bT, bo, dx, dxo, f32, f32)
        return sig, tok16(1)

    @intrinsic
    def q4k_tok16x2(
        typingctx,
        acc0,
        accm0,
        acc1,
        accm1,
        w0,
        w1,
        wo,
        sc0,
        sc1,
        mn0,
        mn1,
        so,
        xT,
        xo,
        bT,
        bo,
        dx,
        dxo,
        dw0,
        dmin0,
        dw1,
        dmin1,
    ):
        """:func:`q4k_tok16` for two weight rows at once (each activation load serves both)."""
        if not (ok_tok(w0, sc0, mn0, xT, bT, dx) and ok_tok(w1, sc1, mn1, xT, bT, dx)):
            return None
        sig = types.void(
            acc0,
            accm0,
            acc1,
            accm1,
            w0,
            w1,
            wo,
            sc0,
            sc1,
            mn0,
            mn1,
            so,
            xT,
            xo,
            bT,
            bo,
            dx,
            dxo,
            f32,
            f32,
            f32,
            f32,
        )
        return sig, tok16(2)

    return q4k_isum, q4k_tok16, q4k_tok16x2


q4k_isum, q4k_tok16, q4k_tok16x2 = _make_q4r(None)
# the other paths, for tests that hold every path to the same bits
Q4R_PATHS = {p: _make_q4r(p) for p in ("vnni", "avx512bw", "generic")}


# ============================================================================ Q6_K × Q8_K, tiled
#
# llama.cpp (this build) does not repack Q6_K on x86; for a mat-mul of 8 or more activation columns
# its CPU backend runs Q6_K through its "tiled" mat-mul (ggml-cpu tiled.cpp /
# tiled-kernel.cpp, ``ggml_compute_forward_mul_mat_tiled``; the AVX-512 VNNI microkernel here), and
# below 8 columns through ``ggml_vec_dot_q6_K_q8_K`` (:func:`q6k_block`).  Per weight row and
# activation column, the tiled kernel takes each 256-element block's exact integer
# ``i = Σ_s sc[s]·Σ_{e<16} (code(16s+e) - 32)·x(16s+e)`` (16 sub-blocks of 16, codes 0..63), then
# ``r = f32(i)·d_w`` (rounded) and ``acc = fma(r, d_x, acc)``, block after block from ``acc = 0``.
#
# :func:`q6k_tok16` / :func:`q6k_tok16x2` run that for 16 activation columns at once, one per f32
# lane (lane t is exactly column t's scalar sequence), from the weight codes unpacked to bytes and
# the activations laid out as for :func:`q4k_tok16`; the -32 enters as each sub-block dot's start
# value ``-32·bsum16`` (exact integers, so every path gives the same bits).


def _make_q6t(forced: str | None):
    """(q6k_tok16, q6k_tok16x2) for one instruction path (``None``: this CPU's best)."""
    u8, i8, i32, f32 = types.uint8, types.int8, types.int32, types.float32

    def tok16(nrows: int):
        def codegen(context, builder, signature, args):
            ty = signature.args
            path = _q4r_path(context, forced)
            # args: acc * nrows, w * nrows, wo, sc * nrows, so, xT, xo, bT, bo, dx, dxo, dw * nrows
            accs = list(args[:nrows])
            ws = [(ty[nrows + r], args[nrows + r]) for r in range(nrows)]
            k = 2 * nrows
            wo = args[k]
            scs = [(ty[k + 1 + r], args[k + 1 + r]) for r in range(nrows)]
            k += 1 + nrows
            so = args[k]
            (xt, xa, xo), (bt, ba, bo), (dt, da, dxo) = (
                (ty[k + 1], args[k + 1], args[k + 2]),
                (ty[k + 3], args[k + 3], args[k + 4]),
                (ty[k + 5], args[k + 5], args[k + 6]),
            )
            dws = list(args[k + 7 : k + 7 + nrows])
            v64i8 = _vec(_I8, 64)
            isum = [ir.Constant(_V16I32, None)] * nrows
            for s in range(16):
                start = _load(context, builder, bt, ba, _at(builder, bo, 16 * s), _V16I32, align=4)
                dots = [start] * nrows
                for g in range(4):
                    xv = _load(context, builder, xt, xa, _at(builder, xo, (s * 4 + g) * 64), v64i8)
                    for r, (wt, wa) in enumerate(ws):
                        w4 = _load(context, builder, wt, wa, _at(builder, wo, s * 16 + 4 * g), _vec(_I8, 4))
                        wv = builder.bitcast(_splat_val(builder, builder.bitcast(w4, _I32), _V16I32), v64i8)
                        dots[r] = _dot4_u8s8(builder, dots[r], wv, xv, path)
                for r, (st, sa) in enumerate(scs):
                    sv = _load(context, builder, st, sa, _at(builder, so, s), _I8)
                    scv = _splat_val(builder, builder.sext(sv, _I32), _V16I32)
                    isum[r] = builder.add(isum[r], builder.mul(dots[r], scv))
            dx = _load(context, builder, dt, da, dxo, _V16F, align=4)
            for r in range(nrows):
                rv = builder.fmul(builder.sitofp(isum[r], _V16F), _splat_val(builder, dws[r], _V16F))
                _fma_v(context, builder, accs[r], rv, dx)
            return context.get_dummy_value()

        return codegen

    def ok_tok(w, sc, xT, bT, dx) -> bool:
        return all(_is_vec(a, t) for a, t in ((w, u8), (sc, i8), (xT, i8), (bT, i32), (dx, f32)))

    @intrinsic
    def q6k_tok16(typingctx, acc, w, wo, sc, so, xT, xo, bT, bo, dx, dxo, dw):
        """One Q6_K block of one weight row × 16 activation columns (f32 lane t = column t) with
        llama.cpp's tiled arithmetic: ``acc = fma(f32(i)·dw, dx, acc)``, ``i`` the block's exact
        ``Σ_s sc[s]·Σ_e (code - 32)·x``.

        ``w[wo:wo+256]``: the block's codes (0..63) unpacked to bytes in element order;
        ``sc[so:so+16]``: its int8 scales; ``xT[xo:xo+4096]``: the 16 columns' Q8_K codes of the
        block interleaved by 4 (element e of column t at ``(e//4)·64 + 4t + e%4``);
        ``bT[bo:bo+256]``: ``-32·`` their 16-element sums (sub-block s of column t at ``16s + t``);
        ``dx[dxo:dxo+16]``: their scales; ``dw``: the row's block scale."""
        if not ok_tok(w, sc, xT, bT, dx):
            return None
        return types.void(acc, w, wo, sc, so, xT, xo, bT, bo, dx, dxo, f32), tok16(1)

    @intrinsic
    def q6k_tok16x2(typingctx, acc0, acc1, w0, w1, wo, sc0, sc1, so, xT, xo, bT, bo, dx, dxo, dw0, dw1):
        """:func:`q6k_tok16` for two weight rows at once (each activation load serves both)."""
        if not (ok_tok(w0, sc0, xT, bT, dx) and ok_tok(w1, sc1, xT, bT, dx)):
            return None
        sig = types.void(acc0, acc1, w0, w1, wo, sc0, sc1, so, xT, xo, bT, bo, dx, dxo, f32, f32)
        return sig, tok16(2)

    return q6k_tok16, q6k_tok16x2


q6k_tok16, q6k_tok16x2 = _make_q6t(None)
# the other paths, for tests that hold every path to the same bits
Q6T_PATHS = {p: _make_q6t(p) for p in ("vnni", "avx512bw", "generic")}
