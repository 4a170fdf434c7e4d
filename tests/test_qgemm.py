"""Prefill mat-mat kernels: ``qgemm`` equals the decode mat-vec ``matvec`` bit for bit (same integer
sums, same float operations in the same order), for every weight type, odd token and row counts,
and agrees with the NumPy reference (exact float64 products) to f32 rounding."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

import engine.runtime.kernels.qgemm as qgemm_mod
from engine.runtime.kernels import matmul_ref, matvec, quantize_act, repack
from engine.runtime.kernels.qgemm import qgemm

GGML = {"Q4_0": 2, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
TOKENS = (1, 3, 7, 33, 512)


def _random_weight(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Bytes of a random ``qtype`` weight (engine.quant's quantizer, else gguf-py's)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    try:
        from engine.quant import quantize

        return np.asarray(quantize(x, qtype), np.uint8).reshape(rows, -1)
    except Exception:  # quantizer not available for this type: gguf-py's
        return gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype]).reshape(rows, -1)


def _acts(rng, n: int, cols: int) -> np.ndarray:
    x = (rng.standard_normal((n, cols)) * rng.uniform(0.05, 20, (n, 1))).astype(np.float32)
    if n > 2:
        x[1, :256] = 0.0  # an all-zero block (zero scales) in every activation format
    return x


def _assert_bitwise(w, x):
    act = quantize_act(w, x)
    want = matvec(w, x, act=act)
    got = qgemm(w, x, act=act)
    assert got.shape == want.shape == (x.shape[0], w.rows)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # also tells -0.0 from 0.0
    np.testing.assert_array_equal(qgemm(w, x), got)  # quantizes the activations itself


@pytest.mark.parametrize("qtype", sorted(GGML))
def test_qgemm_equals_matvec_bitwise(qtype, monkeypatch):
    if qtype == "Q5_0":  # the others run matvec's kernel at every size
        monkeypatch.setitem(qgemm_mod.MATVEC_BELOW, qtype, 0)  # the tiled kernel even for 1 token
    rng = np.random.default_rng(GGML[qtype])
    cols = 512
    for rows in (1, 37, 67):  # none a multiple of the row tiles (2, 8, 16)
        w = repack(_random_weight(qtype, rows, cols, seed=rows), GGML[qtype], rows, cols)
        for n in TOKENS:
            _assert_bitwise(w, _acts(rng, n, cols))


@pytest.mark.parametrize("qtype", sorted(GGML))
def test_qgemm_matches_numpy_reference(qtype):
    rng = np.random.default_rng(100 + GGML[qtype])
    rows, cols = 29, 768
    raw = _random_weight(qtype, rows, cols, seed=5)
    w = repack(raw, GGML[qtype], rows, cols)
    ref_w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(GGML[qtype]))
    ref_w = np.asarray(ref_w).reshape(rows, cols)
    x = _acts(rng, 33, cols)
    want = matmul_ref(ref_w, qtype, x)
    np.testing.assert_allclose(qgemm(w, x), want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_qgemm_real_model_weights(default_model):
    """Every weight type of the default model, at its real shapes (a slice of rows for speed)."""
    from engine.gguf import open_gguf

    m = open_gguf(default_model)
    try:
        rng = np.random.default_rng(9)
        seen = set()
        for t in m.tensors:
            if t.name.startswith("blk.") and t.type in GGML.values() and (t.type, t.dims) not in seen:
                seen.add((t.type, t.dims))
                cols, rows = t.dims
                n_rows = min(rows, 83)
                raw = np.asarray(m.raw(t.name)).reshape(rows, -1)[:n_rows]
                w = repack(raw, t.type, n_rows, cols)
                for n in (7, 70):
                    _assert_bitwise(w, _acts(rng, n, cols))
        assert {6, 8, 12, 14} <= {s[0] for s in seen}
    finally:
        m.close()


def test_qgemm_empty_and_out():
    w = repack(_random_weight("Q5_0", 5, 64, seed=1), GGML["Q5_0"], 5, 64)
    assert qgemm(w, np.zeros((0, 64), np.float32)).shape == (0, 5)
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    out = np.empty((3, 5), np.float32)
    assert qgemm(w, x, out=out) is out
    np.testing.assert_array_equal(out, matvec(w, x))
