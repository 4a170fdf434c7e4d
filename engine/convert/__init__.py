"""Conversion and quantization: GGUF requantization and Hugging Face import, with llama.cpp's presets.

- :func:`plan_conversion` / :func:`make_plan`: a :class:`ConvertPlan` (per tensor: name, shape, source
  type, target type, bytes, why) computed from headers only; ``--dry-run`` shows it.
- :func:`convert` ``(src, out, preset=..., imatrix=None, policy=None, cancel=None)``: a generator of
  :class:`ConvertProgress` (tensor i of n, source bytes done, ETA) returning a :class:`ConvertResult`.
  The output appears only when complete (the GGUF writer writes a temporary file and renames it),
  free disk space is checked first, memory stays bounded by one tensor's output plus one chunk,
  and ``cancel`` is honoured between chunks of rows.
- Sources: any GGUF (F32/F16/BF16, or quantized: dequantized then quantized again, with a warning
  that errors compound) and Hugging Face folders (``engine.convert.hf``).
- Presets and per-tensor rules are llama.cpp's ``llama_tensor_get_type`` (``engine.convert.rules``);
  tensor order, metadata order (``general.quantization_version`` and ``general.file_type`` last,
  ``split.*`` dropped) and data are byte-identical with ``llama_model_quantize`` for the types Kvant
  quantizes (tests/fixtures/convert).
- Policies (``engine.convert.policy``: ``dynamic-1.58``) and regex overrides (``ffn_down=Q6_K``).
- Importance matrices in llama.cpp's GGUF and legacy formats (``engine.convert.imatrix``), and
  :func:`compute_imatrix` ``(model, text=None, out=None, n_ctx=512, chunks=None, cancel=None)``: a
  generator of :class:`ImatrixProgress` returning an :class:`ImatrixResult`, computing one with Kvant's
  engine as ``llama-imatrix`` does (over :data:`DEFAULT_CALIBRATION_TEXT` by default).
"""

from engine.convert.core import (
    ConvertPlan,
    ConvertProgress,
    ConvertResult,
    TensorPlan,
    convert,
    convert_sync,
    make_plan,
    open_source,
    parse_override,
    plan_conversion,
)
from engine.convert.imatrix import (
    DEFAULT_CALIBRATION_TEXT,
    Imatrix,
    ImatrixEntry,
    ImatrixProgress,
    ImatrixResult,
    compute_imatrix,
    compute_imatrix_sync,
    load_imatrix,
    save_imatrix,
)
from engine.convert.policy import POLICIES, Policy
from engine.convert.rules import FTYPES, resolve_preset

PRESETS = tuple(FTYPES)

__all__ = [
    "DEFAULT_CALIBRATION_TEXT",
    "FTYPES",
    "POLICIES",
    "PRESETS",
    "ConvertPlan",
    "ConvertProgress",
    "ConvertResult",
    "Imatrix",
    "ImatrixEntry",
    "ImatrixProgress",
    "ImatrixResult",
    "Policy",
    "TensorPlan",
    "compute_imatrix",
    "compute_imatrix_sync",
    "convert",
    "convert_sync",
    "load_imatrix",
    "make_plan",
    "open_source",
    "parse_override",
    "plan_conversion",
    "resolve_preset",
    "save_imatrix",
]
