"""Models other tools downloaded (HF cache, LM Studio, Ollama): found in place, imported by reference."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from engine.hub import default_roots, discover_local_models, import_local_models, scan_and_import
from engine.library import Library
from tests.fake_hub import build_gguf


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    src = tmp_path_factory.mktemp("local-src")
    (single,) = build_gguf(src / "Tiny-Q4_K_M.gguf", seed=5, rows=32)
    shards = build_gguf(src / "Tiny-Q8_0.gguf", seed=6, rows=32, split=True)
    return single.read_bytes(), [(p.name, p.read_bytes()) for p in shards]


def _blob(root, data):
    sha = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / sha).write_bytes(data)
    return sha


def make_hf_cache(root, ggufs):
    single, shards = ggufs
    repo = root / "models--bartowski--Tiny-GGUF"
    for rev in ("a" * 40, "b" * 40):  # two snapshots share one blob
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True)
        os.symlink(f"../../blobs/{_blob(repo, single)}", snap / "Tiny-Q4_K_M.gguf")
    snap = repo / "snapshots" / ("a" * 40) / "Q8_0"
    snap.mkdir()
    for name, data in shards:
        os.symlink(f"../../../blobs/{_blob(repo, data)}", snap / name)
    incomplete = root / "models--x--Broken-GGUF" / "snapshots" / ("c" * 40)
    incomplete.mkdir(parents=True)
    os.symlink("../../blobs/missing", incomplete / "Broken-Q2_K.gguf")  # a download never finished


def make_lmstudio(root, ggufs):
    folder = root / "lmstudio-community" / "Tiny-GGUF"
    folder.mkdir(parents=True)
    (folder / "Tiny-Q4_K_M.gguf").write_bytes(ggufs[0][:-1] + b"\1")  # another file, same size
    (folder / "mmproj-Tiny-F16.gguf").write_bytes(ggufs[0])
    (root / "junk").mkdir()
    (root / "junk" / "not-really-Q4_0.gguf").write_bytes(b"GGUF but not really")


def make_ollama(root, ggufs):
    data = ggufs[0][:-2] + b"\2\2"
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    (root / "blobs" / ("sha256-" + "f" * 64)).write_bytes(b'{"template": "x"}')
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "f" * 64},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)},
    ]
    for where in ("registry.ollama.ai/library/tiny/latest", "hf.co/bartowski/Tiny-GGUF/Q4_K_M"):
        manifest = root / "manifests" / where
        manifest.parent.mkdir(parents=True)
        manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    bad = root / "manifests" / "registry.ollama.ai" / "library" / "broken" / "latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")


@pytest.fixture
def roots(tmp_path, ggufs):
    r = {
        "hf-cache": [tmp_path / "hf"],
        "lmstudio": [tmp_path / "lms", tmp_path / "nope"],
        "ollama": [tmp_path / "ol"],
    }
    make_hf_cache(tmp_path / "hf", ggufs)
    make_lmstudio(tmp_path / "lms", ggufs)
    make_ollama(tmp_path / "ol", ggufs)
    return r


def test_discover(roots, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here needs the network
    found = discover_local_models(roots)
    by_source = {}
    for m in found:
        by_source.setdefault(m.source, []).append(m)
    hf = sorted(by_source["hf-cache"], key=lambda m: m.path)
    assert [(m.repo, m.quant, len(m.shards)) for m in hf] == [
        ("bartowski/Tiny-GGUF", "Q8_0", 3),
        ("bartowski/Tiny-GGUF", "Q4_K_M", 1),
    ]
    assert hf[0].path.endswith("Tiny-Q8_0-00001-of-00003.gguf")
    assert hf[0].size == sum(os.path.getsize(s) for s in hf[0].shards)
    lms = sorted(m.path.rsplit("/", 1)[-1] for m in by_source["lmstudio"])
    assert lms == ["Tiny-Q4_K_M.gguf", "not-really-Q4_0.gguf"]  # mmproj skipped; validity checked on import
    assert by_source["lmstudio"][0].repo in ("lmstudio-community/Tiny-GGUF", None)
    (ollama,) = by_source["ollama"]  # two tags, one blob: listed once
    assert ollama.name in ("tiny:latest", "hf.co/bartowski/Tiny-GGUF:Q4_K_M")
    assert os.path.basename(ollama.path).startswith("sha256-")


def test_import_by_reference(roots, tmp_path):
    library = Library(tmp_path / "library.json")
    result = import_local_models(discover_local_models(roots), library)
    assert [p.rsplit("/", 1)[-1] for p, _ in result.failed] == ["not-really-Q4_0.gguf"]
    sources = sorted(e.source for e in result.added)
    assert sources == ["hf-cache", "hf-cache", "lmstudio", "ollama"]
    for e in result.added:
        assert not e.path.startswith(str(tmp_path / "kvant"))  # nothing copied
        assert os.path.exists(e.path)
    (ollama,) = [e for e in result.added if e.source == "ollama"]
    assert ollama.id.startswith("ollama-") and ":" in ollama.name
    assert library.get(ollama.name) == ollama
    again = scan_and_import(library, roots)
    assert again.added == [] and len(again.known) == 4


def test_default_roots_follow_the_environment(tmp_path):
    env = {"HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hfh"), "OLLAMA_MODELS": str(tmp_path / "om")}
    roots = default_roots(env)
    assert roots["hf-cache"] == [tmp_path / "hfh" / "hub"]
    assert roots["ollama"][0] == tmp_path / "om"
    assert tmp_path / ".lmstudio" / "models" in roots["lmstudio"]
    assert default_roots({"HOME": str(tmp_path), "HF_HUB_CACHE": "/x/hub"})["hf-cache"] == [Path("/x/hub")]
