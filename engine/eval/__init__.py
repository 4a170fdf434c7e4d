"""What quantization cost: perplexity and KL divergence against the original, as llama.cpp measures them.

- :func:`perplexity` ``(model, text, n_ctx=512)``: one model's perplexity, exactly
  ``llama-perplexity``'s protocol (chunks of ``n_ctx``, BOS at each chunk, second half scored, ±).
- :func:`evaluate` ``(base, quant, text, n_ctx=512, cancel=None, base_logits_cache=None)``: the quant
  against its base — PPL of both, **KL divergence** (mean, median, percentiles), same-top-token rate,
  Δp statistics, ln(PPL(Q)/PPL(base)) — as ``llama-perplexity --kl-divergence``. The base's
  log-probabilities can be cached in llama.cpp's ``--kl-divergence-base`` file format
  (:mod:`engine.eval.logits_file`) so a base that does not fit beside the quant runs once, alone.
- :func:`weight_report` ``(base_gguf, quant_gguf)``: per-tensor RMSE, max error, SNR, relative error.

Which number matters: **KLD**. Weight error tells where precision was lost, not what it cost: equal weight
error hurts some tensors far more than others, and perplexity alone scores only the correct token (it can
even improve by chance). KLD compares the whole next-token distribution with the original's at every
position, so it is the closest single number to "does the quant still behave like the model".

Both generators yield :class:`EvalProgress` and honour a :class:`~engine.progress.CancelToken` between
chunks; their return value is the result (``result = yield from evaluate(...)``).
"""

from pathlib import Path

from engine.eval.logits_file import BaseLogitsFile, BaseLogitsWriter, decode_rows, encode_rows
from engine.eval.perplexity import (
    EvalProgress,
    EvalResult,
    PerplexityResult,
    evaluate,
    perplexity,
    plan_chunks,
    tokenize_for_eval,
)
from engine.eval.stats import LOG_P_FLOOR, PERCENTILES, Distribution
from engine.eval.weights import TensorError, WeightReport, tensor_error, weight_report

# The evaluation text Kvant ships (public domain; see resources/README-texts.md).
DEFAULT_TEXT = Path(__file__).resolve().parents[2] / "resources" / "devils-dictionary-a-c.txt"

__all__ = [
    "DEFAULT_TEXT",
    "LOG_P_FLOOR",
    "PERCENTILES",
    "BaseLogitsFile",
    "BaseLogitsWriter",
    "Distribution",
    "EvalProgress",
    "EvalResult",
    "PerplexityResult",
    "TensorError",
    "WeightReport",
    "decode_rows",
    "encode_rows",
    "evaluate",
    "perplexity",
    "plan_chunks",
    "tensor_error",
    "tokenize_for_eval",
    "weight_report",
]
