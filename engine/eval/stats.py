"""The numbers of llama.cpp's ``llama-perplexity`` (plain and ``--kl-divergence``), in float64 NumPy.

Everything here is pure: rows of logits in, per-token values out, and summaries of per-token values.
The formulas follow ``tools/perplexity/perplexity.cpp``:

- per scored token, ``nll = -log softmax(logits)[next token]``; ``PPL = exp(mean nll)``, and its
  uncertainty is ``PPL * sqrt((mean(nll²) - mean(nll)²) / (count - 1))``;
- ``KLD = Σ_i p_base(i) (log p_base(i) - log p_q(i))`` over the vocabulary, leaving out the terms whose
  base log-probability is at most :data:`LOG_P_FLOOR` (-16), as llama.cpp does;
- "same top": the two models' most likely tokens are the same (first index on ties);
- ``Δp = p_q(next token) - p_base(next token)``;
- means with their standard errors (``sqrt(var / (count - 1))``, 0 for 10 values or fewer), linear
  percentiles of the sorted values (``fraction * (count - 1)``), the median, the RMS of Δp, and the
  ln(PPL(Q)/PPL(base)) ratio with its covariance-corrected uncertainty.

llama.cpp sums exponentials of float32 differences in double; here the whole log-softmax is float64,
which agrees with it to ~1e-7 relative.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# llama.cpp leaves base-model tokens with log p <= -16 out of the KLD sum (and its 16-bit cache cannot
# represent logits more than 16 below the maximum).
LOG_P_FLOOR = -16.0
# The percentiles llama.cpp prints (Δp also gets 75 and 25); the median is reported on its own.
PERCENTILES = (99.9, 99.0, 95.0, 90.0, 75.0, 25.0, 10.0, 5.0, 1.0, 0.1)
# Rows of logits converted to float64 at a time (a 262,144-token vocabulary: 2 MiB per row).
ROWS_PER_BLOCK = 16


# --- per-token values ---------------------------------------------------------------------------------
def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``logits`` (..., n_vocab), in float64."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``-log p(targets[i])`` under row ``i`` of ``logits`` (n, n_vocab), float64, in row blocks."""
    logits = np.asarray(logits)
    targets = np.asarray(targets, dtype=np.int64)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} do not match")
    out = np.empty(len(targets), np.float64)
    for lo in range(0, len(targets), ROWS_PER_BLOCK):
        hi = min(lo + ROWS_PER_BLOCK, len(targets))
        lp = log_softmax(logits[lo:hi])
        out[lo:hi] = -lp[np.arange(hi - lo), targets[lo:hi]]
    return out


@dataclass(frozen=True, slots=True)
class TokenComparison:
    """Per scored token: the quant's and the base's NLL, the KLD, Δp and whether the top tokens agree."""

    nll_quant: np.ndarray
    nll_base: np.ndarray
    kld: np.ndarray
    dp: np.ndarray
    same_top: np.ndarray  # bool


def compare_logp(base_logp: np.ndarray, quant_logits: np.ndarray, targets: np.ndarray) -> TokenComparison:
    """Compare one block of rows: base log-probabilities (n, n_vocab) against the quant's raw logits."""
    base_logp = np.asarray(base_logp, dtype=np.float64)
    q_logp = log_softmax(quant_logits)
    rows = np.arange(len(targets))
    targets = np.asarray(targets, dtype=np.int64)
    nll_q = -q_logp[rows, targets]
    nll_b = -base_logp[rows, targets]
    keep = base_logp > LOG_P_FLOOR
    p_base = np.where(keep, np.exp(np.where(keep, base_logp, 0.0)), 0.0)
    kld = (p_base * np.where(keep, base_logp - q_logp, 0.0)).sum(axis=-1)
    same = np.argmax(np.asarray(quant_logits), axis=-1) == np.argmax(base_logp, axis=-1)
    dp = np.exp(-nll_q) - np.exp(-nll_b)
    return TokenComparison(nll_q, nll_b, kld, dp, same)


def compare_rows(
    base_logp_rows: Callable[[int, int], np.ndarray], quant_logits: np.ndarray, targets: np.ndarray
) -> TokenComparison:
    """:func:`compare_logp` over all rows of ``quant_logits``, :data:`ROWS_PER_BLOCK` rows at a time.

    ``base_logp_rows(lo, hi)`` returns the base log-probabilities of rows ``lo:hi`` (any float dtype).
    """
    parts = []
    for lo in range(0, len(targets), ROWS_PER_BLOCK):
        hi = min(lo + ROWS_PER_BLOCK, len(targets))
        parts.append(compare_logp(base_logp_rows(lo, hi), quant_logits[lo:hi], targets[lo:hi]))
    return concat(parts)


def concat(parts: list[TokenComparison]) -> TokenComparison:
    if not parts:
        e = np.empty(0, np.float64)
        return TokenComparison(e, e, e, e, np.empty(0, bool))
    return TokenComparison(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in TokenComparison.__slots__)
    )


# --- summaries ------------------------------------------------------------------------------------------
def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """llama.cpp's ``mean_and_uncertainty``: the mean and its standard error (0 for <= 10 values)."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n < 1:
        return 0.0, 0.0
    f = float(v.sum() / n)
    df = float((v * v).sum() / n - f * f)
    return f, math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0


def covariance_of_means(a: np.ndarray, b: np.ndarray) -> float:
    """llama.cpp's ``covariance``: Cov(a, b) / (count - 1), the covariance of the two means."""
    n = len(a)
    if n < 10:
        return 0.0
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(((a * b).sum() / n - (a.sum() / n) * (b.sum() / n)) / (n - 1))


