"""Token sampling: llama.cpp's default sampler chain over a float32 logits vector.

The chain is the one llama.cpp's ``common_sampler_init`` builds with default parameters (DRY, top-n-sigma,
typical-p and XTC are off by default there and are not implemented here)::

    penalties -> top-k -> top-p -> min-p -> temperature -> dist

Each stage is also a pure function over a 1-D float32 logits vector that returns a new vector, with the
tokens a filter removes set to ``-inf`` (so stages compose, and :func:`softmax` gives them probability 0).
The :class:`Sampler` runs the same stages on a compact candidate list after top-k, which keeps a call on a
262,144-entry vocabulary well under a millisecond or two.

Semantics follow ``src/llama-sampling.cpp``:

* penalties: for each token seen in the last ``repeat_last_n`` ids, a logit ``<= 0`` is multiplied by
  ``repeat_penalty`` and a positive one divided by it, then ``count * frequency_penalty +
  presence_penalty`` is subtracted (float32 arithmetic, as there);
* top-k keeps exactly ``min(k, n)`` tokens; ``k <= 0`` is a no-op. Where ties straddle the cut,
  llama.cpp's ``std::partial_sort`` keeps an unspecified subset; here the lowest token ids win;
* top-p sorts by logit, accumulates float32 probabilities and keeps the shortest prefix whose sum reaches
  ``p`` and that holds at least ``min_keep`` tokens; ``p >= 1`` is a no-op;
* min-p keeps every token whose logit is at least ``max + log(p)`` (``p_i >= p * p_max``), at least
  ``min_keep`` of them; ``p <= 0`` is a no-op;
* temperature divides the logits; temperature 0 keeps only the first maximum (greedy);
* dist draws ``u`` uniform in [0, 1) from NumPy's PCG64 (llama.cpp: mt19937, so the same seed does not
  give llama.cpp's tokens) and picks the first candidate whose running probability sum passes ``u * sum``
  (candidates are best first after top-k or top-p, as in llama.cpp, and in id order otherwise);
* ``min_keep``: llama.cpp's default of 0 behaves as 1 (the best token always survives), so it is at least
  1 here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import KvantError
from engine.runtime.kernels.topk import top_k as top_k_kernel
from engine.runtime.kernels.topk import top_k_ref

__all__ = [
    "Sampler",
    "SamplingError",
    "SamplingParams",
    "TopLogits",
    "apply_penalties",
    "min_p",
    "softmax",
    "temperature",
    "top_k",
    "top_p",
]

# Above this many candidates top-p first tries the best few (llama.cpp does the same, with 256).
_TOP_P_PARTIAL = 256
# Up to this k, top-k runs the Numba kernel of engine.runtime.kernels.topk (0.06 vs 0.35 ms for k = 40 of
# 262,144 on this CPU; 0.51 vs 0.36 ms at k = 512).
_TOP_K_KERNEL_MAX = 128


class SamplingError(KvantError, ValueError):
    """Sampling parameters are out of range, or the logits or token ids handed to the sampler are invalid."""


def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick the next token. Defaults are llama.cpp's (``common_params_sampling``).

    ``temperature`` 0 means greedy (argmax, first maximum on ties). ``top_k`` 0, ``top_p`` 1 and ``min_p`` 0
    switch those filters off. ``repeat_last_n`` 0 switches the penalties off and -1 means "every id the
    caller passes". ``seed`` ``None`` draws a fresh seed from the OS. ``max_tokens`` ``None``: no limit of
    its own (generation still stops at an end-of-turn token or a full context).
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 1024
    min_keep: int = 1

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> SamplingError:
            return SamplingError(f"sampling parameter {name} {rule}, got {getattr(self, name)!r}")

        for name in (
            "temperature",
            "top_p",
            "min_p",
            "repeat_penalty",
            "frequency_penalty",
            "presence_penalty",
        ):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(v):
                raise bad(name, "must be a finite number")
        for name in ("top_k", "repeat_last_n", "min_keep"):
            if not _is_int(getattr(self, name)):
                raise bad(name, "must be an integer")
        if self.temperature < 0:
            raise bad("temperature", "must be 0 (greedy) or more")
        if self.top_k < 0:
            raise bad("top_k", "must be 0 (off) or more")
        if not 0 <= self.top_p <= 1:
            raise bad("top_p", "must be between 0 and 1")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", "must be between 0 and 1")
        if self.repeat_penalty <= 0:
            raise bad("repeat_penalty", "must be more than 0 (1 is off)")
        if self.repeat_last_n < -1:
            raise bad("repeat_last_n", "must be -1 (all), 0 (off) or more")
        if self.min_keep < 1:
            raise bad("min_keep", "must be at least 1")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise bad("seed", "must be None or an integer of 0 or more")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise bad("max_tokens", "must be None or an integer of 1 or more")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalties_active(self) -> bool:
        return self.repeat_last_n != 0 and (
            self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
        )


# --- helpers ---------------------------------------------------------------------------------------------


def _as_logits(logits: object) -> np.ndarray:
    """A 1-D float32 view (or copy, if the dtype differs) of ``logits``; rejects NaN, +inf and all -inf."""
    arr = np.asarray(logits)
    if arr.ndim != 1 or arr.size == 0:
        raise SamplingError(f"logits must be a non-empty 1-D vector, got shape {arr.shape}")
    if arr.dtype != np.float32:
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
            raise SamplingError(f"logits must be numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    top = arr.max()
    if not np.isfinite(top):
        what = "NaN" if np.isnan(top) else ("+inf" if top > 0 else "only -inf")
        raise SamplingError(f"logits contain {what}; the model produced an invalid output")
    return arr


def _window(recent_ids: Sequence[int] | np.ndarray, last_n: int, n_vocab: int) -> np.ndarray:
    """The ids the penalties look at (the last ``last_n``, or all for -1), checked against the vocabulary."""
    if last_n == 0:
        return np.empty(0, dtype=np.int64)
    if not isinstance(recent_ids, list | tuple | np.ndarray):
        recent_ids = list(recent_ids)  # a deque, a generator...
    ids = recent_ids if last_n < 0 else recent_ids[-last_n:]
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise SamplingError("recent token ids must be a flat sequence of integers")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_vocab:
        bad = lo if lo < 0 else hi
        raise SamplingError(f"recent token id {bad} is outside the vocabulary of {n_vocab} tokens")
    return arr.astype(np.int64, copy=False)


def _penalize_inplace(work: np.ndarray, window: np.ndarray, params: SamplingParams) -> None:
    if window.size == 0 or not params.penalties_active:
        return
    ids, counts = np.unique(window, return_counts=True)
    vals = work[ids]
    rp = np.float32(params.repeat_penalty)
    vals = np.where(vals <= 0, vals * rp, vals / rp).astype(np.float32, copy=False)
    sub = counts.astype(np.float32) * np.float32(params.frequency_penalty) + np.float32(
        params.presence_penalty
    )
    work[ids] = vals - sub


def _desc_order(vals: np.ndarray) -> np.ndarray:
    """Positions of ``vals`` by descending value, ties by ascending position."""
    return np.lexsort((np.arange(vals.size), -vals))


def _top_k_positions(vals: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest values (ties at the cut: lowest positions), in descending order
    (ties: ascending position, as the GPU's top-k pick orders them); ``vals`` hold no NaN."""
    n = vals.size
    if k >= n:
        return _desc_order(vals)
    if k > _TOP_K_KERNEL_MAX:  # the kernel's insertions grow as k^2: argpartition wins
        return top_k_ref(vals, k)
    return top_k_kernel(np.ascontiguousarray(vals, np.float32), k)  # as top_k_ref; 6x faster for k = 40


