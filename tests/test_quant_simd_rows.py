"""The vector row quantizers (engine/quant/_simd_rows.py) at their edges.

They replace C's scalar loops for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 (no importance matrix), TQ1_0, TQ2_0,
BF16 and F16, and check finiteness in the same pass.  test_quant_fixtures.py holds them to llama.cpp's
bytes and test_quant_families.py to the NumPy references on random inputs; here: every fp16
rounding boundary of the scales (the vector code converts with fptrunc, C with ggml's bit trick),
scales whose inverse overflows, signed zeros, and NaN / inf anywhere in the input.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine import quant as Q
from engine.errors import QuantError
from engine.quant import floats, legacy, ternary

VECTOR = {**legacy.FORMATS, "TQ1_0": ternary.FORMATS["TQ1_0"], "TQ2_0": ternary.FORMATS["TQ2_0"]}
REFERENCE = {**legacy.REFERENCE, **ternary.REFERENCE, **{t: floats.REFERENCE[t] for t in ("BF16", "F16")}}


def _f16_boundaries() -> np.ndarray:
    """Every positive finite fp16 value, the f32 midpoints to the next one (ties: round to even),
    the floats just either side of those midpoints, and the overflow boundary."""
    h = np.arange(1, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    mid = (h[:-1] + h[1:]) / np.float32(2)  # exact in f32
    up = np.nextafter(mid, np.float32(np.inf))
    down = np.nextafter(mid, np.float32(0))
    tail = np.array([65504, 65519.996, 65520, 65536, 1e6, 2.0**-25, 2.0**-26, 1e-10], np.float32)
    return np.concatenate([h, mid, up, down, tail]).astype(np.float32)


def _blocks_with_scale(qtype: str, d: np.ndarray) -> np.ndarray:
    """Rows of blocks whose fp16 scale C computes from exactly ``d`` (one block per value)."""
    qk = VECTOR[qtype].block_size
    x = np.zeros((d.size, qk), np.float32)
    x[:, 1] = np.float32(0.25) * d  # something to quantize besides the extreme element
    if qtype in ("Q4_0", "Q5_0"):  # d = max / -nmax (exact: a power of two)
        x[:, 3] = d * np.float32(-8 if qtype == "Q4_0" else -16)
    elif qtype in ("Q4_1", "Q5_1"):  # d = (max - min) / nmax, min = 0 here; m = fp16(min)
        x[:, 5] = d * np.float32(15 if qtype == "Q4_1" else 31)
        x[:, 1] = np.float32(0.0)
    elif qtype == "Q8_0":  # d = amax / 127: not exact, but sweeps every rounding of amax
        x[:, 7] = d * np.float32(127)
    else:  # TQ: d = amax
        x[:, 9] = -d
    return np.ascontiguousarray(x.reshape(-1, 4 * qk)[: d.size // 4])


@pytest.mark.parametrize("qtype", sorted(VECTOR))
def test_fp16_scale_at_every_rounding_boundary(qtype):
    d = _f16_boundaries()
    d = d[: d.size // 4 * 4]
    x = _blocks_with_scale(qtype, d)
    assert np.array_equal(VECTOR[qtype].quantize(x, None), REFERENCE[qtype](x, None))


def _edge_rows(qk: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    n = 4 * 256
    rows = [
        rng.standard_normal(n) * 1e-39,  # subnormal inputs: scales whose inverse is infinite
        rng.standard_normal(n) * 1e-44,
        rng.standard_normal(n) * 1e-45,
        np.clip(rng.standard_normal(n) * 1e38, -3.4e38, 3.4e38),  # max - min overflows
        np.full(n, np.finfo(np.float32).max),
        np.full(n, -np.finfo(np.float32).max),
        np.zeros(n),
        rng.integers(-4, 5, n) * 0.5,  # exact .5 ties
    ]
    x = np.array(rows, dtype=np.float32)
    signs = np.zeros((3, n), np.float32)
    signs[0, 5::7] = -0.0
    signs[1, :] = -0.0
    signs[2, 3], signs[2, 4], signs[2, 40], signs[2, 41] = 1, -1, -2, 2  # equal magnitudes: first wins
    return np.concatenate([x, signs])


@pytest.mark.parametrize("qtype", sorted(VECTOR))
def test_vector_rows_equal_reference_on_edge_inputs(qtype):
    x = _edge_rows(VECTOR[qtype].block_size)
    with np.errstate(all="ignore"):
        ref = REFERENCE[qtype](x, None)
    assert np.array_equal(VECTOR[qtype].quantize(x, None), ref)


@pytest.mark.parametrize("qtype", ["BF16", "F16"])
def test_half_rows_of_any_length_and_every_bit_pattern(qtype):
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 3 * 70_001, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = np.where(np.isfinite(x), x, np.float32(1.5)).astype(np.float32)
    for shape in [(1, x.size), (3, 70_001), (70_001, 3)]:  # chunks of 65536 and their scalar tails
        xs = x.reshape(shape)
        assert np.array_equal(Q.quantize(xs, qtype), REFERENCE[qtype](xs, None)), shape


def test_f16_equals_ggml_on_a_dense_sweep_of_the_fp16_range():
    """Every 5th float32 from below fp16's smallest subnormal to past its overflow, both signs
    (fptrunc against ggml's bit trick; all 2^32 patterns agree, checked once outside the tests)."""
    u = np.arange(0x32800000, 0x47900000, 5, dtype=np.uint32)
    x = np.concatenate([u, u | np.uint32(0x80000000)]).view(np.float32).reshape(1, -1)
    assert np.array_equal(Q.quantize(x, "F16"), REFERENCE["F16"](x, None))


CHECKED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "TQ1_0", "TQ2_0", "BF16", "F16"]