def percentile(sorted_values: np.ndarray, fraction: float) -> float:
    """llama.cpp's ``percentile``: linear interpolation at ``fraction * (count - 1)`` of sorted values."""
    v = sorted_values
    if fraction <= 0:
        return float(v[0])
    if fraction >= 1:
        return float(v[-1])
    p = fraction * (len(v) - 1)
    ip = int(p)
    p -= ip
    return float((1 - p) * v[ip] + p * v[min(ip + 1, len(v) - 1)])


@dataclass(frozen=True)
class Distribution:
    """Summary of one per-token quantity (KLD or Δp): mean ± standard error, RMS, order statistics.

    ``percentiles`` holds ``(percent, value)`` pairs for :data:`PERCENTILES`.
    """

    mean: float
    mean_err: float
    rms: float
    rms_err: float
    median: float
    minimum: float
    maximum: float
    percentiles: tuple[tuple[float, float], ...]

    def percentile(self, percent: float) -> float:
        for p, v in self.percentiles:
            if p == percent:
                return v
        raise KeyError(f"percentile {percent} was not computed; known: {[p for p, _ in self.percentiles]}")

    @classmethod
    def of(cls, values: np.ndarray) -> Distribution:
        v = np.sort(np.asarray(values, dtype=np.float64))
        n = len(v)
        if n == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan, nan, nan, nan, tuple((p, nan) for p in PERCENTILES))
        mean, mean_err = mean_and_uncertainty(v)
        mse, mse_err = mean_and_uncertainty(v * v)
        rms = math.sqrt(mse)
        rms_err = 0.5 / rms * mse_err if rms > 0 else 0.0
        median = float(v[n // 2]) if n % 2 else float(0.5 * (v[n // 2] + v[n // 2 - 1]))
        pct = tuple((p, percentile(v, p / 100.0)) for p in PERCENTILES)
        return cls(mean, mean_err, rms, rms_err, median, float(v[0]), float(v[-1]), pct)

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "mean_err": self.mean_err,
            "rms": self.rms,
            "rms_err": self.rms_err,
            "median": self.median,
            "min": self.minimum,
            "max": self.maximum,
            "percentiles": {f"{p:g}": v for p, v in self.percentiles},
        }


@dataclass(frozen=True)
class PerplexityStats:
    """PPL = exp(mean NLL) ± its standard error, from per-token NLL values."""

    ppl: float
    ppl_err: float
    mean_nll: float
    mean_nll_err: float


def perplexity_stats(nll: np.ndarray) -> PerplexityStats:
    """As llama.cpp's ``perplexity()`` final estimate (its error needs only 2 values, not 11)."""
    v = np.asarray(nll, dtype=np.float64)
    n = len(v)
    if n == 0:
        nan = float("nan")
        return PerplexityStats(nan, nan, nan, nan)
    mean = float(v.sum() / n)
    var = float((v * v).sum() / n - mean * mean)
    err = math.sqrt(var / (n - 1)) if var > 0 and n > 1 else 0.0
    ppl = math.exp(mean)
    return PerplexityStats(ppl, ppl * err, mean, err)


@dataclass(frozen=True)
class ComparisonStats:
    """Everything ``llama-perplexity --kl-divergence`` prints at the end, from per-token values."""

    ppl_quant: float
    ppl_quant_err: float
    ppl_base: float
    ppl_base_err: float
    ln_ppl_correlation: float  # Cor(ln PPL(Q), ln PPL(base)), 0..1
    ln_ppl_ratio: float  # mean ln(PPL(Q)/PPL(base))
    ln_ppl_ratio_err: float
    ppl_ratio: float
    ppl_ratio_err: float
    ppl_diff: float
    ppl_diff_err: float
    kld: Distribution
    dp: Distribution
    same_top: float  # fraction 0..1
    same_top_err: float
    n_tokens: int


def comparison_stats(t: TokenComparison) -> ComparisonStats:
    n = len(t.kld)
    lq, lq_err = mean_and_uncertainty(t.nll_quant)
    lb, lb_err = mean_and_uncertainty(t.nll_base)
    cov = covariance_of_means(t.nll_quant, t.nll_base)
    ppl_q, ppl_b = math.exp(lq), math.exp(lb)
    ppl_q_err, ppl_b_err = ppl_q * lq_err, ppl_b * lb_err
    cor = cov / (lq_err * lb_err) if lq_err > 0 and lb_err > 0 else float("nan")
    ratio = lq - lb
    ratio_err = math.sqrt(max(lq_err * lq_err + lb_err * lb_err - 2.0 * cov, 0.0))
    diff_err = math.sqrt(max(ppl_q_err**2 + ppl_b_err**2 - 2.0 * ppl_q * ppl_b * cov, 0.0))
    same = float(np.count_nonzero(t.same_top) / n) if n else float("nan")
    same_err = math.sqrt(same * (1.0 - same) / (n - 1)) if n > 1 else 0.0
    return ComparisonStats(
        ppl_quant=ppl_q,
        ppl_quant_err=ppl_q_err,
        ppl_base=ppl_b,
        ppl_base_err=ppl_b_err,
        ln_ppl_correlation=cor,
        ln_ppl_ratio=ratio,
        ln_ppl_ratio_err=ratio_err,
        ppl_ratio=math.exp(ratio),
        ppl_ratio_err=math.exp(ratio) * ratio_err,
        ppl_diff=ppl_q - ppl_b,
        ppl_diff_err=diff_err,
        kld=Distribution.of(t.kld),
        dp=Distribution.of(t.dp),
        same_top=same,
        same_top_err=same_err,
        n_tokens=n,
    )
