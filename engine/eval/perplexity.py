"""Perplexity of one model and KL divergence of a quant against its base, as ``llama-perplexity`` does.

The protocol (``tools/perplexity/perplexity.cpp``): the text is tokenized once with BOS; the tokens are
cut into ``len // n_ctx`` chunks of ``n_ctx`` (at least two are needed); each chunk is evaluated from an
empty cache with its first token replaced by BOS (for models that add one); and only the second half is
scored: positions ``n_ctx//2 .. n_ctx-2`` predict tokens ``n_ctx//2+1 .. n_ctx-1``, so every scored token
has at least ``n_ctx/2`` tokens of context. That is ``n_ctx - 1 - n_ctx//2`` tokens per chunk (255 for 512).

Both operations are generators: they yield :class:`EvalProgress` between chunks, honour a
:class:`~engine.progress.CancelToken` between chunks (raising :class:`~engine.errors.Cancelled`), and
return their result (``result = yield from evaluate(...)``, or ``StopIteration.value``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import KvantError
from engine.eval import stats
from engine.eval.logits_file import BaseLogitsFile, BaseLogitsWriter, encode_rows
from engine.progress import CancelToken, Progress

MIN_CTX = 8


@dataclass(frozen=True, slots=True)
class EvalProgress(Progress):
    """Progress of an evaluation; ``stage`` is ``"load"``, ``"base"`` (the base pass that fills a
    base-logits file), ``"eval"`` (perplexity or the comparison); ``done``/``total`` count chunks.
    ``ppl`` and ``kld`` are the running estimates so far (``None`` until there are some)."""

    ppl: float | None = None
    kld: float | None = None


@dataclass(frozen=True)
class PerplexityResult:
    """``ppl`` ± ``ppl_err`` over ``n_tokens`` scored tokens in ``n_chunks`` chunks of ``n_ctx``.

    ``chunk_ppl`` is the running PPL after each chunk (what llama-perplexity prints as ``[i]ppl``);
    ``chunk_nll`` the mean NLL of each chunk on its own.
    """

    ppl: float
    ppl_err: float
    mean_nll: float
    n_tokens: int
    n_chunks: int
    n_ctx: int
    chunk_ppl: tuple[float, ...]
    chunk_nll: tuple[float, ...]
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_chunks * self.n_ctx / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "ppl": self.ppl,
            "ppl_err": self.ppl_err,
            "mean_nll": self.mean_nll,
            "n_tokens": self.n_tokens,
            "n_chunks": self.n_chunks,
            "n_ctx": self.n_ctx,
            "chunk_ppl": list(self.chunk_ppl),
            "chunk_nll": list(self.chunk_nll),
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }


@dataclass(frozen=True)
class EvalResult:
    """A quant measured against its base on one text (every number of ``llama-perplexity --kl-divergence``).

    KLD is what to look at first: it measures how far the quant's whole next-token distribution moved
    from the base's, token by token, where PPL only looks at the probability of the one correct token
    and can even improve by chance. ``same_top`` is the fraction of tokens whose most likely next token
    is unchanged; Δp (``dp``) the change in the correct token's probability (negative: worse).
    """

    ppl_base: float
    ppl_base_err: float
    ppl_quant: float
    ppl_quant_err: float
    ln_ppl_ratio: float
    ln_ppl_ratio_err: float
    ppl_ratio: float
    ppl_ratio_err: float
    ppl_diff: float
    ppl_diff_err: float
    ln_ppl_correlation: float
    kld: stats.Distribution
    dp: stats.Distribution
    same_top: float
    same_top_err: float
    n_tokens: int
    n_chunks: int
    n_ctx: int
    chunk_kld: tuple[float, ...]  # mean KLD of each chunk on its own
    base_from_cache: bool
    seconds_base: float  # forward passes of the base (0 when read from a cache file)
    seconds_quant: float
    seconds: float  # wall time of the whole evaluation

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            d[name] = (
                v.to_dict() if isinstance(v, stats.Distribution) else list(v) if isinstance(v, tuple) else v
            )
        return d


# --- helpers ------------------------------------------------------------------------------------------
def _check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None:
        cancel.raise_if_cancelled()


def _open(spec: Any, n_ctx: int, threads: int | None, cancel: CancelToken | None) -> tuple[Any, bool]:
    """A Model (or anything with ``tokenize``/``logits``) as is, or open a path; -> (model, we_opened)."""
    if hasattr(spec, "logits") and hasattr(spec, "tokenize"):
        if spec.n_ctx < n_ctx:
            raise KvantError(
                f"the model was opened with a context of {spec.n_ctx} tokens, less than the {n_ctx} asked for"
            )
        return spec, False
    from engine.runtime.model import open_model

    return open_model(Path(spec), n_ctx=n_ctx, threads=threads, cancel=cancel), True


def _name(spec: Any) -> str:
    path = getattr(spec, "path", spec)
    return Path(path).name if isinstance(path, str | Path) else type(spec).__name__


def _bos(model: Any) -> int | None:
    """The BOS id to put at the start of every chunk, or None where the model adds none."""
    tok = model.tokenizer
    if getattr(tok, "add_eos", False):
        raise KvantError(
            "this model's tokenizer appends EOS to every text; llama.cpp's protocol forbids that"
        )
    return tok.bos_id if getattr(tok, "add_bos", False) else None


def tokenize_for_eval(model: Any, text: str) -> np.ndarray:
    """The whole text's tokens as llama-perplexity makes them (``add_special``: BOS; no special parsing)."""
    return np.asarray(model.tokenize(text, add_bos=True), dtype=np.int32)


