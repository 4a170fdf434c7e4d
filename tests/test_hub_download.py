"""Downloads against the fake Hub: resume, retries, checksums, gated repos, cancel, disk space."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

from engine.errors import Cancelled, DiskSpaceError
from engine.hub import (
    ChecksumError,
    DownloadProgress,
    GatedModelError,
    HubError,
    HubNotFoundError,
    HubOfflineError,
    Quant,
    RemoteFile,
    RetryPolicy,
    download_quant,
    list_quants,
    model_dir,
    pending_downloads,
)
from engine.library import Library
from engine.paths import KvantPaths
from engine.progress import CancelToken
from tests.fake_hub import (
    GATED,
    GOOD_TOKEN,
    REPO,
    SPLIT_FOLDER,
    FakeHub,
    FakeRepo,
    standard_repo_files,
    use_hub,
)

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, read_timeout=5, connect_timeout=5)
Q4 = "Tiny-Q4_K_M.gguf"


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory):
    return standard_repo_files(tmp_path_factory.mktemp("hub-files"))


@pytest.fixture
def hub(monkeypatch, tmp_path, repo_files):
    with FakeHub() as server:
        server.add_repo(REPO, FakeRepo(dict(repo_files)))
        server.add_repo(GATED, FakeRepo({Q4: repo_files[Q4]}, gated=True))
        use_hub(monkeypatch, server, tmp_path)
        yield server


@pytest.fixture
def paths(tmp_path):
    return KvantPaths(tmp_path / "kvant").ensure()


def run(gen, on_event=None):
    events = []
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value, events
        events.append(event)
        if on_event is not None:
            on_event(event)


def leftovers(paths):
    return sorted(p.name for p in paths.models.rglob("*") if ".partial" in p.name)


def test_download_single_file_quant(hub, paths, repo_files):
    entry, events = run(download_quant(REPO, "Q4_K_M", paths=paths, policy=FAST, progress_interval=0))
    target = model_dir(paths, REPO) / Q4
    assert target.read_bytes() == repo_files[Q4]
    assert entry.path == str(target) and entry.source == "download"
    assert entry.sha256 == hashlib.sha256(repo_files[Q4]).hexdigest()
    assert Library(paths.library_file).get(entry.id) == entry
    assert leftovers(paths) == []
    assert all(isinstance(e, DownloadProgress) for e in events)
    downloads = [e for e in events if e.stage == "download"]
    assert [e.done for e in downloads] == sorted(e.done for e in downloads)
    assert events[-1].stage == "done" and events[-1].done == events[-1].total == len(repo_files[Q4])
    assert any(e.speed > 0 for e in downloads)
    assert all(r.auth is None for r in hub.requests)  # no token anywhere


def test_download_split_quant_in_a_folder(hub, paths, repo_files):
    entry, _ = run(download_quant(REPO, "UD-IQ1_S", paths=paths, policy=FAST))
    folder = model_dir(paths, REPO) / SPLIT_FOLDER
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"Tiny-UD-IQ1_S-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for name in names:
        assert (folder / name).read_bytes() == repo_files[f"{SPLIT_FOLDER}/{name}"]
    assert entry.path == str(folder / names[0])
    assert [e.path for e in Library(paths.library_file).entries()] == [entry.path]
    # a second call finds everything in place: no file is fetched again
    before = len(hub.gets(".gguf"))
    again, _ = run(download_quant(REPO, "UD-IQ1_S", paths=paths, policy=FAST))
    assert again.id == entry.id and len(hub.gets(".gguf")) == before


def test_connection_drops_resume_and_verify(hub, paths, repo_files):
    hub.fail(Q4, ("drop", 50_000), ("drop", 30_000))
    entry, events = run(download_quant(REPO, "Q4_K_M", paths=paths, policy=FAST))
    assert (model_dir(paths, REPO) / Q4).read_bytes() == repo_files[Q4]
    ranges = [r.range for r in hub.gets(Q4)]
    assert ranges == [None, "bytes=50000-", "bytes=80000-"]
    assert sum(e.stage == "retry" for e in events) == 2
    assert entry.sha256 == hashlib.sha256(repo_files[Q4]).hexdigest()


def test_server_that_ignores_range_restarts_cleanly(hub, paths, repo_files):
    hub.fail(Q4, ("drop", 50_000))
    hub.ignore_range.add(Q4)
    run(download_quant(REPO, "Q4_K_M", paths=paths, policy=FAST))
    assert (model_dir(paths, REPO) / Q4).read_bytes() == repo_files[Q4]
    assert [r.range for r in hub.gets(Q4)] == [None, "bytes=50000-"]


def test_unreachable_server_gives_up_after_bounded_retries(hub, paths):
    (quant,) = [q for q in list_quants(REPO) if q.name == "Q4_K_M"]
    hub.close()
    with pytest.raises(HubError, match="after 4 attempts"):
        run(download_quant(REPO, quant, paths=paths, policy=FAST))


def test_wrong_checksum_leaves_nothing(hub, paths):
    hub.bad_sha.add(Q4)
    with pytest.raises(ChecksumError, match=r"corrupt.*deleted"):
        run(download_quant(REPO, "Q4_K_M", paths=paths, policy=FAST))
    assert list(model_dir(paths, REPO).rglob("*")) == []
    assert Library(paths.library_file).entries() == []


def test_corrupt_partial_is_caught_by_the_whole_file_check(hub, paths, repo_files):
    (quant,) = [q for q in list_quants(REPO) if q.name == "Q4_K_M"]
    target = model_dir(paths, REPO) / Q4
    target.parent.mkdir(parents=True)
    partial = target.with_name(Q4 + ".partial")
    partial.write_bytes(b"\0" * 40_000)  # the right size so far, the wrong bytes
    meta = {"repo": REPO, "path": Q4, "size": quant.size, "sha256": quant.first.sha256}
    target.with_name(Q4 + ".partial.json").write_text(json.dumps(meta))
    with pytest.raises(ChecksumError):
        run(download_quant(REPO, quant, paths=paths, policy=FAST))
    assert [r.range for r in hub.gets(Q4)] == ["bytes=40000-"]  # it did resume
    assert list(target.parent.iterdir()) == []


def test_gated_repo_needs_a_token(hub, paths, monkeypatch):
    with pytest.raises(GatedModelError, match=r"accept its license on huggingface\.co and set HF_TOKEN"):
        run(download_quant(GATED, "Q4_K_M", paths=paths, policy=FAST))
    assert list(model_dir(paths, GATED).iterdir()) == []  # not even an empty partial
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(GatedModelError, match="refused"):
        run(download_quant(GATED, "Q4_K_M", paths=paths, policy=FAST))
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    entry, _ = run(download_quant(GATED, "Q4_K_M", paths=paths, policy=FAST))
    assert entry.source == "download"
    assert hub.gets(Q4)[-1].auth == f"Bearer {GOOD_TOKEN}"


def test_missing_quant_and_missing_file(hub, paths):
    with pytest.raises(HubNotFoundError, match=r"available: .*Q4_K_M"):
        run(download_quant(REPO, "Q2_K", paths=paths, policy=FAST))
    ghost = Quant("Q3_K_M", "ghost-Q3_K_M", (RemoteFile("ghost-Q3_K_M.gguf", 10, "0" * 64),))
    with pytest.raises(HubNotFoundError, match="404"):
        run(download_quant(REPO, ghost, paths=paths, policy=FAST))


def test_429_honours_retry_after(hub, paths, repo_files):
    hub.fail(Q4, ("status", 429, 1), ("status", 503, None))
    t0 = time.monotonic()
    _, events = run(download_quant(REPO, "Q4_K_M", paths=paths, policy=FAST))
    assert time.monotonic() - t0 >= 0.95
    retries = [e for e in events if e.stage == "retry"]
    assert "HTTP 429" in retries[0].message and "retrying in 1.0 s" in retries[0].message
    assert "HTTP 503" in retries[1].message
    assert (model_dir(paths, REPO) / Q4).read_bytes() == repo_files[Q4]


def test_retries_are_bounded(hub, paths):
    hub.fail(Q4, *[("status", 500, None)] * 10)
    with pytest.raises(HubError, match="after 4 attempts"):
        run(download_quant(REPO, "Q4_K_M", paths=paths, policy=FAST))
    assert len(hub.gets(Q4)) == 4
    assert Library(paths.library_file).entries() == []


def test_cancel_mid_file_is_prompt_and_resumes_later(hub, paths, repo_files):
    hub.slow[Q4] = 0.05  # 16 KiB every 50 ms: the file takes about 1.5 s
    cancel = CancelToken()
    cancelled_at: list[float] = []

    def stop() -> None:
        cancelled_at.append(time.monotonic())
        cancel.cancel()

    timer = threading.Timer(0.3, stop)
    timer.start()
    with pytest.raises(Cancelled):
        run(download_quant(REPO, "Q4_K_M", paths=paths, cancel=cancel, policy=FAST))
    late = time.monotonic()
    timer.join()
    assert cancel.cancelled
    target = model_dir(paths, REPO) / Q4
    partial = target.with_name(Q4 + ".partial")
    assert not target.exists() and 0 < partial.stat().st_size < len(repo_files[Q4])
    assert Library(paths.library_file).entries() == []
    (pending,) = pending_downloads(paths)
    assert pending.repo == REPO and pending.path == Q4 and pending.have == partial.stat().st_size
    assert late - cancelled_at[0] < 0.5  # prompt, though the server is still sending

    hub.slow.clear()
    have = partial.stat().st_size
    entry, events = run(download_quant(REPO, "Q4_K_M", paths=paths, policy=FAST, progress_interval=0))
    assert target.read_bytes() == repo_files[Q4]
    assert hub.gets(Q4)[-1].range == f"bytes={have}-"
    assert any(e.stage == "hashing" for e in events)
    assert pending_downloads(paths) == [] and leftovers(paths) == []
    assert entry.sha256 == hashlib.sha256(repo_files[Q4]).hexdigest()


def test_not_enough_disk_space(hub, paths, monkeypatch):
    monkeypatch.setattr("engine.hub.download.free_bytes", lambda path: 1000)
    with pytest.raises(DiskSpaceError, match="nothing was downloaded"):
        run(download_quant(REPO, "Q4_K_M", paths=paths, policy=FAST))
    assert hub.gets(Q4) == [] and not model_dir(paths, REPO).exists()


def test_offline(hub, paths, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError):
        run(download_quant(REPO, "Q4_K_M", paths=paths, policy=FAST))
    assert hub.requests == []