@pytest.mark.parametrize("qtype", CHECKED)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_anywhere_is_an_error(qtype, value):
    assert Q.format_of(qtype).checks_finite
    x = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    for r, c in [(0, 0), (2, 511), (1, 257), (1, 31)]:
        y = x.copy()
        y[r, c] = value
        with pytest.raises(QuantError, match=rf"non-finite value \({value}\) at row {r}, column {c}"):
            Q.quantize(y, qtype)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_non_finite_with_imatrix_is_an_error(qtype):
    x = np.ones((2, 64), np.float32)
    x[1, 40] = np.nan
    with pytest.raises(QuantError, match=r"non-finite value \(nan\) at row 1, column 40"):
        Q.quantize(x, qtype, np.ones(64, np.float32))


# ----------------------------------------------------------------------------- fp16 without F16C


def _soft_half_kernels():
    """half_bits' software path (what CPUs without F16C compile), scalar and 16 lanes, as kernels."""
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    from engine.quant._simd_rows import half_bits

    @intrinsic
    def one(typingctx, f):
        def codegen(context, builder, sig, args):
            return builder.zext(half_bits(builder, args[0], native=False), ir.IntType(32))

        return types.uint32(types.float32), codegen

    @intrinsic
    def sixteen(typingctx, x, out, o):
        def codegen(context, builder, sig, args):
            xp = context.make_array(sig.args[0])(context, builder, args[0]).data
            op = context.make_array(sig.args[1])(context, builder, args[1]).data
            vf = ir.VectorType(ir.FloatType(), 16)
            vh = ir.VectorType(ir.IntType(16), 16)
            v = builder.load(builder.bitcast(builder.gep(xp, [args[2]]), vf.as_pointer()), align=4)
            builder.store(
                half_bits(builder, v, native=False),
                builder.bitcast(builder.gep(op, [args[2]]), vh.as_pointer()),
                align=2,
            )
            return context.get_dummy_value()

        return types.void(x, out, types.int64), codegen

    @njit
    def run(x, scalar, vector):
        for i in range(x.size):
            scalar[i] = one(x[i])
        for o in range(0, x.size - x.size % 16, 16):
            sixteen(x, vector, o)

    return run


def test_fp16_without_f16c_is_ggml_bit_for_bit():
    """Every float32 class (NaN and inf too: it is ggml's own arithmetic) through the software path."""
    from engine.quant import _common as C

    rng = np.random.default_rng(9)
    u = np.concatenate(
        [
            np.arange(0x32800000, 0x47900000, 97, dtype=np.uint32),
            rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
            np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF], np.uint32),
        ]
    )
    u = np.concatenate([u, u ^ np.uint32(0x80000000)])[: (2 * u.size) // 16 * 16]
    x = u.view(np.float32)
    scalar, vector = np.zeros(x.size, np.uint32), np.zeros(x.size, np.uint16)
    _soft_half_kernels()(x, scalar, vector)
    with np.errstate(invalid="ignore", over="ignore"):
        want = C.np_f32_to_f16_bits(x).astype(np.uint32)
    assert np.array_equal(scalar, want)
    assert np.array_equal(vector.astype(np.uint32), want)


def test_fp16_to_float_without_f16c_is_exact_for_every_half():
    """half_to_float's software path (the runtime's round_f16 on CPUs without F16C): all 65536."""
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic

    from engine.quant._simd_rows import half_to_float

    @intrinsic
    def h2f(typingctx, h):
        def codegen(context, builder, sig, args):
            return half_to_float(builder, builder.trunc(args[0], ir.IntType(16)), native=False)

        return types.float32(types.uint32), codegen

    @njit
    def run(h, out):
        for i in range(h.size):
            out[i] = h2f(h[i])

    h = np.arange(65536, dtype=np.uint32)
    out = np.empty(h.size, np.float32)
    run(h, out)
    want = h.astype(np.uint16).view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32)) and np.isnan(out[nan]).all()
