"""Sampling: each stage on hand-worked cases, properties, the chain's order, speed, optionally llama.cpp.

The semantics follow llama.cpp's ``src/llama-sampling.cpp`` and the default chain of
``common/sampling.cpp`` (penalties -> top-k -> top-p -> min-p -> temperature -> dist).
"""

from __future__ import annotations

import ctypes
import dataclasses
import inspect
import math
import time

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from engine.errors import KvantError
from engine.runtime.sampling import (
    Sampler,
    SamplingError,
    SamplingParams,
    apply_penalties,
    min_p,
    softmax,
    temperature,
    top_k,
    top_p,
)

INF = np.inf
OFF = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}  # all filters off


def f32(*v):
    return np.array(v, dtype=np.float32)


def kept(x):
    return np.flatnonzero(np.isfinite(x)).tolist()


# --- parameters ---------------------------------------------------------------------------------------------


def test_defaults_are_llama_cpp_defaults():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.8, 40, 0.95, 0.05)
    assert (p.repeat_penalty, p.repeat_last_n, p.frequency_penalty, p.presence_penalty) == (1.0, 64, 0.0, 0.0)
    assert p.seed is None and not p.greedy and not p.penalties_active
    assert SamplingParams(temperature=0).greedy


def test_params_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().top_k = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("temperature", "hot"),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_k", True),
        ("top_p", 1.5),
        ("top_p", -0.1),
        ("min_p", 2.0),
        ("repeat_penalty", 0.0),
        ("repeat_penalty", math.inf),
        ("repeat_last_n", -2),
        ("frequency_penalty", math.nan),
        ("presence_penalty", None),
        ("seed", -1),
        ("seed", 1.5),
        ("max_tokens", 0),
        ("min_keep", 0),
    ],
)
def test_params_validation(field, value):
    with pytest.raises(SamplingError, match=f"sampling parameter {field} ") as info:
        SamplingParams(**{field: value})
    assert isinstance(info.value, KvantError) and isinstance(info.value, ValueError)


def test_params_accept_edges():
    SamplingParams(
        temperature=0, top_k=0, top_p=0.0, min_p=1.0, repeat_last_n=-1, seed=2**63, max_tokens=None
    )
    SamplingParams(frequency_penalty=-2.0, presence_penalty=2.0, repeat_penalty=0.5, seed=np.int64(3))


# --- penalties ----------------------------------------------------------------------------------------------

LOGITS = f32(2.0, -1.0, 0.0, 3.0, 1.0)
HISTORY = [0, 1, 1, 2]


def test_repeat_penalty_divides_positive_and_multiplies_non_positive():
    out = apply_penalties(LOGITS, HISTORY, SamplingParams(repeat_penalty=2.0))
    np.testing.assert_array_equal(out, f32(1.0, -2.0, 0.0, 3.0, 1.0))


def test_frequency_and_presence_penalties():
    p = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    # token 0 seen once: 2 - (0.5 + 0.25); token 1 twice: -1 - (1.0 + 0.25); token 2 once: 0 - 0.75
    np.testing.assert_array_equal(apply_penalties(LOGITS, HISTORY, p), f32(1.25, -2.25, -0.75, 3.0, 1.0))