def plan_chunks(n_tokens: int, n_ctx: int, n_chunks: int | None) -> int:
    """How many chunks of ``n_ctx`` tokens to evaluate (llama.cpp needs at least ``2 * n_ctx`` tokens)."""
    if n_ctx < MIN_CTX:
        raise KvantError(f"the context must be at least {MIN_CTX} tokens, not {n_ctx}")
    if n_tokens < 2 * n_ctx:
        raise KvantError(
            f"the text is {n_tokens} tokens; perplexity with a context of {n_ctx} needs at least "
            f"{2 * n_ctx} (two chunks): use a longer text or a smaller context"
        )
    n_max = n_tokens // n_ctx
    if n_chunks is not None and n_chunks < 1:
        raise KvantError(f"the number of chunks must be at least 1, not {n_chunks}")
    return n_max if n_chunks is None else min(n_chunks, n_max)


def _chunk_logits(model: Any, tokens: np.ndarray, i: int, n_ctx: int, bos: int | None) -> np.ndarray:
    """The scored rows (positions n_ctx//2 .. n_ctx-2) of chunk ``i``'s logits, float32 (a copy)."""
    ids = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
    if bos is not None:
        ids[0] = bos
    logits = model.logits(ids.tolist())
    first = n_ctx // 2
    return np.array(logits[first : n_ctx - 1], dtype=np.float32)


def _targets(tokens: np.ndarray, i: int, n_ctx: int) -> np.ndarray:
    first = n_ctx // 2
    return tokens[i * n_ctx + first + 1 : (i + 1) * n_ctx].astype(np.int64)


# --- perplexity -----------------------------------------------------------------------------------------
def perplexity(
    model: Any,
    text: str,
    n_ctx: int = 512,
    *,
    n_chunks: int | None = None,
    cancel: CancelToken | None = None,
    threads: int | None = None,
) -> Generator[EvalProgress, None, PerplexityResult]:
    """Perplexity of one model (a :class:`~engine.runtime.model.Model` or a GGUF path) on ``text``.

    Same chunks, BOS handling, scored tokens and ± estimate as ``llama-perplexity -c n_ctx``.
    """
    t0 = time.perf_counter()
    _check_cancel(cancel)
    yield EvalProgress("load", 0, 0, f"loading {_name(model)}")
    m, opened = _open(model, n_ctx, threads, cancel)
    try:
        tokens = tokenize_for_eval(m, text)
        n = plan_chunks(len(tokens), n_ctx, n_chunks)
        bos = _bos(m)
        nll_parts: list[np.ndarray] = []
        chunk_ppl: list[float] = []
        yield EvalProgress("eval", 0, n, f"perplexity: chunk 0/{n}")
        for i in range(n):
            _check_cancel(cancel)
            rows = _chunk_logits(m, tokens, i, n_ctx, bos)
            nll_parts.append(stats.token_nll(rows, _targets(tokens, i, n_ctx)))
            del rows
            running = math.exp(float(np.concatenate(nll_parts).mean()))
            chunk_ppl.append(running)
            yield EvalProgress(
                "eval", i + 1, n, f"perplexity: chunk {i + 1}/{n}, PPL {running:.4f}", ppl=running
            )
    finally:
        if opened:
            m.close()
    nll = np.concatenate(nll_parts)
    ps = stats.perplexity_stats(nll)
    return PerplexityResult(
        ppl=ps.ppl,
        ppl_err=ps.ppl_err,
        mean_nll=ps.mean_nll,
        n_tokens=len(nll),
        n_chunks=n,
        n_ctx=n_ctx,
        chunk_ppl=tuple(chunk_ppl),
        chunk_nll=tuple(float(p.mean()) for p in nll_parts),
        seconds=time.perf_counter() - t0,
    )


