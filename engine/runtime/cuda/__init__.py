"""GPU offload with numba-cuda: the last layers of a model (and its output layer, when everything
fits) run on NVIDIA GPUs, the rest on the CPU; only activations move per token.

- :func:`availability`: can it run here, and if not, why (numba-cuda missing, no GPU, old driver);
- :func:`offload_model` / :class:`OffloadInfo`: how many layers go where (``n_gpu_layers`` a count,
  ``"all"`` or ``"auto"`` from the planner), out-of-memory retries;
- :mod:`.kernels` (activation quantization, the mat-muls of the first six weight types, norms, RoPE
  NEOX, GELU, attention, argmax), :mod:`.qkernels` (mat-muls of every other weight type),
  :mod:`.ops_kernels` (the llama family's RoPE modes, SwiGLU, residual add, slices and biases),
  :mod:`.fused_kernels` (the one-token path's fused norms, activation codes, RoPE + KV writes,
  gating), :mod:`.device` (device memory, launches), :mod:`.decode` (the one-token programs:
  buffers and launches set up once per model), :mod:`.graphs` (those programs captured into CUDA
  graphs, one launch per token);
- the layers on the GPU: :mod:`.gemma3` (Gemma 3) and :mod:`.decoder` (llama, qwen2, qwen3, phi3).

Importing this package does not import CUDA; :mod:`.device` and the kernels import ``numba.cuda``.
"""

from engine.runtime.cuda.backend import INSTALL_HINT, CudaAvailability, CudaDevice, availability
from engine.runtime.cuda.offload import OffloadInfo, offload_model, parse_gpu_layers, split_slots

__all__ = [
    "INSTALL_HINT",
    "CudaAvailability",
    "CudaDevice",
    "OffloadInfo",
    "availability",
    "offload_model",
    "parse_gpu_layers",
    "split_slots",
]
