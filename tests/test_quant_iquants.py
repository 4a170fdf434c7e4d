"""Grid IQ types (engine.quant.iquants): llama.cpp's bytes, Numba == NumPy reference, gguf-py dequant.

llama.cpp itself is not needed: its bytes are the fixtures in tests/fixtures/quant/IQ*.npz (made by
scripts/make_quant_fixtures.py from ggml_quantize_chunk, with and without an importance matrix;
inputs on which llama.cpp aborted are recorded as such).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.quant as Q
from engine.errors import QuantError
from engine.quant import iq_tables, iquants, iquants_ref

ROOT = Path(__file__).resolve().parent.parent
TYPES = list(iquants.TYPES)
NEEDS_IMATRIX = ["IQ2_XXS", "IQ2_XS", "IQ1_S"]


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_quant_fixtures", ROOT / "scripts" / "make_quant_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FX = _load_fixture_module()


def _variants(qtype: str, case: str) -> list[tuple[str, np.ndarray | None]]:
    out = [] if qtype in NEEDS_IMATRIX else [(case, None)]
    return [*out, (case + "+imatrix", FX.make_imatrix(case))]


def test_engine_quant_picks_up_the_family():
    for name in TYPES:
        fmt = Q.format_of(name)
        assert fmt is iquants.FORMATS[name] and fmt.quantize is not None
        assert fmt.needs_imatrix == (name in NEEDS_IMATRIX) and fmt.uses_imatrix
    assert {s.name for s in Q.supported() if s.needs_imatrix} == set(NEEDS_IMATRIX)


# ----------------------------------------------------------------------------- llama.cpp bytes


@pytest.mark.parametrize("qtype", TYPES)
def test_quantize_matches_llama_cpp_fixtures(qtype):
    meta, outputs = FX.load_fixture(qtype)
    checked = aborted = 0
    for case, entry in meta["cases"].items():
        x = FX.make_input(case)
        for key, im in _variants(qtype, case):
            if key in entry["aborted"]:
                with pytest.raises(QuantError, match=r"llama\.cpp aborts"):
                    Q.quantize(x, qtype, im)
                aborted += 1
                continue
            got = Q.quantize(x, qtype, im)
            bad = np.nonzero((got != outputs[key]).any(axis=1))[0]
            assert bad.size == 0, f"{qtype} {key}: rows {bad.tolist()} differ from llama.cpp"
            checked += 1
    assert checked == len(outputs) and checked >= 11


@pytest.mark.parametrize("qtype", NEEDS_IMATRIX)
def test_types_llama_cpp_refuses_without_imatrix(qtype):
    x = FX.make_input("normal", rows=1, n_per_row=256)
    with pytest.raises(QuantError, match=f"Missing importance matrix for {qtype}"):
        Q.quantize(x, qtype)
    with pytest.raises(QuantError, match="Missing importance matrix"):
        iquants.FORMATS[qtype].quantize(x, None)  # the kernel entry point refuses too


@pytest.mark.parametrize("qtype", ["IQ1_M", "IQ2_S", "IQ3_XXS", "IQ3_S"])
def test_types_quantized_without_imatrix(qtype):
    x = FX.make_input("laplace", rows=2, n_per_row=512)
    plain = Q.quantize(x, qtype)
    assert plain.shape == (2, 2 * iquants.TYPES[qtype][1])
    assert not np.array_equal(plain, Q.quantize(x, qtype, FX.make_imatrix("laplace")))


def test_abort_is_a_clear_error():
    x = FX.make_input("huge", rows=1, n_per_row=256)
    with pytest.raises(QuantError, match=r"Cannot quantize to IQ3_S: llama.cpp aborts on row 0.*overflow"):
        Q.quantize(x, "IQ3_S")


# ----------------------------------------------------------------------------- Numba == NumPy


@pytest.mark.parametrize("qtype", TYPES)
def test_kernel_equals_reference_on_fixture_inputs(qtype):
    for case in FX.CASES:
        x = FX.make_input(case, rows=2, n_per_row=256)
        for _, im in _variants(qtype, case):
            im = None if im is None else im[:256]
            try:
                got = iquants.FORMATS[qtype].quantize(x, im)
            except QuantError:
                with pytest.raises(QuantError):
                    iquants_ref.quantize_ref(qtype, x, im)
                continue
            assert np.array_equal(got, iquants_ref.quantize_ref(qtype, x, im)), (qtype, case, im is None)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    qtype=st.sampled_from(TYPES),
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 2),
    scale_exp=st.integers(-6, 6),
    kind=st.integers(0, 3),
    with_imatrix=st.booleans(),
)
def test_kernel_equals_reference_on_random_inputs(qtype, seed, rows, scale_exp, kind, with_imatrix):
    rng = np.random.default_rng(seed)
    shape = (rows, 256)
    if kind == 0:
        x = rng.standard_normal(shape)
    elif kind == 1:
        x = rng.standard_t(2.0, shape)
    elif kind == 2:
        x = rng.integers(-20, 21, shape) / 4.0  # many exact ties (the IQ1 sorts must be stable)
    else:
        x = rng.standard_normal(shape) * (rng.random(shape) < 0.05)  # empty sub-blocks
    x = (x * 10.0**scale_exp).astype(np.float32)
    im = None
    if with_imatrix or qtype in NEEDS_IMATRIX:
        im = rng.gamma(1.0, 1.0, 256).astype(np.float32)
        im[::7] = 0.0
    assert np.array_equal(iquants.FORMATS[qtype].quantize(x, im), iquants_ref.quantize_ref(qtype, x, im))


@pytest.mark.parametrize("qtype", ["IQ2_XS", "IQ1_M", "IQ3_S"])
def test_kernel_is_deterministic_across_thread_counts(qtype):
    x = np.random.default_rng(3).standard_normal((12, 512)).astype(np.float32)
    im = np.random.default_rng(4).random(512).astype(np.float32)
    many = Q.quantize(x, qtype, im)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = Q.quantize(x, qtype, im)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, many)
    assert np.array_equal(Q.quantize(np.ascontiguousarray(x[5:6]), qtype, im), many[5:6])


# ----------------------------------------------------------------------------- dequantize


def _bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.astype(np.float32).view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_equals_gguf_on_fixture_and_random_bytes(qtype):
    ts = iquants.TYPES[qtype][1]
    _, outputs = FX.load_fixture(qtype)
    rng = np.random.default_rng(iquants.TYPES[qtype][0])
    samples = [v.reshape(-1, ts) for v in outputs.values()]
    samples.append(rng.integers(0, 256, (300, ts), dtype=np.uint8))  # NaN / inf scales included
    for blocks in samples:
        ours = Q.dequantize(blocks, qtype, (blocks.shape[0], 256))
        with np.errstate(all="ignore"):
            theirs = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype]).reshape(-1, 256)
        assert _bitwise_equal(ours, theirs), qtype


# ----------------------------------------------------------------------------- tables


@pytest.mark.parametrize("qtype", TYPES)
def test_dequant_grids_equal_gguf_py(qtype):
    cls = gguf.quants._type_traits[gguf.GGMLQuantizationType[qtype]]
    cls.init_grid()
    theirs = np.asarray(cls.grid, dtype=np.float32).reshape(
        iq_tables.dequant_grid(iquants._DEQ_TABLE[qtype]).shape
    )
    assert np.array_equal(iq_tables.dequant_grid(iquants._DEQ_TABLE[qtype]), theirs)
    assert np.array_equal(iq_tables.ksigns(), np.frombuffer(gguf.quants.IQ2_XXS.ksigns, np.uint8))


@pytest.mark.parametrize("qtype", ["IQ2_XXS", "IQ2_S", "IQ1_S", "IQ3_XXS", "IQ3_S"])
def test_neighbour_lists_equal_a_brute_force_sort(qtype):
    t = iq_tables.quant_tables(qtype)
    _, bits, per, nwant, _ = iq_tables._QUANT_GRIDS[qtype]
    assert not (t.grid.flags.writeable or t.kmap.flags.writeable or t.neighbours.flags.writeable)
    assert iq_tables.quant_tables(qtype) is t  # built once
    assert (t.kmap >= 0).sum() == t.grid.shape[0]
    u_grid = (((t.grid.astype(np.int64) - 1) // 2) << (bits * np.arange(per))).sum(axis=1)
    assert np.array_equal(t.kmap[u_grid], np.arange(t.grid.shape[0]))
    off = np.flatnonzero(t.kmap < 0)
    for u in np.random.default_rng(0).choice(off, 40, replace=False):
        pos = 2 * ((int(u) >> (bits * np.arange(per))) & ((1 << bits) - 1)) + 1
        d2 = ((t.grid.astype(np.int64) - pos) ** 2).sum(axis=1)
        order = np.lexsort((np.arange(d2.size), d2))  # C's qsort on (distance, index)
        keep = d2[order] <= np.unique(d2)[min(nwant, np.unique(d2).size) - 1]
        off_u = -int(t.kmap[u]) - 1
        n = int(t.neighbours[off_u])
        assert np.array_equal(t.neighbours[off_u + 1 : off_u + 1 + n], order[keep]), (qtype, u)
