"""`convert --imatrix auto`: an importance matrix computed by the engine, then used by the conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType

from engine.cli import run_cli
from engine.convert import load_imatrix
from engine.gguf import open_gguf
from tests.test_models_arch import _script  # builds the tiny llama.cpp-layout models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, _ = _script().build("llama", tmp_path_factory.mktemp("auto-im") / "tiny-llama.gguf")
    return path


def test_auto_imatrix_is_computed_and_used(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KVANT_HOME", str(tmp_path / "home"))
    out = tmp_path / "tiny-iq2.gguf"
    assert run_cli(["convert", str(tiny), str(out), "--preset", "IQ2_XXS", "--imatrix", "auto",
                    "--imatrix-chunks", "2", "--json"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    im_path = Path(res["imatrix"]["path"])
    assert res["imatrix"]["n_chunks"] == 2 and res["imatrix"]["n_ctx"] == 512
    assert im_path.is_file() and im_path.is_relative_to(tmp_path / "home")
    im = load_imatrix(im_path)
    assert all(name.startswith("blk.") for name in im.entries) and len(im) > 0
    with open_gguf(out) as m:
        types = {t.name: GGMLQuantizationType(t.type).name for t in m.tensors}
    assert sum(v == "IQ2_XXS" for v in types.values()) == 18  # what the dry run plans without one: 18 missing
    assert res["plan"]["missing_imatrix"] == []


def test_auto_imatrix_dry_run_computes_nothing(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KVANT_HOME", str(tmp_path / "home"))
    assert (
        run_cli(["convert", str(tiny), "--preset", "IQ2_XXS", "--imatrix", "auto", "--dry-run", "--json"])
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["missing_imatrix"] == []
    assert not (tmp_path / "home" / "cache" / "imatrix").exists()


def test_auto_imatrix_needs_a_gguf(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KVANT_HOME", str(tmp_path / "home"))
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert run_cli(["convert", str(folder), str(tmp_path / "x.gguf"), "--imatrix", "auto"]) != 0
    assert "--imatrix auto needs a GGUF source" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()
