"""engine.quant public API: type table, argument validation (QuantError), dequantize vs gguf-py."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize as gguf_dequantize

import engine.quant as Q
from engine.errors import KvantError, QuantError


def _same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equal, except that any NaN equals any NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    na, nb = np.isnan(a), np.isnan(b)
    return bool(np.array_equal(na, nb) and np.array_equal(a[~na].view(np.uint32), b[~nb].view(np.uint32)))


def _x(rows=2, n=256, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, n)).astype(np.float32)


# ----------------------------------------------------------------------------- type table

MINE = [
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "IQ4_NL",
    "IQ4_XS",
    "TQ1_0",
    "TQ2_0",
    "MXFP4",
]
GRID = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]


def test_supported_lists_every_gguf_type_with_ggml_sizes():
    table = {s.name: s for s in Q.supported()}
    # Every type gguf-py can (de)quantize today is dequantizable here, with gguf's geometry.
    for t in gguf.GGMLQuantizationType:
        if t.name in ("F32", "F16") or t in gguf.quants._type_traits:
            s = table[t.name]
            assert (s.ggml_id, s.block_size, s.type_size) == (t.value, *gguf.GGML_QUANT_SIZES[t]), t.name
            assert s.can_dequantize
    ids = [s.ggml_id for s in Q.supported()]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_supported_flags():
    table = {s.name: s for s in Q.supported()}
    for name in [*MINE, "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        assert table[name].can_quantize, name
    assert {n for n, s in table.items() if s.needs_imatrix} == {"IQ2_XXS", "IQ2_XS", "IQ1_S"}
    for name in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", *GRID]:
        assert table[name].uses_imatrix, name
    for name in ["F32", "F16", "BF16", "Q8_0", "TQ1_0", "TQ2_0", "MXFP4"]:
        assert not table[name].uses_imatrix, name
    assert table["Q4_0"].bpw == 4.5 and table["TQ1_0"].bpw == 54 * 8 / 256 and table["F32"].bpw == 32
    assert isinstance(table["Q4_0"], Q.TypeSupport)


def test_type_lookup_by_name_id_and_enum():
    assert Q.format_of("q4_0").name == "Q4_0"
    assert Q.format_of(8).name == "Q8_0"
    assert Q.format_of(gguf.GGMLQuantizationType.IQ4_XS).name == "IQ4_XS"


# ----------------------------------------------------------------------------- quantize errors


def test_unknown_type():
    with pytest.raises(QuantError, match=r"Unknown quantization type 'Q9_9'.*known types: F32"):
        Q.quantize(_x(), "Q9_9")
    with pytest.raises(QuantError, match="Unknown quantization type 999"):
        Q.dequantize(b"", 999, (0, 32))
    with pytest.raises(QuantError, match="must be a name"):
        Q.quantize(_x(), 4.5)


def test_quantize_error_is_a_kvant_error():
    assert issubclass(QuantError, KvantError)


@pytest.mark.parametrize(("value", "row", "col"), [(np.nan, 1, 17), (np.inf, 0, 0), (-np.inf, 1, 255)])
def test_non_finite_input_names_row_and_column(value, row, col):
    x = _x()
    x[row, col] = value
    with pytest.raises(QuantError, match=rf"non-finite value \({value}\) at row {row}, column {col}"):
        Q.quantize(x, "Q8_0")


def test_rows_not_divisible_by_block_size():
    with pytest.raises(QuantError, match="row length 96 is not a multiple of the block size 256"):
        Q.quantize(_x(n=96), "TQ2_0")
    with pytest.raises(QuantError, match="row length 40 is not a multiple of the block size 32"):
        Q.quantize(_x(n=40), "Q4_0")


def test_wrong_dtype_ndim_and_empty():
    with pytest.raises(QuantError, match="dtype must be float32, got float64"):
        Q.quantize(_x().astype(np.float64), "Q4_0")
    with pytest.raises(QuantError, match="must be 2-D"):
        Q.quantize(_x()[0], "Q4_0")
    with pytest.raises(QuantError, match="must be 2-D"):
        Q.quantize(_x().reshape(1, 2, 256), "Q4_0")
    with pytest.raises(QuantError, match="empty"):
        Q.quantize(np.zeros((0, 32), np.float32), "Q4_0")
    with pytest.raises(QuantError, match="NumPy array"):
        Q.quantize([[1.0] * 32], "Q4_0")


def test_imatrix_validation():
    x = _x()
    with pytest.raises(QuantError, match=r"one value per column \(256\), got shape \(255,\)"):
        Q.quantize(x, "Q4_0", np.ones(255, np.float32))
    with pytest.raises(QuantError, match=r"one value per column"):
        Q.quantize(x, "Q4_0", np.ones((2, 256), np.float32))
    bad = np.ones(256, np.float32)
    bad[7] = -1
    with pytest.raises(QuantError, match=r"negative value \(-1.0\) at column 7"):
        Q.quantize(x, "IQ4_NL", bad)
    bad[7] = np.nan
    with pytest.raises(QuantError, match=r"non-finite value \(nan\) at column 7"):
        Q.quantize(x, "IQ4_NL", bad)
    with pytest.raises(QuantError, match="not numeric"):
        Q.quantize(x, "Q4_0", ["a"] * 256)


def test_type_that_needs_an_imatrix(monkeypatch):
    real = Q.format_of("IQ2_XXS")
    if real.quantize is None:  # not implemented yet: exercise the check with a stand-in quantizer
        fake = Q.QuantFormat(
            "IQ2_XXS",
            16,
            256,
            66,
            real.dequantize,
            lambda x, im: np.zeros((x.shape[0], 66), np.uint8),
            True,
            True,
        )
        monkeypatch.setattr(Q, "format_of", lambda qtype: fake)
    with pytest.raises(QuantError, match="Missing importance matrix for IQ2_XXS: it is a very low-bit type"):
        Q.quantize(_x(), "IQ2_XXS")
    assert Q.quantize(_x(), "IQ2_XXS", np.ones(256, np.float32)).shape == (2, 66)


def test_dequantize_only_type_refuses_to_quantize():
    assert Q.format_of("NVFP4").quantize is None
    with pytest.raises(QuantError, match="Quantizing to NVFP4 is not supported yet"):
        Q.quantize(_x(), "NVFP4")


def test_quantize_accepts_non_contiguous_and_readonly_input():
    x = _x(rows=4, n=512)
    view = x[:, ::2]
    assert not view.flags.c_contiguous
    assert np.array_equal(Q.quantize(view, "Q4_0"), Q.quantize(np.ascontiguousarray(view), "Q4_0"))
    ro = x.copy()
    ro.flags.writeable = False
    assert np.array_equal(Q.quantize(ro, "Q8_0"), Q.quantize(x, "Q8_0"))


def test_imatrix_is_ignored_where_llama_cpp_ignores_it():
    x = _x()
    im = np.random.default_rng(1).random(256).astype(np.float32)
    for t in ["Q8_0", "TQ1_0", "TQ2_0", "MXFP4", "F16", "BF16", "F32"]:
        assert np.array_equal(Q.quantize(x, t, im), Q.quantize(x, t)), t
    for t in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"]:
        assert not np.array_equal(Q.quantize(x, t, im), Q.quantize(x, t)), t


# ----------------------------------------------------------------------------- dequantize


def test_dequantize_errors():
    with pytest.raises(QuantError, match=r"needs 36 bytes \(2 blocks of 18\), got 35"):
        Q.dequantize(np.zeros(35, np.uint8), "Q4_0", (1, 64))
    with pytest.raises(QuantError, match="row length 48 is not a multiple of the block size 32"):
        Q.dequantize(np.zeros(27, np.uint8), "Q4_0", (1, 48))
    with pytest.raises(QuantError, match="invalid shape"):
        Q.dequantize(b"", "Q4_0", ())
    with pytest.raises(QuantError, match="bytes-like"):
        Q.dequantize(12, "Q4_0", (32,))
    with pytest.raises(QuantError, match="tuple of ints"):
        Q.dequantize(b"", "Q4_0", ("a",))


def test_dequantize_accepts_buffers_and_shapes():
    x = _x(rows=3, n=64)
    raw = Q.quantize(x, "Q8_0")
    expected = Q.dequantize(raw, "Q8_0", (3, 64))
    assert expected.dtype == np.float32 and expected.shape == (3, 64)
    assert np.array_equal(Q.dequantize(raw.tobytes(), "Q8_0", (3, 64)), expected)
    assert np.array_equal(Q.dequantize(memoryview(raw.tobytes()), "Q8_0", (3, 64)), expected)
    assert np.array_equal(Q.dequantize(bytearray(raw.tobytes()), "q8_0", [3, 64]), expected)
    assert np.array_equal(Q.dequantize(raw, "Q8_0", (3, 1, 64)).reshape(3, 64), expected)
    assert np.array_equal(Q.dequantize(raw.reshape(-1), 8, 192), expected.reshape(-1))
    assert Q.dequantize(b"", "Q8_0", (0, 64)).shape == (0, 64)
    assert np.abs(expected - x).max() < 0.05


def _random_bytes(fmt, n_blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_blocks, fmt.type_size), dtype=np.uint8)
    return raw


@pytest.mark.parametrize("qtype", [s.name for s in Q.supported()])
def test_dequantize_random_bytes_matches_gguf(qtype):
    """Random blocks (NaN/inf scales included: NaN compares equal to NaN)."""
    fmt = Q.format_of(qtype)
    n_blocks = max(4, 2048 // fmt.block_size)
    raw = _random_bytes(fmt, n_blocks, fmt.ggml_id)
    if qtype == "F32":
        raw = raw.view(np.float32).view(np.uint8)
    shape = (2, n_blocks * fmt.block_size // 2)
    ours = Q.dequantize(raw, qtype, shape)
    with np.errstate(all="ignore"):
        theirs = gguf_dequantize(raw.reshape(-1), gguf.GGMLQuantizationType[qtype]).astype(np.float32)
    assert _same_floats(ours, theirs.reshape(shape)), qtype


@pytest.mark.parametrize("qtype", [*MINE, "NVFP4"])
def test_dequantize_every_half_scale_matches_gguf(qtype):
    """All 65536 fp16 bit patterns as the scale (types with an fp16 d at a fixed place; every
    E8M0 / UE4M3 scale byte for MXFP4 / NVFP4, which gguf-py holds equal to llama.cpp)."""
    fmt = Q.format_of(qtype)
    if qtype in ("MXFP4", "NVFP4", "F32"):
        raw = np.random.default_rng(3).integers(0, 256, (65536, fmt.type_size), dtype=np.uint8)
        if qtype == "MXFP4":
            raw[:256, 0] = np.arange(256)  # every E8M0 exponent
        if qtype == "NVFP4":
            raw[:256, :4] = np.arange(256)[:, None]  # every UE4M3 scale byte, in each of the 4 groups
    else:
        raw = np.random.default_rng(3).integers(0, 256, (65536, fmt.type_size), dtype=np.uint8)
        pos = {"TQ1_0": 52, "TQ2_0": 64}.get(qtype, 0)
        raw[:, pos : pos + 2] = np.arange(65536, dtype="<u2").view(np.uint8).reshape(-1, 2)
    shape = (65536, fmt.block_size)
    ours = Q.dequantize(raw, qtype, shape)
    with np.errstate(all="ignore"):
        theirs = gguf_dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(shape).astype(np.float32)
    assert _same_floats(ours, theirs), qtype


@pytest.mark.parametrize(
    "qtype", ["F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0"]
)
def test_dequantize_chunks_and_threads_give_the_same_bits(qtype):
    """Several chunks (DEQUANT_CHUNK) split over threads == one plain call at 1 thread, bit for bit
    (NaN payloads included); an unaligned buffer gives the same floats."""
    import numba

    from engine.quant._common import DEQUANT_CHUNK

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one Numba thread: no chunked path to compare")
    fmt = Q.format_of(qtype)
    n_blocks = 3 * DEQUANT_CHUNK // fmt.block_size + 5  # three chunks and a partial one
    raw = _random_bytes(fmt, n_blocks, 7)
    shape = (n_blocks, fmt.block_size)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(2)
        many = Q.dequantize(raw, qtype, shape)
        numba.set_num_threads(1)
        one = Q.dequantize(raw, qtype, shape)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(many.view(np.uint32), one.view(np.uint32))
    odd = np.empty(raw.size + 1, np.uint8)[1:]
    odd[:] = raw.reshape(-1)
    assert np.array_equal(Q.dequantize(odd, qtype, shape).view(np.uint32), one.view(np.uint32))
    with np.errstate(all="ignore"):
        theirs = gguf_dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(shape).astype(np.float32)
    assert _same_floats(one, theirs)


@pytest.mark.parametrize("qtype", MINE)
def test_round_trip_error_is_small(qtype):
    x = _x(rows=4, n=512, seed=5)
    y = Q.dequantize(Q.quantize(x, qtype), qtype, x.shape)
    rel = np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2))
    limit = {"TQ1_0": 0.8, "TQ2_0": 0.8, "F32": 0.0, "F16": 1e-3, "BF16": 5e-3, "Q8_0": 0.01}.get(qtype, 0.2)
    assert rel <= limit, (qtype, rel)
