"""Render every page of the app offscreen into docs/screenshots/*.png.

    python scripts/screenshots.py [--out docs/screenshots] [--max-tokens 48]

Uses a throwaway KVANT_HOME with the default model, chats with it for the Chat page (a short,
greedy answer), and serves the Discover page from the tests' fake Hub on 127.0.0.1, so nothing
is downloaded from the internet. The Convert dialog converts the default model (caught midway);
the Compare page measures real requantized presets of it against it (short: 2 chunks of 128
tokens, so a few minutes on a laptop); the Learn page shows its three demos.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
WIDTH, HEIGHT = 1200, 760


def _pause(ms: int) -> None:
    """Run the event loop for ``ms``.  Not QTest.qWait: PySide6 keeps the GIL while qWait sleeps, so
    the app's worker threads (Numba compiling kernels on a first run) crawl, about 25 times slower."""
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        _pause(20)


DEMO_REPO = "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF"


def _fake_hub(tmp: Path):
    """The tests' fake Hub serving one small file under a real repository's name (for the download)."""
    from tests.fake_hub import FakeHub, FakeRepo, build_gguf

    hub = FakeHub(lifetime=600)
    name = "Meta-Llama-3.1-8B-Instruct-Q6_K.gguf"
    (p,) = build_gguf(tmp / name, seed=1, rows=1024)
    hub.add_repo(DEMO_REPO, FakeRepo({name: p.read_bytes()}, downloads=412_000, likes=1_010))
    os.environ["HF_ENDPOINT"] = hub.url
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    for var in ("HF_HUB_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(var, None)
    return hub


def _discover_state(page) -> None:
    """A realistic page: search results and the quants of Llama 3.1 8B (sizes and shape from Kvant's
    catalog), planned by the real planner on a sample desktop (32 GiB RAM, a 12 GiB RTX 4070)."""
    from engine.fit import HardwareProfile, load_catalog, recommend
    from engine.hub import HubModel, Quant, RemoteFile
    from gui.pages.discover import report_from

    rows = (  # id, downloads, likes, updated, gated, parameters, architecture, context
        (DEMO_REPO, 412_000, 1_010, "2024-07-26", False, 8_030_261_248, "llama", 131_072),
        ("unsloth/Qwen3-8B-GGUF", 268_000, 240, "2025-05-02", False, 8_190_735_360, "qwen3", 40_960),
        ("unsloth/gemma-3-12b-it-GGUF", 190_500, 150, "2025-03-21", False, 11_765_788_416, "gemma3", 131_072),
        ("bartowski/Mistral-Small-24B-Instruct-2501-GGUF", 95_300, 330, "2025-01-30", False, 23_572_403_200,
         "llama", 32_768),
        ("meta-llama/Llama-3.3-70B-Instruct-GGUF", 41_200, 95, "2024-12-06", "manual", 70_553_706_496,
         "llama", 131_072),
    )  # fmt: skip
    results = [
        HubModel(r[0], r[0].split("/")[0], r[1], r[2], r[3], r[4], "text-generation", r[5], r[6], r[7])
        for r in rows
    ]
    page.query.setText("instruct")
    page.show_results(results)
    page.results_table.blockSignals(True)
    page.results_table.selectRow(0)
    page.results_table.blockSignals(False)

    entry = load_catalog().find(DEMO_REPO)[0]
    shape = entry.shape()
    pairs, quants = [], []
    for cq in entry.quants:
        w = entry.weights(cq.name)
        pairs.append((w, cq.kld))
        stem = f"Meta-Llama-3.1-8B-Instruct-{cq.name}.gguf"
        quants.append(Quant(cq.name, cq.name, (RemoteFile(stem, w.file_bytes, "0" * 64),)))
    desktop = HardwareProfile.custom(
        ram_gb=32, vram_gb=[12], gpu_names=["NVIDIA GeForce RTX 4070"], cpu_bandwidth_gbs=60, disk_gb=500
    )
    rec = recommend(shape, pairs, desktop)
    page.repo = DEMO_REPO
    page.quants = sorted(quants, key=lambda q: q.size)
    page.fit = report_from(DEMO_REPO, rec)
    page.repo_label.setText(f"<b>{DEMO_REPO}</b>: {len(quants)} quants")
    page.fit_label.setText(rec.reason)
    page._fill_quants()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="kvant-shots-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # a home with a model: ~1 GB
    os.environ["KVANT_HOME"] = str(tmp / "home")
    hub = _fake_hub(tmp)

    from PySide6.QtWidgets import QApplication

    from engine.paths import KvantPaths
    from gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(["kvant-screenshots"])
    app.setApplicationName("Kvant")
    window = MainWindow(KvantPaths.default())
    window.resize(WIDTH, HEIGHT)
    window.show()
    window.start()

    def shot(name: str) -> None:
        _pause(150)
        path = args.out / f"{name}.png"
        window.grab().save(str(path))
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")

    # Library
    lib = window.library_page
    _wait(lambda: lib.table.rowCount() >= 1 and lib.form.rowCount() > 3, 300, "the default model")
    window.status_label.setText("Gemma 3 270M (Q4_K_M) is ready.")
    shot("library")

    # Chat: a short greedy answer from the default model
    chat = window.chat_page
    window.library_page.request_chat()
    chat.temperature.setValue(0.0)
    chat.max_tokens.setValue(args.max_tokens)
    _wait(lambda: chat.model is not None and not chat.is_loading, 300, "the model to load")
    # the default model is a base model: the page continues text (Complete text mode), so the
    # screenshot gives it the start of a program rather than a request
    chat.input.setPlainText('def reverse_string(s):\n    """Return s reversed."""')
    chat.send()
    _wait(lambda: not chat.is_generating, 900, "the answer")
    chat.input.setPlainText("def is_palindrome(s):")
    shot("chat")

    # Discover: a realistic repository, one download under way from the fake Hub
    window.show_page("Discover")
    disc = window.discover_page
    disc.repo = DEMO_REPO
    from engine.hub import list_quants

    (q6,) = list_quants(DEMO_REPO)
    hub.slow[q6.first.path] = 0.25
    d = disc.enqueue(DEMO_REPO, q6)
    _discover_state(disc)
    _wait(lambda: d.widgets["bar"].value() > 150, 60, "download progress")
    shot("discover")
    disc.shutdown()

    # Hardware
    window.show_page("Hardware")
    hw = window.hardware_page
    _wait(lambda: hw.info is not None, 120, "hardware detection")
    shot("hardware")

    _convert_compare_learn(window, shot, args.out)

    window.show_page("Library")
    window.close()
    window.workers.wait(10_000)
    hub.close()
    return 0


def _convert_compare_learn(window, shot, out: Path) -> None:
    from engine.convert import convert_sync
    from engine.library import DEFAULT_MODEL_ID, Library, register_file

    lib = Library(window.paths.library_file)
    default = Path(lib.get(DEFAULT_MODEL_ID).path)

    # Convert: the page with its drop zone, then the dialog for the default model, caught midway
    window.show_page("Convert")
    dialog = window.open_convert(default)
    dialog.resize(1000, 780)
    _wait(lambda: dialog.plan is not None, 300, "the conversion plan")
    dialog.set_preset("Q3_K_M")
    _wait(lambda: dialog.plan is not None and dialog.plan.preset == "Q3_K_M", 60, "the Q3_K_M plan")
    dialog.start()
    _wait(lambda: dialog.progress.value() >= 350 or dialog.state != "converting", 600, "conversion progress")
    _pause(100)
    path = out / "convert.png"
    dialog.grab().save(str(path))
    print(f"wrote {path}")
    _wait(lambda: dialog.state == "done", 900, "the conversion")
    shot("convert-page")
    dialog.close()

    # Compare: two more presets of the default model, measured against it (the most precise file, so
    # the reference) by the page itself
    for preset in ("Q4_0", "Q2_K"):
        res = convert_sync(default, window.paths.models / f"gemma-3-270m-{preset}.gguf", preset)
        register_file(Library(window.paths.library_file), res.path, source="convert")
    window._refresh_library()
    window.show_page("Compare")
    cmp = window.compare_page
    _wait(lambda: cmp.current_group() is not None and len(cmp.current_group().files) == 4, 120, "the quants")
    cmp.ctx_spin.setValue(128)
    cmp.chunks_spin.setValue(2)
    cmp.measure()
    _wait(lambda: cmp._measure_worker is None, 1800, "the measurements")
    row = next(r for r in range(cmp.table.rowCount()) if cmp.table.item(r, 1).text() == "Q2_K")
    cmp.table.selectRow(row)
    cmp.weight_error()
    _wait(lambda: cmp.report is not None, 600, "the weight report")
    shot("compare")

    # Learn: the picture, the sound and a tensor of the default model
    window.show_page("Learn")
    learn = window.learn_page
    learn.tabs.setCurrentIndex(1)
    learn.image_slider.setValue(3)
    shot("learn-picture")
    learn.tabs.setCurrentIndex(2)
    learn.sound_slider.setValue(4)
    shot("learn-sound")
    learn.tabs.setCurrentIndex(3)
    _wait(lambda: learn.demo is not None, 1800, "the tensor demo")  # Numba compiles kernels on first use
    shot("learn-weights")


if __name__ == "__main__":
    raise SystemExit(main())
