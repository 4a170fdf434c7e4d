"""CPU kernels for the inference runtime: pure functions, each a Numba implementation with a NumPy
reference that the tests hold it equal to.

- :mod:`.actquant`: activation conversion to Q8_0 / Q8_1 / Q8_K / F16 / BF16, as llama.cpp's CPU
  backend does;
- :mod:`.qmatmul`: weights of every GGUF type in :data:`QTYPES` (F32, F16, BF16, legacy, K-quants,
  IQ, TQ, MXFP4) repacked at load, integer mat-vec on the blocks (decode), row-chunk dequantize +
  BLAS (prefill); :mod:`.qkernels` holds the kernels of the types beyond the original six;
- :mod:`.ops`: RMSNorm, RoPE (NEOX), GELU-tanh gating, softmax;
- :mod:`.attention`: attention over a KV cache with an optional sliding window.

Parallel kernels use Numba's threading layer; callers that may launch kernels from several Python
threads must serialize launches (the models hold one lock) unless the layer is ``omp`` or ``tbb``.
"""

from engine.runtime.kernels.actquant import (
    dequant_act,
    quantize_q8_0,
    quantize_q8_1,
    quantize_q8_k,
    round_bf16,
    round_f16,
)
from engine.runtime.kernels.attention import attention, attention_kt, attention_ref
from engine.runtime.kernels.ops import (
    geglu,
    geglu_lut,
    geglu_lut_inplace,
    kv_store,
    rmsnorm,
    rope_neox,
    scale_round,
    softmax,
)
from engine.runtime.kernels.qmatmul import (
    QTYPES,
    VEC_DOT_TYPE,
    QWeight,
    SharedActivations,
    act_float,
    dequantize_rows,
    matmul_dense,
    matmul_ref,
    matvec,
    quantize_act,
    repack,
)

__all__ = [
    "QTYPES",
    "VEC_DOT_TYPE",
    "QWeight",
    "SharedActivations",
    "act_float",
    "attention",
    "attention_kt",
    "attention_ref",
    "dequant_act",
    "dequantize_rows",
    "geglu",
    "geglu_lut",
    "geglu_lut_inplace",
    "kv_store",
    "matmul_dense",
    "matmul_ref",
    "matvec",
    "quantize_act",
    "quantize_q8_0",
    "quantize_q8_1",
    "quantize_q8_k",
    "repack",
    "rmsnorm",
    "rope_neox",
    "round_bf16",
    "round_f16",
    "scale_round",
    "softmax",
]