# --- comparison -----------------------------------------------------------------------------------------
def evaluate(
    base: Any,
    quant: Any,
    text: str | None,
    n_ctx: int = 512,
    cancel: CancelToken | None = None,
    base_logits_cache: str | Path | None = None,
    *,
    n_chunks: int | None = None,
    threads: int | None = None,
) -> Generator[EvalProgress, None, EvalResult]:
    """Measure ``quant`` against ``base`` on ``text``: PPL of both, KLD, same-top rate, Δp.

    ``base`` and ``quant`` are :class:`~engine.runtime.model.Model` objects or GGUF paths (paths are
    opened with ``n_ctx`` and closed at the end). Without ``base_logits_cache`` both models are loaded
    and run chunk by chunk. With it, the base's log-probabilities come from that file (llama.cpp's
    ``--kl-divergence-base`` format, see :mod:`engine.eval.logits_file`): if the file does not exist the
    base is run once over every chunk to write it and closed before the quant is opened, so the two never
    share memory; if it exists, ``base`` may be ``None`` and ``text`` may be ``None`` (the file holds the
    tokens). A cached base is compared through 16-bit log-probabilities (error ≤ ~1.2e-4 each).
    """
    t0 = time.perf_counter()
    _check_cancel(cancel)
    cache = Path(base_logits_cache) if base_logits_cache is not None else None
    if cache is None and (base is None or text is None):
        raise KvantError("comparing with a base model needs the base model and a text, or a base logits file")
    t_base = 0.0
    opened: list[Any] = []
    try:
        if cache is None:
            yield EvalProgress("load", 0, 0, f"loading {_name(base)}")
            b, b_opened = _open(base, n_ctx, threads, cancel)
            if b_opened:
                opened.append(b)
            yield EvalProgress("load", 0, 0, f"loading {_name(quant)}")
            q, q_opened = _open(quant, n_ctx, threads, cancel)
            if q_opened:
                opened.append(q)
            tokens = tokenize_for_eval(b, text)  # type: ignore[arg-type]
            _same_vocab(b, q, tokens, text)  # type: ignore[arg-type]
            n = plan_chunks(len(tokens), n_ctx, n_chunks)
            bos_b = _bos(b)
            timer = [0.0]

            def base_rows(i: int):
                t = time.perf_counter()
                rows = _chunk_logits(b, tokens, i, n_ctx, bos_b)
                timer[0] += time.perf_counter() - t
                return lambda lo, hi: stats.log_softmax(rows[lo:hi])

            result = yield from _quant_pass(q, tokens, n, n_ctx, base_rows, cancel)
            t_base = timer[0]
            from_cache = False
        else:
            if not cache.exists():
                if base is None or text is None:
                    raise KvantError(f"{cache} does not exist: writing it needs the base model and the text")
                t = time.perf_counter()
                yield from _write_base(base, text, n_ctx, n_chunks, cache, cancel, threads)
                t_base = time.perf_counter() - t
                from_cache = False
            else:
                from_cache = True
            bf = BaseLogitsFile(cache)
            if bf.n_ctx != n_ctx:
                raise KvantError(
                    f"{cache} was made with a context of {bf.n_ctx} tokens, not {n_ctx}: use --ctx {bf.n_ctx}"
                )
            yield EvalProgress("load", 0, 0, f"loading {_name(quant)}")
            q, q_opened = _open(quant, n_ctx, threads, cancel)
            if q_opened:
                opened.append(q)
            if q.n_vocab != bf.n_vocab:
                raise KvantError(
                    f"{cache} holds a {bf.n_vocab}-token vocabulary, the quant has {q.n_vocab}: "
                    "not the same model"
                )
            if text is not None:
                tokens = tokenize_for_eval(q, text)
                n = plan_chunks(len(tokens), n_ctx, n_chunks)
                if n > bf.n_chunk or not np.array_equal(tokens[: n * n_ctx], bf.tokens[: n * n_ctx]):
                    raise KvantError(
                        f"{cache} was made from another text or tokenizer (or fewer chunks: it holds "
                        f"{bf.n_chunk}, {n} asked for)"
                    )
            else:
                tokens = bf.tokens
                n = bf.n_chunk if n_chunks is None else min(n_chunks, bf.n_chunk)

            def cached_rows(i: int):
                return lambda lo, hi: bf.chunk_logp(i, lo, hi)

            result = yield from _quant_pass(q, tokens, n, n_ctx, cached_rows, cancel)
    finally:
        for m in opened:
            m.close()
    comparison, chunk_kld, t_quant = result
    s = stats.comparison_stats(comparison)
    return EvalResult(
        ppl_base=s.ppl_base,
        ppl_base_err=s.ppl_base_err,
        ppl_quant=s.ppl_quant,
        ppl_quant_err=s.ppl_quant_err,
        ln_ppl_ratio=s.ln_ppl_ratio,
        ln_ppl_ratio_err=s.ln_ppl_ratio_err,
        ppl_ratio=s.ppl_ratio,
        ppl_ratio_err=s.ppl_ratio_err,
        ppl_diff=s.ppl_diff,
        ppl_diff_err=s.ppl_diff_err,
        ln_ppl_correlation=s.ln_ppl_correlation,
        kld=s.kld,
        dp=s.dp,
        same_top=s.same_top,
        same_top_err=s.same_top_err,
        n_tokens=s.n_tokens,
        n_chunks=len(chunk_kld),
        n_ctx=n_ctx,
        chunk_kld=chunk_kld,
        base_from_cache=from_cache,
        seconds_base=t_base,
        seconds_quant=t_quant,
        seconds=time.perf_counter() - t0,
    )