def _probs(vals: np.ndarray) -> np.ndarray:
    """float32 softmax of ``vals`` (-inf gives 0), normalised with a float64 sum."""
    e = np.exp(vals - vals.max(), dtype=np.float32)
    return (e / np.float32(e.sum(dtype=np.float64))).astype(np.float32, copy=False)


def _top_p_count(sorted_probs: np.ndarray, p: float, min_keep: int) -> int:
    """How many of the descending-sorted probabilities the nucleus keeps; 0 if the prefix never reaches p."""
    cum = np.cumsum(sorted_probs, dtype=np.float32)
    ok = cum >= np.float32(p)
    ok[: min_keep - 1] = False
    hits = np.flatnonzero(ok)
    return int(hits[0]) + 1 if hits.size else 0


def _top_p_positions(vals: np.ndarray, p: float, min_keep: int, is_sorted: bool) -> np.ndarray | None:
    """Positions kept by top-p, or ``None`` if all are kept."""
    if p >= 1.0:
        return None
    # As llama.cpp: float32 exponentials normalised by their float32 running sum in the current order.
    e = np.exp(vals - vals.max(), dtype=np.float32)
    probs = e / np.cumsum(e, dtype=np.float32)[-1]
    n = vals.size
    if is_sorted:
        keep = _top_p_count(probs, p, min_keep)
        return None if keep == 0 or keep >= n else np.arange(keep)
    part = _TOP_P_PARTIAL
    while part < n:
        # Try the best few first: most nuclei are small (llama.cpp's adaptive partial sort does the same).
        best = _top_k_positions(vals, part)
        keep = _top_p_count(probs[best], p, min_keep)
        if keep:
            return best[:keep]
        part *= 16
    order = _desc_order(vals)
    keep = _top_p_count(probs[order], p, min_keep)
    return None if keep == 0 or keep >= n else order[:keep]


