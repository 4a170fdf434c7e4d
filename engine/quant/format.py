"""How a quantization family module describes the GGML types it implements.

Each family module (``legacy``, ``kquants``, ``iquants``, ``ternary``, ``floats`` ...) exports
``FORMATS: dict[str, QuantFormat]``; ``engine.quant`` merges them into one table.

Kernel contract (every family follows it):
- ``quantize(x, imatrix)``: ``x`` float32, 2-D, C-contiguous, ``x.shape[1] % block_size == 0``,
  already validated (non-empty; finite too, unless the format says ``checks_finite``: then its
  quantizer raises QuantError for a NaN or infinity itself, typically in the same pass over the
  input); ``imatrix`` None or float32 of length ``x.shape[1]``.
  Returns uint8 of shape ``(rows, x.shape[1] // block_size * type_size)``: llama.cpp's bytes.
- ``dequantize(blocks)``: ``blocks`` uint8 of shape ``(n_blocks, type_size)``; returns float32 of
  shape ``(n_blocks, block_size)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

QuantizeFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
DequantizeFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class QuantFormat:
    name: str  # GGML type name, e.g. "Q4_K"
    ggml_id: int
    block_size: int  # elements per block
    type_size: int  # bytes per block
    dequantize: DequantizeFn
    quantize: QuantizeFn | None = None  # None: dequantize only
    needs_imatrix: bool = False  # llama.cpp refuses to quantize without one
    uses_imatrix: bool = False  # an imatrix changes the result
    checks_finite: bool = False  # quantize raises QuantError for NaN / inf itself

    @property
    def bits_per_weight(self) -> float:
        return self.type_size * 8 / self.block_size
