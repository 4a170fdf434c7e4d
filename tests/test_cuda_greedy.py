"""Greedy decoding picks the token on the GPU that holds the output layer (CUDA simulator).

Per token the host used to copy every logit back (1 MB for Gemma 3's 262,144-token vocabulary) to
take their argmax; with the output layer on a GPU, ``forward(..., greedy=True)`` runs the argmax
there (engine/runtime/cuda/kernels.py: argmax_partial, argmax_final) and returns the token id.
The tokens must be the host sampler's, for every architecture and split, through the emulated CUDA
graphs too; invalid logits (NaN) must still reach the host sampler, which raises as before.
The kernel itself is compared with the host sampler on edge cases in test_cuda_kernels.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.runtime.generate import generate
from engine.runtime.sampling import SamplingError, SamplingParams
from tests.test_cuda_graphs import _SimCore
from tests.test_cuda_launches import PROMPT, launch, q8_models  # noqa: F401  (fixtures: simulator only)

N_CTX = 24
N_NEW = 6


class _Pieces:
    def token_to_piece(self, token: int, special: bool = True) -> bytes:
        return b"."


def _run(net, params: SamplingParams) -> tuple[list[int], list[str]]:
    """Generated tokens, and what each forward call returned ("id" or "logits")."""
    seen: list[str] = []
    forward = net.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        seen.append("id" if isinstance(out, int) else "logits")
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
        assert not m.net.picks_greedy
        want, seen = _run(m.net, GREEDY)
        assert set(seen) == {"logits"}
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers="all") as m:
        assert m.net.picks_greedy
        got, seen = _run(m.net, GREEDY)
        # the prompt's logits come from the batched path; every decoded token is picked on the GPU
        assert seen == ["logits"] + ["id"] * (N_NEW - 1)
        # not with penalties (the host applies them to the logits first)
        pen, seen = _run(m.net, SamplingParams(temperature=0.0, max_tokens=N_NEW, repeat_penalty=1.0001))
        assert set(seen) == {"logits"}
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers=1) as m:
        assert not m.net.picks_greedy  # the output layer is on the CPU
        one, _ = _run(m.net, GREEDY)
    assert len(want) == N_NEW and got == want and one == want


def test_a_forward_with_a_one_token_prompt_also_picks(launch, q8_models):  # noqa: F811
    with engine.open_model(q8_models["llama"], n_ctx=N_CTX, n_gpu_layers="all") as m:
        logits = m.net.forward(PROMPT[:1], 0, last_only=True)
        m.net.reset()
        token = m.net.forward(PROMPT[:1], 0, greedy=True)
    assert isinstance(token, int) and token == int(np.argmax(logits[-1]))


def test_graph_replay_of_the_greedy_pick(launch, q8_models):  # noqa: F811
    from numba import cuda

    from engine.runtime.cuda.decode import GREEDY as KEY
    from engine.runtime.cuda.graphs import TokenGraphs

    path = q8_models["gemma3"]
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers="all") as m:
        want, _ = _run(m.net, GREEDY)
    with engine.open_model(path, n_ctx=N_CTX, n_gpu_layers="all") as m:
        (g,) = m.net.gpu.decode
        core = _SimCore()
        g.graphs = TokenGraphs(cuda.stream(), core)
        got, seen = _run(m.net, GREEDY)
        graph = g.graphs._graphs[KEY]
        # the first decoded token kernel by kernel, then the captured graph (layers, output, pick)
        assert graph.launched == N_NEW - 2 and len(graph.ops) == g.launches(True, greedy=True)
        assert g.launches(True, greedy=True) == g.launches(True) + 2
    assert seen == ["logits"] + ["id"] * (N_NEW - 1) and got == want


def test_invalid_logits_still_reach_the_host_sampler(launch, q8_models):  # noqa: F811
    from numba import cuda

    @cuda.jit
    def poison(logits):  # a NaN among the logits, as a broken model would produce
        logits[0, 5] = np.nan

    with engine.open_model(q8_models["llama"], n_ctx=N_CTX, n_gpu_layers="all") as m:
        net = m.net
        (g,) = net.gpu.decode
        g.to_logits.add(poison, 1, 1, (g.logits,))
        first = net.forward(PROMPT, 0, greedy=True)  # the prompt: logits from the batched path
        out = net.forward(np.array([int(np.argmax(first[-1]))]), net.n_past, greedy=True)
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
