"""K-quants (engine.quant.kquants): bit-exact with llama.cpp, Numba == NumPy reference, dequantize == gguf-py.

The llama.cpp oracle is the committed fixture set tests/fixtures/quant/<type>.npz, made by
scripts/make_quant_fixtures.py from llama.cpp's own ``ggml_quantize_chunk``; inputs are regenerated
from their recorded seeds (and checked against the recorded SHA-256), so no llama.cpp is needed here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numba
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from engine.quant import kquants as K
from engine.quant.kquants_search import fp16_bits_to_fp32, fp32_to_fp16_bits, nearest_int, np_nearest_int

ROOT = Path(__file__).resolve().parent.parent
TYPES = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_quant_fixtures", ROOT / "scripts" / "make_quant_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FX = _load_fixture_module()


def _fixture_keys() -> list[tuple[str, str]]:
    keys = []
    for t in TYPES:
        _, outputs = FX.load_fixture(t)
        keys += [(t, k) for k in sorted(outputs)]
    return keys


def _gguf_dequantize(raw: np.ndarray, qtype: str, block_size: int) -> np.ndarray:
    with np.errstate(all="ignore"):  # random bytes decode to inf/nan, in C as in gguf-py
        return gguf_dequantize(raw.reshape(1, -1), gguf.GGMLQuantizationType[qtype]).reshape(-1, block_size)


def _same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equal, except that any NaN equals any NaN (payloads are not part of the contract)."""
    if a.shape != b.shape:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb) and np.array_equal(a[~na].view(np.uint32), b[~nb].view(np.uint32)))


# --------------------------------------------------------------------------- format table


def test_formats_table_matches_ggml():
    assert sorted(K.FORMATS) == sorted(TYPES)
    for name, fmt in K.FORMATS.items():
        qt = gguf.GGMLQuantizationType[name]
        assert fmt.name == name
        assert fmt.ggml_id == int(qt)
        assert (fmt.block_size, fmt.type_size) == gguf.GGML_QUANT_SIZES[qt]
        assert fmt.quantize is not None
        assert fmt.uses_imatrix and not fmt.needs_imatrix


# --------------------------------------------------------------------------- llama.cpp fixtures


def test_fixtures_cover_every_case_with_and_without_imatrix():
    for t in TYPES:
        meta, outputs = FX.load_fixture(t)
        assert meta["ggml_id"] == K.FORMATS[t].ggml_id
        expected = {c for c in FX.CASES} | {f"{c}+imatrix" for c in FX.CASES}
        assert set(outputs) == expected, t
        assert all(not m["aborted"] for m in meta["cases"].values())


@pytest.mark.parametrize(("qtype", "key"), _fixture_keys())
def test_quantize_bit_exact_with_llama_cpp(qtype, key):
    meta, outputs = FX.load_fixture(qtype)
    case, _, variant = key.partition("+")
    x = FX.make_input(case, meta["rows"], meta["n_per_row"])
    assert FX.digest(x) == meta["cases"][case]["input_sha256"], "input generator changed"
    imatrix = FX.make_imatrix(case, meta["n_per_row"]) if variant else None
    want = outputs[key]
    got = K.FORMATS[qtype].quantize(x, imatrix)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.array_equal(got, want), f"Numba: {int((got != want).any(1).sum())} rows differ"
    ref = K.REF_QUANTIZE[qtype](x, imatrix)
    assert np.array_equal(ref, want), f"NumPy reference: {int((ref != want).any(1).sum())} rows differ"


def test_imatrix_changes_the_result():
    x = FX.make_input("normal")
    im = FX.make_imatrix("normal")
    for t in TYPES:
        plain = K.FORMATS[t].quantize(x, None)
        weighted = K.FORMATS[t].quantize(x, im)
        assert not np.array_equal(plain, weighted), t


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # gguf-py on inf/nan scales
@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_fixture_bytes_matches_gguf(qtype):
    _, outputs = FX.load_fixture(qtype)
    fmt = K.FORMATS[qtype]
    for key, raw in outputs.items():
        blocks = raw.reshape(-1, fmt.type_size)
        want = _gguf_dequantize(raw, qtype, fmt.block_size)
        assert _same_floats(fmt.dequantize(blocks), want), key
        assert _same_floats(K.REF_DEQUANTIZE[qtype](blocks), want), key


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # gguf-py on inf/nan scales
@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_random_bytes_matches_gguf(qtype):
    fmt = K.FORMATS[qtype]
    rng = np.random.default_rng(K.FORMATS[qtype].ggml_id)
    blocks = rng.integers(0, 256, (512, fmt.type_size), dtype=np.uint8)
    want = gguf_dequantize(blocks.reshape(1, -1), gguf.GGMLQuantizationType[qtype]).reshape(
        -1, fmt.block_size
    )
    got = fmt.dequantize(blocks)
    assert got.dtype == np.float32 and got.shape == (512, fmt.block_size)
    assert _same_floats(got, want)
    assert _same_floats(K.REF_DEQUANTIZE[qtype](blocks), want)


