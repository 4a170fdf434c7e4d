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
- :func:`hsum_q8` / :func:`hsum16`: the lanes summed as a fixed tree (:func:`hsum_q8`: 4 + 4, 2 + 2,
  1 + 1 over the 8 lanes of :func:`dot_q8_block`, llama.cpp's ``hsum_float_8``);
- :func:`axpy16`, :func:`load16`, :func:`store16`: 16-lane f32 ``acc += x·s``, loads and stores;
- :func:`dot_i16_i8`, :func:`dot_i16x16`: exact int32 dot products through ``pmaddwd``.

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


@intrinsic
def hsum16(typingctx, acc):
    """The 16 lanes of an :func:`acc16` accumulator summed as a fixed tree: halves added
    lane-wise (0-7 + 8-15, then 0-3 + 4-7, ...) down to one value."""

    def codegen(context, builder, signature, args):
        return _hsum_f32(builder, builder.load(builder.bitcast(args[0], _V16F.as_pointer())), 16)

    return types.float32(acc), codegen


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


@intrinsic
def dot_i16_i8(typingctx, w, wo, x, xo, nblk):
    """The exact int32 ``Σ w[wo+e]·x[xo+e]`` over ``32·nblk`` elements (int16 weights, int8
    activations): pair sums (``pmaddwd``) added in 16 int32 lanes, then the lanes added.  Integer
    sums are exact in any order, so this equals any other way of summing them (the caller keeps
    the total below 2³¹, as llama.cpp's int32 block sums do)."""
    if not (isinstance(w, types.Array) and w.dtype == types.int16 and w.ndim == 1):
        return None
    if not (isinstance(x, types.Array) and x.dtype == types.int8 and x.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        wa, woff, xa, xoff, nb = args
        wdata = context.make_array(signature.args[0])(context, builder, wa).data
        xdata = context.make_array(signature.args[2])(context, builder, xa).data
        path = _path(context, None)
        nb = builder.sext(nb, ir.IntType(64)) if nb.type.width < 64 else nb
        woff = builder.sext(woff, ir.IntType(64)) if woff.type.width < 64 else woff
        xoff = builder.sext(xoff, ir.IntType(64)) if xoff.type.width < 64 else xoff
        acc = cgutils.alloca_once_value(builder, ir.Constant(_V16I32, None))
        with cgutils.for_range(builder, nb) as loop:
            step = builder.mul(loop.index, ir.Constant(loop.index.type, 32))
            wp = builder.bitcast(builder.gep(wdata, [builder.add(woff, step)]), _V32I16.as_pointer())
            xp = builder.bitcast(builder.gep(xdata, [builder.add(xoff, step)]), _V32I8.as_pointer())
            wv = builder.load(wp, align=2)
            xv = builder.sext(builder.load(xp, align=1), _V32I16)
            builder.store(builder.add(builder.load(acc), _pair_sums(builder, wv, xv, path)), acc)
        return _hsum_i32(builder, builder.load(acc), 16)

    return types.int32(w, wo, x, xo, nblk), codegen


@intrinsic
def dot_i16x16(typingctx, a, ao, b, bo):
    """The exact int32 ``Σ a[ao+e]·b[bo+e]`` over 16 int16 elements (``pmaddwd`` on 256 bits)."""
    if not all(isinstance(v, types.Array) and v.dtype == types.int16 and v.ndim == 1 for v in (a, b)):
        return None

    def codegen(context, builder, signature, args):
        aa, aoff, ba, boff = args
        ap = builder.gep(context.make_array(signature.args[0])(context, builder, aa).data, [aoff])
        bp = builder.gep(context.make_array(signature.args[2])(context, builder, ba).data, [boff])
        av = builder.load(builder.bitcast(ap, _V16I16.as_pointer()), align=2)
        bv = builder.load(builder.bitcast(bp, _V16I16.as_pointer()), align=2)
        if _path(context, None) == "generic":
            even, odd = _mask(range(0, 16, 2)), _mask(range(1, 16, 2))

            def half(v, m):
                return builder.sext(builder.shuffle_vector(v, v, m), _V8I32)

            s = builder.add(
                builder.mul(half(av, even), half(bv, even)), builder.mul(half(av, odd), half(bv, odd))
            )
        else:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8I32, [_V16I16, _V16I16]), "llvm.x86.avx2.pmadd.wd"
            )
            s = builder.call(fn, [av, bv])
        return _hsum_i32(builder, s, 8)

    return types.int32(a, ao, b, bo), codegen
