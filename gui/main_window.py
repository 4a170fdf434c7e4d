"""Kvant's main window: a page list on the left, the pages on the right, progress in the status bar."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QEvent, QObject, QSettings, Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QWidget,
)

import engine
from engine import __version__
from engine.errors import KvantError
from engine.fit import HardwareProfile
from engine.gguf import read_model_info
from engine.hardware import detect
from engine.library import DEFAULT_MODEL_ID, Library, LibraryEntry, ensure_default_model, register_file
from engine.paths import KvantPaths
from engine.progress import Progress
from gui.pages.library import LibraryPage
from gui.widgets import show_error
from gui.worker import GeneratorWorker, WorkerPool


def _single(fn: Callable[[], Any]):
    """Wrap a quick call as a one-step generator so it runs on the worker pool too."""

    def factory(_token):
        return fn()
        yield  # pragma: no cover - makes this a generator

    return factory


def _prepare_runtime_job(_token):
    engine.prepare_runtime()
    return None
    yield  # pragma: no cover - makes this a generator


class MainWindow(QMainWindow):
    def __init__(self, paths: KvantPaths, open_path: str | None = None) -> None:
        super().__init__()
        self.paths = paths
        self.workers = WorkerPool()
        self._open_path = open_path
        self.setWindowTitle(f"Kvant {__version__}")
        self.resize(1100, 680)

        self.status_label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(260)
        self.progress.setVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        bar = self.statusBar()
        bar.addWidget(self.status_label, 1)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.cancel_button)

        self.nav = QListWidget()
        self.nav.setFixedWidth(170)
        self.pages = QStackedWidget()
        self.library_page = LibraryPage()
        self.library_page.model_selected.connect(self._show_model)
        self.library_page.chat_requested.connect(self.open_chat)
        self.library_page.convert_requested.connect(lambda entry: self.open_convert(entry.path))
        self._hw: HardwareProfile | None = None
        self.convert_dialogs: list[Any] = []
        self._add_page("Library", self.library_page)
        self._add_extra_pages()
        self.nav.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.nav.setCurrentRow(0)
        self.settings = QSettings(str(paths.home / "window.ini"), QSettings.Format.IniFormat)

        central = QWidget()
        layout = QHBoxLayout(central)
        layout.addWidget(self.nav)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)
        self._restore_settings()
        self._install_shortcuts()
        # drops anywhere on the window start a conversion: the window accepts drops, and an
        # application-wide filter catches them on child widgets that accept drops themselves
        self.setAcceptDrops(True)
        self._app = QApplication.instance()
        if self._app is not None:
            self._app.installEventFilter(self)

    def _add_page(self, title: str, widget: QWidget) -> None:
        self.nav.addItem(title)
        self.pages.addWidget(widget)

    def _add_extra_pages(self) -> None:
        from gui.pages.chat import ChatPage
        from gui.pages.compare import ComparePage
        from gui.pages.convert import ConvertPage
        from gui.pages.discover import DiscoverPage
        from gui.pages.hardware import HardwarePage
        from gui.pages.learn import LearnPage

        self.chat_page = ChatPage(self.paths, self.workers)
        self.chat_page.status.connect(self.status_label.setText)
        self._add_page("Chat", self.chat_page)
        self.discover_page = DiscoverPage(self.paths, self.workers)
        self.discover_page.status.connect(self.status_label.setText)
        self.discover_page.downloaded.connect(lambda entry: self._refresh_library(select=entry.id))
        self._add_page("Discover", self.discover_page)
        self.convert_page = ConvertPage(self.paths)
        self.convert_page.open_requested.connect(self.open_convert)
        self.convert_page.status.connect(self.status_label.setText)
        self._add_page("Convert", self.convert_page)
        self.compare_page = ComparePage(self.paths, self.workers)
        self.compare_page.status.connect(self.status_label.setText)
        self._add_page("Compare", self.compare_page)
        self.learn_page = LearnPage(self.paths, self.workers)
        self._add_page("Learn", self.learn_page)
        self.hardware_page = HardwarePage(self.paths, self.workers)
        self._add_page("Hardware", self.hardware_page)

    def page_index(self, title: str) -> int:
        for row in range(self.nav.count()):
            if self.nav.item(row).text() == title:
                return row
        raise KeyError(title)

    def show_page(self, title: str) -> None:
        self.nav.setCurrentRow(self.page_index(title))

    def open_chat(self, entry: LibraryEntry) -> None:
        """The library's Chat action: the chat page, with this model loaded."""
        self.show_page("Chat")
        self.chat_page.open_entry(entry)

    # --- converting ----------------------------------------------------------------------------
    def hardware_fn(self) -> HardwareProfile:
        """This machine, for fit verdicts (detected once, in a worker; tests replace this)."""
        if self._hw is None:
            self._hw = HardwareProfile.from_hardware_info(detect(self.paths))
        return self._hw

    def pick_convert_source(self) -> None:
        self.convert_page.pick_file()

    def open_convert(self, path: str | Path) -> Any:
        """The Convert dialog for ``path`` (a GGUF, a .safetensors file or a Hugging Face folder)."""
        from gui.pages.convert import ConvertDialog, convertible

        try:
            source = convertible(path)
        except KvantError as err:
            self._report(err, "Cannot convert this")
            return None
        dialog = ConvertDialog(self.paths, self.workers, source, hardware=self.hardware_fn, parent=self)
        dialog.converted.connect(self._converted)
        dialog.measured.connect(lambda _rec: self._refresh_library())
        self.convert_dialogs.append(dialog)
        self.convert_page.track(dialog)
        dialog.show()
        dialog.raise_()
        return dialog

    def _converted(self, done: Any) -> None:
        self.status_label.setText(f"Converted {done.path.name}; it is in the library.")
        self._refresh_library(select=done.entry.id)

    @staticmethod
    def _drop_paths(event: Any) -> list[str]:
        mime = event.mimeData()
        if mime is None or not mime.hasUrls():
            return []
        return [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]

    def _convertible_drop(self, event: Any) -> str | None:
        from gui.pages.convert import convertible

        for p in self._drop_paths(event):
            try:
                convertible(p)
            except KvantError:
                continue
            return p
        return None

    def dragEnterEvent(self, event) -> None:
        if self._drop_paths(event):
            event.acceptProposedAction()
        else:
            super().dragEnterEvent(event)

    def dragMoveEvent(self, event) -> None:
        if self._drop_paths(event):
            event.acceptProposedAction()
        else:
            super().dragMoveEvent(event)

    def dropEvent(self, event) -> None:
        paths = self._drop_paths(event)
        if not paths:
            super().dropEvent(event)
            return
        event.acceptProposedAction()
        self.open_convert(self._convertible_drop(event) or paths[0])

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        kind = event.type()
        if kind in (QEvent.Type.DragEnter, QEvent.Type.DragMove, QEvent.Type.Drop):
            widget = obj if obj.isWidgetType() else None
            ours = widget is not None and widget is not self and widget.window() is self
            if ours and self._drop_paths(event):
                if kind == QEvent.Type.Drop:
                    self.dropEvent(event)
                else:
                    event.acceptProposedAction()
                return True
        return super().eventFilter(obj, event)

    def _install_shortcuts(self) -> None:
        sc = QShortcut(QKeySequence(QKeySequence.StandardKey.Open), self)
        sc.setContext(Qt.ShortcutContext.WindowShortcut)
        sc.activated.connect(self.pick_convert_source)
        for row in range(self.nav.count()):
            sc = QShortcut(QKeySequence(f"Ctrl+{row + 1}"), self)
            sc.activated.connect(lambda r=row: self.nav.setCurrentRow(r))
            self.nav.item(row).setToolTip(f"{self.nav.item(row).text()} (Ctrl+{row + 1})")

    # --- window state -------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        geometry = self.settings.value("geometry")
        if isinstance(geometry, QByteArray | bytes) and geometry:
            self.restoreGeometry(geometry)
        try:
            page = int(self.settings.value("page", 0))
        except (TypeError, ValueError):
            page = 0
        if 0 <= page < self.nav.count():
            self.nav.setCurrentRow(page)

    def save_settings(self) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("page", self.nav.currentRow())
        self.settings.sync()

    # --- start-up ---------------------------------------------------------------------------
    def start(self) -> None:
        """Prepare the default model in the background, then fill the library."""
        self.paths.ensure()
        self._refresh_library()
        worker = GeneratorWorker(lambda token: ensure_default_model(self.paths, token))
        self._track(worker, "Preparing the default model…")
        worker.signals.result.connect(self._default_ready)
        worker.signals.error.connect(lambda err: self._report(err, "The default model could not be prepared"))
        self.workers.start(worker)
        # The inference runtime's one-time imports, now while nothing loads: done later, inside a model
        # load, they would hold the GIL for ~60 ms in one piece and stall this thread.
        self.workers.start(GeneratorWorker(_prepare_runtime_job))

    def _track(self, worker: GeneratorWorker, text: str) -> None:
        self.status_label.setText(text)
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.cancel_button.clicked.connect(worker.cancel)
        worker.signals.progress.connect(self._on_progress)

        def done() -> None:
            self.progress.setVisible(False)
            self.cancel_button.setVisible(False)
            self.cancel_button.clicked.disconnect(worker.cancel)

        worker.signals.finished.connect(done)
        worker.signals.cancelled.connect(lambda: self.status_label.setText("Cancelled."))

    def _on_progress(self, event: Progress) -> None:
        frac = event.fraction
        if frac is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(frac * 1000))
        if event.message:
            self.status_label.setText(event.message[:1].upper() + event.message[1:] + "…")

    def _default_ready(self, entry: LibraryEntry) -> None:
        selected = entry.id
        opened: LibraryEntry | None = None
        if self._open_path:
            try:
                opened = register_file(Library(self.paths.library_file), Path(self._open_path))
                selected = opened.id
            except Exception as err:
                self._report(err, f"Cannot open {self._open_path}")
        self.status_label.setText(f"{entry.name} is ready.")
        self._refresh_library(select=selected)
        if opened is not None:  # a .gguf opened with Kvant: in the library, and the chat loading it
            self.open_chat(opened)

    def _refresh_library(self, select: str | None = None) -> None:
        try:
            entries = Library(self.paths.library_file).entries()
        except Exception as err:
            self._report(err, "The library could not be read")
            entries = []
        self.library_page.set_entries(entries, select_id=select or (DEFAULT_MODEL_ID if entries else None))
        self.chat_page.set_entries(entries)
        self.compare_page.set_entries(entries)
        self.learn_page.set_entries(entries)

    def _show_model(self, entry: LibraryEntry) -> None:
        worker = GeneratorWorker(_single(lambda: read_model_info(entry.path)))
        worker.signals.result.connect(self.library_page.show_info)
        worker.signals.error.connect(lambda err: self.library_page.show_error(str(err)))
        self.workers.start(worker)

    def _report(self, err: Exception, title: str) -> None:
        self.status_label.setText(f"{title}: {err}")
        if not self.isVisible():
            return
        self.last_error_box = show_error(self, title, str(err))

    def closeEvent(self, event) -> None:
        self.save_settings()
        self.discover_page.shutdown()
        if self._app is not None:
            self._app.removeEventFilter(self)
            self._app = None
        self.workers.cancel_all()
        self.workers.wait(5000)
        self.chat_page.shutdown()
        super().closeEvent(event)
