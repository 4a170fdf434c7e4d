"""The desktop app, offscreen: the worker's signals, start-up with the default model, pages."""

from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from engine.errors import GGUFError  # noqa: E402
from engine.library import DEFAULT_MODEL_ID  # noqa: E402
from engine.paths import KvantPaths  # noqa: E402
from engine.progress import Progress  # noqa: E402
from gui.worker import GeneratorWorker, WorkerPool  # noqa: E402


def _counting(n, fail=False):
    def factory(token):
        for i in range(n):
            token.raise_if_cancelled()
            yield Progress("count", i + 1, n)
        if fail:
            raise GGUFError("broken on purpose")
        return "finished"

    return factory


def test_worker_emits_progress_and_result(qtbot):
    pool = WorkerPool()
    worker = GeneratorWorker(_counting(5), min_interval=0)
    seen = []
    worker.signals.progress.connect(seen.append)
    with qtbot.waitSignal(worker.signals.result, timeout=5000) as blocker:
        pool.start(worker)
    assert blocker.args == ["finished"]
    assert [e.done for e in seen] == [1, 2, 3, 4, 5]


def test_worker_reports_errors_as_signals(qtbot):
    worker = GeneratorWorker(_counting(2, fail=True))
    with qtbot.waitSignal(worker.signals.error, timeout=5000) as blocker:
        WorkerPool().start(worker)
    assert isinstance(blocker.args[0], GGUFError) and "on purpose" in str(blocker.args[0])


def test_worker_cancel(qtbot):
    import threading

    gate = threading.Event()

    def factory(token):
        yield Progress("wait", 0, 1)
        gate.wait(5)
        token.raise_if_cancelled()
        yield Progress("never", 1, 1)
        return "not reached"

    worker = GeneratorWorker(factory)
    results = []
    worker.signals.result.connect(results.append)
    with qtbot.waitSignal(worker.signals.cancelled, timeout=5000):
        WorkerPool().start(worker)
        worker.cancel()
        gate.set()
    assert results == []


def test_signal_emit_keeps_reference_counts(qtbot):
    """PySide6 6.12.0's Signal.emit() returns True without a reference: the interpreter frees True
    (or None) after a few thousand emits and aborts ("bool_dealloc"). pyproject excludes it."""
    import sys

    from gui.worker import WorkerSignals

    signals = WorkerSignals()
    got = []
    signals.progress.connect(got.append)
    signals.result.connect(got.append)
    before = sys.getrefcount(True), sys.getrefcount(None)
    for _ in range(200):
        signals.progress.emit(None)
        signals.result.emit((1,))
        signals.finished.emit()
    got.clear()
    assert (sys.getrefcount(True), sys.getrefcount(None)) == before


def test_each_worker_runs_on_a_thread_that_ends_with_it(qtbot):
    """A thread that has run Numba's parallel kernels keeps an OpenMP team while it lives; more teams
    than cores make every kernel wait for a futex wake-up (half the decode speed). So no worker
    thread outlives its job, and the next job gets a new one."""
    import threading

    pool = WorkerPool()
    seen: list[threading.Thread] = []

    def factory(token):
        seen.append(threading.current_thread())
        yield Progress("one", 1, 1)
        return threading.current_thread().name

    for _ in range(2):
        worker = GeneratorWorker(factory, min_interval=0)
        with qtbot.waitSignal(worker.signals.finished, timeout=5000):
            pool.start(worker)
        assert pool.wait(5000)
    assert len(seen) == 2 and seen[0] is not seen[1]
    assert threading.main_thread() not in seen
    assert not any(t.is_alive() for t in seen) and pool.active == 0


def test_pool_wait_times_out_while_a_worker_runs(qtbot):
    import threading

    gate = threading.Event()

    def factory(token):
        gate.wait(10)
        yield Progress("done", 1, 1)
        return None

    pool = WorkerPool()
    pool.start(GeneratorWorker(factory))
    assert pool.wait(50) is False and pool.active == 1
    gate.set()
    assert pool.wait(5000) is True and pool.active == 0


