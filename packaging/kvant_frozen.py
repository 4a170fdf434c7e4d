"""Glue for the installed (PyInstaller-frozen) Kvant: environment, first-launch kernel warm-up,
opening ``.gguf`` files handed over by the desktop, and ``--self-test``.

``packaging/kvant_app.py`` (the bundle's entry) calls :func:`main`. Nothing here changes what
``main.py`` does: CLI subcommands and the GUI run through ``main.main`` unchanged; this module only
prepares the process around it. It also runs unfrozen (``python packaging/kvant_app.py
--self-test``), which is how ``tests/test_packaging.py`` checks it without building a bundle.

Module import stays cheap (no Qt, no Numba): the CLI's ``--version`` goes through here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

FROZEN = bool(getattr(sys, "frozen", False))
# Numba tries these in order; a bare name is one of numba.core.caching's own locators.
NUMBA_LOCATORS = "kvant_numba_cache.BundleCacheLocator,UserProvidedCacheLocator,UserWideCacheLocator"
WARMUP_ENV = "KVANT_WARMUP"  # "1" forces the first-launch kernel warm-up, "0" disables it
SELF_TEST_FLAG = "--self-test"


def bundle_dir() -> Path:
    """Where the app's files are: the bundle's data folder when frozen, else the repository."""
    if FROZEN:
        return Path(getattr(sys, "_MEIPASS", Path(sys.executable).parent))
    return Path(__file__).resolve().parents[1]


def icon_path() -> Path:
    return bundle_dir() / "resources" / "icons" / "kvant.png"


def configure_environment(env: dict[str, str] | None = None) -> Path | None:
    """Point Numba's cache at a writable per-user folder (frozen only); returns that folder.

    The bundle itself may be read-only (``Program Files``, ``/opt``, a mounted AppImage or DMG), so
    kernels are cached under ``KVANT_HOME/cache/numba``. Must run before anything imports Numba.
    """
    env = os.environ if env is None else env
    if not FROZEN and "NUMBA_CACHE_DIR" not in env:
        return None
    from engine.paths import KvantPaths

    cache = Path(env.get("NUMBA_CACHE_DIR") or KvantPaths.default(env).cache / "numba")
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        import tempfile

        cache = Path(tempfile.gettempdir()) / "kvant-numba-cache"
        cache.mkdir(parents=True, exist_ok=True)
    env["NUMBA_CACHE_DIR"] = str(cache)
    if FROZEN:
        env.setdefault("NUMBA_CACHE_LOCATOR_CLASSES", NUMBA_LOCATORS)
    return cache


def launcher_args(argv: Sequence[str]) -> list[str]:
    """The arguments without what launchers add (old macOS Finder passes ``-psn_0_1234``)."""
    return [a for a in argv if not a.startswith("-psn_")]


def main(argv: Sequence[str] | None = None) -> int:
    args = launcher_args(sys.argv[1:] if argv is None else argv)
    for name in ("stdout", "stderr"):  # a windowed Windows build has no console streams
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115
    configure_environment()
    if args[:1] == [SELF_TEST_FLAG]:
        return self_test(args[1:])
    import main as kvant_main

    if kvant_main._wants_gui(args):
        return run_gui(args)[0]
    return kvant_main.main(args)


# --- first-launch kernel warm-up --------------------------------------------------------------


def warmup_marker() -> Path | None:
    """The file that says this build's kernels were compiled into the cache (None: no warm-up).

    Frozen apps warm up once per build; from a checkout only when KVANT_WARMUP=1.
    """
    wanted = os.environ.get(WARMUP_ENV)
    if wanted == "0" or not (FROZEN or wanted == "1"):
        return None
    from engine import __version__
    from engine.paths import KvantPaths

    cache = os.environ.get("NUMBA_CACHE_DIR")
    folder = Path(cache) if cache else KvantPaths.default().cache
    exe = Path(sys.executable).stat()
    return folder / f"warm-{__version__}-{exe.st_size}-{int(exe.st_mtime)}"


def warm_up(paths: Any, token: Any, wait_s: float = 900.0) -> Generator[Any, None, float]:
    """Compile (or load from the cache) the kernels the default model needs; yields Progress.

    Waits for the default model, which the main window assembles on first launch, then runs one
    short prompt and two generated tokens (prefill and decode kernels), then quantizes a small
    matrix to the types the default conversion preset (Q4_K_M) writes and to Q8_0, so that the
    first conversion does not wait for Numba (~17 s per K-quant on an idle core). Returns the
    seconds taken.
    """
    from engine import open_model
    from engine.library import DEFAULT_MODEL_ID, Library
    from engine.progress import Progress

    steps = 5
    t0 = time.monotonic()
    yield Progress("warm-up", 0, steps, "waiting for the default model")
    while True:
        entry = Library(paths.library_file).get(DEFAULT_MODEL_ID)
        if entry is not None and Path(entry.path).is_file():
            break
        token.raise_if_cancelled()
        if time.monotonic() - t0 > wait_s:
            raise TimeoutError("the default model did not become ready")
        time.sleep(0.25)
    yield Progress("warm-up", 1, steps, "loading the default model")
    model = open_model(entry.path, n_ctx=64)
    try:
        yield Progress("warm-up", 2, steps, "compiling the prompt kernels")
        # llama.cpp's default sampling chain, as a chat uses it (its top-k kernel compiles too)
        for ev in model.generate(model.tokenize("Hello there"), max_tokens=2, seed=0, cancel=token):
            if ev.kind == "token":
                yield Progress("warm-up", 3, steps, "compiling the generation kernels")
    finally:
        model.close()
    yield Progress("warm-up", 4, steps, "compiling the quantizers")
    _warm_quantizers(token)
    yield Progress("warm-up", steps, steps, "done")
    return time.monotonic() - t0


WARM_QTYPES = ("Q4_K", "Q6_K", "Q8_0")  # Q4_K_M's two types, and the usual 8-bit one


def _warm_quantizers(token: Any) -> None:
    import numpy as np

    from engine.quant import dequantize, quantize

    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    for qtype in WARM_QTYPES:
        token.raise_if_cancelled()
        dequantize(quantize(x, qtype), qtype, x.shape)


# --- the GUI, with the desktop's file-open requests and the warm-up -----------------------------


def process_age() -> float:
    """Seconds since this process started (the launch, including the bundle's own start-up)."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # pragma: no cover - psutil is a dependency; keep the app running without it
        return float("nan")


class _GuiGlue:
    """Attaches to the main window once it exists; Qt objects are created lazily (no Qt at import)."""

    def __init__(
        self, app: Any, open_paths: Sequence[str], on_window: Callable[[Any, _GuiGlue], None] | None
    ) -> None:
        from PySide6.QtCore import QEvent, QObject, QTimer

        glue = self

        class FileOpenFilter(QObject):
            def eventFilter(self, obj: Any, event: Any) -> bool:
                if event.type() == QEvent.Type.FileOpen:
                    path = event.file() or event.url().toLocalFile()
                    if path:
                        glue.request_open(path)
                        return True
                return False

        self.app = app
        self.window: Any = None
        self.window_shown_s: float | None = None
        self.pending: list[str] = list(open_paths)
        self.opened: list[dict[str, Any]] = []
        self.warmup: dict[str, Any] = {"ran": False}
        self._on_window = on_window
        self._filter = FileOpenFilter()
        app.installEventFilter(self._filter)
        self._timer = QTimer()
        self._timer.setInterval(50)
        self._timer.timeout.connect(self._poll)
        self._timer.start()

    def request_open(self, path: str) -> None:
        self.pending.append(path)
        if not self._timer.isActive():
            self._timer.start()

    def _poll(self) -> None:
        if self.window is None:
            from gui.main_window import MainWindow

            found = [w for w in self.app.topLevelWidgets() if isinstance(w, MainWindow)]
            if not found or not found[0].isVisible():
                return
            self.window = found[0]
            self.window_shown_s = process_age()
            self._start_warmup()
            if self._on_window is not None:
                self._on_window(self.window, self)
        if self.pending and self._default_ready():
            path = self.pending.pop(0)
            self._open(path)
        if not self.pending:
            self._timer.stop()

    def _default_ready(self) -> bool:
        """Library writes must not race the first-launch assembly of the default model."""
        from engine.library import DEFAULT_MODEL_ID, Library

        try:
            return Library(self.window.paths.library_file).get(DEFAULT_MODEL_ID) is not None
        except Exception:
            return True

    def _open(self, path: str) -> None:
        """A .gguf from the desktop (double-click, Open With, dropped on the Dock icon): add it to the
        library, select it there, and open the chat with it loading."""
        from PySide6.QtWidgets import QMessageBox

        from engine.library import Library, register_file

        w = self.window
        t0 = time.monotonic()
        try:
            library = Library(w.paths.library_file)
            entry = register_file(library, Path(path))
            w.library_page.set_entries(library.entries(), select_id=entry.id)
            w.open_chat(entry)
        except Exception as err:
            self.opened.append({"path": path, "error": str(err)})
            w.status_label.setText(f"Cannot open {path}: {err}")
            if os.environ.get("QT_QPA_PLATFORM") != "offscreen":
                QMessageBox.warning(w, "Cannot open the file", f"{path}\n\n{err}")
            return
        self.opened.append({"path": path, "id": entry.id, "t0": t0})
        w.showNormal()
        w.raise_()
        w.activateWindow()

    def _start_warmup(self) -> None:
        marker = warmup_marker()
        if marker is None or marker.exists():
            return
        from PySide6.QtWidgets import QLabel, QProgressBar

        from gui.worker import GeneratorWorker

        w = self.window
        label = QLabel("Preparing Kvant's CPU kernels (first launch only)…")
        bar = QProgressBar()
        bar.setRange(0, 4)
        bar.setMaximumWidth(160)
        bar.setFormat("kernels %p%")
        w.statusBar().addPermanentWidget(label)
        w.statusBar().addPermanentWidget(bar)
        self.warmup.update(ran=True, done=False, label=label, bar=bar)
        worker = GeneratorWorker(lambda token: warm_up(w.paths, token))

        def progress(ev: Any) -> None:
            bar.setRange(0, ev.total)
            bar.setValue(ev.done)
            label.setText(f"Preparing Kvant's CPU kernels (first launch only): {ev.message}…")

        def result(seconds: float) -> None:
            self.warmup["seconds"] = round(seconds, 2)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{seconds:.2f}\n", encoding="utf-8")

        def error(err: Exception) -> None:
            self.warmup["error"] = str(err)

        def finished() -> None:
            self.warmup["done"] = True
            for widget in (label, bar):
                w.statusBar().removeWidget(widget)
                widget.deleteLater()

        worker.signals.progress.connect(progress)
        worker.signals.result.connect(result)
        worker.signals.error.connect(error)
        worker.signals.finished.connect(finished)
        w.workers.start(worker)


def _prepare_app() -> Any:
    from PySide6.QtGui import QGuiApplication, QIcon
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    icon = icon_path()
    if icon.is_file():
        app.setWindowIcon(QIcon(str(icon)))
    QGuiApplication.setDesktopFileName("kvant")  # matches kvant.desktop (Wayland, taskbars)
    return app


def run_gui(
    args: Sequence[str], on_window: Callable[[Any, _GuiGlue], None] | None = None
) -> tuple[int, _GuiGlue]:
    """``main.main(args)`` for the GUI, with file-open handling, the icon and the warm-up attached;
    returns the exit code and the glue (what it saw: window time, opened files, warm-up)."""
    import main as kvant_main

    app = _prepare_app()
    glue = _GuiGlue(app, [a for a in args if a.lower().endswith(".gguf")], on_window)
    return kvant_main.main(list(args)), glue


# --- --self-test --------------------------------------------------------------------------------


def _gui_self_test(timeout_s: float, shots: Path | None) -> dict[str, Any]:
    """Open the real window (first-launch path), wait for the default model and the warm-up, open
    the default model as the desktop would (a FileOpen event) and wait for the chat to be ready."""
    from PySide6.QtCore import QCoreApplication, QTimer
    from PySide6.QtGui import QFileOpenEvent

    result: dict[str, Any] = {"ok": False}
    t_start = time.monotonic()
    state: dict[str, Any] = {"opened": False}

    def shot(window: Any, name: str) -> None:
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            window.grab().save(str(shots / name))
            result.setdefault("screenshots", []).append(str(shots / name))

    def on_window(window: Any, glue: _GuiGlue) -> None:
        result["launch_to_window_s"] = round(glue.window_shown_s, 3)
        QTimer.singleShot(700, lambda: shot(window, "first-launch.png"))
        timer = QTimer(window)
        timer.setInterval(100)

        def tick() -> None:
            elapsed = time.monotonic() - t_start
            if elapsed > timeout_s:
                result["error"] = f"timed out after {timeout_s:.0f} s: {window.status_label.text()}"
                timer.stop()
                window.close()
                return
            if not state["opened"]:
                warm = glue.warmup
                if not glue._default_ready():
                    return
                result.setdefault("default_model_ready_s", round(elapsed, 2))
                if warm.get("ran") and not warm.get("done"):
                    return
                from engine.library import DEFAULT_MODEL_ID, Library

                entry = Library(window.paths.library_file).get(DEFAULT_MODEL_ID)
                result["ready_s"] = round(elapsed, 2)  # default model and kernel warm-up done
                state["opened"] = True
                state["t_open"] = time.monotonic()
                QCoreApplication.postEvent(QCoreApplication.instance(), QFileOpenEvent(entry.path))
                return
            chat = window.chat_page
            if glue.opened and "error" in glue.opened[0]:
                result["error"] = f"opening a .gguf failed: {glue.opened[0]['error']}"
            elif chat.model is None or chat.is_loading:
                return
            else:
                result["open_to_chat_ready_s"] = round(time.monotonic() - state["t_open"], 2)
                result["page"] = window.nav.currentItem().text()
                result["chat_model"] = chat.model_entry.id
                result["ok"] = result["page"] == "Chat"
                shot(window, "chat-ready.png")
            timer.stop()
            window.close()

        timer.timeout.connect(tick)
        timer.start()

    code, glue = run_gui([], on_window=on_window)
    result["exit_code"] = code
    warm = {k: v for k, v in glue.warmup.items() if k not in ("label", "bar")}
    result["warmup"] = warm
    if warm.get("error"):
        result["ok"] = False
        result["error"] = f"warm-up failed: {warm['error']}"
    return result


def _quantize_self_test() -> dict[str, Any]:
    import numpy as np

    from engine.quant import dequantize, quantize

    x = np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32)
    t0 = time.monotonic()
    raw = quantize(x, "Q4_K")
    y = dequantize(raw, "Q4_K", x.shape)
    rel = float(np.sqrt(np.mean((x - y) ** 2)) / np.sqrt(np.mean(x**2)))
    seconds = round(time.monotonic() - t0, 2)
    return {
        "type": "Q4_K",
        "bytes": int(raw.size),
        "rel_rmse": round(rel, 4),
        "seconds": seconds,
        "ok": rel < 0.15,
    }


