"""The bench command's plumbing on tiny inputs (speed itself is measured, never asserted)."""

from __future__ import annotations

import json

from engine.cli import run_cli


def test_bench_quant_json(capsys):
    assert (
        run_cli(
            [
                "bench",
                "quant",
                "--types",
                "Q8_0,Q4_K",
                "--rows",
                "8",
                "--cols",
                "256",
                "--repeat",
                "1",
                "--json",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    rows = {(r["type"], r["imatrix"]) for r in data["results"]}
    assert rows == {("Q8_0", False), ("Q4_K", False), ("Q4_K", True)}
    for r in data["results"]:
        assert r["kvant_1t_mb_s"] > 0 and r["dequant_kvant_nt_melem_s"] > 0
        assert r["bit_exact"] in (None, True)  # None only when llama.cpp is not installed
        assert r["dequant_kvant_1t_cpu_melem_s"] > 0
        assert r["dequant_bit_exact"] in (None, True)
        assert (r["dequant_llamacpp_1t_cpu_melem_s"] is None) == (r["dequant_bit_exact"] is None)
        if r["dequant_bit_exact"] is not None:
            assert r["dequant_ratio_1t_vs_llamacpp"] > 0
    q8 = next(r for r in data["results"] if r["type"] == "Q8_0")
    assert q8["gguf_py_mb_s"] > 0 and q8["ratio_vs_gguf_py"] > 0


def test_bench_model_json(default_model, capsys):
    assert run_cli(["bench", str(default_model), "--prompt-tokens", "16", "--gen-tokens", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_prompt"] == 16 and data["n_gen"] == 2
    k = data["kvant"]
    assert k["prefill_tok_s"] > 0 and k["decode_tok_s"] > 0 and k["load_s"] > 0 and k["peak_rss_mb"] > 0
    assert data["llamacpp"] is None and data["ratios"] is None