def _min_p_mask(vals: np.ndarray, p: float, min_keep: int) -> np.ndarray | None:
    """Mask of the positions min-p keeps, or ``None`` if all are kept."""
    if p <= 0.0:
        return None
    threshold = vals.max() + np.float32(np.log(np.float32(p)))
    mask = vals >= threshold
    if np.count_nonzero(mask) < min_keep:
        mask = np.zeros(vals.size, dtype=bool)
        mask[_top_k_positions(vals, min(min_keep, vals.size))] = True
    return None if mask.all() else mask


def _masked(logits: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    out = np.array(logits, dtype=np.float32, copy=True)
    if keep is not None:
        drop = np.ones(out.size, dtype=bool)
        drop[keep] = False
        out[drop] = -np.inf
    return out


# --- the stages as pure functions -------------------------------------------------------------------------


def apply_penalties(
    logits: np.ndarray, recent_ids: Sequence[int] | np.ndarray, params: SamplingParams
) -> np.ndarray:
    """Repetition, frequency and presence penalties for the tokens among the last ``repeat_last_n`` ids."""
    arr = _as_logits(logits)
    out = np.array(arr, dtype=np.float32, copy=True)
    _penalize_inplace(out, _window(recent_ids, params.repeat_last_n, arr.size), params)
    return out


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` highest logits: exactly ``min(k, n)``, lowest ids first among ties at the cut.

    ``k <= 0`` keeps all.
    """
    arr = _as_logits(logits)
    if not _is_int(k):
        raise SamplingError(f"top_k must be an integer, got {k!r}")
    if k <= 0 or k >= arr.size:
        return arr.copy()
    return _masked(arr, _top_k_positions(arr, int(k)))


def top_p(logits: np.ndarray, p: float, min_keep: int = 1) -> np.ndarray:
    """Nucleus: keep the most probable tokens whose probabilities first sum to at least ``p``."""
    arr = _as_logits(logits)
    if not 0 <= p <= 1 or min_keep < 1:
        raise SamplingError(f"top_p needs 0 <= p <= 1 and min_keep >= 1, got p={p!r}, min_keep={min_keep!r}")
    return _masked(arr, _top_p_positions(arr, p, min_keep, is_sorted=False))


def min_p(logits: np.ndarray, p: float, min_keep: int = 1) -> np.ndarray:
    """Keep the tokens whose probability is at least ``p`` times the highest one."""
    arr = _as_logits(logits)
    if not 0 <= p <= 1 or min_keep < 1:
        raise SamplingError(f"min_p needs 0 <= p <= 1 and min_keep >= 1, got p={p!r}, min_keep={min_keep!r}")
    mask = _min_p_mask(arr, p, min_keep)
    return _masked(arr, None if mask is None else np.flatnonzero(mask))


def temperature(logits: np.ndarray, t: float) -> np.ndarray:
    """Divide the logits by ``t``; ``t <= 0`` keeps only the first maximum (greedy)."""
    arr = _as_logits(logits)
    if t <= 0:
        return _masked(arr, np.array([int(np.argmax(arr))]))
    return (arr / np.float32(t)).astype(np.float32, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities (float32, summing to 1); ``-inf`` logits get probability 0."""
    return _probs(_as_logits(logits))


# --- the chain --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopLogits:
    """The ``k`` best logits of a token and their ids, best first (larger logit, then smaller id: what
    top-k keeps, in its order), taken where the logits are (a GPU) so that only they come back.

    :meth:`Sampler.sample` takes one in place of the logits when :meth:`Sampler.device_top_k` asked
    for that ``k``: the rest of the chain gives the same token as on the whole vector."""

    ids: np.ndarray  # int64 (k,)
    logits: np.ndarray  # float32 (k,)
    n_vocab: int


class Sampler:
    """llama.cpp's default chain with its own random generator: the same seed gives the same tokens.

    ``sample(logits, recent_ids)`` returns a token id. ``recent_ids`` are the ids the penalties look at
    (llama.cpp feeds its penalty sampler every accepted token: the prompt and what was generated so far).
    """

    def __init__(self, params: SamplingParams | None = None) -> None:
        self.params = params if params is not None else SamplingParams()
        if not isinstance(self.params, SamplingParams):
            raise SamplingError(f"a Sampler needs SamplingParams, got {type(self.params).__name__}")
        self._rng = np.random.default_rng(self.params.seed)

    def reset(self) -> None:
        """Start the random sequence again from the seed (a fresh OS seed when ``seed`` is ``None``)."""
        self._rng = np.random.default_rng(self.params.seed)

    def device_top_k(self, n_vocab: int, limit: int) -> int:
        """The ``k`` (at most ``limit``) for which :meth:`sample` on a :class:`TopLogits` of the k best
        logits gives the token it gives on all ``n_vocab`` of them, or 0: greedy needs the best one;
        otherwise top-k must be on and cut (``0 < top_k < n_vocab``), and penalties off (they change
        logits before top-k)."""
        params = self.params
        if params.penalties_active:
            return 0
        k = 1 if params.greedy else params.top_k
        if not 0 < k <= limit or (k >= n_vocab and not params.greedy):
            return 0
        return k

    def candidates(
        self, logits: np.ndarray, recent_ids: Sequence[int] | np.ndarray = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ids the chain may still pick and their probabilities (after temperature).

        Best first after top-k or top-p; in id order when both are off.

        For temperature 0 this is the single greedy token with probability 1.
        """
        ids, vals = self._filter(logits, recent_ids)
        if self.params.greedy:
            best = int(np.argmax(vals))
            return ids[best : best + 1].copy(), np.ones(1, dtype=np.float32)
        return ids, _probs((vals / np.float32(self.params.temperature)).astype(np.float32, copy=False))

    def sample(self, logits: np.ndarray | TopLogits, recent_ids: Sequence[int] | np.ndarray = ()) -> int:
        """The next token id, from the logits or from the :class:`TopLogits` that
        :meth:`device_top_k` asked for."""
        params = self.params
        if isinstance(logits, TopLogits):
            return self._sample_top(logits)
        if params.greedy:
            # The filters always keep the maximum, so greedy is the argmax of the penalised logits
            # (np.argmax: the first maximum, as llama.cpp's greedy sampler).
            arr = _as_logits(logits)
            window = _window(recent_ids, params.repeat_last_n, arr.size)
            if window.size and params.penalties_active:
                arr = arr.copy()
                _penalize_inplace(arr, window, params)
            return int(np.argmax(arr))
        return self._draw(*self._filter(logits, recent_ids))

    def _sample_top(self, top: TopLogits) -> int:
        k = top.ids.size
        if self.device_top_k(top.n_vocab, k) != k:
            raise SamplingError(f"the {k} best logits are not what this sampler needs ({self.params})")
        if self.params.greedy:
            return int(top.ids[0])
        # the chain after top-k (see _filter), on the same ids and logits in the same order
        return self._draw(*self._after_top_k(top.ids, np.asarray(top.logits, np.float32), True))

    def _draw(self, ids: np.ndarray, vals: np.ndarray) -> int:
        """Temperature and the random draw over the surviving candidates."""
        params = self.params
        if ids.size == 1:
            return int(ids[0])
        probs = _probs((vals / np.float32(params.temperature)).astype(np.float32, copy=False))
        cum = np.cumsum(probs, dtype=np.float64)
        target = self._rng.random() * cum[-1]
        # The first candidate whose running sum passes the target (llama.cpp: reaches it; the two differ
        # only when u hits a sum exactly, and "passes" never picks a zero-probability candidate).
        i = int(np.searchsorted(cum, target, side="right"))
        return int(ids[min(i, ids.size - 1)])

    def _filter(
        self, logits: np.ndarray, recent_ids: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Penalties, top-k, top-p and min-p: the surviving ids and their (untempered) logits."""
        params = self.params
        arr = _as_logits(logits)
        n = arr.size
        window = _window(recent_ids, params.repeat_last_n, n)
        if window.size and params.penalties_active:
            arr = arr.copy()
            _penalize_inplace(arr, window, params)

        is_sorted = False
        if 0 < params.top_k < n:
            ids = _top_k_positions(arr, params.top_k)
            vals = arr[ids]
            is_sorted = True
        else:
            ids = np.arange(n)
            vals = arr
        return self._after_top_k(ids, vals, is_sorted)

    def _after_top_k(
        self, ids: np.ndarray, vals: np.ndarray, is_sorted: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-p and min-p over the candidates top-k left."""
        params = self.params
        keep = _top_p_positions(vals, params.top_p, params.min_keep, is_sorted)
        if keep is not None:
            ids, vals = ids[keep], vals[keep]

        mask = _min_p_mask(vals, params.min_p, params.min_keep)
        if mask is not None:
            ids, vals = ids[mask], vals[mask]
        return ids, vals
