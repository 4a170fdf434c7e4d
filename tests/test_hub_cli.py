"""``search``, ``download`` and ``models --scan`` on the command line, against the fake Hub."""

from __future__ import annotations

import json
import os

import pytest

import main
from tests.fake_hub import GATED, REPO, FakeHub, FakeRepo, build_gguf, standard_repo_files, use_hub


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory):
    return standard_repo_files(tmp_path_factory.mktemp("hub-files"))


@pytest.fixture
def hub(monkeypatch, tmp_path, repo_files):
    with FakeHub() as server:
        server.add_repo(REPO, FakeRepo(dict(repo_files), downloads=7))
        server.add_repo(GATED, FakeRepo({"Tiny-Q4_K_M.gguf": repo_files["Tiny-Q4_K_M.gguf"]}, gated=True))
        use_hub(monkeypatch, server, tmp_path)
        monkeypatch.setenv("KVANT_HOME", str(tmp_path / "kvant"))
        yield server


def cli(capsys, *argv):
    code = main.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_search(hub, capsys):
    code, out, _ = cli(capsys, "search", "kvant-test", "--limit", "5", "--json")
    assert code == 0 and [m["id"] for m in json.loads(out)["models"]] == [REPO, GATED]
    code, out, _ = cli(capsys, "search", "kvant-test")
    assert code == 0 and REPO in out and "(gated)" in out


def test_download_lists_then_downloads(hub, capsys, tmp_path):
    code, out, _ = cli(capsys, "download", REPO)
    assert code == 0 and "Q4_K_M" in out and "UD-IQ1_S" in out and "--quant" in out
    code, out, _ = cli(capsys, "download", REPO, "--json")
    assert {q["name"] for q in json.loads(out)["quants"]} == {"Q4_K_M", "Q8_0", "UD-IQ1_S"}
    code, out, _ = cli(capsys, "download", REPO, "--quant", "ud-iq1_s", "--json")
    model = json.loads(out)["model"]
    assert code == 0 and model["source"] == "download" and os.path.exists(model["path"])
    code, out, _ = cli(capsys, "models", "--json")
    assert [m["id"] for m in json.loads(out)["models"]] == [model["id"]]


def test_gated_download_says_what_to_do(hub, capsys):
    code, _, err = cli(capsys, "download", GATED, "--quant", "Q4_K_M")
    assert code == 1 and "this model is gated: accept its license on huggingface.co and set HF_TOKEN" in err


def test_models_scan_imports_the_hf_cache(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("KVANT_HOME", str(tmp_path / "kvant"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    cache = tmp_path / "hf-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    snap = cache / "models--someone--Tiny-GGUF" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    build_gguf(snap / "Tiny-Q4_K_M.gguf", rows=32)
    code, out, _ = cli(capsys, "models", "--scan", "--json")
    (entry,) = [m for m in json.loads(out)["models"] if m["source"] == "hf-cache"]
    assert code == 0 and entry["path"] == str(snap / "Tiny-Q4_K_M.gguf")
