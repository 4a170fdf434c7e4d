"""resources/catalog.json: schema, consistency, every entry plans, lookups."""

from __future__ import annotations

import copy
import json

import pytest

from engine.errors import ModelError
from engine.fit import (
    CATALOG_PATH,
    TYPICAL_BPW,
    HardwareProfile,
    load_catalog,
    parse_catalog,
    plan,
    validate_catalog,
)


@pytest.fixture(scope="module")
def raw():
    return json.loads(CATALOG_PATH.read_text(encoding="utf-8"))


def test_catalog_file_is_valid(raw):
    assert validate_catalog(raw) == []
    ids = {m["id"] for m in raw["models"]}
    for want in (
        "unsloth/DeepSeek-R1-GGUF",
        "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF",
        "bartowski/Meta-Llama-3.1-70B-Instruct-GGUF",
        "bartowski/Llama-3.2-1B-Instruct-GGUF",
        "bartowski/Llama-3.2-3B-Instruct-GGUF",
        "unsloth/Qwen3-30B-A3B-GGUF",
        "google/gemma-3-270m",
        "unsloth/gemma-3-27b-it-GGUF",
        "bartowski/Mistral-7B-Instruct-v0.3-GGUF",
        "unsloth/Phi-4-mini-instruct-GGUF",
    ):
        assert want in ids


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["models"][0].pop("n_layer"), "missing 'n_layer'"),
        (lambda d: d["models"][0].update(n_layer="18"), "expected integer"),
        (lambda d: d["models"][0].update(n_layer=0), "below 1"),
        (lambda d: d["models"][0].update(colour="red"), "unknown key 'colour'"),
        (lambda d: d["models"][0]["quants"][0].update(size_gb=0.25), "not both"),
        (lambda d: d["models"][0]["quants"][1].update(approx=False), "mark it approx"),
        (lambda d: d["models"][0]["quants"].append({"name": "Q9_X"}), "no typical bpw"),
        (lambda d: d["models"][0].update(default_quant="Q5_K_M"), "not among its quants"),
        (lambda d: d["models"][1].update(aliases=["default"]), "used twice"),
        (lambda d: d["models"][0].update(swa_pattern=None), "go together"),
        (lambda d: d["models"][0].update(n_head_kv=99), "more KV heads"),
    ],
)
def test_validation_catches_bad_entries(raw, mutate, message):
    data = copy.deepcopy(raw)
    mutate(data)
    errors = validate_catalog(data)
    assert any(message in e for e in errors), errors
    with pytest.raises(ModelError, match="catalog is invalid"):
        parse_catalog(data)


def test_every_entry_builds_and_plans():
    hw = HardwareProfile.custom(ram_gb=64, vram_gb=[24], gpu_names=["RTX 4090"], cpu_bandwidth_gbs=80)
    catalog = load_catalog()
    assert len(catalog) >= 20
    for m in catalog:
        shape = m.shape()
        assert m.default_quant is not None
        for q in m.quants:
            w = m.weights(q)
            assert len(w.layers) == shape.n_layer
            # synthesized layouts add up to the file size
            assert abs(w.weight_bytes - q.size_bytes) <= shape.n_layer + 2
            bpw = q.size_bytes * 8 / shape.total_params
            assert 1.0 < bpw < 17.0, (m.id, q.name, bpw)
            if q.estimated:
                assert q.approx and bpw == pytest.approx(TYPICAL_BPW[q.name.upper()], rel=1e-6)
            p = plan(shape, w, hw)
            assert p.verdict.runs, (m.id, q.name, p.sentence)


def test_published_sizes_and_lookups():
    catalog = load_catalog()
    m, quant = catalog.find("unsloth/DeepSeek-R1-GGUF:UD-IQ1_S")
    assert quant == "UD-IQ1_S"
    sizes = {q.name: q.size_bytes for q in m.quants}
    assert sizes["UD-IQ1_S"] == 131e9 and sizes["UD-IQ1_M"] == 158e9
    assert sizes["UD-IQ2_XXS"] == 183e9 and sizes["UD-Q2_K_XL"] == 212e9
    assert m.quant("Q2_K_XL").name == "UD-Q2_K_XL"  # the UD- prefix may be left out
    default, _ = catalog.find("default")
    q = default.quant("q4_k_m")
    assert q.size_bytes == 253_113_024 and not q.approx and not q.estimated
    assert catalog.find("LLAMA-3.1-8B")[0].id == "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF"
    with pytest.raises(ModelError, match="no quant 'Q3_K_XL'"):
        catalog.find("llama-3.1-8b:Q3_K_XL")
    with pytest.raises(ModelError, match="not a file"):
        catalog.find("nobody/nothing")
    est = next(q for q in catalog.find("phi-3-mini")[0].quants if q.name == "Q4_K_M")
    assert est.estimated and est.size_bytes == round(3_821_079_552 * TYPICAL_BPW["Q4_K_M"] / 8)


def test_catalog_facts_match_the_default_gguf(default_model):
    from engine.fit import describe_gguf
    from engine.gguf import open_gguf

    entry = load_catalog().find("default")[0]
    with open_gguf(default_model) as model:
        real, _ = describe_gguf(model)
    cat = entry.shape()
    for field in (
        "n_layer",
        "n_embd",
        "n_vocab",
        "n_head",
        "n_head_kv",
        "head_dim_k",
        "n_ff",
        "sliding_window",
    ):
        assert getattr(cat, field) == getattr(real, field), field
    assert cat.swa_layers == real.swa_layers and cat.total_params == real.total_params
    assert cat.kv_bytes(8192) == real.kv_bytes(8192)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ModelError, match="missing"):
        load_catalog(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_catalog(bad)
