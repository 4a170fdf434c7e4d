"""Discover page: search the Hugging Face Hub, see a repo's quants with this machine's fit verdicts,
and download them through a queue with progress, speed, ETA, pause, resume and discard.

Every network call and the planner run in :class:`GeneratorWorker` jobs; errors (offline, gated,
missing repos, no disk space) become a message on the page, never an exception in the UI thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.errors import Cancelled
from engine.fit import HardwareProfile, describe_gguf, recommend, split_params, synthesize_weights
from engine.hardware import detect
from engine.hub import (
    HubModel,
    Quant,
    RemoteFile,
    discard_download,
    download_quant,
    fetch_quant_headers,
    find_quant,
    group_quants,
    list_quants,
    pending_downloads,
    search_models,
)
from engine.paths import KvantPaths
from gui.widgets import tint
from gui.worker import GeneratorWorker, WorkerPool

RESULT_COLUMNS = ("Repository", "Params", "Arch", "Downloads", "Likes")
QUANT_COLUMNS = ("Quant", "Size", "Bits/weight", "Verdict here", "Speed here")
DOWNLOAD_COLUMNS = ("Model", "Progress", "Speed", "Time left", "Status", "")
RECOMMENDED_BG = ("#dff3e4", "#1f3d28")  # light theme, dark theme
VERDICT_COLOURS = {"comfortable": "#1e7b34", "tight": "#9a6700", "disk": "#b35900", "does not run": "#b00020"}


def _size(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.0f} KiB"


def _count(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def _job(fn: Callable[[], Any]):
    def factory(_token):
        return fn()
        yield  # pragma: no cover - makes this a generator

    return factory


@dataclass(frozen=True, slots=True)
class QuantFit:
    """The planner's answer for one quant on this machine."""

    verdict: str  # the plan's label: "fits in RAM", ...
    tier: str  # comfortable / tight / disk / does not run
    tok_s: float
    bits_per_weight: float
    sentence: str


@dataclass(frozen=True, slots=True)
class FitReport:
    repo: str
    fits: dict[str, QuantFit]  # by quant key
    best: str | None  # the recommended quant's key
    reason: str


def fit_quants(repo: str, quants: list[Quant], hw: HardwareProfile) -> FitReport:
    """Plan every quant of ``repo`` on ``hw``: one quant's remote header gives the model's shape;
    the others are sized from their file sizes."""
    usable = [q for q in quants if q.complete]
    if not usable:
        return FitReport(repo, {}, None, "No complete quant to plan.")
    ref = usable[0]
    shape, ref_weights = describe_gguf(fetch_quant_headers(repo, ref), quant_name=ref.name)
    split = split_params(shape)
    by_name: dict[str, Quant] = {}
    pairs = []
    for q in usable:
        w = (
            ref_weights
            if q is ref
            else synthesize_weights(shape, split, name=q.key, file_bytes=q.size, approx=True)
        )
        if q is ref:
            w = replace(w, name=q.key)
        by_name[q.key] = q
        pairs.append((w, None))
    return report_from(repo, recommend(shape, pairs, hw))


def report_from(repo: str, rec: Any) -> FitReport:
    """A :class:`FitReport` from the planner's ``Recommendation`` (options named by quant key)."""
    fits = {
        o.quant: QuantFit(
            o.plan.verdict.label, o.tier.value, o.plan.tok_s, o.bits_per_weight, o.plan.sentence
        )
        for o in rec.options
    }
    return FitReport(repo, fits, rec.best.quant if rec.best else None, rec.reason)


@dataclass(eq=False)
class Download:
    repo: str
    quant: Quant
    state: str = "queued"  # queued, downloading, paused, failed, done
    worker: GeneratorWorker | None = None
    discard: bool = False
    message: str = ""
    restored: bool = False  # found unfinished on disk: its quant is looked up on the Hub when resumed
    widgets: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.repo} · {self.quant.name}"