def test_all_penalties_together():
    p = SamplingParams(repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    np.testing.assert_array_equal(apply_penalties(LOGITS, HISTORY, p), f32(0.25, -3.25, -0.75, 3.0, 1.0))


def test_penalty_window():
    p = SamplingParams(repeat_penalty=2.0, repeat_last_n=2)
    # only the last two ids (1, 2) count
    np.testing.assert_array_equal(apply_penalties(LOGITS, HISTORY, p), f32(2.0, -2.0, 0.0, 3.0, 1.0))
    p_all = SamplingParams(repeat_penalty=2.0, repeat_last_n=-1)
    np.testing.assert_array_equal(apply_penalties(LOGITS, [4, 0, 0, 0], p_all), f32(1.0, -1.0, 0.0, 3.0, 0.5))
    p_off = SamplingParams(repeat_penalty=2.0, repeat_last_n=0)
    np.testing.assert_array_equal(apply_penalties(LOGITS, HISTORY, p_off), LOGITS)


def test_penalties_do_not_mutate_input_and_accept_arrays():
    x = LOGITS.copy()
    apply_penalties(x, np.array(HISTORY, dtype=np.int32), SamplingParams(repeat_penalty=3.0))
    np.testing.assert_array_equal(x, LOGITS)


def test_penalties_reject_ids_outside_the_vocabulary():
    with pytest.raises(SamplingError, match="recent token id 5 is outside the vocabulary of 5"):
        apply_penalties(LOGITS, [0, 5], SamplingParams(repeat_penalty=1.1))
    with pytest.raises(SamplingError, match="-1"):
        Sampler(SamplingParams(repeat_penalty=1.1)).sample(LOGITS, [-1])


def _llama_cpp_penalties(logits, history, p):
    """llama_sampler_penalties_apply, transcribed loop by loop (float32 arithmetic)."""
    out = [np.float32(v) for v in logits]
    window = history if p.repeat_last_n < 0 else history[max(0, len(history) - p.repeat_last_n) :]
    if p.repeat_last_n == 0:
        window = []
    counts: dict[int, int] = {}
    for t in window:
        counts[t] = counts.get(t, 0) + 1
    for i in range(len(out)):
        count = counts.get(i)
        if count is None:
            continue
        if out[i] <= 0:
            out[i] = np.float32(out[i] * np.float32(p.repeat_penalty))
        else:
            out[i] = np.float32(out[i] / np.float32(p.repeat_penalty))
        out[i] = np.float32(
            out[i]
            - (
                np.float32(count) * np.float32(p.frequency_penalty)
                + np.float32(1.0) * np.float32(p.presence_penalty)
            )
        )
    return np.array(out, dtype=np.float32)


@settings(max_examples=150, deadline=None)
@given(
    logits=arrays(np.float32, st.integers(1, 40), elements=st.floats(-30, 30, width=32)),
    data=st.data(),
    rp=st.sampled_from([1.0, 1.1, 1.5, 0.7]),
    freq=st.sampled_from([0.0, 0.3, -0.2]),
    presence=st.sampled_from([0.0, 0.25, 1.0]),
    last_n=st.sampled_from([-1, 0, 1, 8, 64]),
)
def test_penalties_match_llama_cpp_formula(logits, data, rp, freq, presence, last_n):
    history = data.draw(st.lists(st.integers(0, logits.size - 1), max_size=80))
    p = SamplingParams(
        repeat_penalty=rp, frequency_penalty=freq, presence_penalty=presence, repeat_last_n=last_n
    )
    np.testing.assert_array_equal(
        apply_penalties(logits, history, p), _llama_cpp_penalties(logits, history, p)
    )


# --- top-k, top-p, min-p, temperature, softmax -------------------------------------------------------------


def test_top_k_hand_cases():
    np.testing.assert_array_equal(top_k(f32(1, 5, 3, 4, 2), 2), f32(-INF, 5, -INF, 4, -INF))
    # ties at the cut: exactly k survive, the lowest ids first
    assert kept(top_k(f32(1, 5, 3, 3, 2), 2)) == [1, 2]
    assert kept(top_k(f32(7, 7, 7, 7), 3)) == [0, 1, 2]
    np.testing.assert_array_equal(top_k(f32(1, 2, 3), 0), f32(1, 2, 3))
    np.testing.assert_array_equal(top_k(f32(1, 2, 3), 10), f32(1, 2, 3))


PROBS = [0.5, 0.3, 0.15, 0.05]


def test_top_p_hand_cases():
    # shuffled so that the function has to sort: ids 2, 0, 3, 1 hold 0.5, 0.3, 0.15, 0.05
    x = np.log(np.array([0.3, 0.05, 0.5, 0.15])).astype(np.float32)
    assert kept(top_p(x, 0.4)) == [2]  # 0.5 >= 0.4
    assert kept(top_p(x, 0.75)) == [0, 2]  # 0.5 + 0.3 = 0.8 >= 0.75
    assert kept(top_p(x, 0.85)) == [0, 2, 3]  # 0.95 >= 0.85
    assert kept(top_p(x, 0.99)) == [0, 1, 2, 3]
    assert kept(top_p(x, 0.0)) == [2]  # the best token always survives
    assert kept(top_p(x, 0.1, min_keep=3)) == [0, 2, 3]
    np.testing.assert_array_equal(top_p(x, 1.0), x)


def test_top_p_on_a_large_vocabulary_takes_the_partial_path():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5000).astype(np.float32)
    x[[10, 20]] = [20.0, 19.0]  # two tokens hold almost all the mass
    assert kept(top_p(x, 0.9)) == [10, 20]


