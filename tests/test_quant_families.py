"""Family modules floats/legacy/nonlinear/ternary/mxfp4: Numba kernels == NumPy references, helpers == C.

The byte-exactness against llama.cpp itself is in test_quant_fixtures.py; here the two
implementations of every type are held equal on the fixture inputs and on random inputs, and the
shared helpers of engine.quant._common are checked against the C semantics they port.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from engine.quant import _common as C
from engine.quant import floats, legacy, mxfp4, nonlinear, ternary

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = [floats, legacy, nonlinear, ternary, mxfp4]
KERNELS = {name: fmt for fam in FAMILIES for name, fmt in fam.FORMATS.items() if fmt.quantize is not None}
REFERENCES = {name: ref for fam in FAMILIES for name, ref in fam.REFERENCE.items()}
IMATRIX_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"]


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_quant_fixtures", ROOT / "scripts" / "make_quant_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FX = _load_fixture_module()


def test_every_kernel_has_a_reference():
    assert set(KERNELS) == set(REFERENCES)
    assert set(KERNELS) == {
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
        "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4",
    }  # fmt: skip


def test_dequantize_only_nvfp4_kernel_equals_reference():
    """NVFP4 (dequantize only): the Numba kernel == the NumPy reference, every scale byte."""
    fmt = mxfp4.FORMATS["NVFP4"]
    assert fmt.quantize is None
    raw = np.random.default_rng(4).integers(0, 256, (1024, fmt.type_size), dtype=np.uint8)
    raw[:256, :4] = np.arange(256)[:, None]
    got = fmt.dequantize(raw)
    assert got.shape == (1024, 64)
    assert np.array_equal(got.view(np.uint32), mxfp4.ref_dequantize_nvfp4(raw).view(np.uint32))


@pytest.mark.parametrize("qtype", sorted(KERNELS))
def test_kernel_equals_reference_on_fixture_inputs(qtype):
    fmt = KERNELS[qtype]
    for case in FX.CASES:
        x = FX.make_input(case)
        variants = [None, FX.make_imatrix(case)] if fmt.uses_imatrix else [None]
        for im in variants:
            got = fmt.quantize(x, im)
            ref = REFERENCES[qtype](x, im)
            assert np.array_equal(got, ref), (qtype, case, im is not None)


def _random_rows(seed: int, rows: int, n: int, scale_exp: int, kind: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == 0:
        x = rng.standard_normal((rows, n))
    elif kind == 1:
        x = rng.standard_t(2.0, (rows, n))
    elif kind == 2:
        x = rng.integers(-20, 21, (rows, n)) / 4.0  # many exact ties
    else:
        x = rng.standard_normal((rows, n)) * (rng.random((rows, n)) < 0.2)
    return (x * 10.0**scale_exp).astype(np.float32)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    qtype=st.sampled_from(sorted(KERNELS)),
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 5),
    nblocks=st.integers(1, 3),
    scale_exp=st.integers(-8, 8),
    kind=st.integers(0, 3),
    with_imatrix=st.booleans(),
)
def test_kernel_equals_reference_on_random_inputs(qtype, seed, rows, nblocks, scale_exp, kind, with_imatrix):
    fmt = KERNELS[qtype]
    n = 256 * nblocks
    x = _random_rows(seed, rows, n, scale_exp, kind)
    im = None
    if with_imatrix and fmt.uses_imatrix:
        im = np.random.default_rng(seed + 1).gamma(1.0, 1.0, n).astype(np.float32)
        im[::7] = 0.0  # zero weights happen in real imatrices
    assert np.array_equal(fmt.quantize(x, im), REFERENCES[qtype](x, im))


@pytest.mark.parametrize("qtype", IMATRIX_TYPES)
def test_kernel_is_deterministic_across_thread_counts(qtype):
    fmt = KERNELS[qtype]
    x = _random_rows(11, 16, 512, 0, 0)
    im = np.random.default_rng(2).random(512).astype(np.float32)
    many = fmt.quantize(x, im)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fmt.quantize(x, im)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, many)
    # each row is quantized independently: row r of a batch == row r alone
    assert np.array_equal(fmt.quantize(np.ascontiguousarray(x[5:6]), im), many[5:6])


# ----------------------------------------------------------------------------- _common helpers


@njit
def _nb_apply(fn_id, x, out):
    for i in range(x.size):
        if fn_id == 0:
            out[i] = C.f32_to_f16_bits(x[i])
        elif fn_id == 1:
            out[i] = C.nearest_int(x[i])
        elif fn_id == 2:
            out[i] = C.roundf(x[i])
        else:
            out[i] = C.trunc_i8(x[i])


def _specials() -> np.ndarray:
    v = [0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 65504.0, 65519.996, 65520.0, 1e-8, 2.0**-24]
    v += [2.0**-25, 2.0**-25 * 1.0000001, 3e-5, -6.1e-5, 1e38, -1e38, 127.5, -128.5, 128.0, 300.7, -300.7]
    return np.array(v, dtype=np.float32)


def _sample(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    return np.concatenate([_specials(), x, (rng.standard_normal(50_000) * 1e4).astype(np.float32)])


def test_f32_to_f16_matches_numpy_and_ggml_rules():
    x = np.concatenate([_sample(1), np.array([np.inf, -np.inf], np.float32)])
    out = np.zeros(x.size, np.int64)
    _nb_apply(0, x, out)
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(out, expected)
    assert np.array_equal(C.np_f32_to_f16_bits(x), expected)
    nan = np.array([np.nan, -np.nan], np.float32)
    assert C.np_f32_to_f16_bits(nan).tolist() == [0x7E00, 0xFE00]  # ggml: quiet NaN, sign kept


def test_f16_bits_to_f32_is_exact_for_all_halves():
    h = np.arange(65536, dtype=np.uint16)

    @njit
    def widen(h, out):
        for i in range(h.size):
            out[i] = C.f16_bits_to_f32(h[i])

    out = np.zeros(65536, np.float32)
    widen(h, out)
    assert np.array_equal(out.view(np.uint32), h.view(np.float16).astype(np.float32).view(np.uint32))


def test_nearest_int_is_round_half_even_in_range():
    x = _sample(2)
    x = x[np.abs(x) <= 4194303]
    out = np.zeros(x.size, np.int64)
    _nb_apply(1, x, out)
    assert np.array_equal(out, np.rint(x).astype(np.int64))
    assert np.array_equal(C.np_nearest_int(x), out)
    big = np.array([1e7, -1e7, 3e9], np.float32)  # out of range: the C bit trick's values
    out = np.zeros(3, np.int64)
    _nb_apply(1, big, out)
    assert np.array_equal(out, C.np_nearest_int(big))


def test_roundf_is_half_away_from_zero():
    x = _sample(3)
    x = x[np.abs(x) < 2.0**40]
    out = np.zeros(x.size, np.int64)
    _nb_apply(2, x, out)
    x64 = x.astype(np.float64)
    expected = (np.sign(x64) * np.floor(np.abs(x64) + 0.5)).astype(np.int64)
    assert np.array_equal(out, expected)
    assert np.array_equal(C.np_roundf(x), expected)
    assert C.np_roundf(np.array([0.5, -0.5, 2.5, 0.49999997], np.float32)).tolist() == [1, -1, 3, 0]


def test_trunc_i8_is_x86_int8_cast():
    x = np.array([8.9, -8.9, 127.9, 128.0, -129.0, 255.5, 3e9, -3e9, np.nan], np.float32)
    out = np.zeros(x.size, np.int64)
    _nb_apply(3, x, out)
    # cvttss2si: trunc toward zero, out of range/NaN -> INT32_MIN (low byte 0); then the low byte
    assert out.tolist() == [8, -8, 127, -128, 127, -1, 0, 0, 0]
    assert C.np_trunc_i8(x).tolist() == out.tolist()


def test_best_index_int8_matches_a_literal_port():
    values = nonlinear.KVALUES

    def literal(x):
        v = [float(a) for a in values]
        if x <= v[0]:
            return 0
        if x >= v[-1]:
            return len(v) - 1
        ml, mu = 0, len(v) - 1
        while mu - ml > 1:
            mav = (ml + mu) // 2
            if x < v[mav]:
                mu = mav
            else:
                ml = mav
        return mu - 1 if np.float32(x - v[mu - 1]) < np.float32(v[mu] - x) else mu

    rng = np.random.default_rng(4)
    xs = np.concatenate([(rng.standard_normal(3000) * 70).astype(np.float32), values.astype(np.float32)])
    mids = ((values[:-1].astype(np.float32) + values[1:].astype(np.float32)) / 2).astype(np.float32)
    xs = np.concatenate([xs, mids, np.array([-200, 200, 0, -0.0, np.nan], np.float32)])

    @njit
    def nb(values, xs, out):
        for i in range(xs.size):
            out[i] = C.best_index_int8(values, xs[i])

    out = np.zeros(xs.size, np.int64)
    nb(values, xs, out)
    expected = [literal(np.float32(x)) for x in xs]
    assert out.tolist() == expected
    assert C.np_best_index_int8(values, xs).tolist() == expected
