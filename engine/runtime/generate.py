"""The generation loop: prefill, sample, decode, stream text deltas with live speed, stop, cancel.

Pure orchestration over three parts that are tested on their own: a network with a KV cache
(``forward(tokens, start_pos, last_only=True)``), a tokenizer (``token_to_piece``, ``eog_ids``)
and a :class:`~engine.runtime.sampling.Sampler`.

Where the network picks the best logits itself (``top_k_limit`` > 0: its output layer is on a GPU)
and the sampler can do with them (:meth:`~engine.runtime.sampling.Sampler.device_top_k`: greedy,
or top-k on, penalties off, as by default), each step asks ``forward(..., top_k=k)`` for the k best
logits and their ids: a few hundred bytes come back instead of the logits (1 MB for a
262,144-token vocabulary, about as long as an H100 needs for a whole token of a small model), and
the host sorts 40 values instead of 262,144.  The sampler gives the same token either way.  Where
the logits are invalid the network returns them, and the sampler raises as it always does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.errors import ModelError
from engine.progress import CancelToken
from engine.runtime.sampling import Sampler, SamplingParams, TopLogits
from engine.runtime.tokenizer import StreamDecoder

PREFILL_CHUNK = 512  # tokens evaluated between cancel checks and prefill progress events


class Network(Protocol):
    n_ctx: int

    @property
    def n_vocab(self) -> int: ...

    def forward(self, tokens: np.ndarray, start_pos: int, *, last_only: bool = False) -> np.ndarray: ...


def _stepper(net: Network, sampler: Sampler):
    """``step(tokens, pos)``: the network's last logits, or the best of them where it picks them."""
    limit = getattr(net, "top_k_limit", 0)
    k = sampler.device_top_k(net.n_vocab, limit) if limit else 0
    if k:
        return lambda tokens, pos: net.forward(tokens, pos, last_only=True, top_k=k)  # type: ignore[call-arg]
    return lambda tokens, pos: net.forward(tokens, pos, last_only=True)


class Pieces(Protocol):
    def token_to_piece(self, token: int, special: bool = True) -> bytes: ...


@dataclass(frozen=True, slots=True)
class GenerationEvent:
    """One step of a generation.

    ``kind`` is ``"prefill"`` (prompt evaluation progress: ``n_prompt_done`` of ``n_prompt``),
    ``"token"`` (one sampled token and the text it completes, which may be "" while a UTF-8
    character is incomplete or a stop string may be starting) or ``"done"`` (``finish_reason``:
    ``"stop"`` end-of-generation token or stop string, ``"length"`` max_tokens reached,
    ``"context"`` the context window is full, ``"cancelled"``).
    """

    kind: str
    token: int | None = None
    text: str = ""
    n_prompt: int = 0
    n_prompt_done: int = 0
    n_cached: int = 0  # prompt tokens reused from the KV cache, not evaluated again
    n_generated: int = 0
    prefill_tok_s: float | None = None
    decode_tok_s: float | None = None
    ttft_s: float | None = None
    finish_reason: str | None = None


class StopMatcher:
    """Holds back text that could be the start of a stop string; reports a completed one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to show, stopped)."""
        self.pending += text
        for s in self.stops:
            at = self.pending.find(s)
            if at >= 0:
                out = self.pending[:at]
                self.pending = ""
                return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def generate(
    net: Network,
    tokenizer: Pieces,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    eog_ids: frozenset[int] = frozenset(),
    stop_strings: Sequence[str] = (),
    cached_ids: list[int] | None = None,
    cancel: CancelToken | None = None,
) -> Iterator[GenerationEvent]:
    """Generate from ``prompt_ids``. ``cached_ids`` lists the tokens already in the network's KV
    cache; it is updated in place as tokens are evaluated, so a follow-up call (the next chat turn)
    evaluates only what is new."""
    prompt = [int(t) for t in prompt_ids]
    n_prompt = len(prompt)
    if n_prompt == 0:
        raise ModelError("the prompt is empty: nothing to generate from")
    if n_prompt >= net.n_ctx:
        raise ModelError(
            f"the prompt has {n_prompt} tokens but the context window holds {net.n_ctx}: "
            "shorten the conversation or load the model with a larger context"
        )
    cached = cached_ids if cached_ids is not None else []
    reuse = min(common_prefix(cached, prompt), n_prompt - 1)  # the last prompt token is always run
    can_rewind = getattr(net, "can_rewind", None)
    if reuse < len(cached) and can_rewind is not None and not can_rewind(reuse):
        reuse = 0  # a sliding-window ring no longer holds what restarting there needs: start over
    del cached[reuse:]
    sampler = Sampler(params)
    decoder = StreamDecoder(tokenizer, skip_special=True)
    matcher = StopMatcher(stop_strings)
    history = list(prompt)
    step = _stepper(net, sampler)

    t0 = time.perf_counter()
    todo = prompt[reuse:]
    logits = None
    done = 0
    for b in range(0, len(todo), PREFILL_CHUNK):
        if cancel is not None and cancel.cancelled:
            yield GenerationEvent("done", n_prompt=n_prompt, n_cached=reuse, finish_reason="cancelled")
            return
        chunk = todo[b : b + PREFILL_CHUNK]
        logits = step(np.asarray(chunk, np.int32), reuse + b)
        cached.extend(chunk)
        done += len(chunk)
        if len(todo) > PREFILL_CHUNK:
            yield GenerationEvent("prefill", n_prompt=n_prompt, n_prompt_done=reuse + done, n_cached=reuse)
    t_prefill = time.perf_counter() - t0
    prefill_rate = len(todo) / t_prefill if t_prefill > 0 else None

    n_gen = 0
    ttft = None
    t_first = None
    finish = "length"
    limit = params.max_tokens if params.max_tokens is not None else net.n_ctx
    while n_gen < limit:
        if cancel is not None and cancel.cancelled:
            finish = "cancelled"
            break
        best = logits if isinstance(logits, TopLogits) else np.asarray(logits[-1], np.float32)
        token = sampler.sample(best, history)
        n_gen += 1
        now = time.perf_counter()
        if ttft is None:
            ttft, t_first = now - t0, now
        decode_rate = (n_gen - 1) / (now - t_first) if n_gen > 1 and now > t_first else None
        if token in eog_ids:
            finish = "stop"
            break
        history.append(token)
        text, stopped = matcher.push(decoder.push(token))
        yield GenerationEvent(
            "token", token, text, n_prompt, n_prompt, reuse, n_gen, prefill_rate, decode_rate, ttft
        )
        if stopped:
            finish = "stop"
            break
        if n_gen >= limit:
            break  # finish stays "length"; no need to evaluate the last token
        if len(cached) + 1 > net.n_ctx:
            finish = "context"
            break
        logits = step(np.asarray([token], np.int32), len(cached))
        cached.append(token)
    tail = "" if finish == "stop" else matcher.push(decoder.flush())[0] + matcher.flush()
    now = time.perf_counter()
    decode_rate = (n_gen - 1) / (now - t_first) if t_first is not None and n_gen > 1 else None
    yield GenerationEvent(
        "done", None, tail, n_prompt, n_prompt, reuse, n_gen, prefill_rate, decode_rate, ttft, finish
    )
