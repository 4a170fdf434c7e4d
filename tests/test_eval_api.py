"""engine.eval's generators and CLI on small fake models (fast): chunking, BOS, caching, cancel, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from engine.errors import Cancelled, KvantError
from engine.eval import EvalProgress, evaluate, perplexity, plan_chunks, weight_report
from engine.eval.logits_file import BaseLogitsFile
from engine.progress import CancelToken

VOCAB = 64
BOS = 1


class FakeTokenizer:
    add_bos = True
    add_eos = False
    bos_id = BOS


class FakeModel:
    """A causal toy LM: logits at position i depend on ids[:i+1] (a decayed running sum of embeddings)."""

    def __init__(self, n_ctx: int = 64, noise: float = 0.0, seed: int = 0) -> None:
        rng = np.random.default_rng(0)
        self.emb = rng.normal(0, 1, (VOCAB, 16))
        self.out = rng.normal(0, 0.25, (16, VOCAB))  # log-probabilities stay far above -16
        if noise:
            self.out = self.out + np.random.default_rng(seed).normal(0, 0.25 * noise, self.out.shape)
        self.n_ctx = n_ctx
        self.n_vocab = VOCAB
        self.tokenizer = FakeTokenizer()
        self.calls: list[list[int]] = []
        self.closed = False

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        return ([BOS] if add_bos else []) + [2 + (ord(c) % (VOCAB - 2)) for c in text]

    def logits(self, ids):
        ids = list(ids)
        assert len(ids) <= self.n_ctx
        self.calls.append(ids)
        h = np.zeros(16)
        out = np.empty((len(ids), VOCAB), np.float32)
        for i, t in enumerate(ids):
            h = 0.7 * h + self.emb[t]
            out[i] = h @ self.out
        return out

    def close(self) -> None:
        self.closed = True


TEXT = "the quick brown fox jumps over the lazy dog; " * 12  # 541 tokens with BOS


def drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


def ref_perplexity(model: FakeModel, text: str, n_ctx: int, n_chunks: int | None = None):
    """llama-perplexity's protocol, written out plainly."""
    tokens = model.tokenize(text)
    n = len(tokens) // n_ctx if n_chunks is None else min(n_chunks, len(tokens) // n_ctx)
    nll = []
    for i in range(n):
        chunk = tokens[i * n_ctx : (i + 1) * n_ctx]
        logits = model.logits([BOS, *chunk[1:]]).astype(np.float64)
        for j in range(n_ctx // 2, n_ctx - 1):
            row = logits[j]
            lse = row.max() + math.log(np.exp(row - row.max()).sum())
            nll.append(lse - row[chunk[j + 1]])
    nll = np.array(nll)
    ppl = math.exp(nll.mean())
    return ppl, ppl * math.sqrt((np.mean(nll**2) - nll.mean() ** 2) / (len(nll) - 1)), len(nll), n


def test_plan_chunks():
    assert plan_chunks(1024, 512, None) == 2
    assert plan_chunks(13200, 512, None) == 25
    assert plan_chunks(13200, 512, 4) == 4
    with pytest.raises(KvantError, match="at least 1024"):
        plan_chunks(1023, 512, None)
    with pytest.raises(KvantError, match="at least 1"):
        plan_chunks(2000, 512, 0)


@pytest.mark.parametrize("n_ctx, n_chunks", [(64, None), (32, 5), (16, 2)])
def test_perplexity_follows_llama_cpps_protocol(n_ctx, n_chunks):
    m = FakeModel(n_ctx=64)
    res, events = drain(perplexity(m, TEXT, n_ctx, n_chunks=n_chunks))
    ppl, err, n_tok, n = ref_perplexity(FakeModel(), TEXT, n_ctx, n_chunks)
    assert res.ppl == pytest.approx(ppl, rel=1e-12)
    assert res.ppl_err == pytest.approx(err, rel=1e-9)
    assert (res.n_tokens, res.n_chunks, res.n_ctx) == (n_tok, n, n_ctx)
    assert n_tok == n * (n_ctx - 1 - n_ctx // 2)
    assert res.chunk_ppl[-1] == pytest.approx(res.ppl)
    # every chunk is evaluated from scratch, starts with BOS, and is exactly n_ctx tokens
    tokens = m.tokenize(TEXT)
    assert len(m.calls) == n
    for i, call in enumerate(m.calls):
        assert call == [BOS, *tokens[i * n_ctx + 1 : (i + 1) * n_ctx]]
    evals = [e for e in events if e.stage == "eval"]
    assert [e.done for e in evals] == list(range(n + 1)) and all(e.total == n for e in evals)
    assert all(isinstance(e, EvalProgress) for e in events)
    assert not m.closed  # a Model passed in stays open


def test_identical_models_compare_to_zero():
    res, _ = drain(evaluate(FakeModel(), FakeModel(), TEXT, 64))
    assert res.kld.mean == pytest.approx(0, abs=1e-12) and res.kld.maximum == pytest.approx(0, abs=1e-12)
    assert res.same_top == 1.0
    assert res.dp.mean == 0 and res.dp.rms == 0
    assert res.ppl_quant == res.ppl_base
    assert res.ppl_ratio == 1.0 and res.ln_ppl_ratio == 0.0
    assert res.n_chunks == 8 and res.n_tokens == 8 * 31


def test_perturbed_quant_against_reference():
    base, quant = FakeModel(), FakeModel(noise=0.3, seed=5)
    res, events = drain(evaluate(base, quant, TEXT, 64, n_chunks=4))
    tokens = base.tokenize(TEXT)
    klds, same, dps = [], [], []
    for i in range(4):
        chunk = [BOS, *tokens[i * 64 + 1 : (i + 1) * 64]]
        lb = FakeModel().logits(chunk).astype(np.float64)
        lq = FakeModel(noise=0.3, seed=5).logits(chunk).astype(np.float64)
        for j in range(32, 63):
            pb = np.exp(lb[j] - lb[j].max())
            pb /= pb.sum()
            pq = np.exp(lq[j] - lq[j].max())
            pq /= pq.sum()
            klds.append(float(np.sum(pb * np.log(pb / pq))))
            same.append(np.argmax(pb) == np.argmax(pq))
            t = tokens[i * 64 + j + 1]
            dps.append(pq[t] - pb[t])
    assert res.kld.mean == pytest.approx(np.mean(klds), rel=1e-9)
    assert res.kld.median == pytest.approx(np.median(klds), rel=1e-9)
    assert res.kld.percentile(99.0) == pytest.approx(np.percentile(klds, 99), rel=1e-9)
    assert res.same_top == pytest.approx(np.mean(same))
    assert res.dp.mean == pytest.approx(np.mean(dps), rel=1e-9)
    assert res.dp.rms == pytest.approx(math.sqrt(np.mean(np.square(dps))), rel=1e-9)
    assert res.kld.mean > 0 and res.same_top < 1
    assert len(res.chunk_kld) == 4
    assert np.mean(res.chunk_kld) == pytest.approx(res.kld.mean)
    assert events[-1].kld == pytest.approx(res.kld.mean)
    d = res.to_dict()
    json.dumps(d)
    assert d["kld"]["percentiles"]["99"] == res.kld.percentile(99.0)


def test_base_logits_cache_written_once_then_reused(tmp_path):
    cache = tmp_path / "base.logits"
    base, quant = FakeModel(), FakeModel(noise=0.3, seed=5)
    direct, _ = drain(evaluate(base, quant, TEXT, 64, n_chunks=4))
    first, events = drain(evaluate(base, quant, TEXT, 64, None, cache, n_chunks=4))
    assert cache.exists() and not first.base_from_cache
    assert [e.done for e in events if e.stage == "base"] == [0, 1, 2, 3, 4]
    f = BaseLogitsFile(cache)
    assert (f.n_ctx, f.n_vocab, f.n_chunk) == (64, VOCAB, 4)
    np.testing.assert_array_equal(f.tokens, base.tokenize(TEXT)[: 4 * 64])
    f.close()
    # from the cache: no base model at all, with or without the text
    again, _ = drain(evaluate(None, quant, TEXT, 64, None, cache, n_chunks=4))
    notext, _ = drain(evaluate(None, quant, None, 64, None, cache))
    for r in (first, again, notext):
        # 16-bit base log-probabilities: ~1e-4 per value
        assert r.kld.mean == pytest.approx(direct.kld.mean, rel=1e-3, abs=1e-6)
        assert r.ppl_base == pytest.approx(direct.ppl_base, rel=1e-4)
        assert r.ppl_quant == pytest.approx(direct.ppl_quant, rel=1e-12)
        assert r.same_top == direct.same_top
    assert again.base_from_cache and notext.n_chunks == 4
    with pytest.raises(KvantError, match="context of 64"):
        drain(evaluate(None, quant, TEXT, 32, None, cache))
    with pytest.raises(KvantError, match="another text"):
        drain(evaluate(None, quant, TEXT.upper(), 64, None, cache, n_chunks=4))
    with pytest.raises(KvantError, match="does not exist"):
        drain(evaluate(None, quant, TEXT, 64, None, tmp_path / "missing"))


def test_cancel_between_chunks():
    token = CancelToken()
    m = FakeModel()
    gen = perplexity(m, TEXT, 64, cancel=token)
    for e in gen:
        if e.stage == "eval" and e.done == 2:
            token.cancel()
            break
    with pytest.raises(Cancelled):
        next(gen)
    assert len(m.calls) == 2
    token2 = CancelToken()
    gen = evaluate(FakeModel(), FakeModel(), TEXT, 64, token2)
    next(gen)
    token2.cancel()
    with pytest.raises(Cancelled):
        drain(gen)


def test_errors():
    with pytest.raises(KvantError, match="needs at least 128"):
        drain(perplexity(FakeModel(), "short text", 64))
    with pytest.raises(KvantError, match="context of 64"):
        drain(perplexity(FakeModel(n_ctx=64), TEXT, 128))
    with pytest.raises(KvantError, match="needs the base model"):
        drain(evaluate(None, FakeModel(), TEXT, 64))

    class Other(FakeModel):
        def tokenize(self, text, add_bos=True):
            return [BOS] + [3] * len(text)

    with pytest.raises(KvantError, match="tokenize the text differently"):
        drain(evaluate(FakeModel(), Other(), TEXT, 64))


# --- weights ---------------------------------------------------------------------------------------------
def _write(path, tensors):
    from engine.gguf import TensorSpec, write_gguf_sync
    from engine.quant import format_of, quantize

    specs, blobs = [], {}
    for name, (arr, qtype) in tensors.items():
        fmt = format_of(qtype)
        specs.append(TensorSpec.from_shape(name, arr.shape, fmt.ggml_id))
        if qtype == "F32":
            blobs[name] = arr.astype(np.float32).tobytes()
        else:
            blobs[name] = np.asarray(
                quantize(arr.reshape(-1, arr.shape[-1]).astype(np.float32), qtype)
            ).tobytes()
    write_gguf_sync(path, {"general.architecture": "test"}, specs, lambda s: blobs[s.name])


def test_weight_report(tmp_path):
    from engine.quant import dequantize, quantize

    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (8, 256)).astype(np.float32)
    b = rng.normal(0, 0.02, (4, 64)).astype(np.float32)
    _write(tmp_path / "base.gguf", {"a": (a, "F32"), "b": (b, "F32"), "only_base": (b, "F32")})
    _write(tmp_path / "q.gguf", {"a": (a, "Q4_K"), "b": (b, "F32")})
    report, events = drain(weight_report(tmp_path / "base.gguf", tmp_path / "q.gguf"))
    assert [t.name for t in report.tensors] == ["a", "b"]
    assert report.skipped == ("only_base",)
    ta, tb = report.tensors
    qa = dequantize(quantize(a, "Q4_K"), "Q4_K", a.shape).astype(np.float64)
    e = qa - a
    assert ta.rmse == pytest.approx(math.sqrt(np.mean(e**2)), rel=1e-12)
    assert ta.max_abs == pytest.approx(np.abs(e).max(), rel=1e-12)
    assert ta.snr_db == pytest.approx(
        10 * math.log10(np.sum(a.astype(np.float64) ** 2) / np.sum(e**2)), rel=1e-12
    )
    assert ta.rel_err == pytest.approx(10 ** (-ta.snr_db / 20), rel=1e-9)
    assert 15 < ta.snr_db < 30 and (ta.base_type, ta.quant_type) == ("F32", "Q4_K")
    assert tb.rmse == 0 and tb.snr_db == math.inf and tb.rel_err == 0
    assert report.overall.n_elements == a.size + b.size
    assert report.overall.rmse == pytest.approx(math.sqrt(np.sum(e**2) / (a.size + b.size)), rel=1e-12)
    assert events[-1].done == events[-1].total == 2
    json.dumps(report.to_dict(), default=str)


# --- CLI -------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_open(monkeypatch, tmp_path):
    """Make open_model return fake models: 'base*' exact, anything else perturbed."""
    import engine.runtime.model as rm

    def fake(path, *, n_ctx=4096, **kw):
        m = FakeModel(n_ctx=n_ctx, noise=0.0 if path.name.startswith("base") else 0.3, seed=5)
        m.path = path
        return m

    monkeypatch.setattr(rm, "open_model", fake)
    for name in ("base.gguf", "quant.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return tmp_path


def test_cli_perplexity_and_comparison(fake_open, capsys):
    from engine.cli import run_cli

    d = fake_open
    assert (
        run_cli(["eval", str(d / "quant.gguf"), "--text", str(d / "text.txt"), "--ctx", "64", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    ppl, _, _, n = ref_perplexity(FakeModel(noise=0.3, seed=5), TEXT, 64)
    assert out["ppl"] == pytest.approx(ppl) and out["n_chunks"] == n == 8

    args = ["eval", str(d / "base.gguf"), str(d / "quant.gguf"), "--text", str(d / "text.txt"), "--ctx", "64"]
    assert run_cli([*args, "--chunks", "3", "--base-logits", str(d / "b.logits"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_chunks"] == 3 and out["kld"]["mean"] > 0 and 0 < out["same_top"] < 1
    assert (d / "b.logits").exists()
    # second run: only the quant and the cache
    assert run_cli(["eval", str(d / "quant.gguf"), "--base-logits", str(d / "b.logits"), "--ctx", "64"]) == 0
    human = capsys.readouterr().out
    assert "KLD (mean)" in human and "the number that matters" in human and "same top token" in human
    assert "from cache" in human and "99.9%" in human


def test_cli_help_says_kld_matters(capsys):
    from engine.cli import run_cli

    with pytest.raises(SystemExit):
        run_cli(["eval", "--help"])
    out = capsys.readouterr().out
    assert "Which number matters: KLD" in out and "--base-logits" in out and "--weights" in out


def test_cli_errors(fake_open, capsys):
    from engine.cli import run_cli

    d = fake_open
    assert run_cli(["eval", str(d / "quant.gguf"), "--text", str(d / "nope.txt")]) == 1
    assert "cannot read the text" in capsys.readouterr().err
    assert run_cli(["eval", str(d / "quant.gguf"), "--weights", "--text", str(d / "text.txt")]) == 1
    assert run_cli(["eval", "a", "b", "c"]) == 1
