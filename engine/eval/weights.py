"""Weight-level error of a quant against its base, tensor by tensor: RMSE, max |error|, SNR, relative error.

Users ask for these, and they are useful to see *where* a quant lost precision (which tensors, which
types). They are not the measure of quality. Quantization error is not uniform in its effect: a small
error in an attention or output tensor can move the model's predictions more than a large one in a
feed-forward block, imatrix-weighted quants deliberately accept more error on weights that matter less,
and errors across layers can compound or cancel. What a user feels is how far the quant's next-token
distribution moved, which is what KL divergence (``engine.eval.evaluate``, ``kvant eval BASE QUANT``)
measures directly; perplexity and the same-top rate back it up. Judge a quant by its KLD.

Definitions, per tensor (base ``w``, quant ``q``, error ``e = q - w``, over all N elements, float64):
``rmse = sqrt(Σe²/N)``, ``max_abs = max|e|``, ``snr_db = 10·log10(Σw² / Σe²)`` (inf when e = 0),
``rel_err = sqrt(Σe² / Σw²)`` (= 10^(-snr/20)).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import KvantError
from engine.progress import CancelToken, Progress

# Elements dequantized at a time (bounds memory: ~16 MiB of float32 per side, twice that in float64).
BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class TensorError:
    name: str
    shape: tuple[int, ...]
    base_type: str
    quant_type: str
    n_elements: int
    rmse: float
    max_abs: float
    snr_db: float
    rel_err: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "base_type": self.base_type,
            "quant_type": self.quant_type,
            "n_elements": self.n_elements,
            "rmse": self.rmse,
            "max_abs": self.max_abs,
            "snr_db": self.snr_db,
            "rel_err": self.rel_err,
        }


@dataclass(frozen=True)
class WeightReport:
    """Per-tensor errors plus the totals over every compared element (``overall``, named ``*``).

    ``skipped`` lists tensors only one file has, or whose shapes differ.
    """

    tensors: tuple[TensorError, ...]
    overall: TensorError
    skipped: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensors": [t.to_dict() for t in self.tensors],
            "overall": self.overall.to_dict(),
            "skipped": list(self.skipped),
        }


@dataclass
class _Sums:
    n: int = 0
    se: float = 0.0  # Σ e²
    sw: float = 0.0  # Σ w²
    max_abs: float = 0.0

    def add(self, w: np.ndarray, q: np.ndarray) -> None:
        w = w.astype(np.float64, copy=False).ravel()
        e = q.astype(np.float64).ravel() - w
        self.n += e.size
        self.se += float(np.dot(e, e))
        self.sw += float(np.dot(w, w))
        if e.size:
            self.max_abs = max(self.max_abs, float(np.abs(e).max()))

    def result(self, name: str, shape: tuple[int, ...], bt: str, qt: str) -> TensorError:
        return TensorError(
            name, shape, bt, qt, self.n, *error_numbers(self.n, self.se, self.sw, self.max_abs)
        )


def error_numbers(n: int, se: float, sw: float, max_abs: float) -> tuple[float, float, float, float]:
    """(rmse, max_abs, snr_db, rel_err) from the element count, Σe², Σw² and max|e|."""
    rmse = math.sqrt(se / n) if n else float("nan")
    if se == 0:
        snr = math.inf
    elif sw == 0:
        snr = -math.inf
    else:
        snr = 10.0 * math.log10(sw / se)
    rel = math.sqrt(se / sw) if sw > 0 else (0.0 if se == 0 else math.inf)
    return rmse, max_abs, snr, rel


def tensor_error(base: np.ndarray, quant: np.ndarray, name: str = "") -> TensorError:
    """The error numbers of two float arrays of the same shape (for tests and small tensors)."""
    if base.shape != quant.shape:
        raise KvantError(f"tensor {name!r}: shapes {base.shape} and {quant.shape} differ")
    s = _Sums()
    s.add(np.asarray(base), np.asarray(quant))
    return s.result(name, tuple(base.shape), str(base.dtype), str(quant.dtype))


def _rows_of(g: Any, name: str, shape: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
    """Rows lo:hi (of the tensor viewed as (rows, ne0)) dequantized to float32."""
    from engine.quant import dequantize, format_of

    t = g.tensor(name)
    raw = g.raw(name)
    n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    row_bytes = t.nbytes // n_rows
    fmt = format_of(t.type)
    return dequantize(raw[lo * row_bytes : hi * row_bytes], fmt.name, (hi - lo, shape[-1]))


def weight_report(
    base: str | Path, quant: str | Path, *, cancel: CancelToken | None = None
) -> Generator[Progress, None, WeightReport]:
    """Compare every tensor the two GGUF files share (same name and shape), dequantized to float.

    Yields :class:`~engine.progress.Progress` per tensor (stage ``"weights"``); returns a
    :class:`WeightReport`. Tensors are read from the memory-mapped files a block of rows at a time.
    """
    from engine.gguf import open_gguf
    from engine.quant import format_of

    with open_gguf(base) as gb, open_gguf(quant) as gq:
        names_q = {t.name for t in gq.tensors}
        names_b = {t.name for t in gb.tensors}
        pairs = []
        skipped = sorted(names_b ^ names_q)
        for t in gb.tensors:
            if t.name not in names_q:
                continue
            tq = gq.tensor(t.name)
            if tq.shape != t.shape:
                skipped.append(t.name)
                continue
            pairs.append((t, tq))
        if not pairs:
            raise KvantError(f"{Path(base).name} and {Path(quant).name} have no tensor in common")
        results: list[TensorError] = []
        total = _Sums()
        for k, (tb, tq) in enumerate(pairs):
            if cancel is not None:
                cancel.raise_if_cancelled()
            yield Progress("weights", k, len(pairs), f"comparing {tb.name}")
            shape = tb.shape
            n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
            step = max(1, BLOCK_ELEMENTS // max(shape[-1], 1))
            s = _Sums()
            for lo in range(0, n_rows, step):
                hi = min(n_rows, lo + step)
                w = _rows_of(gb, tb.name, shape, lo, hi)
                q = _rows_of(gq, tq.name, shape, lo, hi)
                s.add(w, q)
            total.n += s.n
            total.se += s.se
            total.sw += s.sw
            total.max_abs = max(total.max_abs, s.max_abs)
            results.append(s.result(tb.name, shape, format_of(tb.type).name, format_of(tq.type).name))
        yield Progress("weights", len(pairs), len(pairs), "done")
    return WeightReport(tuple(results), total.result("*", (total.n,), "", ""), tuple(skipped))