def test_min_p_hand_cases():
    x = np.log(np.array(PROBS)).astype(np.float32)
    assert kept(min_p(x, 0.5)) == [0, 1]  # 0.3 >= 0.25, 0.15 < 0.25
    assert kept(min_p(x, 0.2)) == [0, 1, 2]  # threshold 0.1
    assert kept(min_p(x, 1.0)) == [0]
    assert kept(min_p(x, 0.9, min_keep=3)) == [0, 1, 2]
    np.testing.assert_array_equal(min_p(x, 0.0), x)


def test_temperature_hand_cases():
    np.testing.assert_array_equal(temperature(f32(1, 2, 3), 0.5), f32(2, 4, 6))
    np.testing.assert_array_equal(temperature(f32(1, 2, 3), 2.0), f32(0.5, 1, 1.5))
    np.testing.assert_array_equal(temperature(f32(1, 2, 3), 0), f32(-INF, -INF, 3))
    # temperature 0 keeps the first maximum only (llama.cpp's temp sampler)
    np.testing.assert_array_equal(temperature(f32(3, 1, 3), 0), f32(3, -INF, -INF))


def test_softmax_hand_cases():
    np.testing.assert_allclose(softmax(f32(0, math.log(3))), [0.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(softmax(f32(1, -INF, 1)), [0.5, 0.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(softmax(f32(1000, 1000)), [0.5, 0.5], rtol=1e-6)  # no overflow
    assert softmax(f32(1, 2)).dtype == np.float32


@pytest.mark.parametrize(
    ("logits", "match"),
    [
        (f32(1, math.nan), "NaN"),
        (f32(1, INF), r"\+inf"),
        (f32(-INF, -INF), "only -inf"),
        (np.zeros((2, 2), np.float32), "1-D"),
        (np.zeros(0, np.float32), "1-D"),
        (np.array(["a"]), "numbers"),
    ],
)
def test_invalid_logits(logits, match):
    with pytest.raises(SamplingError, match=match):
        softmax(logits)
    with pytest.raises(SamplingError, match=match):
        Sampler(SamplingParams(seed=0)).sample(logits)


def test_float64_logits_are_accepted():
    assert Sampler(SamplingParams(temperature=0)).sample(np.array([0.0, 2.0, 1.0])) == 1


# --- the chain ----------------------------------------------------------------------------------------------


def test_greedy_is_first_argmax_of_penalised_logits():
    s = Sampler(SamplingParams(temperature=0))
    assert s.sample(f32(1, 3, 3, 2)) == 1
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=2.0))
    assert s.sample(f32(1, 3, 2.5, 2), recent_ids=[1]) == 2  # 3 / 2 = 1.5 < 2.5


def test_sample_distribution_matches_hand_computed_probabilities():
    # top-k 2 leaves tokens 1 and 3 with probabilities 1/4 and 3/4 at temperature 1.
    x = np.log(np.array([0.001, 1.0, 0.002, 3.0, 0.0005])).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, seed=123))
    draws = np.array([s.sample(x) for _ in range(4000)])
    assert set(np.unique(draws).tolist()) <= {1, 3}
    assert 2850 <= np.count_nonzero(draws == 3) <= 3150  # 3000 +- 5.5 sigma
    ids, probs = s.candidates(x)
    assert ids.tolist() == [3, 1]
    np.testing.assert_allclose(probs, [0.75, 0.25], rtol=1e-5)


