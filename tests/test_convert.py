"""Conversion: byte identity with llama.cpp's llama_model_quantize, plans, progress, cancel, CLI.

The fixtures (tests/fixtures/convert/*.json, made by scripts/make_convert_fixtures.py) hold, per
synthetic model and case, llama.cpp's output: KV key order, per tensor name/type/sha256, and the
sha256 of the whole file. The synthetic source models are regenerated here from their seeds.
By default a representative subset of cases runs; KVANT_CONVERT_FULL=1 runs every case.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from engine.convert import convert, convert_sync, plan_conversion
from engine.convert.synthetic import FIXTURE_MODELS, synthetic_imatrix, write_synthetic
from engine.errors import Cancelled, DiskSpaceError, QuantError
from engine.gguf import open_gguf
from engine.progress import CancelToken
from engine.quant import dequantize, format_of, quantize

FIXTURES = Path(__file__).parent / "fixtures" / "convert"
FULL = os.environ.get("KVANT_CONVERT_FULL") == "1"
QUICK = {
    "llama-f32": {"Q4_K_M", "Q8_0", "Q6_K", "Q5_K_S", "Q3_K_M", "Q2_K", "Q4_0", "IQ4_XS", "TQ1_0", "F16",
                  "Q4_K_M+im", "IQ2_XXS+im", "Q4_K_M+ov"},
    "llama-gqa4-f16": {"Q4_K_M", "Q2_K", "IQ4_NL"},
    "gemma3-640-f16": {"Q4_K_M", "Q8_0", "Q3_K_S", "IQ1_S+im"},
    "gemma3-80-bf16": {"Q4_K_M", "Q6_K"},
}  # fmt: skip


def _key(case: dict) -> str:
    return case["preset"] + ("+im" if case["imatrix"] else "") + ("+ov" if case["overrides"] else "")


def _cases():
    for path in sorted(FIXTURES.glob("*.json")):
        doc = json.loads(path.read_text())
        for case in doc["cases"]:
            key = _key(case)
            marks = (
                []
                if FULL or key in QUICK.get(doc["model"], ())
                else [pytest.mark.skip("KVANT_CONVERT_FULL=1")]
            )
            yield pytest.param(doc["model"], case, id=f"{doc['model']}-{key}", marks=marks)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Synthetic source models, written once per module and checked against the fixtures' hash."""
    out = {}
    d = tmp_path_factory.mktemp("convert-src")
    for name, spec in FIXTURE_MODELS.items():
        p = write_synthetic(d / f"{name}.gguf", spec)
        doc = json.loads((FIXTURES / f"{name}.json").read_text())
        assert hashlib.sha256(p.read_bytes()).hexdigest() == doc["source_sha256"], name
        out[name] = p
    return out


def _describe(path: Path) -> tuple[list, list]:
    with open_gguf(path) as m:
        tensors = [
            [t.name, t.type_name, hashlib.sha256(m.raw(t.name).tobytes()).hexdigest()[:32]] for t in m.tensors
        ]
        return tensors, list(m.metadata)


@pytest.mark.parametrize(("model", "case"), list(_cases()))
def test_byte_identical_with_llama_cpp(model, case, sources, tmp_path):
    assert "error" not in case, "llama.cpp refused this case when the fixtures were made"
    types = {t[1] for t in case["tensors"]}
    if any(format_of(t).quantize is None for t in types):
        pytest.skip(f"Kvant cannot quantize {types} yet")
    im = synthetic_imatrix(FIXTURE_MODELS[model]) if case["imatrix"] else None
    out = tmp_path / "out.gguf"
    convert_sync(sources[model], out, case["preset"], imatrix=im, overrides=case["overrides"])
    tensors, keys = _describe(out)
    assert keys == case["keys"]
    assert [t[:2] for t in tensors] == [t[:2] for t in case["tensors"]]  # order and types
    assert tensors == case["tensors"]  # data
    assert hashlib.sha256(out.read_bytes()).hexdigest() == case["file_sha256"]


@pytest.mark.parametrize("model", sorted(FIXTURE_MODELS))
def test_every_plan_matches_llama_cpp_types(model, sources):
    """The plan (no data read) gives llama.cpp's type for every tensor of every fixture case."""
    doc = json.loads((FIXTURES / f"{model}.json").read_text())
    im = synthetic_imatrix(FIXTURE_MODELS[model])
    for case in doc["cases"]:
        plan = plan_conversion(
            sources[model],
            case["preset"],
            imatrix=im if case["imatrix"] else None,
            overrides=case["overrides"],
        )
        assert [(t.name, t.dst_type) for t in plan.tensors] == [(n, ty) for n, ty, _ in case["tensors"]], (
            _key(case)
        )
        assert sum(t.dst_bytes for t in plan.tensors) <= case["size"]


