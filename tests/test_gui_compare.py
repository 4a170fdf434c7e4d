"""The Compare page, offscreen: a model's quants grouped from the library, measured numbers in the table
and the size-vs-KLD chart, measuring in the background, and the per-tensor weight error."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("PySide6")
pytestmark = pytest.mark.gui

from PySide6.QtCore import Qt  # noqa: E402

from engine.convert import convert_sync  # noqa: E402
from engine.convert.synthetic import SyntheticSpec, write_synthetic  # noqa: E402
from engine.eval import EvalProgress  # noqa: E402
from engine.library import Library, register_file  # noqa: E402
from engine.paths import KvantPaths  # noqa: E402
from gui.worker import WorkerPool  # noqa: E402

SPEC = SyntheticSpec("llama", 2, 256, 256, 4, 2, 64, 256, "F16", 5)
OTHER = SyntheticSpec("gemma3", 1, 256, 256, 2, 1, 128, 128, "F16", 6)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("quants")
    base = write_synthetic(d / "tiny-F16.gguf", SPEC)
    out = {"F16": base}
    for preset in ("Q8_0", "Q4_0"):
        out[preset] = convert_sync(base, d / f"tiny-{preset}.gguf", preset).path
    out["other"] = write_synthetic(d / "other-F16.gguf", OTHER)
    return out


@pytest.fixture
def paths(tmp_path, model_files):
    p = KvantPaths(tmp_path / "home").ensure()
    lib = Library(p.library_file)
    for key in ("Q4_0", "F16", "other", "Q8_0"):
        register_file(lib, model_files[key], source="convert")
    return p


@pytest.fixture
def page(qtbot, paths):
    from gui.pages.compare import ComparePage

    workers = WorkerPool()
    p = ComparePage(paths, workers)
    qtbot.addWidget(p)
    p.resize(1100, 700)
    p.show()
    p.set_entries(Library(paths.library_file).entries())
    qtbot.waitUntil(lambda: len(p.groups) == 2, timeout=30_000)
    yield p
    p.shutdown()
    workers.cancel_all()
    workers.wait(20_000)


def _rows(page) -> dict[str, list[str]]:
    t = page.table
    return {
        Path(t.item(r, 0).data(Qt.ItemDataRole.UserRole)).name: [
            t.item(r, c).text() for c in range(t.columnCount())
        ]
        for r in range(t.rowCount())
    }


def _select(page, name: str) -> None:
    t = page.table
    row = next(
        r for r in range(t.rowCount()) if Path(t.item(r, 0).data(Qt.ItemDataRole.UserRole)).name == name
    )
    t.selectRow(row)


def _record(base: Path, quant: Path, kld: float, ppl: float) -> dict:
    return {
        "base": str(base), "quant": str(quant), "text": "default", "n_ctx": 512, "n_chunks": 4,
        "n_tokens": 1020,
        "ppl_base": 20.0, "ppl_base_err": 0.5, "ppl_quant": ppl, "ppl_quant_err": 0.5, "kld": kld,
        "kld_err": kld / 10, "kld_median": kld / 2, "kld_p99": kld * 8, "same_top": 1 - kld * 4,
        "same_top_err": 0.01, "seconds": 3.0, "measured": 1.0,
    }  # fmt: skip


def test_groups_the_quants_of_one_model(qtbot, page, model_files):
    g = page.current_group()
    assert g is not None and len(g.files) == 3 and g.key[0] == "llama"
    assert [Path(f.path).name for f in g.files] == ["tiny-F16.gguf", "tiny-Q8_0.gguf", "tiny-Q4_0.gguf"]
    assert page.base_file().path == str(model_files["F16"])  # the most precise file is the reference
    rows = _rows(page)
    assert rows["tiny-F16.gguf"][5] == "0 (reference)"
    assert rows["tiny-Q4_0.gguf"][1] == "Q4_0" and rows["tiny-Q4_0.gguf"][5] == "not measured"
    assert page.chart.points() == []
    assert page.measure_button.isEnabled()
    # the other model is its own group
    page.model_combo.setCurrentIndex(1)
    assert [Path(f.path).name for f in page.current_group().files] == ["other-F16.gguf"]
    assert "one file" in page.message.text()


def test_stored_measurements_fill_the_table_and_chart(qtbot, page, paths, model_files):
    from gui.pages.compare import EvalStore

    store = EvalStore(paths)
    store.add(_record(model_files["F16"], model_files["Q8_0"], 0.0004, 20.1))
    store.add(_record(model_files["F16"], model_files["Q4_0"], 0.031, 21.3))
    page._refresh_numbers()
    rows = _rows(page)
    assert rows["tiny-Q4_0.gguf"][5].startswith("0.03100") and rows["tiny-Q4_0.gguf"][4].startswith("21.300")
    assert rows["tiny-Q8_0.gguf"][6] == "99.84%"
    assert rows["tiny-F16.gguf"][4] == "20.000"  # the reference's own PPL
    pts = {p.label: p for p in page.chart.points()}
    assert set(pts) == {"Q8_0", "Q4_0"} and pts["Q4_0"].y == pytest.approx(0.031)
    assert pts["Q4_0"].x < pts["Q8_0"].x  # size in MiB
    # a different reference has no measurements yet
    page.base_combo.setCurrentIndex(1)
    assert _rows(page)["tiny-Q4_0.gguf"][5] == "not measured" and page.chart.points() == []


def fake_evaluate(base, quant, text, n_ctx=512, cancel=None, cache=None, *, n_chunks=None, threads=None):
    assert "Devil" in text or len(text) > 1000  # the shipped text
    for i in range(2):
        yield EvalProgress("eval", i + 1, 2, f"chunk {i + 1}", kld=0.02)
    kld = SimpleNamespace(mean=0.02 if "Q4" in str(quant) else 0.001, mean_err=0.001, median=0.01,
                          percentile=lambda p: 0.1)  # fmt: skip
    return SimpleNamespace(
        n_ctx=n_ctx, n_chunks=n_chunks, n_tokens=510, ppl_base=15.0, ppl_base_err=0.3, ppl_quant=15.5,
        ppl_quant_err=0.3, kld=kld, same_top=0.9, same_top_err=0.01, seconds=1.0,
    )  # fmt: skip


def test_measure_runs_in_the_background_and_is_stored(qtbot, page, paths, model_files, monkeypatch):
    import gui.pages.compare as compare_mod

    monkeypatch.setattr(compare_mod, "evaluate", fake_evaluate)
    page.chunks_spin.setValue(3)
    worker = page.measure()  # nothing selected: every unmeasured quant
    assert worker is not None and not page.measure_button.isEnabled() and page.cancel_button.isVisible()
    qtbot.waitUntil(lambda: page._measure_worker is None, timeout=30_000)
    rows = _rows(page)
    assert rows["tiny-Q4_0.gguf"][5].startswith("0.02000") and rows["tiny-Q8_0.gguf"][5].startswith("0.00100")
    assert rows["tiny-Q4_0.gguf"][7] == "3×512 tokens"
    assert len(page.chart.points()) == 2
    assert compare_mod.EvalStore(paths).latest(model_files["Q4_0"], model_files["F16"])["n_chunks"] == 3
    assert "Measured 2 quant(s)" in page.message.text()
    # everything is measured now: pressing again says so instead of re-running
    page.table.clearSelection()
    assert page.measure() is None and "Every quant is measured" in page.message.text()


def test_per_tensor_weight_error(qtbot, page, model_files):
    assert not page.weights_button.isEnabled()
    _select(page, "tiny-Q4_0.gguf")
    assert page.weights_button.isEnabled()
    page.weights_button.click()
    qtbot.waitUntil(lambda: page.report is not None, timeout=60_000)
    t = page.tensor_table
    assert t.rowCount() == 2 * 9 + 3  # every tensor of the tiny model
    names = {t.item(r, 0).text() for r in range(t.rowCount())}
    assert "blk.0.ffn_down.weight" in names
    types = {t.item(r, 1).text() for r in range(t.rowCount())}
    assert "F16→Q4_0" in types
    # sorted by relative error, largest first
    rel = [float(t.item(r, 5).text()) for r in range(t.rowCount())]
    assert rel == sorted(rel, reverse=True) and rel[0] > 0.01
    assert "overall RMSE" in page.tensor_label.text() and "KLD" in page.tensor_label.text()


def test_compare_page_in_the_window(qtbot, tmp_path, paths):
    from gui.main_window import MainWindow

    w = MainWindow(paths)
    qtbot.addWidget(w)
    w.show()
    w._refresh_library()
    w.show_page("Compare")
    qtbot.waitUntil(lambda: len(w.compare_page.groups) == 2, timeout=30_000)
    assert w.compare_page.isVisible() and w.compare_page.table.rowCount() == 3
    w.workers.cancel_all()
    w.workers.wait(20_000)
