"""engine.eval on the real default model against llama.cpp's numbers (tests/fixtures/eval/).

The fixtures are llama.cpp's per-token NLL on the shipped text, made by scripts/make_eval_fixtures.py
with llama-perplexity's exact protocol. Our PPL differs from llama.cpp's only through the forward
pass (our logits are not bit-identical to ggml's), so the bars are on PPL, not on per-token values.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from engine.eval import DEFAULT_TEXT, evaluate, perplexity, tokenize_for_eval
from engine.eval.logits_file import BaseLogitsFile

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def fixture(n_ctx: int):
    return np.load(FIXTURES / f"llama_ppl_ctx{n_ctx}.npz")


def drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


@pytest.fixture(scope="module")
def model(default_model):
    import engine

    m = engine.open_model(default_model, n_ctx=512)
    yield m
    m.close()


@pytest.fixture(scope="module")
def text() -> str:
    return DEFAULT_TEXT.read_text(encoding="utf-8")


def test_fixtures_are_for_the_shipped_text(text):
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    for n_ctx in (128, 512):
        fx = fixture(n_ctx)
        assert str(fx["text_sha256"]) == sha
        nll = fx["nll"]
        assert len(nll) == len(fx["chunk_ppl"]) * (n_ctx - 1 - n_ctx // 2)
        assert math.exp(nll.mean()) == pytest.approx(float(fx["ppl"]), rel=1e-12)


def test_tokens_match_llama_cpp(model, text):
    tokens = tokenize_for_eval(model, text)
    fx = fixture(512)
    assert len(tokens) == int(fx["n_tokens_text"]) == 13200
    np.testing.assert_array_equal(tokens[: len(fx["tokens"])], fx["tokens"])


def test_perplexity_ctx128_close_to_llama_cpp(model, text):
    fx = fixture(128)
    res = drain(perplexity(model, text, 128, n_chunks=2))
    want = float(fx["chunk_ppl"][1])
    print(f"ctx 128, 2 chunks: Kvant PPL {res.ppl:.4f} ± {res.ppl_err:.4f}, llama.cpp {want:.4f}")
    assert res.n_tokens == 2 * 63 and res.n_chunks == 2
    assert res.ppl == pytest.approx(want, rel=0.03)  # the issue-era bar (1.8% apart once)
    # measured since the engine computes llama.cpp's logits bit for bit: equal to the fixture's
    # float32 print of llama.cpp's value
    assert res.ppl == pytest.approx(want, rel=1e-6)


def test_model_against_itself_through_the_cache(model, text, tmp_path):
    cache = tmp_path / "base.logits"
    res = drain(evaluate(model, model, text, 64, None, cache, n_chunks=2))
    f = BaseLogitsFile(cache)
    assert (f.n_ctx, f.n_vocab, f.n_chunk) == (64, 262144, 2)
    f.close()
    assert cache.stat().st_size == 20 + 4 * 128 + 2 * 31 * (262144 + 4) * 2
    # identical models: only the 16-bit storage of the base's log-probabilities (±1.2e-4 each)
    # separates them, so per-token KLD is ~1e-5 either side of 0 and the mean ~0
    assert abs(res.kld.mean) < 2e-5 and np.abs([res.kld.minimum, res.kld.maximum]).max() < 2e-4
    assert res.same_top >= 0.98
    assert abs(res.dp.mean) < 1e-4 and res.dp.rms < 1e-3
    assert res.ppl_quant == pytest.approx(res.ppl_base, rel=1e-4)
    assert res.n_tokens == 62 and res.n_chunks == 2


@pytest.mark.slow
def test_perplexity_ctx512_within_1_percent_of_llama_cpp(model, text):
    fx = fixture(512)
    n = 8  # the whole fixture: 2,040 scored tokens, ~50 s on a quiet machine
    res = drain(perplexity(model, text, 512, n_chunks=n))
    want = float(fx["chunk_ppl"][n - 1])
    nll = fx["nll"][: n * 255]
    want_err = want * math.sqrt((np.mean(nll**2) - np.mean(nll) ** 2) / (len(nll) - 1))
    print(
        f"ctx 512, {n} chunks: Kvant PPL {res.ppl:.4f} ± {res.ppl_err:.4f}, "
        f"llama.cpp {want:.4f} ± {want_err:.4f}; per chunk {res.chunk_ppl} vs {fx['chunk_ppl'][:n]}"
    )
    assert res.n_tokens == n * 255
    assert res.ppl == pytest.approx(want, rel=0.01)
    assert res.ppl_err == pytest.approx(want_err, rel=0.05)
    for ours, theirs in zip(res.chunk_ppl, fx["chunk_ppl"][:n], strict=True):
        assert ours == pytest.approx(float(theirs), rel=0.015)
        assert ours == pytest.approx(float(theirs), rel=1e-6)  # measured: bit-exact logits