@pytest.fixture
def window(qtbot, tmp_path, default_model):
    from gui.main_window import MainWindow

    w = MainWindow(KvantPaths(tmp_path / "home"))
    qtbot.addWidget(w)
    w.show()
    yield w
    w.workers.cancel_all()
    w.workers.wait(10000)


def test_start_prepares_default_model_and_shows_it(qtbot, window):
    window.start()
    qtbot.waitUntil(lambda: window.library_page.table.rowCount() == 1, timeout=60000)
    qtbot.waitUntil(lambda: window.library_page.selected() is not None, timeout=10000)
    assert window.library_page.selected().id == DEFAULT_MODEL_ID
    qtbot.waitUntil(lambda: window.library_page.details.title() == "Gemma 3 270m", timeout=10000)
    texts = [
        window.library_page.form.itemAt(i).widget().text()
        for i in range(window.library_page.form.count())
        if window.library_page.form.itemAt(i).widget() is not None
    ]
    assert "gemma3" in texts and "18" in texts
    assert "ready" in window.status_label.text()
    assert not window.progress.isVisible()


def test_hardware_page_fills_in(qtbot, window):
    window.show_page("Hardware")
    page = window.hardware_page
    qtbot.waitUntil(lambda: page.info is not None, timeout=60000)
    assert page.info.cpu.logical_cores >= 1
    assert "cores" in page.cpu_label.text()
    assert page.ram_bar.segments() and "GiB" in page.ram_label.text()


def test_hardware_page_shows_planner_calibration(qtbot, window):
    from engine.fit import CalibrationStore, HardwareProfile, Measurement

    page = window.hardware_page
    window.show_page("Hardware")
    qtbot.waitUntil(lambda: page.info is not None, timeout=60000)
    assert "No runs measured yet" in page.calib_label.text()
    key = HardwareProfile.from_hardware_info(page.info).key
    store = CalibrationStore.default(page.paths)
    store.record(Measurement(key, "Gemma 3 270m", "Q4_K_M", 4096, 80.0, measured_tok_s=40.0,
                             predicted_bytes=500 << 20, predicted_fixed_bytes=300 << 20,
                             measured_bytes=700 << 20))  # fmt: skip
    store.record(Measurement("another machine", "x", "Q8_0", 4096, 10.0, measured_tok_s=100.0))
    page.show_calibration(page.info)
    text = page.calib_label.text()
    assert "Speed estimates × 0.50" in text and "compute-buffer estimates × 2.00" in text
    assert "from 1 run on this machine" in text and "40.0 tok/s measured vs 80.0 predicted" in text
    assert "Gemma 3 270m Q4_K_M" in text and "700 MiB vs 500 MiB" in text


def test_opening_a_gguf_adds_it_and_opens_the_chat(qtbot, tmp_path, default_model, monkeypatch):
    """`python main.py MODEL.gguf` (and a double-click in the installed app): the file joins the library,
    selected, and the Chat page loads it."""
    import shutil

    from gui.main_window import MainWindow
    from gui.pages.chat import ChatPage

    loads = []
    monkeypatch.setattr(ChatPage, "load_model", lambda self: loads.append(self.selected_entry()))
    model = tmp_path / "dropped" / "my-model.gguf"
    model.parent.mkdir()
    shutil.copyfile(default_model, model)
    w = MainWindow(KvantPaths(tmp_path / "home"), open_path=str(model))
    qtbot.addWidget(w)
    w.show()
    w.start()
    qtbot.waitUntil(lambda: bool(loads), timeout=60_000)
    assert loads[0].path == str(model)
    assert w.pages.currentWidget() is w.chat_page
    assert w.library_page.selected().path == str(model)
    w.workers.cancel_all()
    w.workers.wait(10_000)
