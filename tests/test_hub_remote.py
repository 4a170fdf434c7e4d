"""Search, quant listing and remote GGUF headers against the fake Hub on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import GGUFError
from engine.gguf import parse_header
from engine.hub import (
    HubNotFoundError,
    HubOfflineError,
    fetch_quant_headers,
    fetch_remote_header,
    list_quants,
    search_models,
)
from tests.fake_hub import REPO, SPLIT_FOLDER, FakeHub, FakeRepo, standard_repo_files, use_hub


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory):
    return standard_repo_files(tmp_path_factory.mktemp("hub-files"))


@pytest.fixture
def hub(monkeypatch, tmp_path, repo_files):
    with FakeHub() as server:
        server.add_repo(
            REPO,
            FakeRepo(
                dict(repo_files), downloads=500, likes=3, gguf={"total": 98304, "architecture": "llama"}
            ),
        )
        server.add_repo("kvant-test/Other-GGUF", FakeRepo({"x-Q2_K.gguf": b"GGUF"}, downloads=900))
        server.add_repo("kvant-test/Tiny-safetensors", FakeRepo({"model.safetensors": b"x"}, tags=["llama"]))
        use_hub(monkeypatch, server, tmp_path)
        yield server


def test_search_filters_gguf_and_sorts_by_downloads(hub):
    results = search_models("kvant-test", limit=10)
    assert [m.id for m in results] == ["kvant-test/Other-GGUF", REPO]
    tiny = results[1]
    assert tiny.downloads == 500 and tiny.parameters == 98304 and tiny.architecture == "llama"
    req = hub.gets("/api/models")[-1]
    assert req.method == "GET"
    assert search_models("tiny", limit=1)[0].id == REPO
    assert search_models("nothing-like-this") == []


def test_list_quants_groups_shards_in_a_folder(hub, repo_files):
    quants = {q.name: q for q in list_quants(REPO)}
    assert set(quants) == {"Q4_K_M", "Q8_0", "UD-IQ1_S"}
    ud = quants["UD-IQ1_S"]
    assert ud.is_split and ud.complete and len(ud.files) == 3 and ud.folder == SPLIT_FOLDER
    assert ud.size == sum(len(v) for k, v in repo_files.items() if k.startswith(SPLIT_FOLDER))
    import hashlib

    q4 = quants["Q4_K_M"]
    assert q4.first.sha256 == hashlib.sha256(repo_files["Tiny-Q4_K_M.gguf"]).hexdigest()
    assert q4.size == len(repo_files["Tiny-Q4_K_M.gguf"])


def test_missing_repo_is_a_clear_error(hub):
    with pytest.raises(HubNotFoundError, match="no model repository"):
        list_quants("kvant-test/Nope")


def test_remote_header_matches_the_local_parse(hub, repo_files):
    data = repo_files["Tiny-Q4_K_M.gguf"]
    header = fetch_remote_header(REPO, "Tiny-Q4_K_M.gguf", first_bytes=1024)
    local = parse_header(data)
    assert header.file_size == len(data)
    assert header.data_offset == local.data_offset
    assert [(t.name, t.dims, t.offset) for t in header.tensors] == [
        (t.name, t.dims, t.offset) for t in local.tensors
    ]
    assert header.metadata["tokenizer.ggml.tokens"].value == local.metadata["tokenizer.ggml.tokens"].value
    gets = hub.gets("/Tiny-Q4_K_M.gguf")
    assert len(gets) >= 2 and all(r.range for r in gets)  # grew the range: 1 KiB was not enough
    assert sum(int(r.range.split("-")[1]) - int(r.range[6:].split("-")[0]) + 1 for r in gets) < len(data)


def test_remote_headers_of_every_shard(hub):
    headers = fetch_quant_headers(REPO, "UD-IQ1_S")
    assert len(headers) == 3
    assert [h.metadata["split.no"].value for h in headers] == [0, 1, 2]


def test_remote_header_of_a_non_gguf_file(hub):
    with pytest.raises(GGUFError, match="not a GGUF"):
        fetch_remote_header(REPO, "README.md")


def test_offline_mode_refuses_clearly(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError, match="offline"):
        search_models("tiny")
    with pytest.raises(HubOfflineError, match="HF_HUB_OFFLINE"):
        list_quants(REPO)
    assert hub.requests == []


def test_the_fake_hub_satisfies_huggingface_hubs_own_client(hub, repo_files, tmp_path):
    """Model info with blobs, file metadata (HEAD) and hf_hub_download all work against it."""
    import hashlib

    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download

    api = HfApi(endpoint=hub.url)
    info = api.model_info(REPO, files_metadata=True)
    sib = {s.rfilename: s for s in info.siblings}["Tiny-Q4_K_M.gguf"]
    assert sib.lfs.sha256 == hashlib.sha256(repo_files["Tiny-Q4_K_M.gguf"]).hexdigest()
    assert api.model_info(REPO, revision="main").sha
    url = f"{hub.url}/{REPO}/resolve/main/{SPLIT_FOLDER}/Tiny-UD-IQ1_S-00002-of-00003.gguf"
    meta = get_hf_file_metadata(url, endpoint=hub.url)
    assert meta.size == len(repo_files[f"{SPLIT_FOLDER}/Tiny-UD-IQ1_S-00002-of-00003.gguf"])
    local = hf_hub_download(REPO, "Tiny-Q4_K_M.gguf", endpoint=hub.url, cache_dir=tmp_path / "hf")
    assert Path(local).read_bytes() == repo_files["Tiny-Q4_K_M.gguf"]