def test_temperature_comes_after_the_filters():
    # min-p on the untempered logits removes token 1 (e^-2 = 0.135 < 0.2); a temperature applied first
    # would flatten it to e^-0.2 = 0.82 and keep it.
    x = f32(0.0, -2.0)
    s = Sampler(SamplingParams(temperature=10.0, top_k=0, top_p=1.0, min_p=0.2, seed=0))
    assert {s.sample(x) for _ in range(200)} == {0}
    assert s.candidates(x)[0].tolist() == [0]
    s = Sampler(SamplingParams(temperature=10.0, **OFF, seed=0))
    assert {s.sample(x) for _ in range(200)} == {0, 1}


def test_top_p_sees_only_what_top_k_left():
    # Top-k 2 leaves 0.4 : 0.3 of the mass, renormalised to 4/7 = 0.571 and 3/7: top-p 0.55 keeps one token.
    # On the full vocabulary 0.4 < 0.55 <= 0.4 + 0.3, so it keeps two.
    x = np.log(np.array([0.4, 0.3, 0.2, 0.1])).astype(np.float32)
    assert Sampler(SamplingParams(top_k=2, top_p=0.55, min_p=0.0)).candidates(x)[0].tolist() == [0]
    assert Sampler(SamplingParams(top_k=0, top_p=0.55, min_p=0.0)).candidates(x)[0].tolist() == [0, 1]
    assert Sampler(SamplingParams(top_k=0, top_p=0.35, min_p=0.0)).candidates(x)[0].tolist() == [0]


def test_penalties_apply_before_top_k():
    x = f32(5.0, 4.0, 1.0)
    s = Sampler(SamplingParams(temperature=0.5, top_k=1, repeat_penalty=10.0, seed=0))
    assert {s.sample(x, recent_ids=[0]) for _ in range(20)} == {1}


def test_candidates_greedy():
    ids, probs = Sampler(SamplingParams(temperature=0)).candidates(f32(0, 2, 1))
    assert ids.tolist() == [1] and probs.tolist() == [1.0]


def test_sampler_needs_params():
    with pytest.raises(SamplingError, match="SamplingParams"):
        Sampler({"temperature": 0})  # type: ignore[arg-type]


def test_reset_replays_the_sequence():
    x = np.zeros(50, np.float32)
    s = Sampler(SamplingParams(**OFF, seed=9))
    first = [s.sample(x) for _ in range(30)]
    s.reset()
    assert [s.sample(x) for _ in range(30)] == first


def test_different_seeds_differ_statistically():
    x = np.zeros(1000, np.float32)  # uniform over 1000 tokens
    a = Sampler(SamplingParams(**OFF, seed=1))
    b = Sampler(SamplingParams(**OFF, seed=2))
    sa = np.array([a.sample(x) for _ in range(300)])
    sb = np.array([b.sample(x) for _ in range(300)])
    # equal draws happen with probability 1/1000 each: expect 0.3 matches in 300
    assert np.count_nonzero(sa == sb) <= 5
    # and each sequence covers the vocabulary like a uniform draw would (~260 distinct of 300)
    assert len(set(sa.tolist())) > 220 and len(set(sb.tolist())) > 220


def test_unseeded_samplers_differ():
    x = np.zeros(1 << 16, np.float32)
    a, b = Sampler(SamplingParams(**OFF)), Sampler(SamplingParams(**OFF))
    assert [a.sample(x) for _ in range(8)] != [b.sample(x) for _ in range(8)]


# --- properties ---------------------------------------------------------------------------------------------

finite_logits = arrays(np.float32, st.integers(1, 200), elements=st.floats(-50, 50, width=32))


@settings(max_examples=100, deadline=None)
@given(finite_logits)
def test_softmax_is_a_distribution(x):
    p = softmax(x)
    assert np.all(p >= 0)
    assert abs(float(p.sum(dtype=np.float64)) - 1.0) < 1e-5
    assert p[int(np.argmax(x))] == p.max()
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(p[order]) >= 0)  # monotone in the logits


@settings(max_examples=100, deadline=None)
@given(finite_logits, st.integers(1, 250))
def test_top_k_keeps_exactly_k_best(x, k):
    out = top_k(x, k)
    keep = np.isfinite(out)
    assert np.count_nonzero(keep) == min(k, x.size)
    if not keep.all():
        assert x[keep].min() >= x[~keep].max()
    np.testing.assert_array_equal(out[keep], x[keep])


