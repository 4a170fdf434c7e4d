"""The generation loop on a deterministic fake network: stops, streaming, cancel, context, cache reuse."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ModelError
from engine.progress import CancelToken
from engine.runtime.generate import PREFILL_CHUNK, StopMatcher, common_prefix, generate
from engine.runtime.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


class FakeNet:
    """Next token = (last token + 1) % n_vocab, or what ``script`` says for a position."""

    def __init__(self, n_ctx=64, n_vocab=32, script=None):
        self.n_ctx = n_ctx
        self._n_vocab = n_vocab
        self.calls = []
        self.script = script or {}
        self.n_past = 0

    @property
    def n_vocab(self):
        return self._n_vocab

    def forward(self, tokens, start_pos, *, last_only=False):
        assert start_pos <= self.n_past, "may only append to or truncate the cache"
        self.calls.append((list(map(int, tokens)), start_pos))
        self.n_past = start_pos + len(tokens)
        nxt = self.script.get(self.n_past, (int(tokens[-1]) + 1) % self._n_vocab)
        logits = np.zeros((1, self._n_vocab), np.float32)
        logits[0, nxt] = 10.0
        return logits


class Pieces:
    def __init__(self, table=None):
        self.table = table or {}

    def token_to_piece(self, token, special=True):
        return self.table.get(token, chr(ord("a") + token % 26).encode())


def run(net, prompt, params=GREEDY, pieces=None, **kw):
    events = list(generate(net, pieces or Pieces(), prompt, params, **kw))
    return events, "".join(e.text for e in events), events[-1]


def test_greedy_tokens_text_and_stats():
    events, text, done = run(FakeNet(), [0, 1, 2])
    tokens = [e.token for e in events if e.kind == "token"]
    assert tokens == [3, 4, 5, 6, 7, 8, 9, 10]
    assert text == "defghijk"
    assert done.kind == "done" and done.finish_reason == "length" and done.n_generated == 8
    assert done.n_prompt == 3 and done.prefill_tok_s > 0 and done.decode_tok_s > 0 and done.ttft_s > 0


def test_end_of_generation_token_stops_and_is_not_shown():
    _events, text, done = run(FakeNet(), [0, 1, 2], eog_ids=frozenset({6}))
    assert text == "def" and done.finish_reason == "stop" and done.n_generated == 4


def test_stop_string_across_tokens_is_held_back_and_removed():
    pieces = Pieces({4: b"<e", 5: b"nd", 6: b">"})
    events, text, done = run(FakeNet(), [0, 1, 2], pieces=pieces, stop_strings=["<end>"])
    assert text == "d" and done.finish_reason == "stop"
    # the partial "<e" was never shown before it turned out to be a stop string
    assert [e.text for e in events if e.kind == "token"] == ["d", "", "", ""]


def test_false_alarm_stop_prefix_is_released():
    pieces = Pieces({4: b"<e", 5: b"x"})
    _, text, done = run(FakeNet(), [0, 1, 2], pieces=pieces, stop_strings=["<end>"])
    assert text.startswith("d<ex") and done.finish_reason == "length"


def test_utf8_characters_are_never_split():
    snowman = "☃".encode()  # 3 bytes over 3 tokens
    pieces = Pieces({3: snowman[:1], 4: snowman[1:2], 5: snowman[2:]})
    events, text, _ = run(FakeNet(), [0, 1, 2], pieces=pieces)
    assert [e.text for e in events if e.kind == "token"][:3] == ["", "", "☃"]
    assert text.startswith("☃")


def test_cancel_between_tokens():
    token = CancelToken()
    gen = generate(
        FakeNet(), Pieces(), [0, 1, 2], SamplingParams(temperature=0.0, max_tokens=100), cancel=token
    )
    first = next(gen)
    assert first.kind == "token"
    token.cancel()
    rest = list(gen)
    assert rest[-1].finish_reason == "cancelled" and rest[-1].n_generated <= 2


def test_context_full_is_reported_not_silent():
    net = FakeNet(n_ctx=6)
    _, _text, done = run(net, [0, 1, 2], SamplingParams(temperature=0.0, max_tokens=100))
    assert done.finish_reason == "context"
    assert max(s + len(t) for t, s in net.calls) <= 6
    with pytest.raises(ModelError, match="context window holds 6"):
        run(FakeNet(n_ctx=6), list(range(6)))
    with pytest.raises(ModelError, match="empty"):
        run(FakeNet(), [])


def test_kv_cache_is_reused_for_the_next_turn():
    net = FakeNet()
    cached: list[int] = []
    events, _, _ = run(net, [0, 1, 2], cached_ids=cached)
    generated = [e.token for e in events if e.kind == "token"]
    assert cached == [0, 1, 2, *generated[:-1]]  # the last sampled token was never evaluated
    net.calls.clear()
    follow_up = [*cached, generated[-1], 20, 21]
    _, _, done = run(net, follow_up, cached_ids=cached)
    assert net.calls[0] == ([generated[-1], 20, 21], len(follow_up) - 3)  # only the new tokens
    assert done.n_cached == len(follow_up) - 3
    # a different conversation shares only a prefix: the cache is truncated there
    net.calls.clear()
    run(net, [0, 1, 9, 9], cached_ids=cached)
    assert net.calls[0] == ([9, 9], 2)


def test_same_prompt_again_reevaluates_the_last_token():
    net = FakeNet()
    cached: list[int] = []
    run(net, [0, 1, 2], cached_ids=cached)
    net.calls.clear()
    run(net, [0, 1, 2], cached_ids=cached)
    assert net.calls[0] == ([2], 2)


def test_long_prompts_report_prefill_progress():
    n = PREFILL_CHUNK * 2 + 5
    net = FakeNet(n_ctx=n + 16)
    events, _, _ = run(net, [i % 32 for i in range(n)], SamplingParams(temperature=0.0, max_tokens=2))
    progress = [e.n_prompt_done for e in events if e.kind == "prefill"]
    assert progress == [PREFILL_CHUNK, 2 * PREFILL_CHUNK, n]


def test_seeded_sampling_is_reproducible():
    net_logits = FakeNet(n_vocab=8)
    params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=42, max_tokens=12)
    a = [e.token for e in run(net_logits, [0], params)[0] if e.kind == "token"]
    b = [e.token for e in run(FakeNet(n_vocab=8), [0], params)[0] if e.kind == "token"]
    assert a == b


def test_stop_matcher_and_common_prefix():
    m = StopMatcher(["</s>", "<|im_end|>"])
    assert m.push("hello <") == ("hello ", False)
    assert m.push("|im") == ("", False)
    assert m.push("_end|> tail") == ("", True)
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2 and common_prefix([], [1]) == 0
