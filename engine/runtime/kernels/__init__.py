"""CPU kernels for the inference runtime: pure functions, each a Numba implementation with a NumPy
reference that the tests hold it equal to.

- :mod:`.actquant`: activation quantization to Q8_0 / Q8_K, as llama.cpp's CPU backend does;
- :mod:`.qmatmul`: quantized weights (Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K) repacked at load, integer
  mat-vec on the blocks (decode), row-chunk dequantize + BLAS (prefill);
- :mod:`.ops`: RMSNorm, RoPE (NEOX), GELU-tanh gating, softmax;
- :mod:`.attention`: attention over a KV cache with an optional sliding window.

Parallel kernels use Numba's threading layer; callers that may launch kernels from several Python
threads must serialize launches (the models hold one lock) unless the layer is ``omp`` or ``tbb``.
"""

from engine.runtime.kernels.actquant import dequant_act, quantize_q8_0, quantize_q8_k
from engine.runtime.kernels.attention import attention, attention_ref
from engine.runtime.kernels.ops import geglu, rmsnorm, rope_neox, softmax
from engine.runtime.kernels.qmatmul import (
    QTYPES,
    QWeight,
    dequantize_rows,
    matmul_dense,
    matmul_ref,
    matvec,
    quantize_act,
    repack,
)

__all__ = [
    "QTYPES",
    "QWeight",
    "attention",
    "attention_ref",
    "dequant_act",
    "dequantize_rows",
    "geglu",
    "matmul_dense",
    "matmul_ref",
    "matvec",
    "quantize_act",
    "quantize_q8_0",
    "quantize_q8_k",
    "repack",
    "rmsnorm",
    "rope_neox",
    "softmax",
]
