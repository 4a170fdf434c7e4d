"""engine.quant against llama.cpp's own bytes (the committed oracle in tests/fixtures/quant/).

The fixtures were written by scripts/make_quant_fixtures.py from llama.cpp's ``ggml_quantize_chunk``
(version in each fixture's metadata).  Inputs are regenerated from recorded seeds and checked
against the recorded SHA-256, so llama.cpp is not needed to run these tests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize

import engine.quant as Q

ROOT = Path(__file__).resolve().parent.parent


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_quant_fixtures", ROOT / "scripts" / "make_quant_fixtures.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FX = _load_fixture_module()
ALL_TYPES = list(FX.GGML_IDS)
QUANTIZABLE = [t for t in ALL_TYPES if Q.format_of(t).quantize is not None]


def _cases() -> list[tuple[str, str]]:
    out = []
    for t in QUANTIZABLE:
        _, outputs = FX.load_fixture(t)
        out += [(t, k) for k in sorted(outputs)]
    return out


def _same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equal, except that any NaN equals any NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb) and np.array_equal(a[~na].view(np.uint32), b[~nb].view(np.uint32)))


def test_every_quantizable_type_has_a_fixture():
    assert set(ALL_TYPES) == {
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
        "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS",
        "IQ2_S", "IQ3_XXS", "IQ3_S",
    }  # fmt: skip
    for t in ALL_TYPES:
        assert FX.fixture_path(t).is_file(), t


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_fixture_metadata_and_inputs_regenerate(qtype):
    meta, outputs = FX.load_fixture(qtype)
    fmt = Q.format_of(qtype)
    assert meta["type"] == qtype and meta["ggml_id"] == fmt.ggml_id
    assert meta["row_size"] == meta["n_per_row"] // fmt.block_size * fmt.type_size
    assert meta["requires_imatrix"] == fmt.needs_imatrix
    assert meta["llama_cpp"]["ggml_version"] and meta["llama_cpp"]["ggml_commit"]
    assert outputs, "no llama.cpp output recorded"
    for case, entry in meta["cases"].items():
        assert FX.digest(FX.make_input(case)) == entry["input_sha256"], case
        if "imatrix_sha256" in entry:
            assert FX.digest(FX.make_imatrix(case)) == entry["imatrix_sha256"], case
    for key, out in outputs.items():
        assert out.dtype == np.uint8 and out.shape == (meta["rows"], meta["row_size"]), key


@pytest.mark.parametrize(("qtype", "key"), _cases())
def test_quantize_matches_llama_cpp(qtype, key):
    _, outputs = FX.load_fixture(qtype)
    case, _, variant = key.partition("+")
    x = FX.make_input(case)
    im = FX.make_imatrix(case) if variant == "imatrix" else None
    got = Q.quantize(x, qtype, im)
    expected = outputs[key]
    assert got.shape == expected.shape
    bad_rows = np.nonzero((got != expected).any(axis=1))[0]
    assert bad_rows.size == 0, f"{qtype} {key}: rows {bad_rows.tolist()} differ from llama.cpp"


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_dequantize_fixture_bytes_matches_gguf(qtype):
    meta, outputs = FX.load_fixture(qtype)
    shape = (meta["rows"], meta["n_per_row"])
    for key, raw in outputs.items():
        ours = Q.dequantize(raw, qtype, shape)
        with np.errstate(all="ignore"):
            theirs = gguf_dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(shape).astype(np.float32)
        assert _same_floats(ours, theirs), f"{qtype} {key}"


@pytest.mark.parametrize(
    "qtype", ["F16", "BF16", "Q4_0", "Q8_0", "Q4_K", "Q6_K", "IQ2_XXS", "TQ1_0", "MXFP4"]
)
def test_dequantize_matches_llama_cpp_to_float(qtype):
    """The bench's llama.cpp dequantizer (``to_float`` of ggml's type traits) gives our floats."""
    pytest.importorskip("llama_cpp")
    from engine.bench import llamacpp

    lib = llamacpp.load_ggml()
    meta, outputs = FX.load_fixture(qtype)
    shape = (meta["rows"], meta["n_per_row"])
    for key, raw in outputs.items():
        theirs = llamacpp.dequantize(lib, qtype, raw, shape)
        assert theirs.shape == shape and theirs.dtype == np.float32
        assert np.array_equal(Q.dequantize(raw, qtype, shape).view(np.uint32), theirs.view(np.uint32)), key
    with pytest.raises(ValueError, match="do not hold"):
        llamacpp.to_float(lib, qtype)(raw[:-1], np.empty(shape, np.float32))
