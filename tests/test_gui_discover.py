"""The Discover page against the fake Hub: search, quants with verdicts, the download queue, errors."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from engine.fit import HardwareProfile  # noqa: E402
from engine.hub import model_dir, pending_downloads  # noqa: E402
from engine.paths import KvantPaths  # noqa: E402
from gui.worker import WorkerPool  # noqa: E402
from tests.fake_hub import GATED, REPO, FakeHub, FakeRepo, standard_repo_files, use_hub  # noqa: E402

Q4 = "Tiny-Q4_K_M.gguf"


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory):
    return standard_repo_files(tmp_path_factory.mktemp("hub-files"))


@pytest.fixture
def hub(monkeypatch, tmp_path, repo_files):
    with FakeHub() as server:
        server.add_repo(REPO, FakeRepo(dict(repo_files), downloads=1234, likes=5))
        server.add_repo("kvant-test/Other-GGUF", FakeRepo({Q4: repo_files[Q4]}, downloads=10))
        server.add_repo(GATED, FakeRepo({Q4: repo_files[Q4]}, gated=True))
        use_hub(monkeypatch, server, tmp_path)
        yield server


@pytest.fixture
def paths(tmp_path):
    return KvantPaths(tmp_path / "home").ensure()


def _machine() -> HardwareProfile:
    return HardwareProfile.custom(ram_gb=16, disk_gb=100, cpu_bandwidth_gbs=50)


@pytest.fixture
def page(qtbot, paths):
    from gui.pages.discover import DiscoverPage

    workers = WorkerPool()
    p = DiscoverPage(paths, workers, hardware=_machine)
    qtbot.addWidget(p)
    p.resize(1100, 700)
    p.show()
    yield p
    p.shutdown()
    workers.cancel_all()
    workers.wait(10_000)


def _cells(table, col):
    return [table.item(r, col).text() for r in range(table.rowCount())]


def _open_tiny(qtbot, page):
    page.query.setText("gguf")
    page.search()
    qtbot.waitUntil(lambda: page.results_table.rowCount() == 3, timeout=20_000)
    row = next(i for i, m in enumerate(page.results) if m.id == REPO)
    page.results_table.selectRow(row)
    qtbot.waitUntil(lambda: page.fit is not None, timeout=30_000)


def test_search_quants_and_verdicts(qtbot, page, hub):
    _open_tiny(qtbot, page)
    repos = _cells(page.results_table, 0)
    assert repos[0] == REPO and f"{GATED} (gated)" in repos  # most downloaded first
    assert _cells(page.results_table, 3)[0] == "1.2k"
    t = page.quant_table
    names = _cells(t, 0)
    assert sorted(n.removeprefix("★ ") for n in names) == ["Q4_K_M", "Q8_0", "UD-IQ1_S (3 files)"]
    verdicts = _cells(t, 3)
    assert all("fits in RAM" in v for v in verdicts), verdicts
    recommended = [r for r, n in enumerate(names) if n.startswith("★ ")]
    assert len(recommended) == 1
    row = recommended[0]
    assert t.item(row, 0).font().bold() and t.item(row, 0).background().color().name() == "#dff3e4"
    assert page.selected_quant().key == page.fit.best  # the recommended quant is pre-selected
    assert "tok/s" in _cells(t, 4)[row] and page.fit_label.text()
    assert "comfortable" in t.item(row, 3).toolTip()
    assert page.download_button.isEnabled()


def test_download_appears_in_the_library(qtbot, tmp_path, hub, monkeypatch):
    from gui.main_window import MainWindow

    paths = KvantPaths(tmp_path / "win")
    paths.ensure()
    w = MainWindow(paths)
    qtbot.addWidget(w)
    w.discover_page._hardware_fn = _machine
    w.show()
    w._refresh_library()
    assert w.library_page.table.rowCount() == 0
    w.show_page("Discover")
    page = w.discover_page
    _open_tiny(qtbot, page)
    q4 = next(r for r, q in enumerate(page.quants) if q.name == "Q4_K_M")
    page.quant_table.selectRow(q4)
    with qtbot.waitSignal(page.downloaded, timeout=30_000) as blocker:
        page.download_button.click()
    entry = blocker.args[0]
    assert entry.source == "download" and entry.path.endswith(Q4)
    qtbot.waitUntil(lambda: w.library_page.table.rowCount() == 1, timeout=5_000)
    assert w.library_page.selected().id == entry.id
    assert page.downloads[0].state == "done" and "library" in page.download_table.item(0, 4).text()
    assert "downloaded" in w.status_label.text()
    w.close()


def test_pause_resume_and_discard(qtbot, page, hub, paths):
    _open_tiny(qtbot, page)
    hub.slow[Q4] = 0.05  # 16 KiB every 50 ms: about 1.3 s for the whole file
    quant = next(q for q in page.quants if q.name == "Q4_K_M")
    d = page.enqueue(REPO, quant)
    assert d.state == "downloading"
    bar = d.widgets["bar"]
    qtbot.waitUntil(lambda: bar.value() > 50, timeout=20_000)
    d.widgets["pause"].click()
    qtbot.waitUntil(lambda: d.state == "paused", timeout=10_000)
    assert d.widgets["pause"].text() == "Resume"
    kept = pending_downloads(paths)
    assert len(kept) == 1 and kept[0].have > 0  # the partial stays for resuming

    hub.slow[Q4] = 0.0
    with qtbot.waitSignal(page.downloaded, timeout=30_000):
        d.widgets["pause"].click()
    assert d.state == "done" and pending_downloads(paths) == []
    ranges = [r.range for r in hub.gets(Q4) if r.range]
    assert any(not r.startswith("bytes=0-") for r in ranges)  # it resumed, not restarted

    # cancel-and-discard mid-download deletes the partial and drops the row
    hub.slow["tiny.q8_0.gguf"] = 0.05
    q8 = next(q for q in page.quants if q.name == "Q8_0")
    d8 = page.enqueue(REPO, q8)
    qtbot.waitUntil(lambda: d8.widgets["bar"].value() > 50, timeout=20_000)
    d8.widgets["discard"].click()
    qtbot.waitUntil(lambda: d8 not in page.downloads, timeout=10_000)
    assert page.download_table.rowCount() == 1
    assert pending_downloads(paths) == []
    assert not (model_dir(paths, REPO) / "tiny.q8_0.gguf").exists()


def test_queue_runs_one_download_at_a_time(qtbot, page, hub):
    _open_tiny(qtbot, page)
    hub.slow[Q4] = 0.02
    a, b = (next(q for q in page.quants if q.name == n) for n in ("Q4_K_M", "Q8_0"))
    da, db = page.enqueue(REPO, a), page.enqueue(REPO, b)
    assert (da.state, db.state) == ("downloading", "queued")
    qtbot.waitUntil(lambda: da.state == db.state == "done", timeout=30_000)


def test_errors_are_messages_not_crashes(qtbot, page, hub, monkeypatch):
    page.open_repo("kvant-test/Missing")
    qtbot.waitUntil(lambda: "color:#b00020" in page.repo_label.text(), timeout=20_000)

    # a gated repo: its download fails with a message and can be retried
    page.search()
    qtbot.waitUntil(lambda: page.results_table.rowCount() == 3, timeout=20_000)
    page.open_repo(GATED)
    qtbot.waitUntil(lambda: bool(page.quants), timeout=20_000)
    d = page.enqueue(GATED, page.quants[0])
    qtbot.waitUntil(lambda: d.state == "failed", timeout=20_000)
    assert "gated" in d.message.lower() or "token" in d.message.lower(), d.message
    assert d.widgets["pause"].text() == "Resume"
    qtbot.waitUntil(lambda: "No verdicts" in page.fit_label.text(), timeout=20_000)  # its header is gated too

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    page.search()
    qtbot.waitUntil(lambda: "offline" in page.message.text(), timeout=10_000)
    assert "color:#b00020" in page.message.text()


def test_unfinished_downloads_of_an_earlier_session_are_listed_and_resume(qtbot, page, hub, paths):
    from gui.pages.discover import DiscoverPage

    _open_tiny(qtbot, page)
    hub.slow[Q4] = 0.05
    quant = next(q for q in page.quants if q.name == "Q4_K_M")
    d = page.enqueue(REPO, quant)
    qtbot.waitUntil(lambda: d.widgets["bar"].value() > 50, timeout=20_000)
    d.widgets["pause"].click()
    qtbot.waitUntil(lambda: d.state == "paused", timeout=10_000)
    kept = pending_downloads(paths)
    assert len(kept) == 1 and kept[0].sha256 == quant.first.sha256

    # "Restart the app": a new page finds the partial file and lists it, paused, with what is kept.
    workers = WorkerPool()
    again = DiscoverPage(paths, workers, hardware=_machine)
    qtbot.addWidget(again)
    try:
        assert len(again.downloads) == 1
        r = again.downloads[0]
        assert r.restored and r.state == "paused" and r.repo == REPO and r.quant.key == quant.key
        assert "earlier session" in again.download_table.item(0, 4).text()
        assert 50 < r.widgets["bar"].value() < 1000 and r.widgets["pause"].text() == "Resume"
        hub.slow[Q4] = 0.0
        with qtbot.waitSignal(again.downloaded, timeout=30_000) as got:
            r.widgets["pause"].click()
        assert got.args[0].path.endswith(Q4) and r.state == "done" and pending_downloads(paths) == []
        ranges = [x.range for x in hub.gets(Q4) if x.range]
        assert sum(1 for x in ranges if not x.startswith("bytes=0-")) >= 1  # resumed from the partial
    finally:
        again.shutdown()
        workers.cancel_all()
        workers.wait(10_000)


def test_restored_download_can_be_discarded(qtbot, page, hub, paths):
    from gui.pages.discover import DiscoverPage

    _open_tiny(qtbot, page)
    hub.slow["tiny.q8_0.gguf"] = 0.05
    q8 = next(q for q in page.quants if q.name == "Q8_0")
    d = page.enqueue(REPO, q8)
    qtbot.waitUntil(lambda: d.widgets["bar"].value() > 50, timeout=20_000)
    d.widgets["pause"].click()
    qtbot.waitUntil(lambda: d.state == "paused", timeout=10_000)
    workers = WorkerPool()
    again = DiscoverPage(paths, workers, hardware=_machine)
    qtbot.addWidget(again)
    try:
        (r,) = again.downloads
        r.widgets["discard"].click()
        assert again.downloads == [] and again.download_table.rowCount() == 0
        assert pending_downloads(paths) == []
    finally:
        again.shutdown()
        workers.cancel_all()
        workers.wait(10_000)


def test_ui_thread_stays_free_while_downloading(qtbot, page, hub, paths):
    """A download (chunks, hashing, the sidecar, registering) never stalls the UI thread: a 10 ms timer's
    largest gap is measured (same bounds as the conversion test; KVANT_UI_GAP_LIMIT_MS=100 for the strict
    bar on a quiet machine)."""
    from tests.test_gui_convert import GAP_LIMIT_S, GapMeter

    _open_tiny(qtbot, page)
    hub.slow[Q4] = 0.02  # ~0.5 s of streaming
    quant = next(q for q in page.quants if q.name == "Q4_K_M")
    meter = GapMeter().start()
    with qtbot.waitSignal(page.downloaded, timeout=30_000):
        page.enqueue(REPO, quant)
    gap = meter.stop()
    print(f"UI thread: longest gap while downloading {gap * 1000:.0f} ms")
    assert gap < GAP_LIMIT_S, f"the UI thread stalled {gap * 1000:.0f} ms during the download"
