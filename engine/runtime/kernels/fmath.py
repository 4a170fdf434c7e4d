"""Scalar float helpers that Numba has no spelling for.

:func:`fma32` is the fused multiply-add ``a·b + c`` with one rounding (``llvm.fma.f32``: an FMA
instruction where the CPU has one, a correctly rounded libm call otherwise, so the value is the
same everywhere).  llama.cpp's C++ is compiled with floating-point contraction, so some of its
scalar expressions are fused multiply-adds; the kernels that reproduce them use this.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_F32 = ir.FloatType()


@intrinsic
def fma32(typingctx, a, b, c):
    """``a·b + c`` in f32, rounded once."""

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F32, [_F32] * 3), "llvm.fma.f32")
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


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
