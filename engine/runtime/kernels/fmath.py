"""Scalar float helpers that Numba has no spelling for.

llama.cpp's C and C++ are compiled with floating-point contraction, so some of its scalar
expressions are fused multiply-adds; the kernels that reproduce them use these:

- :func:`fma32`: ``a·b + c`` with one rounding everywhere (``llvm.fma.f32``: an FMA instruction
  where the CPU has one, a correctly rounded libm call otherwise);
- :func:`fmadd32`: ``a·b + c`` fused only where the CPU has FMA, else rounded twice, as a compiler
  contracting ``c += a * b`` for that CPU does (the K-quant kernels' scalar min sums).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from engine.quant._simd_rows import half_bits, half_to_float, native_half
from engine.runtime.kernels.simd import _has_fma

_F32 = ir.FloatType()


@intrinsic
def fma32(typingctx, a, b, c):
    """``a·b + c`` in f32, rounded once."""

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32, [_F32] * 3), "llvm.fma.f32")
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@intrinsic
def fmadd32(typingctx, a, b, c):
    """``a·b + c`` in f32: one rounding where the CPU has FMA (as C compilers contract
    ``c += a * b`` there), else the product and the sum rounded separately."""

    def codegen(context, builder, signature, args):
        x, y, z = (
            context.cast(builder, v, t, types.float32) for v, t in zip(args, signature.args, strict=True)
        )
        if _has_fma(context):
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_F32, [_F32] * 3), "llvm.fma.f32"
            )
            return builder.call(fn, [x, y, z])
        return builder.fadd(builder.fmul(x, y), z)

    return types.float32(a, b, c), codegen


def fma32_ref(a, b, c):
    """NumPy reference of :func:`fma32`: the f32 product is exact in f64, so one f64 rounding of the
    sum and one to f32 (a double rounding that only a sum within 2⁻⁵³ of an f32 tie could see)."""
    import numpy as np

    a64 = np.asarray(a, np.float32).astype(np.float64)
    b64 = np.asarray(b, np.float32).astype(np.float64)
    return (a64 * b64 + np.asarray(c, np.float32).astype(np.float64)).astype(np.float32)


@intrinsic
def f32_from_bits(typingctx, bits):
    """The f32 whose IEEE bit pattern is the uint32 ``bits`` (a bit cast, no conversion)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], _F32)

    return types.float32(types.uint32), codegen


@intrinsic
def f64_from_bits(typingctx, bits):
    """The f64 whose IEEE bit pattern is the uint64 ``bits`` (a bit cast, no conversion)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.uint64), codegen


@intrinsic
def round_f16(typingctx, x):
    """``x`` rounded to the nearest f16 (ties to even; IEEE overflow and subnormals), as f32: one
    ``vcvtps2ph`` where the CPU has F16C, and vectorizable in loops."""

    def codegen(context, builder, signature, args):
        native = native_half(context)  # else the conversions in integer arithmetic (no F16C)
        return half_to_float(builder, half_bits(builder, args[0], native), native)

    return types.float32(types.float32), codegen
