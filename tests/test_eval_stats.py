"""engine.eval's math against straightforward float64 NumPy and hand-worked cases (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.eval import stats
from engine.eval.logits_file import (
    BaseLogitsFile,
    BaseLogitsWriter,
    decode_rows,
    encode_rows,
    row_width,
    scored_per_chunk,
)


# --- a straightforward reference -------------------------------------------------------------------------
def ref_logp(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    out = np.empty_like(x)
    for r in range(len(x)):
        m = max(x[r])
        out[r] = x[r] - (m + math.log(sum(math.exp(v - m) for v in x[r])))
    return out


def ref_compare(base_logits: np.ndarray, quant_logits: np.ndarray, targets: np.ndarray) -> dict:
    lb, lq = ref_logp(base_logits), ref_logp(quant_logits)
    kld, dp, same, nq, nb = [], [], [], [], []
    for r, t in enumerate(targets):
        pb = np.exp(lb[r])
        kld.append(float(np.sum(pb * (lb[r] - lq[r]))))
        dp.append(math.exp(lq[r, t]) - math.exp(lb[r, t]))
        same.append(int(np.argmax(quant_logits[r]) == np.argmax(base_logits[r])))
        nq.append(-lq[r, t])
        nb.append(-lb[r, t])
    return {
        "kld": np.array(kld),
        "dp": np.array(dp),
        "same": np.array(same),
        "nq": np.array(nq),
        "nb": np.array(nb),
    }


def synthetic(n: int, vocab: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 2.0, (n, vocab)).astype(np.float32)
    quant = (base + rng.normal(0, noise, (n, vocab))).astype(np.float32)
    targets = rng.integers(0, vocab, n)
    return base, quant, targets


# --- per-token values ------------------------------------------------------------------------------------
def test_log_softmax_and_nll_match_the_reference():
    base, _, targets = synthetic(40, 300, 0.0)
    np.testing.assert_allclose(stats.log_softmax(base), ref_logp(base), rtol=0, atol=1e-12)
    nll = stats.token_nll(base, targets)  # crosses ROWS_PER_BLOCK boundaries
    want = -ref_logp(base)[np.arange(40), targets]
    np.testing.assert_allclose(nll, want, rtol=1e-13)


@pytest.mark.parametrize("noise", [0.05, 0.5, 2.0])
def test_compare_matches_the_reference(noise):
    base, quant, targets = synthetic(37, 257, noise, seed=int(noise * 100))
    got = stats.compare_rows(lambda lo, hi: stats.log_softmax(base[lo:hi]), quant, targets)
    want = ref_compare(base, quant, targets)
    # logits ~N(0, 2) over 257 tokens: no base log-prob is near the -16 floor
    assert stats.log_softmax(base).min() > stats.LOG_P_FLOOR
    np.testing.assert_allclose(got.kld, want["kld"], rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(got.dp, want["dp"], rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(got.nll_quant, want["nq"], rtol=1e-12)
    np.testing.assert_allclose(got.nll_base, want["nb"], rtol=1e-12)
    np.testing.assert_array_equal(got.same_top, want["same"].astype(bool))
    assert (got.kld > 0).all()


def test_identical_models_give_zero_kld_full_same_top_zero_dp():
    base, _, targets = synthetic(20, 100, 0.0)
    t = stats.compare_rows(lambda lo, hi: stats.log_softmax(base[lo:hi]), base, targets)
    s = stats.comparison_stats(t)
    assert np.abs(t.kld).max() < 1e-12
    assert s.kld.mean == pytest.approx(0, abs=1e-12) and s.kld.maximum == pytest.approx(0, abs=1e-12)
    assert s.same_top == 1.0 and s.same_top_err == 0.0
    assert s.dp.mean == 0 and s.dp.rms == 0 and s.dp.minimum == 0 and s.dp.maximum == 0
    assert s.ppl_quant == s.ppl_base and s.ln_ppl_ratio == 0 and s.ppl_ratio == 1 and s.ppl_diff == 0


def test_hand_worked_two_token_case():
    # base p = (0.5, 0.5); quant p = (0.75, 0.25); correct token 0.
    base = np.log(np.array([[0.5, 0.5]]))
    quant = np.log(np.array([[0.75, 0.25]]))
    t = stats.compare_logp(base, quant, np.array([0]))
    assert t.kld[0] == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25), rel=1e-14)
    assert t.kld[0] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-14)  # = 0.143841...
    assert t.dp[0] == pytest.approx(0.25, rel=1e-14)
    assert t.nll_quant[0] == pytest.approx(math.log(4 / 3)) and t.nll_base[0] == pytest.approx(math.log(2))
    assert t.same_top[0]  # the base's tie resolves to the first index, 0, the quant's top token
    t2 = stats.compare_logp(np.log(np.array([[0.4, 0.6]])), quant, np.array([1]))
    assert not t2.same_top[0]
    assert t2.dp[0] == pytest.approx(0.25 - 0.6)


def test_kld_drops_base_terms_below_the_floor_like_llama_cpp():
    # one base token at log p = -20 (below -16): its term is left out of the sum
    lb = np.array([[math.log(1 - math.exp(-20)), -20.0]])
    lq = np.log(np.array([[0.5, 0.5]]))
    t = stats.compare_logp(lb, lq, np.array([0]))
    assert t.kld[0] == pytest.approx(math.exp(lb[0, 0]) * (lb[0, 0] - lq[0, 0]), rel=1e-14)


def test_perturbed_copy_gives_positive_kld_growing_with_noise():
    means = []
    for noise in (0.01, 0.1, 1.0):
        base, quant, targets = synthetic(64, 200, noise, seed=3)
        t = stats.compare_rows(lambda lo, hi, b=base: stats.log_softmax(b[lo:hi]), quant, targets)
        means.append(stats.comparison_stats(t).kld.mean)
    assert 0 < means[0] < means[1] < means[2]
    # small perturbations: KLD ≈ Var_p(δ)/2, so 100x the noise variance -> ~100x the KLD
    assert means[1] / means[0] == pytest.approx(100, rel=0.2)


# --- summaries ---------------------------------------------------------------------------------------------
def test_distribution_matches_numpy():
    rng = np.random.default_rng(7)
    v = rng.gamma(0.5, 0.02, 1001)
    d = stats.Distribution.of(v)
    assert d.mean == pytest.approx(v.mean(), rel=1e-12)
    assert d.mean_err == pytest.approx(v.std() / math.sqrt(len(v) - 1), rel=1e-9)
    assert d.rms == pytest.approx(math.sqrt((v * v).mean()), rel=1e-12)
    assert d.median == pytest.approx(np.median(v), rel=1e-12)
    assert (d.minimum, d.maximum) == (v.min(), v.max())
    for p, value in d.percentiles:
        assert value == pytest.approx(np.percentile(v, p), rel=1e-12), p
    assert d.percentile(99.0) == pytest.approx(np.percentile(v, 99))
    even = stats.Distribution.of(np.array([4.0, 1.0, 3.0, 2.0]))
    assert even.median == 2.5
    with pytest.raises(KeyError):
        d.percentile(42.0)


def test_mean_uncertainty_rules_of_llama_cpp():
    assert stats.mean_and_uncertainty(np.arange(10.0))[1] == 0.0  # 10 values or fewer: no error estimate
    v = np.arange(11.0)
    m, e = stats.mean_and_uncertainty(v)
    assert m == 5.0 and e == pytest.approx(math.sqrt(v.var() / 10))
    assert stats.covariance_of_means(np.arange(9.0), np.arange(9.0)) == 0.0


def test_perplexity_stats():
    nll = np.array([1.0, 2.0, 3.0, 2.0])
    s = stats.perplexity_stats(nll)
    assert s.ppl == pytest.approx(math.exp(2.0))
    assert s.ppl_err == pytest.approx(math.exp(2.0) * math.sqrt(0.5 / 3))


def test_comparison_ratios_and_correlation():
    rng = np.random.default_rng(1)
    nb = rng.gamma(2.0, 1.5, 500)
    nq = nb + rng.normal(0.05, 0.1, 500)
    n = len(nb)
    e = np.zeros(n)
    s = stats.comparison_stats(stats.TokenComparison(nq, nb, e, e, np.ones(n, bool)))
    assert s.ppl_quant == pytest.approx(math.exp(nq.mean()))
    assert s.ppl_base == pytest.approx(math.exp(nb.mean()))
    assert s.ln_ppl_ratio == pytest.approx(nq.mean() - nb.mean())
    assert s.ppl_ratio == pytest.approx(math.exp(nq.mean() - nb.mean()))
    assert s.ln_ppl_correlation == pytest.approx(np.corrcoef(nq, nb)[0, 1], rel=1e-9)
    # the ratio's error is that of the mean of the per-token differences
    assert s.ln_ppl_ratio_err == pytest.approx((nq - nb).std() / math.sqrt(n - 1), rel=1e-6)


# --- llama.cpp's 16-bit base-logits file -------------------------------------------------------------------
def test_encode_decode_bounds_and_layout():
    base, _, _ = synthetic(5, 301, 0.0)  # odd vocab: one pad value per row
    base[2, 7] = base[2].max() - 30.0  # far below the max: clamped, stored as 0
    rows = encode_rows(base)
    assert rows.shape == (5, row_width(301)) == (5, 306)
    scale, minlp = rows[:, :4].copy().view(np.float32).T
    exact = stats.log_softmax(base)
    dec = decode_rows(rows, 301)
    within = base > (base.max(axis=1, keepdims=True) - 16)
    assert np.abs(dec - exact)[within].max() <= scale.max() * 0.5 + 1e-5
    assert rows[2, 4 + 7] == 0 and (rows[:, -1] == 0).all()
    # the maximum logit maps to 65535, the clamped minimum to 0
    assert (rows[:, 4:-1].max(axis=1) == 65535).all()
    assert np.allclose(
        minlp, exact.max(axis=1) - (base.max(axis=1) - np.maximum(base.min(axis=1), base.max(axis=1) - 16))
    )


def test_encode_hand_worked_row():
    # logits (0, 1, 2): max 2, min 0, scale 2/65535; log p = x - 2 - log(1 + e^-1 + e^-2)
    rows = encode_rows(np.array([[0.0, 1.0, 2.0]], np.float32))
    lse = math.log(1 + math.exp(-1) + math.exp(-2))
    scale, minlp = rows[0, :4].copy().view(np.float32)
    assert scale == pytest.approx(2 / 65535, rel=1e-6)
    assert minlp == pytest.approx(-2 - lse, rel=1e-6)
    assert list(rows[0, 4:7]) == [0, 32768, 65535]  # rint(1 / (2/65535)) = rint(32767.5) = 32768 (even)
    assert rows[0, 7] == 0  # padding to an even count


def test_cache_file_roundtrip_and_header(tmp_path):
    n_ctx, vocab, n_chunk = 16, 33, 3
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, n_chunk * n_ctx).astype(np.int32)
    chunks = [rng.normal(0, 3, (scored_per_chunk(n_ctx), vocab)).astype(np.float32) for _ in range(n_chunk)]
    path = tmp_path / "base.kld"
    with BaseLogitsWriter(path, n_ctx, vocab, tokens) as w:
        for c in chunks:
            assert not path.exists()
            w.write_chunk(encode_rows(c))
        w.commit()
    raw = path.read_bytes()
    assert raw[:8] == b"_logits_"
    assert np.frombuffer(raw[8:20], "<i4").tolist() == [n_ctx, vocab, n_chunk]
    assert len(raw) == 20 + 4 * n_chunk * n_ctx + n_chunk * scored_per_chunk(n_ctx) * row_width(vocab) * 2
    f = BaseLogitsFile(path)
    assert (f.n_ctx, f.n_vocab, f.n_chunk) == (n_ctx, vocab, n_chunk)
    np.testing.assert_array_equal(f.tokens, tokens)
    for i, c in enumerate(chunks):
        np.testing.assert_array_equal(f.chunk_rows(i), encode_rows(c))
        np.testing.assert_array_equal(f.chunk_logp(i, 2, 5), decode_rows(encode_rows(c), vocab)[2:5])
    f.close()


def test_cache_file_errors(tmp_path):
    from engine.errors import KvantError

    bad = tmp_path / "bad"
    bad.write_bytes(b"not a logits file at all")
    with pytest.raises(KvantError, match="not a base logits file"):
        BaseLogitsFile(bad)
    path = tmp_path / "trunc"
    with BaseLogitsWriter(path, 8, 10, np.zeros(16, np.int32)) as w:
        w.write_chunk(encode_rows(np.zeros((3, 10), np.float32)))
        w.write_chunk(encode_rows(np.ones((3, 10), np.float32)))
        w.commit()
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(KvantError, match="truncated"):
        BaseLogitsFile(path)
    # an interrupted writer leaves nothing behind
    part = tmp_path / "part"
    with pytest.raises(RuntimeError), BaseLogitsWriter(part, 8, 10, np.zeros(16, np.int32)) as w:
        w.write_chunk(encode_rows(np.zeros((3, 10), np.float32)))
        raise RuntimeError("stop")
    assert list(tmp_path.glob("part*")) == []
