"""``kvant fit`` through engine.cli.run_cli."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from engine.cli import run_cli


@pytest.fixture
def home(monkeypatch, tmp_path):
    monkeypatch.setenv("KVANT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _json(capsys, argv):
    assert run_cli(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_catalog_quant_on_a_described_machine(home, capsys):
    d = _json(
        capsys,
        ["fit", "unsloth/DeepSeek-R1-GGUF:UD-IQ1_S", "--ram-gb", "64", "--vram-gb", "24",
         "--gpu-name", "RTX 4090", "--bandwidth-gbs", "80", "--json"],
    )  # fmt: skip
    p = d["plan"]
    assert d["source"] == "unsloth/DeepSeek-R1-GGUF" and p["quant"] == "UD-IQ1_S"
    assert p["verdict"] == "disk" and 1.0 <= p["tok_s"] <= 3.0
    assert d["hardware"]["gpus"][0]["bandwidth_bytes_per_s"] == 1_008_000_000_000
    assert p["constants"]["gpu_reserve_bytes"] == 1 << 30


def test_recommendation_table_for_all_quants(home, capsys):
    argv = ["fit", "llama-3.1-8b", "--ram-gb", "32", "--vram-gb", "8", "--ctx", "8192"]
    assert run_cli(argv) == 0
    out = capsys.readouterr().out
    assert "<- recommended" in out and "Q5_K_M" in out and "fits fully in VRAM" in out
    d = _json(capsys, [*argv, "--json"])
    rec = d["recommendation"]
    assert rec["best"] in [o["quant"] for o in rec["options"]] and rec["reason"]


def test_several_gpus_as_comma_list_or_repeated(home, capsys):
    a = _json(capsys, ["fit", "llama-3.1-70b:Q4_K_M", "--ram-gb", "64", "--vram-gb", "24,24", "--json"])
    b = _json(capsys, ["fit", "llama-3.1-70b", "--quant", "Q4_K_M", "--ram-gb", "64",
                       "--vram-gb", "24", "--vram-gb", "24", "--json"])  # fmt: skip
    assert len(a["hardware"]["gpus"]) == 2 and a["plan"]["verdict"] == b["plan"]["verdict"]
    assert a["plan"]["placement"] == b["plan"]["placement"]


def test_default_model_file_and_kv_type(home, capsys, default_model):
    d = _json(capsys, ["fit", str(default_model), "--ram-gb", "16", "--kv-type", "q8_0", "--json"])
    assert d["plan"]["kv_type"] == "q8_0" and d["plan"]["verdict"] == "ram"
    assert d["plan"]["file_bytes"] == 253_113_024
    # "default" without a library falls back to the catalog's entry for the default model
    d = _json(capsys, ["fit", "default", "--ram-gb", "16", "--json"])
    assert d["source"] == "google/gemma-3-270m"
    assert d["recommendation"]["best"] == "Q8_0"


def test_detected_machine_with_an_override(home, capsys, monkeypatch):
    import engine.hardware

    fake = SimpleNamespace(
        gpus=(
            SimpleNamespace(
                name="NVIDIA GeForce RTX 3060", total_vram_bytes=12 << 30, free_vram_bytes=11 << 30
            ),
        ),
        bandwidth=SimpleNamespace(all_threads_bytes_per_s=40_000_000_000),
        unified_memory=None,
        memory=SimpleNamespace(total_bytes=32 << 30, available_bytes=24 << 30),
        disk=SimpleNamespace(free_bytes=500 << 30),
        cpu=SimpleNamespace(model_name="Test CPU"),
    )
    monkeypatch.setattr(engine.hardware, "detect", lambda **kw: fake)
    d = _json(capsys, ["fit", "qwen3-8b:Q4_K_M", "--json"])
    hw = d["hardware"]
    assert hw["name"] == "Test CPU" and hw["gpus"][0]["bandwidth_bytes_per_s"] == 360_000_000_000
    assert d["plan"]["verdict"] == "full_gpu"
    d = _json(capsys, ["fit", "qwen3-8b:Q4_K_M", "--vram-gb", "4", "--json"])
    assert d["hardware"]["gpus"][0]["vram_free_bytes"] == 4 << 30
    assert d["hardware"]["ram_available_bytes"] == 24 << 30
    assert d["plan"]["verdict"] == "partial_offload"


def test_errors(home, capsys):
    assert run_cli(["fit", "nobody/nothing", "--ram-gb", "8"]) == 1
    assert "not a file, a library model or a catalog model" in capsys.readouterr().err
    assert run_cli(["fit", "llama-3.1-8b:Q9", "--ram-gb", "8", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "ModelError"
    assert run_cli(["fit", "llama-3.1-8b", "--ram-gb", "8", "--vram-gb", "x"]) == 1