@settings(max_examples=100, deadline=None)
@given(finite_logits, st.floats(0.0, 1.0))
def test_top_p_keeps_the_smallest_sufficient_prefix(x, p):
    out = top_p(x, p)
    keep = np.isfinite(out)
    probs = softmax(x)
    assert keep.any()
    if not keep.all():
        assert x[keep].min() >= x[~keep].max()
        assert probs[keep].sum(dtype=np.float64) >= p - 1e-4
        # without its least likely member the nucleus would fall short of p
        assert probs[keep].sum(dtype=np.float64) - probs[keep].min() < p + 1e-4


@settings(max_examples=100, deadline=None)
@given(finite_logits, st.floats(0.001, 1.0))
def test_min_p_keeps_tokens_near_the_best(x, p):
    out = min_p(x, p)
    keep = np.isfinite(out)
    threshold = x.max() + np.float32(np.log(np.float32(p)))
    np.testing.assert_array_equal(keep, x >= threshold)


@settings(max_examples=100, deadline=None)
@given(finite_logits)
def test_greedy_is_argmax(x):
    assert Sampler(SamplingParams(temperature=0)).sample(x) == int(np.argmax(x))


@settings(max_examples=50, deadline=None)
@given(finite_logits, st.integers(0, 2**32))
def test_same_seed_same_tokens(x, seed):
    p = SamplingParams(seed=seed, repeat_penalty=1.1)
    a, b = Sampler(p), Sampler(p)
    hist: list[int] = []
    seq_a = []
    for _ in range(10):
        t = a.sample(x, hist)
        seq_a.append(t)
        hist.append(t)
    hist = []
    seq_b = []
    for _ in range(10):
        t = b.sample(x, hist)
        seq_b.append(t)
        hist.append(t)
    assert seq_a == seq_b


@settings(max_examples=60, deadline=None)
@given(finite_logits, st.integers(0, 1000))
def test_low_temperature_converges_to_greedy(x, seed):
    top2 = np.sort(x)[-2:] if x.size > 1 else np.array([0.0, 1.0])
    assume(top2[1] - top2[0] >= 0.5)
    s = Sampler(SamplingParams(temperature=1e-3, **OFF, seed=seed))
    assert {s.sample(x) for _ in range(5)} == {int(np.argmax(x))}


@settings(max_examples=50, deadline=None)
@given(finite_logits, st.integers(0, 1000))
def test_sampled_token_is_always_a_candidate(x, seed):
    s = Sampler(SamplingParams(seed=seed))
    ids, probs = s.candidates(x)
    assert s.sample(x) in set(ids.tolist())
    assert abs(float(probs.sum(dtype=np.float64)) - 1.0) < 1e-5


# --- speed --------------------------------------------------------------------------------------------------


def test_fast_enough_for_a_262k_vocabulary():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(262_144) * 3).astype(np.float32)
    recent = rng.integers(0, 262_144, size=64).tolist()
    s = Sampler(SamplingParams(seed=0, repeat_penalty=1.1, frequency_penalty=0.1))
    s.sample(x, recent)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(20):
            s.sample(x, recent)
        best = min(best, (time.perf_counter() - t0) / 20)
    assert best < 0.010, f"{best * 1e3:.1f} ms per token; 100 tokens/s needs under 10 ms"


# --- optional: ask llama.cpp itself ------------------------------------------------------------------------


