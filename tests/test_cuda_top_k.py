"""The GPU that holds the output layer picks the best logits for the sampler (CUDA simulator).

Per token the host used to copy every logit back (1 MB for Gemma 3's 262,144-token vocabulary) and
sort them for top-k; with the output layer on a GPU, ``forward(..., top_k=k)`` picks the k best
there (engine/runtime/cuda/kernels.py: top_partial, top_final) and returns them with their ids,
for greedy decoding (k = 1) and for llama.cpp's default chain (top-k 40, no penalties).  The
tokens must be the ones the host sampler draws from the whole logits, with the same seed, for
every architecture and split and through the emulated CUDA graphs; invalid logits (NaN) must still
reach the host sampler, which raises as before.  The kernels are compared with the host's top-k on
edge cases in test_cuda_kernels.py.  ``KVANT_CUDA_TESTS=device`` runs these on a GPU (through real
CUDA graphs), except the emulated capture.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.runtime.generate import generate
from engine.runtime.sampling import SamplingError, SamplingParams, TopLogits
from tests.test_cuda_graphs import _SimCore
from tests.test_cuda_launches import PROMPT, q8_models  # noqa: F401  (fixture)

N_CTX = 24
N_NEW = 6


class _Pieces:
    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        return b"."


def _run(net, params: SamplingParams) -> tuple[list[int], list[str]]:
    """Generated tokens, and what each forward call returned ("top" or "logits")."""
    seen: list[str] = []
    forward = net.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        seen.append("top" if isinstance(out, TopLogits) else "logits")
        return out

    net.forward = spy
    try:
        events = list(generate(net, _Pieces(), PROMPT.tolist(), params))
    finally:
        del net.forward
    return [e.token for e in events if e.kind == "token"], seen


GREEDY = SamplingParams(temperature=0.0, max_tokens=N_NEW)


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_the_gpu_picks_the_host_samplers_tokens(launch, q8_models, arch):  # noqa: F811
    path = q8_models[arch]
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers=0) as m:
        assert m.net.top_k_limit == 0
        want, seen = _run(m.net, GREEDY)
        assert set(seen) == {"logits"}
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers="all") as m:
        assert m.net.top_k_limit == 64
        got, seen = _run(m.net, GREEDY)
        # the prompt's logits come from the batched path; every decoded token is picked on the GPU
        assert seen == ["logits"] + ["top"] * (N_NEW - 1)
        # not with penalties (the host applies them to the logits first)
        _, seen = _run(m.net, SamplingParams(temperature=0.0, max_tokens=N_NEW, repeat_penalty=1.0001))
        assert set(seen) == {"logits"}
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers=1) as m:
        assert m.net.top_k_limit == 0  # the output layer is on the CPU
        one, _ = _run(m.net, GREEDY)
    assert len(want) == N_NEW and got == want and one == want


SAMPLED = [
    SamplingParams(seed=7, max_tokens=N_NEW),  # llama.cpp's defaults: top-k 40, top-p 0.95, min-p 0.05
    SamplingParams(seed=3, max_tokens=N_NEW, temperature=1.5, top_k=64, top_p=1.0, min_p=0.0),
    SamplingParams(seed=5, max_tokens=N_NEW, top_k=1),
]


@pytest.mark.parametrize("params", SAMPLED, ids=["defaults", "k64-hot", "k1"])
def test_sampling_from_the_gpus_top_k_draws_the_same_tokens(launch, q8_models, params, monkeypatch):  # noqa: F811
    from engine.models.gemma3 import Gemma3

    with engine.open_model(q8_models["gemma3"], n_ctx=N_CTX, n_gpu_layers="all") as m:
        got, seen = _run(m.net, params)
        assert seen == ["logits"] + ["top"] * (N_NEW - 1)
        m.net.reset()
        monkeypatch.setattr(Gemma3, "top_k_limit", 0)  # the same GPU logits, sampled on the host
        want, seen = _run(m.net, params)
        assert set(seen) == {"logits"}
    assert len(got) == N_NEW and got == want


def test_not_picked_where_the_sampler_needs_every_logit(launch, q8_models):  # noqa: F811
    with engine.open_model(q8_models["llama"], n_ctx=N_CTX, n_gpu_layers="all") as m:
        for params in (
            SamplingParams(top_k=0, max_tokens=3),  # top-k off: the draw is over every token
            SamplingParams(top_k=65, max_tokens=3),  # more than the device picks
            SamplingParams(top_k=256, max_tokens=3),  # the whole vocabulary: no cut
            SamplingParams(repeat_penalty=1.1, max_tokens=3),  # penalties change logits before top-k
        ):
            _, seen = _run(m.net, params)
            assert set(seen) == {"logits"}, params


def test_a_forward_with_a_one_token_prompt_also_picks(launch, q8_models):  # noqa: F811
    with engine.open_model(q8_models["llama"], n_ctx=N_CTX, n_gpu_layers="all") as m:
        logits = m.net.forward(PROMPT[:1], 0, last_only=True)
        m.net.reset()
        top = m.net.forward(PROMPT[:1], 0, top_k=5)
    assert isinstance(top, TopLogits) and top.n_vocab == logits.shape[1]
    order = np.lexsort((np.arange(logits.shape[1]), -logits[-1]))[:5]
    np.testing.assert_array_equal(top.ids, order)
    np.testing.assert_array_equal(top.logits, logits[-1, order])


def test_graph_replay_of_the_pick(launch, q8_models):  # noqa: F811
    from numba import cuda

    from engine.runtime.cuda import device as D
    from engine.runtime.cuda.graphs import TokenGraphs

    if launch is not D.SIM_LAUNCH:
        pytest.skip("emulated graphs: on a GPU the other tests run through real ones")

    path = q8_models["gemma3"]
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers="all") as m:
        want, _ = _run(m.net, GREEDY)
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers="all") as m:
        (g,) = m.net.gpu.decode
        core = _SimCore()
        g.graphs = TokenGraphs(cuda.stream(), core)
        got, seen = _run(m.net, GREEDY)
        graph = g.graphs._graphs["top", 1]
        # the first decoded token kernel by kernel, then the captured graph (layers, output, pick)
        assert graph.launched == N_NEW - 2 and len(graph.ops) == g.launches(True, top_k=1)
        assert g.launches(True, top_k=1) == g.launches(True) + 2
    assert seen == ["logits"] + ["top"] * (N_NEW - 1) and got == want


def test_invalid_logits_still_reach_the_host_sampler(launch, q8_models):  # noqa: F811
    from numba import cuda

    @cuda.jit
    def poison(logits):  # a NaN among the logits, as a broken model would produce
        logits[0, 5] = np.nan

    with engine.open_model(q8_models["llama"], n_ctx=N_CTX, n_gpu_layers="all") as m:
        net = m.net
        (g,) = net.gpu.decode
        g.to_logits.add(poison, 1, 1, (g.logits,))
        first = net.forward(PROMPT, 0, top_k=1)  # the prompt: logits from the batched path
        out = net.forward(np.array([int(np.argmax(first[-1]))]), net.n_past, top_k=1)
        assert isinstance(out, np.ndarray) and out.shape == (1, net.n_vocab) and np.isnan(out[0, 5])
        net.reset()
        with pytest.raises(SamplingError, match="logits contain NaN"):
            _run(net, GREEDY)


def test_the_bench_decodes_with_the_gpu_pick(launch, q8_models, monkeypatch):  # noqa: F811
    from engine.bench import generate as bench
    from engine.bench.generate import bench_generate

    # the synthetic models' vocabulary has no words for the bench's text: ids stand in for it
    monkeypatch.setattr(bench, "prompt_ids", lambda tokenize, n: [1 + 7 * i % 250 for i in range(n)])

    def run(n_gpu_layers):
        gen = bench_generate(q8_models["gemma3"], n_prompt=12, n_gen=3, n_gpu_layers=n_gpu_layers)
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    res = run("all")
    assert res.greedy_on_gpu and res.gpu["output_on_gpu"]
    res = run(1)
    assert not res.greedy_on_gpu and res.gpu["n_gpu_layers"] == 1
