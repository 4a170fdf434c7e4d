"""engine.hub.refresh_catalog against the fake Hub: exact sizes, added quants, failures, the overlay."""

from __future__ import annotations

import copy
import json

import pytest

from engine.errors import Cancelled
from engine.fit import CATALOG_PATH, REFRESHED_CATALOG, load_catalog
from engine.hub import HubOfflineError, list_quants, refresh_catalog
from engine.paths import KvantPaths
from engine.progress import CancelToken
from tests.fake_hub import REPO, FakeHub, FakeRepo, standard_repo_files, use_hub


def _run(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as server:
        server.add_repo(REPO, FakeRepo(standard_repo_files(tmp_path / "files")))
        use_hub(monkeypatch, server, tmp_path)
        yield server


@pytest.fixture
def source(tmp_path):
    """The shipped catalog plus an entry for the fake repo and one for a repo the Hub does not have."""
    data = json.loads(CATALOG_PATH.read_text(encoding="utf-8"))
    base = next(m for m in data["models"] if m["id"] == "unsloth/gemma-3-1b-it-GGUF")
    tiny = copy.deepcopy(base) | {"id": REPO, "name": "Tiny", "aliases": [], "default_quant": "Q4_K_M"}
    tiny["quants"] = [{"name": "Q4_K_M", "size_gb": 0.5, "approx": True}, {"name": "Q6_K"}]
    gone = copy.deepcopy(base) | {"id": "kvant-test/Gone-GGUF", "name": "Gone", "aliases": []}
    data["models"] = [tiny, gone]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_refresh_makes_sizes_exact_adds_quants_and_reports_failures(hub, source, tmp_path):
    paths = KvantPaths(tmp_path / "home")
    result, events = _run(refresh_catalog(paths, source=source))
    remote = {q.name: q.size for q in list_quants(REPO)}
    assert result.repos == 2 and result.resized == 1 and result.added == 2
    assert (
        list(result.failed) == ["kvant-test/Gone-GGUF"]
        and "Gone-GGUF" in result.failed["kvant-test/Gone-GGUF"]
    )
    assert result.path == paths.cache / REFRESHED_CATALOG
    assert [e.done for e in events] == [0, 1, 2] and events[-1].total == 2

    catalog = load_catalog(paths=paths)  # the refreshed copy wins over the shipped one
    tiny = catalog.get(REPO)
    quants = {q.name: q for q in tiny.quants}
    assert set(quants) == {"Q4_K_M", "Q6_K", "Q8_0", "UD-IQ1_S"}
    for name in ("Q4_K_M", "Q8_0", "UD-IQ1_S"):
        assert quants[name].size_bytes == remote[name] and not quants[name].approx
    assert quants["Q6_K"].estimated  # not on the Hub: kept as shipped
    assert [q.name for q in tiny.quants][:2] == ["Q4_K_M", "Q6_K"]  # shipped order, new ones after
    assert catalog.get("kvant-test/Gone-GGUF") is not None  # a failed repo keeps its entry
    raw = json.loads(result.path.read_text(encoding="utf-8"))
    assert raw["refreshed"]["endpoint"] == hub.url and raw["refreshed"]["at"]


def test_damaged_refresh_falls_back_to_the_shipped_catalog(tmp_path):
    paths = KvantPaths(tmp_path / "home")
    (paths.cache).mkdir(parents=True, exist_ok=True)
    (paths.cache / REFRESHED_CATALOG).write_text('{"version": 1, "models": [{"id": 3}]}', encoding="utf-8")
    assert len(load_catalog(paths=paths)) == len(load_catalog())


def test_offline_and_cancel_write_nothing(hub, source, tmp_path, monkeypatch):
    paths = KvantPaths(tmp_path / "home")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        _run(refresh_catalog(paths, source=source, cancel=token))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError, match="offline"):
        _run(refresh_catalog(paths, source=source))
    assert not (paths.cache / REFRESHED_CATALOG).exists()


def test_catalog_cli_lists_and_refreshes(hub, source, tmp_path, monkeypatch, capsys):
    import main
    from engine.hub import catalog as hub_catalog

    monkeypatch.setenv("KVANT_HOME", str(tmp_path / "cli-home"))
    monkeypatch.setattr(hub_catalog, "CATALOG_PATH", source)
    assert main.main(["catalog", "--json"]) == 0
    shipped = json.loads(capsys.readouterr().out)
    assert shipped["source"] == "shipped catalog" and len(shipped["models"]) == len(load_catalog())
    assert main.main(["catalog", "--refresh", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["refresh"]["added"] == 2 and out["source"].startswith("refreshed from the Hub at")
    assert [m["id"] for m in out["models"]] == [REPO, "kvant-test/Gone-GGUF"]