class DiscoverPage(QWidget):
    downloaded = Signal(object)  # LibraryEntry of a finished download
    status = Signal(str)

    def __init__(
        self,
        paths: KvantPaths,
        workers: WorkerPool,
        hardware: Callable[[], HardwareProfile] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.paths = paths
        self.workers = workers
        self._hardware_fn = hardware or (lambda: HardwareProfile.from_hardware_info(detect(paths)))
        self._hw: HardwareProfile | None = None
        self.results: list[HubModel] = []
        self.quants: list[Quant] = []
        self.fit: FitReport | None = None
        self.repo: str | None = None
        self.downloads: list[Download] = []
        self._search_worker: GeneratorWorker | None = None
        self._build()
        self.restore_pending()

    # --- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.query = QLineEdit()
        self.query.setPlaceholderText("Search GGUF models on the Hugging Face Hub, e.g. qwen3, gemma, llama")
        self.query.returnPressed.connect(self.search)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        head = QHBoxLayout()
        head.addWidget(QLabel("<h2>Discover</h2>"))
        head.addSpacing(12)
        head.addWidget(self.query, 1)
        head.addWidget(self.search_button)

        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.results_table = self._table(RESULT_COLUMNS, stretch=0)
        self.results_table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.results_table.itemSelectionChanged.connect(self._on_repo_selected)

        self.repo_label = QLabel("Select a repository to see its quants.")
        self.repo_label.setWordWrap(True)
        self.quant_table = self._table(QUANT_COLUMNS, stretch=3)
        self.quant_table.itemSelectionChanged.connect(self._update_buttons)
        self.quant_table.doubleClicked.connect(lambda _i: self.download_selected())
        self.fit_label = QLabel("")
        self.fit_label.setWordWrap(True)
        self.download_button = QPushButton("Download")
        self.download_button.clicked.connect(self.download_selected)
        quant_row = QHBoxLayout()
        quant_row.addWidget(self.fit_label, 1)
        quant_row.addWidget(self.download_button)
        quants = QWidget()
        q_layout = QVBoxLayout(quants)
        q_layout.setContentsMargins(0, 0, 0, 0)
        q_layout.addWidget(self.repo_label)
        q_layout.addWidget(self.quant_table, 1)
        q_layout.addLayout(quant_row)

        self.download_table = self._table(DOWNLOAD_COLUMNS, stretch=0)
        self.download_table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.download_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.download_table.horizontalHeader().setSectionResizeMode(
            5, QHeaderView.ResizeMode.ResizeToContents
        )
        downloads = QWidget()
        d_layout = QVBoxLayout(downloads)
        d_layout.setContentsMargins(0, 0, 0, 0)
        d_layout.addWidget(QLabel("<b>Downloads</b>"))
        d_layout.addWidget(self.download_table, 1)

        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self.results_table)
        top.addWidget(quants)
        top.setStretchFactor(0, 1)
        top.setStretchFactor(1, 1)
        top.setSizes([480, 600])
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(downloads)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([480, 170])
        layout = QVBoxLayout(self)
        layout.addLayout(head)
        layout.addWidget(self.message)
        layout.addWidget(split, 1)
        self._update_buttons()

    @staticmethod
    def _table(columns: tuple[str, ...], stretch: int) -> QTableWidget:
        t = QTableWidget(0, len(columns))
        t.setHorizontalHeaderLabels(columns)
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        t.verticalHeader().setVisible(False)
        t.setWordWrap(False)
        t.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        t.horizontalHeader().setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
        return t

    def _say(self, text: str, error: bool = False) -> None:
        self.message.setText(f"<span style='color:#b00020'>{text}</span>" if error else text)

    def _update_buttons(self) -> None:
        q = self.selected_quant()
        busy = q is not None and any(
            d.repo == self.repo and d.quant.key == q.key and d.state in ("queued", "downloading")
            for d in self.downloads
        )
        self.download_button.setEnabled(q is not None and q.complete and not busy)

    # --- search ------------------------------------------------------------------------------
    def search(self) -> GeneratorWorker:
        query = self.query.text().strip()
        self.search_button.setEnabled(False)
        self._say(f"Searching the Hub for “{query}”…" if query else "The most downloaded GGUF models…")
        worker = GeneratorWorker(_job(lambda: search_models(query, limit=50)))
        worker.signals.result.connect(self.show_results)
        worker.signals.error.connect(lambda err: self._say(f"The search failed: {err}", error=True))
        worker.signals.finished.connect(lambda: self.search_button.setEnabled(True))
        self._search_worker = worker
        return self.workers.start(worker)

    def show_results(self, results: list[HubModel]) -> None:
        self.results = list(results)
        t = self.results_table
        t.setRowCount(len(results))
        for row, m in enumerate(results):
            cells = (
                m.id + (" (gated)" if m.gated else ""),
                _count(m.parameters),
                m.architecture or "–",
                _count(m.downloads),
                _count(m.likes),
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col in (1, 3, 4):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if col == 0:
                    updated = f"updated {m.last_modified[:10]}" if m.last_modified else ""
                    gated = "gated: accept the licence on huggingface.co and set HF_TOKEN" if m.gated else ""
                    item.setToolTip("\n".join(x for x in (m.id, updated, gated) if x))
                t.setItem(row, col, item)
        self._say(f"{len(results)} repositories with GGUF files." if results else "Nothing found.")

    def selected_repo(self) -> HubModel | None:
        rows = self.results_table.selectionModel().selectedRows()
        return self.results[rows[0].row()] if rows else None

    # --- quants and verdicts -----------------------------------------------------------------
    def _on_repo_selected(self) -> None:
        m = self.selected_repo()
        if m is not None and m.id != self.repo:
            self.open_repo(m.id)

    def open_repo(self, repo: str) -> GeneratorWorker:
        self.repo, self.quants, self.fit = repo, [], None
        self.quant_table.setRowCount(0)
        self.fit_label.setText("")
        self.repo_label.setText(f"<b>{repo}</b>: listing quants…")
        worker = GeneratorWorker(_job(lambda: list_quants(repo)))
        worker.signals.result.connect(lambda quants: self.show_quants(repo, quants))
        worker.signals.error.connect(
            lambda err: (
                repo == self.repo
                and self.repo_label.setText(f"<b>{repo}</b>: <span style='color:#b00020'>{err}</span>")
            )
        )
        return self.workers.start(worker)

    def show_quants(self, repo: str, quants: list[Quant]) -> None:
        if repo != self.repo:
            return
        self.quants = list(quants)
        total = len(quants)
        self.repo_label.setText(
            f"<b>{repo}</b>: {total} quant{'s' if total != 1 else ''}"
            if quants
            else f"<b>{repo}</b> has no GGUF quants."
        )
        self._fill_quants()
        if quants:
            self.fit_label.setText("Planning each quant on this machine…")
            worker = GeneratorWorker(_job(lambda: fit_quants(repo, quants, self._hardware())))
            worker.signals.result.connect(self.show_fit)
            worker.signals.error.connect(
                lambda err: repo == self.repo and self.fit_label.setText(f"No verdicts: {err}")
            )
            self.workers.start(worker)

    def _hardware(self) -> HardwareProfile:
        # runs in a worker; one detection per page is enough
        if self._hw is None:
            self._hw = self._hardware_fn()
        return self._hw

    def show_fit(self, report: FitReport) -> None:
        if report.repo != self.repo:
            return
        self.fit = report
        self._fill_quants()
        self.fit_label.setText(report.reason)

    def _fill_quants(self) -> None:
        t = self.quant_table
        keep = self.selected_quant()
        t.setRowCount(len(self.quants))
        fits = self.fit.fits if self.fit else {}
        best = self.fit.best if self.fit else None
        for row, q in enumerate(self.quants):
            f = fits.get(q.key)
            bpw = f.bits_per_weight if f else q.bits_per_weight()
            files = (
                "" if not q.is_split
                else f" ({len(q.files)} files)" if q.complete
                else f" ({len(q.files)} of {q.shard_count} files: incomplete)"
            )  # fmt: skip
            if f is None:
                verdict = "…" if self.fit is None and q.complete else "–"
                speed = ""
            else:
                verdict = f.verdict
                speed = f"~{f.tok_s:,.1f} tok/s" if f.tok_s > 0 else "–"
            name = ("★ " if q.key == best else "") + q.name + files
            cells = (name, _size(q.size), f"{bpw:.2f}" if bpw else "–", verdict, speed)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col in (1, 2, 4):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if f is not None:
                    item.setToolTip(f"{f.sentence} ({f.tier})")
                    if col == 3:
                        item.setForeground(QBrush(QColor(VERDICT_COLOURS.get(f.tier, "#333333"))))
                if q.key == best:
                    item.setToolTip(f"Recommended for this machine. {item.toolTip()}")
                    item.setBackground(QBrush(tint(self.quant_table, *RECOMMENDED_BG)))
                    font = QFont(item.font())
                    font.setBold(True)
                    item.setFont(font)
                t.setItem(row, col, item)
        if keep is not None:
            for row, q in enumerate(self.quants):
                if q.key == keep.key:
                    t.selectRow(row)
        elif best is not None:
            for row, q in enumerate(self.quants):
                if q.key == best:
                    t.selectRow(row)
        self._update_buttons()

    def selected_quant(self) -> Quant | None:
        rows = self.quant_table.selectionModel().selectedRows()
        return self.quants[rows[0].row()] if rows and rows[0].row() < len(self.quants) else None

    # --- downloads ---------------------------------------------------------------------------
    def download_selected(self) -> Download | None:
        q = self.selected_quant()
        if q is None or self.repo is None:
            return None
        return self.enqueue(self.repo, q)

    def enqueue(self, repo: str, quant: Quant) -> Download:
        for d in self.downloads:
            if d.repo == repo and d.quant.key == quant.key and d.state != "done":
                if d.state in ("paused", "failed"):
                    self.resume(d)
                return d
        d = Download(repo, quant)
        self.downloads.append(d)
        self._add_download_row(d)
        self._pump()
        self._update_buttons()
        return d

    def restore_pending(self) -> list[Download]:
        """Unfinished downloads of earlier sessions (partial files with their sidecars), shown paused:
        Resume continues them (the quant's file list is looked up on the Hub again), Discard deletes."""
        restored = []
        try:
            pending = pending_downloads(self.paths)
        except OSError:
            return restored
        by_repo: dict[str, list[Any]] = {}
        for p in pending:
            by_repo.setdefault(p.repo, []).append(p)
        for repo, files in by_repo.items():
            remote = [RemoteFile(p.path, p.size, p.sha256, p.blob_id) for p in files]
            have = {p.path: p.have for p in files}
            for quant in group_quants(remote):
                if any(d.repo == repo and d.quant.key == quant.key for d in self.downloads):
                    continue
                got = sum(have.get(f.path, 0) for f in quant.files)
                d = Download(repo, quant, state="paused", restored=True)
                d.message = f"unfinished from an earlier session ({_size(got)} of {_size(quant.size)} kept)"
                self.downloads.append(d)
                self._add_download_row(d)
                if quant.size:
                    d.widgets["bar"].setValue(int(got * 1000 / quant.size))
                restored.append(d)
        self._update_buttons()
        return restored

    def _add_download_row(self, d: Download) -> None:
        t = self.download_table
        row = t.rowCount()
        t.insertRow(row)
        name = QTableWidgetItem(f"{d.label} ({_size(d.quant.size)})")
        t.setItem(row, 0, name)
        bar = QProgressBar()
        bar.setRange(0, 1000)
        bar.setValue(0)
        bar.setTextVisible(True)
        bar.setFormat("%p%")
        t.setCellWidget(row, 1, bar)
        for col in (2, 3, 4):
            t.setItem(row, col, QTableWidgetItem(""))
        pause = QPushButton("Pause")
        pause.clicked.connect(lambda: self.toggle_pause(d))
        discard = QPushButton("Discard")
        discard.setToolTip("Cancel the download and delete what was downloaded")
        discard.clicked.connect(lambda: self.cancel_and_discard(d))
        buttons = QWidget()
        b_layout = QHBoxLayout(buttons)
        b_layout.setContentsMargins(2, 0, 2, 0)
        b_layout.addWidget(pause)
        b_layout.addWidget(discard)
        t.setCellWidget(row, 5, buttons)
        t.resizeRowToContents(row)
        d.widgets = {"name": name, "bar": bar, "pause": pause, "discard": discard}
        self._show_download(d)

    def _row_of(self, d: Download) -> int:
        name = d.widgets.get("name")
        return self.download_table.row(name) if name is not None else -1

    def _show_download(self, d: Download, speed: str = "", eta: str = "") -> None:
        row = self._row_of(d)
        if row < 0:
            return
        t = self.download_table
        state = {
            "queued": "queued",
            "downloading": d.message or "downloading",
            "paused": d.message if d.restored and d.message else "paused (the partial file is kept)",
            "failed": d.message,
            "done": "in the library",
        }[d.state]
        t.item(row, 2).setText(speed)
        t.item(row, 3).setText(eta)
        t.item(row, 4).setText(state)
        t.item(row, 4).setToolTip(state)
        if d.state == "failed":
            t.item(row, 4).setForeground(QBrush(QColor("#b00020")))
        else:
            t.item(row, 4).setForeground(QBrush(self.palette().text().color()))
        pause = d.widgets["pause"]
        pause.setText("Resume" if d.state in ("paused", "failed") else "Pause")
        pause.setEnabled(d.state in ("queued", "downloading", "paused", "failed"))
        d.widgets["discard"].setEnabled(d.state != "done")
        if d.state == "done":
            d.widgets["bar"].setValue(1000)

    def _pump(self) -> None:
        """Start the next queued download when none is running (one at a time)."""
        if any(d.state == "downloading" for d in self.downloads):
            return
        nxt = next((d for d in self.downloads if d.state == "queued"), None)
        if nxt is not None:
            self._start(nxt)

    def _start(self, d: Download) -> None:
        d.state, d.message = "downloading", "starting"
        paths = self.paths

        def job(token):
            if d.restored:  # the whole quant as the Hub lists it now (all shards, current checksums)
                d.quant = find_quant(d.repo, d.quant.key)
                d.restored = False
            return (yield from download_quant(d.repo, d.quant, paths=paths, cancel=token))

        worker = GeneratorWorker(job, min_interval=0.1)
        d.worker = worker

        def progress(ev) -> None:
            if ev.total:
                d.widgets["bar"].setValue(int(ev.done * 1000 / ev.total))
            stage = {"hashing": "checking the partial file", "retry": "retrying", "register": "adding"}
            d.message = stage.get(ev.stage, "downloading")
            if ev.stage == "retry":
                d.message = f"retrying (attempt {ev.attempt})"
            speed = f"{ev.speed / 2**20:.1f} MiB/s" if ev.speed else ""
            self._show_download(d, speed, _eta(ev.eta) if ev.speed else "")

        def done(entry) -> None:
            d.state = "done"
            self._show_download(d)
            self.status.emit(f"{d.label} downloaded and added to the library.")
            self.downloaded.emit(entry)

        def failed(err: Exception) -> None:
            d.state, d.message = "failed", f"failed: {err}"
            self._show_download(d)

        def cancelled() -> None:
            d.state = "paused"
            self._show_download(d)

        def finished() -> None:
            d.worker = None
            if d.discard:
                self._discard_now(d)
            self._pump()
            self._update_buttons()

        worker.signals.progress.connect(progress)
        worker.signals.result.connect(done)
        worker.signals.error.connect(failed)
        worker.signals.cancelled.connect(cancelled)
        worker.signals.finished.connect(finished)
        self._show_download(d)
        self.workers.start(worker)

    def toggle_pause(self, d: Download) -> None:
        if d.state == "downloading" and d.worker is not None:
            d.worker.cancel()  # Cancelled keeps the partial: resuming continues from it
        elif d.state == "queued":
            d.state = "paused"
            self._show_download(d)
        elif d.state in ("paused", "failed"):
            self.resume(d)

    def resume(self, d: Download) -> None:
        if d.state in ("paused", "failed"):
            d.state, d.message = "queued", ""
            self._show_download(d)
            self._pump()

    def cancel_and_discard(self, d: Download) -> None:
        d.discard = True
        if d.worker is not None:
            d.worker.cancel()  # discarded once the worker has let go of the files
        else:
            self._discard_now(d)

    def _discard_now(self, d: Download) -> None:
        try:
            freed = discard_download(d.repo, d.quant, self.paths)
        except (OSError, Cancelled) as err:
            d.state, d.message = "failed", f"could not delete the partial files: {err}"
            self._show_download(d)
            return
        row = self._row_of(d)
        if row >= 0:
            self.download_table.removeRow(row)
        self.downloads.remove(d)
        self.status.emit(f"{d.label}: download discarded ({_size(freed)} freed).")
        self._update_buttons()

    def shutdown(self) -> None:
        for d in self.downloads:
            if d.worker is not None:
                d.worker.cancel()