# --------------------------------------------------------------------------- Numba == NumPy reference

_finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
_ties = st.integers(-64, 64).map(lambda i: i * 0.5)
_scales = st.sampled_from([1.0, 1e-3, 1e-30, 1e4, 1e30])


@st.composite
def _inputs(draw):
    rows = draw(st.integers(1, 3))
    nb = draw(st.integers(1, 2))
    kind = draw(st.sampled_from(["finite", "ties", "scaled"]))
    shape = (rows, nb * K.QK_K)
    if kind == "finite":
        x = draw(hnp.arrays(np.float32, shape, elements=_finite32))
    elif kind == "ties":
        x = draw(hnp.arrays(np.float32, shape, elements=_ties))
    else:
        base = draw(hnp.arrays(np.float32, shape, elements=st.floats(-4, 4, width=32)))
        x = (base * np.float32(draw(_scales))).astype(np.float32)
    imatrix = None
    if draw(st.booleans()):
        imatrix = draw(hnp.arrays(np.float32, nb * K.QK_K, elements=st.floats(0, 100, width=32)))
    return np.ascontiguousarray(x), imatrix


@pytest.mark.parametrize("qtype", TYPES)
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(data=_inputs())
def test_numba_matches_numpy_reference(qtype, data):
    x, imatrix = data
    with np.errstate(all="ignore"):
        got = K.FORMATS[qtype].quantize(x, imatrix)
        ref = K.REF_QUANTIZE[qtype](x, imatrix)
    assert np.array_equal(got, ref)
    blocks = got.reshape(-1, K.FORMATS[qtype].type_size)
    assert _same_floats(K.FORMATS[qtype].dequantize(blocks), K.REF_DEQUANTIZE[qtype](blocks))


def test_result_does_not_depend_on_thread_count():
    x = FX.make_input("student_t", rows=13, n_per_row=512)
    im = FX.make_imatrix("student_t")
    before = numba.get_num_threads()
    try:
        many = {t: K.FORMATS[t].quantize(x, im) for t in TYPES}
        numba.set_num_threads(1)
        one = {t: K.FORMATS[t].quantize(x, im) for t in TYPES}
    finally:
        numba.set_num_threads(before)
    for t in TYPES:
        assert np.array_equal(many[t], one[t]), t


def test_empty_input():
    for t in TYPES:
        out = K.FORMATS[t].quantize(np.zeros((0, 256), np.float32), None)
        assert out.shape == (0, K.FORMATS[t].type_size)
        assert K.FORMATS[t].dequantize(np.zeros((0, K.FORMATS[t].type_size), np.uint8)).shape == (0, 256)


# --------------------------------------------------------------------------- scalar helpers


def test_nearest_int_is_c_magic_number_rounding():
    vals = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999998, 4194303.0, -4194303.0, 1e9, -1e9, 7.0], np.float32)
    want = np_nearest_int(vals)
    assert want[:6].tolist() == [0, 2, 2, 0, -2, 2]  # half to even inside the valid range
    assert want[6:8].tolist() == [4194303, -4194303]
    got = [_nb_nearest(v) for v in vals]
    assert got == want.tolist()


@numba.njit
def _nb_nearest(v):
    return nearest_int(v)


@numba.njit
def _nb_fp16_roundtrip(a, out_bits, out_f):
    for i in range(a.size):
        h = fp32_to_fp16_bits(a[i])
        out_bits[i] = h
        out_f[i] = fp16_bits_to_fp32(h)


def test_fp16_conversion_matches_numpy():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 2**32, 400_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array(
        [0.0, -0.0, 65504.0, 65519.996, 65520.0, 1e-8, 2.0**-24, 2.0**-25, 3 * 2.0**-26, np.inf], np.float32
    )
    a = np.concatenate(
        [a[np.isfinite(a)], special, special * -1, rng.standard_normal(100_000).astype(np.float32)]
    )
    bits = np.empty(a.size, np.uint16)
    back = np.empty(a.size, np.float32)
    _nb_fp16_roundtrip(a, bits, back)
    with np.errstate(over="ignore"):
        h = a.astype(np.float16)
    assert np.array_equal(bits, h.view(np.uint16))
    assert np.array_equal(back.view(np.uint32), h.astype(np.float32).view(np.uint32))