def _same_vocab(b: Any, q: Any, tokens: np.ndarray, text: str) -> None:
    if b.n_vocab != q.n_vocab:
        raise KvantError(
            f"the base has a {b.n_vocab}-token vocabulary and the quant {q.n_vocab}: not the same model"
        )
    if not np.array_equal(tokenize_for_eval(q, text), tokens):
        raise KvantError("the base and the quant tokenize the text differently: not the same vocabulary")


def _quant_pass(q, tokens, n, n_ctx, base_rows_of_chunk, cancel):
    """Run the quant over ``n`` chunks, comparing each with the base rows; -> (comparison, chunk_kld, s)."""
    parts: list[stats.TokenComparison] = []
    seconds = 0.0
    bos = _bos(q)
    yield EvalProgress("eval", 0, n, f"comparing: chunk 0/{n}")
    for i in range(n):
        _check_cancel(cancel)
        base_rows = base_rows_of_chunk(i)
        t = time.perf_counter()
        rows = _chunk_logits(q, tokens, i, n_ctx, bos)
        seconds += time.perf_counter() - t
        parts.append(stats.compare_rows(base_rows, rows, _targets(tokens, i, n_ctx)))
        del rows, base_rows
        allc = stats.concat(parts)
        ppl = math.exp(float(allc.nll_quant.mean()))
        kld = float(allc.kld.mean())
        yield EvalProgress(
            "eval", i + 1, n, f"comparing: chunk {i + 1}/{n}, PPL {ppl:.4f}, KLD {kld:.5f}", ppl=ppl, kld=kld
        )
    return stats.concat(parts), tuple(float(p.kld.mean()) for p in parts), seconds


def _write_base(
    base, text, n_ctx, n_chunks, cache: Path, cancel, threads
) -> Generator[EvalProgress, None, None]:
    """Run the base over every chunk, writing its 16-bit log-probabilities to ``cache``."""
    yield EvalProgress("load", 0, 0, f"loading {_name(base)}")
    b, opened = _open(base, n_ctx, threads, cancel)
    try:
        tokens = tokenize_for_eval(b, text)
        n = plan_chunks(len(tokens), n_ctx, n_chunks)
        bos = _bos(b)
        with BaseLogitsWriter(cache, n_ctx, b.n_vocab, tokens[: n * n_ctx]) as w:
            yield EvalProgress("base", 0, n, f"base model: chunk 0/{n}")
            nll: list[np.ndarray] = []
            for i in range(n):
                _check_cancel(cancel)
                rows = _chunk_logits(b, tokens, i, n_ctx, bos)
                nll.append(stats.token_nll(rows, _targets(tokens, i, n_ctx)))
                w.write_chunk(encode_rows(rows))
                del rows
                ppl = math.exp(float(np.concatenate(nll).mean()))
                yield EvalProgress("base", i + 1, n, f"base model: chunk {i + 1}/{n}, PPL {ppl:.4f}", ppl=ppl)
            w.commit()
    finally:
        if opened:
            b.close()
