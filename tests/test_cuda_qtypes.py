"""CUDA mat-mul of every weight type beyond the original six (engine/runtime/cuda/qkernels.py)
against the CPU kernels, on Numba's CUDA simulator (``KVANT_CUDA_TESTS=device``: a real GPU).

Weights are random blocks (every code, grid index, sign and scale bit; sane fp16 / E8M0 scales), the
same generator the CPU kernel tests use: ``engine.quant.quantize`` cannot make IQ3_S, and random
bytes reach bit patterns a quantizer rarely writes.  Shapes are tiny (the simulator runs every GPU
thread as a Python thread): 3 rows (not a multiple of the rows per block), two super-blocks or
three 32-element blocks, 1 token (decode) and 9 tokens (two tiles of TT = 8).

The GPU sums 32-element units in f32 where the CPU first sums a super-block's integers, so the two
agree to f32 rounding: ``|gpu - cpu| <= (units + 64) · 2^-23 · B`` with ``B = Σ_k |w_k|·|x̂_k|``
(+ ``Σ_b |m_b|·|s_b|`` for Q4_1 / Q5_1), as in tests/test_cuda_kernels.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.runtime.kernels.qmatmul import QTYPES, VEC_DOT_TYPE

IDS = {name: tid for tid, (name, _, _) in QTYPES.items()}
ORIGINAL = {"Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K"}  # tests/test_cuda_kernels.py
NEW = sorted(set(IDS) - ORIGINAL, key=IDS.get)
EPS32 = float(np.finfo(np.float32).eps)


def _cols(name: str) -> int:
    bk = QTYPES[IDS[name]][1]
    return {1: 80, 32: 96, 256: 512}[bk]  # floats: a last unit of 16 columns


def _weight(name: str, rows: int, seed: int):
    """(QWeight, its exactly dequantized f32 values)."""
    import gguf

    from engine.runtime.kernels import repack
    from tests.test_kernels_types import _random_blocks

    cols = _cols(name)
    raw = _random_blocks(name, rows, cols, seed)
    # gguf-py's NumPy dequantizers (equal to ours, tests/test_kernels_types.py): no kernel to compile
    w_f32 = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[name]).reshape(rows, cols)
    return repack(raw, IDS[name], rows, cols), w_f32


def _acts(n: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, cols)) * rng.uniform(0.1, 10, (n, 1))).astype(np.float32)
    x[:, 3] *= 9.0  # an outlier column, as real activations have
    if n > 1:
        x[1, : min(cols, 256)] = 0.0  # an all-zero activation (super-)block
    return x


def _bound(w, w_f32: np.ndarray, x: np.ndarray) -> np.ndarray:
    from engine.runtime.kernels import quantize_act
    from engine.runtime.kernels.qmatmul import act_float

    act = quantize_act(w, x)
    b = np.abs(act_float(act)).astype(np.float64) @ np.abs(w_f32).astype(np.float64).T
    if VEC_DOT_TYPE[w.qtype] == "Q8_1":
        b += np.abs(act[2]).astype(np.float64) @ np.abs(w.fields[-1]).astype(np.float64).T
    units = -(-w.cols // 32)
    return (units + 64) * EPS32 * b


@pytest.mark.parametrize("name", NEW)
def test_products_match_cpu(reduce_launch, name):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.kernels import matvec

    w, w_f32 = _weight(name, 3, seed=IDS[name])
    dw = D.DeviceQWeight.upload(D.DeviceArena(0, None, True, None), w)
    assert dw.act_type == VEC_DOT_TYPE[name]
    for n in (1, 9):  # decode, and two token tiles (TT = 8)
        x = _acts(n, w.cols, seed=100 * n + IDS[name])
        act = D.quantize(reduce_launch, dw.act_type, cuda.to_device(x))
        got = D.matmul(reduce_launch, dw, act).copy_to_host()
        want = matvec(w, x)
        err = np.abs(got.astype(np.float64) - want)
        bound = _bound(w, w_f32, x)
        assert np.all(err <= bound), (name, n, float((err / bound).max()))
        assert np.abs(want).max() > 0.1  # not a vacuous comparison
        if n > 1:
            assert np.all(got[1] == 0) == np.all(want[1] == 0)


def test_every_cpu_weight_type_uploads_and_shares_its_tables():
    from engine.runtime.cuda import device as D

    assert {name for name, _, _ in QTYPES.values()} == D.GPU_QTYPES
    arena = D.DeviceArena(0, None, True, None)
    a = D.DeviceQWeight.upload(arena, _weight("IQ2_XS", 2, seed=1)[0])
    used = arena.allocated
    b = D.DeviceQWeight.upload(arena, _weight("IQ2_XS", 2, seed=2)[0])
    assert arena.allocated - used == sum(f.nbytes for f in b.fields)  # tables uploaded once
    assert all(ta is tb for ta, tb in zip(a.tables, b.tables, strict=True))
    assert D.DeviceQWeight.upload(arena, _weight("IQ1_M", 2, seed=3)[0]).tables[0] is not a.tables[0]


def test_activation_conversions_equal_cpu(launch):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.kernels.actquant import quantize_q8_1, round_bf16, round_f16

    x = _acts(2, 128, 7)
    x[0, 40], x[0, 41] = 3.0, -3.0
    x[0, 64:96] = 0.0  # an all-zero block: s = 0
    dx = cuda.to_device(x)
    for got, want in zip(D.quantize(launch, "Q8_1", dx), quantize_q8_1(x), strict=True):
        np.testing.assert_array_equal(got.copy_to_host(), want)
    special = np.array(
        [
            0.0,
            -0.0,
            1.0 + 2.0**-8,  # bf16 tie: stays at the even 1.0
            1.0 + 3 * 2.0**-8,  # bf16 tie: up to the even 1 + 2^-6
            1.0 + 2.0**-11,  # fp16 tie
            3e-6,  # fp16 subnormal
            -6e-8,
            1e-40,  # f32 subnormal
            -3e-39,
            7e4,  # beyond fp16: inf
            np.inf,
            -np.inf,
        ],
        np.float32,
    )
    x[1, : special.size] = special
    dx = cuda.to_device(x)
    assert D.quantize(launch, "F32", dx)[0] is dx
    with np.errstate(over="ignore"):
        want_f16 = round_f16(x)
    np.testing.assert_array_equal(D.quantize(launch, "F16", dx)[0].copy_to_host(), want_f16)
    got = D.quantize(launch, "BF16", dx)[0].copy_to_host()
    np.testing.assert_array_equal(got.view(np.uint32), round_bf16(x).view(np.uint32))
