"""The SIMD intrinsics (engine.runtime.kernels.simd) against a NumPy model of their arithmetic, bit
for bit, on every instruction path this machine can run; and the Q8_0 mat-vec built on them."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from engine.runtime.kernels import simd
from engine.runtime.kernels.qmatmul import _mv_q8_0
from engine.runtime.kernels.simd import has_fma

FMA = has_fma()


def _model_dot(q: np.ndarray, d: np.ndarray, x: np.ndarray, xd: np.ndarray) -> np.float32:
    """One row · one activation row in NumPy: per 32-block the exact sums of four products
    q[4i..4i+3]·x[4i..4i+3] as f32, times f32(d·xd), added lane-wise into 8 f32 lanes
    (multiply-add fused where the CPU has FMA); then the lanes summed as the tree 4+4, 2+2, 1+1.
    (The f64 emulation of the fused step rounds twice; a double-rounding difference would
    need a sum within 2⁻⁵³ of an f32 tie, which this fixed data does not hit.)"""
    acc = np.zeros(8, np.float32)
    for b in range(d.shape[0]):
        qb = q[b * 32 : b * 32 + 32].astype(np.int32)
        xb = x[b * 32 : b * 32 + 32].astype(np.int32)
        pairs = (qb * xb).reshape(8, 4).sum(axis=1).astype(np.float32)
        s = np.float32(d[b] * xd[b])
        if FMA:  # fused: f32 · f32 is exact in f64, one rounding of the sum (to f64, then f32)
            acc = (pairs.astype(np.float64) * np.float64(s) + acc.astype(np.float64)).astype(np.float32)
        else:
            acc = acc + pairs * s
    while acc.shape[0] > 1:
        h = acc.shape[0] // 2
        acc = acc[:h] + acc[h:]
    return acc[0]


def _kernel(acc, block, hsum):
    @njit(cache=False)
    def dot(q, d, x, xd):
        a = acc()
        for b in range(d.shape[0]):
            block(a, q, b * 32, x, b * 32, d[b] * xd[b])
        return hsum(a)

    return dot


def _feats() -> str:
    return simd._features(__import__("numba").core.registry.cpu_target.target_context)


def _can(path: str) -> bool:
    f = _feats()
    return {
        "vnni": ("+avx512vnni" in f and "+avx512vl" in f) or "+avxvnni" in f,
        "avx512bw": "+avx512bw" in f,
        "avx2": "+avx2" in f,
        "generic": True,
    }[path]


def _data(seed: int, k: int = 640):
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, k).astype(np.int8)  # -128 too: Q8_0 files may hold it
    x = rng.integers(-127, 128, k).astype(np.int8)
    q[:32] = -128  # the largest sums (4 · 128 · 127) in one block
    x[:32] = -127
    d = (rng.standard_normal(k // 32) * 1e-2).astype(np.float32)
    xd = (rng.uniform(1e-3, 1, k // 32)).astype(np.float32)
    return q, d, x, xd


@pytest.mark.parametrize(
    "path",
    ["native"]
    + [
        pytest.param(p, marks=pytest.mark.skipif(not _can(p), reason=f"this CPU cannot run the {p} path"))
        for p in simd.Q8_PATHS
    ],
)
def test_dot_q8_block_matches_numpy_model_bitwise(path):
    fns = (simd.acc_q8, simd.dot_q8_block, simd.hsum_q8) if path == "native" else simd.Q8_PATHS[path]
    dot = _kernel(*fns)
    for seed in range(20):
        q, d, x, xd = _data(seed)
        got = dot(q, d, x, xd)
        want = _model_dot(q, d, x, xd)
        assert np.float32(got).view(np.uint32) == want.view(np.uint32), (seed, got, want)


def test_mv_q8_0_is_the_model_for_every_token_and_row():
    rng = np.random.default_rng(7)
    rows, k = 11, 96  # odd rows (a single row after the pairs), 3 blocks
    qs = rng.integers(-127, 128, (rows, k)).astype(np.int8)
    d = (rng.standard_normal((rows, k // 32)) * 1e-2).astype(np.float32)
    for n in (1, 3, 4, 9):  # below, at and past the four-token tile, with a remainder
        xq = rng.integers(-127, 128, (n, k)).astype(np.int8)
        xd = rng.uniform(1e-3, 1, (n, k // 32)).astype(np.float32)
        out = np.full((n, rows), np.nan, np.float32)
        _mv_q8_0(qs, d, xq, xd, out)
        want = np.array([[_model_dot(qs[r], d[r], xq[t], xd[t]) for r in range(rows)] for t in range(n)])
        np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


def test_dot_q8_block_rejects_other_code_types():
    dot = _kernel(simd.acc_q8, simd.dot_q8_block, simd.hsum_q8)
    q, d, x, xd = _data(0)
    with pytest.raises(Exception, match=r"(?i)typing|no implementation|invalid use"):
        dot(q.astype(np.int16), d, x, xd)