def test_filters_against_llama_cpp_itself():
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the reference) is not installed")
    penalty_args = inspect.signature(llama_cpp.llama_sampler_init_penalties).parameters
    rng = np.random.default_rng(7)
    for _ in range(150):
        n = int(rng.integers(2, 400))
        x = (rng.standard_normal(n) * rng.choice([0.3, 1.0, 4.0])).astype(np.float32)
        hist = rng.integers(0, n, size=int(rng.integers(0, 80))).tolist()
        p = SamplingParams(
            top_k=int(rng.choice([0, 1, 5, 40, 1000])),
            top_p=float(rng.choice([1.0, 0.95, 0.5, 0.0])),
            min_p=float(rng.choice([0.0, 0.05, 0.3])),
            repeat_penalty=float(rng.choice([1.0, 1.1, 1.5])),
            repeat_last_n=int(rng.choice([0, 8, 64])),
            frequency_penalty=float(rng.choice([0.0, 0.3])),
            presence_penalty=float(rng.choice([0.0, 0.25])),
            min_keep=int(rng.choice([1, 3])),
        )
        pen = [p.repeat_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty]
        if "n_vocab" in penalty_args:
            pen.insert(0, n)
        samplers = [
            llama_cpp.llama_sampler_init_penalties(*pen),
            llama_cpp.llama_sampler_init_top_k(p.top_k),
            llama_cpp.llama_sampler_init_top_p(p.top_p, p.min_keep),
            llama_cpp.llama_sampler_init_min_p(p.min_p, p.min_keep),
        ]
        for t in hist if p.repeat_last_n else []:
            llama_cpp.llama_sampler_accept(samplers[0], t)
        data = (llama_cpp.llama_token_data * n)(
            *[llama_cpp.llama_token_data(i, float(v), 0.0) for i, v in enumerate(x)]
        )
        arr = llama_cpp.llama_token_data_array(data, n, -1, False)
        for smpl in samplers:
            llama_cpp.llama_sampler_apply(smpl, ctypes.byref(arr))
            llama_cpp.llama_sampler_free(smpl)
        ref = {arr.data[i].id: arr.data[i].logit for i in range(arr.size)}
        ids, vals = Sampler(p)._filter(x, hist)
        assert set(ids.tolist()) == set(ref), p
        assert all(np.float32(ref[i]) == v for i, v in zip(ids.tolist(), vals.tolist(), strict=True)), p


def test_sampling_from_the_top_k_picked_elsewhere_draws_the_same_tokens():
    """A GPU hands the sampler the k best logits (TopLogits) instead of all of them: same tokens,
    draw for draw, for every setting device_top_k accepts; the others are refused."""
    from engine.runtime.sampling import TopLogits, _top_k_positions

    rng = np.random.default_rng(2)
    n = 1000
    settings = [
        SamplingParams(seed=1),  # llama.cpp's defaults
        SamplingParams(seed=2, temperature=0.0),
        SamplingParams(seed=3, temperature=1.3, top_k=64, top_p=1.0, min_p=0.0),
        SamplingParams(seed=4, top_k=5, top_p=0.5),
        SamplingParams(seed=5, top_k=1),
    ]
    for params in settings:
        host, picked = Sampler(params), Sampler(params)
        k = picked.device_top_k(n, 64)
        assert k == (1 if params.greedy else params.top_k)
        for _ in range(40):
            logits = np.round(rng.standard_normal(n) * 3, 1).astype(np.float32)  # many ties
            ids = _top_k_positions(logits, k)
            top = TopLogits(ids, logits[ids], n)
            assert picked.sample(top, [1, 2, 3]) == host.sample(logits, [1, 2, 3])
    for params, limit in (
        (SamplingParams(top_k=0), 64),
        (SamplingParams(top_k=65), 64),
        (SamplingParams(top_k=n), 2 * n),
        (SamplingParams(repeat_penalty=1.1), 64),
        (SamplingParams(top_k=40), 0),
    ):
        assert Sampler(params).device_top_k(n, limit) == 0
    logits = np.arange(n, dtype=np.float32)
    ids = _top_k_positions(logits, 3)
    with pytest.raises(SamplingError, match="not what this sampler needs"):
        Sampler(SamplingParams()).sample(TopLogits(ids, logits[ids], n))  # top-k is 40, not 3


def test_top_k_orders_ties_by_id():
    from engine.runtime.sampling import _top_k_positions

    vals = np.array([1, 5, 3, 5, 5, 0, 5, 3], np.float32)
    np.testing.assert_array_equal(_top_k_positions(vals, 3), [1, 3, 4])
    np.testing.assert_array_equal(_top_k_positions(vals, 6), [1, 3, 4, 6, 2, 7])
