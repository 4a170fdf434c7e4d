"""CUDA kernels against the CPU kernels, on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), so CI
without a GPU runs them.  Shapes are tiny: the simulator runs every GPU thread as a Python thread.

Element-wise ops and the activation quantization reproduce the CPU's arithmetic step by step, so
on the simulator they are compared for equality (the transcendental functions are evaluated in
float64 and rounded, which the CPU's float32 libm calls match to the last bit on these inputs);
the quantized products differ from the CPU kernels only in the order in which block
contributions are summed, so they are held to the f32 rounding bound of that sum.

``KVANT_CUDA_TESTS=device`` runs the same tests on a real GPU (numba-cuda) instead.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_cuda_backend import cuda_test_device

GGML = {"Q4_0": 2, "Q5_0": 6, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def launch():
    with cuda_test_device() as launch:
        yield launch


def _qweight(qtype: str, rows: int, cols: int, seed: int):
    from engine.quant import quantize
    from engine.runtime.kernels import repack

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    raw = np.asarray(quantize(x, qtype), np.uint8).reshape(rows, -1)
    return repack(raw, GGML[qtype], rows, cols)


def _acts(n: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    x[:, 3] *= 9.0  # an outlier column, as real activations have
    return x


def _product_bound(w, x: np.ndarray) -> np.ndarray:
    """f32 rounding bound of a quantized product computed in a different summation order than the
    CPU: (units + 64) * eps * sum_k |w_rk| |x_tk| over exactly dequantized weights and activations."""
    from engine.runtime.kernels import dequant_act, dequantize_rows, quantize_act

    act = quantize_act(w, x)
    xf = np.abs(dequant_act(act[0], act[1]).astype(np.float64))
    wf = np.abs(dequantize_rows(w).astype(np.float64))
    units = w.cols // 32 if w.qtype in ("Q4_0", "Q5_0", "Q8_0") else w.cols // 64
    return (units + 64) * EPS32 * (xf @ wf.T)


def test_activation_quantization_equals_cpu(launch):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.kernels import quantize_q8_0, quantize_q8_k

    x = _acts(2, 512, 1)
    x[1, 256:512] = 0.0  # an all-zero Q8_K block
    x[0, 40], x[0, 41] = 3.0, -3.0  # a tie in |x|: the first one sets the scale's sign
    dx = cuda.to_device(x)
    q, d = (a.copy_to_host() for a in D.quantize(launch, "Q8_0", dx))
    rq, rd = quantize_q8_0(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(d, rd)
    q, d, bs = (a.copy_to_host() for a in D.quantize(launch, "Q8_K", dx))
    rq, rd, rbs = quantize_q8_k(x)
    np.testing.assert_array_equal(q, rq)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(bs, rbs)


@pytest.mark.parametrize(
    ("qtype", "cols"),
    [("Q4_0", 96), ("Q5_0", 96), ("Q8_0", 96), ("Q4_K", 512), ("Q5_K", 512), ("Q6_K", 512)],
)
def test_quantized_products_match_cpu(launch, qtype, cols):
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.kernels import matvec

    rows = 5  # not a multiple of the rows per block
    w = _qweight(qtype, rows, cols, seed=cols + GGML[qtype])
    dw = D.DeviceQWeight.upload(D.DeviceArena(0, None, True, None), w)
    for n in (1, 3):  # decode (mat-vec) and a small prefill tile (mat-mat)
        x = _acts(n, cols, seed=n)
        got = D.matmul(launch, dw, D.quantize(launch, dw.act_type, cuda.to_device(x)))
        got = got.copy_to_host()
        want = matvec(w, x)
        bound = _product_bound(w, x)
        assert np.all(np.abs(got.astype(np.float64) - want) <= bound), (qtype, n, np.abs(got - want).max())
        assert np.abs(got).max() > 1.0  # not a vacuous comparison