def _generate_self_test(path: str) -> dict[str, Any]:
    import numba

    from engine import open_model

    t0 = time.monotonic()
    model = open_model(path, n_ctx=256)
    try:
        load_s = time.monotonic() - t0
        text, done = [], None
        for ev in model.generate(model.tokenize("The capital of France is"), max_tokens=8, temperature=0.0):
            text.append(ev.text)
            if ev.kind == "done":
                done = ev
    finally:
        model.close()
    n = done.n_generated if done else 0
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    return {
        "tokens": n,
        "text": "".join(text),
        "load_s": round(load_s, 2),
        "seconds": round(time.monotonic() - t0, 2),
        "decode_tok_s": round(done.decode_tok_s, 1) if done and done.decode_tok_s else None,
        "numba_threading_layer": layer,
        "ok": n > 0,
    }


def self_test(argv: Sequence[str]) -> int:
    """Prove an installed Kvant works: the window comes up, the default model is assembled and
    opens in the chat, a tensor quantizes, the model generates tokens. Prints one JSON document;
    exits 0 only if every part passed. Runs offscreen unless QT_QPA_PLATFORM says otherwise."""
    parser = argparse.ArgumentParser(prog="kvant --self-test")
    parser.add_argument("--no-gui", action="store_true", help="skip the window (engine checks only)")
    parser.add_argument("--screenshots", type=Path, help="save window screenshots into this folder")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed for the window part")
    opts = parser.parse_args(list(argv))
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from engine import __version__
    from engine.cli import drive
    from engine.library import ensure_default_model
    from engine.paths import KvantPaths

    report: dict[str, Any] = {
        "version": __version__,
        "frozen": FROZEN,
        "executable": sys.executable,
        "kvant_home": str(KvantPaths.default().home),
        "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR"),
    }
    checks: list[bool] = []

    def part(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        try:
            out = fn()
        except Exception as err:
            out = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        report[name] = out
        checks.append(bool(out.get("ok")))
        return out

    if not opts.no_gui:
        part("gui", lambda: _gui_self_test(opts.timeout, opts.screenshots))

    def default_model() -> dict[str, Any]:
        t0 = time.monotonic()
        entry = drive(ensure_default_model(KvantPaths.default()), argparse.Namespace(json=True))
        seconds = round(time.monotonic() - t0, 2)
        return {"path": entry.path, "size": entry.size, "seconds": seconds, "ok": True}

    model = part("default_model", default_model)
    part("quantize", _quantize_self_test)
    if model and model.get("ok"):
        part("generate", lambda: _generate_self_test(model["path"]))
    else:
        checks.append(False)
    report["ok"] = all(checks)
    json.dump(report, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0 if report["ok"] else 1
