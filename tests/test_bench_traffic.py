"""The bench's weight traffic per decoded token and the GPU bandwidth limit (issue #7's bar)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from engine.bench.generate import WeightTraffic, weight_traffic

H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "total_bytes": 80 << 30, "free_bytes": 79 << 30}


def _offload(n_gpu_layers: int, output: bool, devices=(H100,), simulator=False) -> dict:
    return {
        "n_layer": 4,
        "n_gpu_layers": n_gpu_layers,
        "output_on_gpu": output,
        "devices": list(devices),
        "vram_bytes": {str(d["index"]): 1 for d in devices},
        "simulator": simulator,
    }


def _tensors(tied: bool):
    t = [("token_embd.weight", 1000), ("output_norm.weight", 10)]
    t += [(f"blk.{i}.{n}.weight", 100) for i in range(4) for n in ("attn_q", "ffn_down")]
    if not tied:
        t.append(("output.weight", 900))
    return [SimpleNamespace(name=n, nbytes=b) for n, b in t]


def test_a_tied_embedding_is_read_whole_as_the_output_matrix():
    t = weight_traffic(_tensors(tied=True), None)
    assert (t.bytes_per_token, t.gpu_bytes_per_token, t.limit_tok_s) == (1810, 0, None)
    t = weight_traffic(_tensors(tied=True), _offload(4, True))
    assert t.gpu_share == 1.0 and t.gpu_bandwidth_bytes_s == 3_350 * 10**9
    assert t.limit_tok_s == pytest.approx(3_350e9 / 1810)


def test_an_untied_embedding_costs_one_row():
    t = weight_traffic(_tensors(tied=False), _offload(2, False))
    # layers 2 and 3 on the GPU; the output matrix (900) and norm (10) on the CPU
    assert (t.bytes_per_token, t.gpu_bytes_per_token) == (1710, 400)
    assert t.limit_tok_s is None  # not every byte on the GPU


def test_no_limit_without_a_known_single_gpu():
    two = [H100, {**H100, "index": 1}]
    assert weight_traffic(_tensors(True), _offload(4, True, two)).limit_tok_s is None
    assert weight_traffic(_tensors(True), _offload(4, True, simulator=True)).limit_tok_s is None
    odd = [{**H100, "name": "Some Future GPU"}]
    assert weight_traffic(_tensors(True), _offload(4, True, odd)).limit_tok_s is None


def test_the_bench_prints_the_fraction_of_the_limit():
    from engine.cli.bench import _traffic_lines

    res = SimpleNamespace(
        traffic=WeightTraffic(250_000_000, 250_000_000, "NVIDIA H100 80GB HBM3", 3_350 * 10**9),
        kvant=SimpleNamespace(decode_tok_s=6700.0),
    )
    assert _traffic_lines(res) == [
        "weights read per token: 250 MB, 100% of them on GPUs",
        "NVIDIA H100 80GB HBM3's memory bandwidth (3350 GB/s) allows 13400 tok/s: decode at 50.0% of it",
    ]
    res.traffic = WeightTraffic(250_000_000, 0)
    assert _traffic_lines(res) == []


def test_the_default_model_reads_all_its_weights(default_model):
    from engine.gguf import open_gguf

    with open_gguf(default_model) as g:
        t = weight_traffic(g.tensors, None)
        assert t.bytes_per_token == sum(x.nbytes for x in g.tensors)  # Gemma 3 ties its output matrix