def test_dry_run_reproduces_default_model(default_model):
    plan = plan_conversion(default_model, "Q4_K_M")
    with open_gguf(default_model) as m:
        expected = {t.name: t.type_name for t in m.tensors}
    assert {t.name: t.dst_type for t in plan.tensors} == expected
    assert all(t.copy for t in plan.tensors)
    assert plan.type_counts()["Q5_0"] > 0  # the 640-wide fallbacks


def test_requantize_warns_and_matches_dequantize_quantize(sources, tmp_path):
    q8 = convert_sync(sources["llama-f32"], tmp_path / "q8.gguf", "Q8_0").path
    events = []
    gen = convert(q8, tmp_path / "q4.gguf", "Q4_K_M")
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    warnings = [e.warning for e in events if e.stage == "warning"]
    assert any("compound" in w for w in warnings)
    with open_gguf(q8) as a, open_gguf(result.path) as b:
        t = b.tensor("blk.1.ffn_up.weight")
        x = dequantize(a.raw(t.name), "Q8_0", t.shape)
        assert np.array_equal(b.raw(t.name).reshape(t.shape[0], -1), quantize(x, t.type_name))
        assert b.tensor("blk.0.ffn_down.weight").type_name == "Q6_K"


def test_progress_events(sources, tmp_path):
    events = list(_drain(convert(sources["gemma3-80-bf16"], tmp_path / "o.gguf", "Q8_0")))
    conv = [e for e in events if e.stage == "convert"]
    assert conv[-1].done == conv[-1].total and conv[-1].index == conv[-1].count
    assert all(a.done <= b.done for a, b in itertools.pairwise(conv))
    assert conv[-1].eta_s == 0


def _drain(gen):
    while True:
        try:
            yield next(gen)
        except StopIteration:
            return


def test_cancel_leaves_nothing(sources, tmp_path):
    token = CancelToken()
    out = tmp_path / "o.gguf"
    gen = convert(sources["llama-f32"], out, "Q8_0", cancel=token)
    next(gen)
    token.cancel()
    with pytest.raises(Cancelled):
        for _ in gen:
            pass
    assert list(tmp_path.iterdir()) == []


def test_cancel_inside_a_tensor(sources, tmp_path, monkeypatch):
    """A cancel is seen between chunks of rows, not only between tensors."""
    import engine.convert.core as core

    monkeypatch.setattr(core, "_CHUNK_ELEMS", 256)
    token = CancelToken()
    calls = []
    real = core.quantize

    def spy(x, t, w=None):
        calls.append(1)
        if len(calls) == 3:
            token.cancel()
        return real(x, t, w)

    monkeypatch.setattr(core, "quantize", spy)
    with pytest.raises(Cancelled):
        convert_sync(sources["llama-f32"], tmp_path / "o.gguf", "Q8_0", cancel=token)
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_disk_space_checked_before_writing(sources, tmp_path, monkeypatch):
    import shutil

    import engine.gguf.writer as writer

    monkeypatch.setattr(writer.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 10))
    with pytest.raises(DiskSpaceError):
        convert_sync(sources["llama-f32"], tmp_path / "o.gguf", "Q8_0")
    assert list(tmp_path.iterdir()) == []


def test_overrides(sources):
    plan = plan_conversion(
        sources["llama-f32"], "Q4_K_M", overrides=["ffn_down=Q8_0", r"blk\.0\.attn_q=q5_k"]
    )
    types = {t.name: t.dst_type for t in plan.tensors}
    assert types["blk.3.ffn_down.weight"] == "Q8_0"
    assert types["blk.0.attn_q.weight"] == "Q5_K" and types["blk.1.attn_q.weight"] == "Q4_K"
    assert "override" in next(t.reason for t in plan.tensors if t.name == "blk.3.ffn_down.weight")
    with pytest.raises(QuantError):
        plan_conversion(sources["llama-f32"], "Q4_K_M", overrides=["ffn_down"])
    with pytest.raises(QuantError):
        plan_conversion(sources["llama-f32"], "Q4_K_M", overrides=["ffn_down=Q9_K"])
    with pytest.raises(QuantError):
        plan_conversion(sources["llama-f32"], "Q7_K_M")


def test_missing_imatrix_is_refused_before_writing(sources, tmp_path):
    plan = plan_conversion(sources["llama-f32"], "IQ2_XXS")
    assert plan.missing_imatrix and any("importance matrix" in w for w in plan.warnings)
    with pytest.raises(QuantError, match="importance matrix"):
        convert_sync(sources["llama-f32"], tmp_path / "o.gguf", "IQ2_XXS")
    assert list(tmp_path.iterdir()) == []
