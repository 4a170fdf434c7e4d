"""Compare page: a model's quants side by side — PPL, KLD and same-top rate against a reference
file, a chart of size against KL divergence, and the per-tensor weight error of one quant.

Quants are the library's files of one model (same architecture and parameter count). Measurements
(``engine.eval.evaluate``) run in the background and are kept in ``KVANT_HOME/evals.json``, so they
are measured once; the Convert dialog's "measure error" option stores its results there too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.eval import DEFAULT_TEXT, EvalProgress, evaluate, weight_report
from engine.gguf import ModelInfo, read_model_info
from engine.library import LibraryEntry, atomic_write_text
from engine.paths import KvantPaths
from engine.progress import Progress
from gui.widgets import ChartPoint, ScatterChart, human_eta, human_size
from gui.worker import GeneratorWorker, WorkerPool

QUANT_COLUMNS = ("File", "Type", "Size", "Bits/weight", "PPL", "KLD", "Same top", "Measured")
TENSOR_COLUMNS = ("Tensor", "Types", "RMSE", "Max |error|", "SNR dB", "Rel. error")


# --- measurements, kept on disk -------------------------------------------------------------------
def record_from(base: str | Path, quant: str | Path, res: Any, text: str = "default") -> dict[str, Any]:
    """The numbers of an :class:`engine.eval.EvalResult` worth keeping, as a JSON-ready dict."""
    k = res.kld
    try:
        p99 = k.percentile(99.0)
    except (KeyError, AttributeError):
        p99 = float("nan")
    return {
        "base": str(base),
        "quant": str(quant),
        "text": text,
        "n_ctx": int(res.n_ctx),
        "n_chunks": int(res.n_chunks),
        "n_tokens": int(res.n_tokens),
        "ppl_base": float(res.ppl_base),
        "ppl_base_err": float(res.ppl_base_err),
        "ppl_quant": float(res.ppl_quant),
        "ppl_quant_err": float(res.ppl_quant_err),
        "kld": float(k.mean),
        "kld_err": float(k.mean_err),
        "kld_median": float(k.median),
        "kld_p99": float(p99),
        "same_top": float(res.same_top),
        "same_top_err": float(res.same_top_err),
        "seconds": float(res.seconds),
        "measured": time.time(),
    }


class EvalStore:
    """Measured quants (``evals.json``): one record per (base, quant, text, context, chunks), newest wins."""

    _lock = threading.Lock()

    def __init__(self, paths: KvantPaths) -> None:
        self.file = paths.home / "evals.json"

    def records(self) -> list[dict[str, Any]]:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        recs = data.get("evals", []) if isinstance(data, dict) else []
        return [r for r in recs if isinstance(r, dict) and "quant" in r and "kld" in r]

    def add(self, record: dict[str, Any]) -> None:
        key = tuple(record.get(k) for k in ("base", "quant", "text", "n_ctx", "n_chunks"))
        with self._lock:
            recs = [
                r
                for r in self.records()
                if tuple(r.get(k) for k in ("base", "quant", "text", "n_ctx", "n_chunks")) != key
            ]
            recs.append(record)
            atomic_write_text(self.file, json.dumps({"version": 1, "evals": recs}, indent=1))

    def latest(self, quant: str | Path, base: str | Path | None = None) -> dict[str, Any] | None:
        """The newest record of ``quant`` (against ``base`` when given)."""
        found = [
            r
            for r in self.records()
            if r["quant"] == str(quant) and (base is None or r.get("base") == str(base))
        ]
        return max(found, key=lambda r: r.get("measured", 0), default=None)

    def base_ppl(self, base: str | Path) -> float | None:
        found = [r for r in self.records() if r.get("base") == str(base)]
        best = max(found, key=lambda r: r.get("measured", 0), default=None)
        return None if best is None else best.get("ppl_base")


def measure_error(
    base: str | Path,
    quants: list[str | Path],
    store: EvalStore | None,
    *,
    n_ctx: int = 512,
    n_chunks: int | None = 4,
    text_file: str | Path | None = None,
) -> Callable[[Any], Generator[Any, None, list[dict[str, Any]]]]:
    """A worker factory: evaluate every quant against ``base`` in turn (PPL, KLD, same top) and store it."""

    def factory(token) -> Generator[Any, None, list[dict[str, Any]]]:
        path = Path(text_file) if text_file else DEFAULT_TEXT
        text = path.read_text(encoding="utf-8")
        out = []
        for i, q in enumerate(quants):
            yield Progress("measure", 0, 0, f"measuring {Path(q).name} ({i + 1} of {len(quants)})")
            res = yield from evaluate(base, q, text, n_ctx, token, None, n_chunks=n_chunks)
            rec = record_from(base, q, res, "default" if text_file is None else str(text_file))
            if store is not None:
                store.add(rec)
            out.append(rec)
        return out

    return factory


def comparison_rows(rec: dict[str, Any]) -> list[tuple[str, str]]:
    """The comparison as (quantity, value) rows, the way ``kvant eval BASE QUANT`` prints them."""
    return [
        ("KLD (mean) — the number that matters", f"{rec['kld']:.6f} ± {rec['kld_err']:.6f}"),
        ("KLD median / 99%", f"{rec['kld_median']:.6f} / {rec['kld_p99']:.6f}"),
        ("Same top token", f"{100 * rec['same_top']:.2f}% ± {100 * rec['same_top_err']:.2f}%"),
        ("PPL (quant)", f"{rec['ppl_quant']:.4f} ± {rec['ppl_quant_err']:.4f}"),
        ("PPL (base)", f"{rec['ppl_base']:.4f} ± {rec['ppl_base_err']:.4f}"),
        ("Tokens", f"{rec['n_tokens']:,} in {rec['n_chunks']} chunks of {rec['n_ctx']}"),
        ("Time", f"{rec['seconds']:.1f} s"),
    ]


# --- quants of one model --------------------------------------------------------------------------
@dataclass
class QuantFile:
    entry: LibraryEntry
    info: ModelInfo | None
    error: str = ""

    @property
    def path(self) -> str:
        return self.entry.path

    @property
    def type_name(self) -> str:
        return (self.info.file_type if self.info else None) or "?"

    @property
    def bpw(self) -> float:
        return self.info.bits_per_weight if self.info else float("nan")

    @property
    def size(self) -> int:
        return self.info.file_size if self.info else self.entry.size


@dataclass
class ModelGroup:
    key: tuple[str, int]
    name: str
    files: list[QuantFile] = field(default_factory=list)

    @property
    def label(self) -> str:
        n = len(self.files)
        return f"{self.name} · {self.key[0]} · {n} file{'s' if n != 1 else ''}"


def group_quants(entries: list[LibraryEntry]) -> list[ModelGroup]:
    """Read every entry's header and group the files of one model (architecture + parameter count)."""
    groups: dict[tuple[str, int], ModelGroup] = {}
    for e in entries:
        try:
            info = read_model_info(e.path)
        except Exception:  # an unreadable file is not a quant of anything; the library page says why
            continue
        key = (info.architecture, int(info.parameters))
        g = groups.setdefault(key, ModelGroup(key, info.name))
        g.files.append(QuantFile(e, info))
    out = list(groups.values())
    for g in out:
        g.files.sort(key=lambda f: f.bpw, reverse=True)
    out.sort(key=lambda g: (-len(g.files), g.name))
    return out


class _SortItem(QTableWidgetItem):
    """A cell that sorts by a number, not by its text."""

    def __init__(self, text: str, key: float) -> None:
        super().__init__(text)
        self.key = key
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _SortItem):
            return self.key < other.key
        return super().__lt__(other)


def _job(fn: Callable[[], Any]):
    def factory(_token):
        return fn()
        yield  # pragma: no cover - makes this a generator

    return factory


class ComparePage(QWidget):
    status = Signal(str)

    def __init__(self, paths: KvantPaths, workers: WorkerPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.paths = paths
        self.workers = workers
        self.store = EvalStore(paths)
        self.groups: list[ModelGroup] = []
        self.report: Any = None  # the last WeightReport shown
        self._entries: list[LibraryEntry] = []
        self._measure_worker: GeneratorWorker | None = None
        self._weights_worker: GeneratorWorker | None = None
        self._scan_worker: GeneratorWorker | None = None
        self._build()

    # --- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.model_combo = QComboBox()
        self.model_combo.setMinimumContentsLength(28)
        self.model_combo.currentIndexChanged.connect(self._fill)
        self.base_combo = QComboBox()
        self.base_combo.setToolTip("The file every quant is compared with (normally the most precise one)")
        self.base_combo.currentIndexChanged.connect(self._refresh_numbers)
        head = QHBoxLayout()
        head.addWidget(QLabel("<h2>Compare</h2>"))
        head.addSpacing(12)
        head.addWidget(QLabel("Model:"))
        head.addWidget(self.model_combo, 1)
        head.addWidget(QLabel("Reference:"))
        head.addWidget(self.base_combo, 1)

        self.ctx_spin = QSpinBox()
        self.ctx_spin.setRange(64, 4096)
        self.ctx_spin.setSingleStep(64)
        self.ctx_spin.setValue(512)
        self.ctx_spin.setToolTip("Tokens per chunk (llama-perplexity's default is 512)")
        self.chunks_spin = QSpinBox()
        self.chunks_spin.setRange(1, 100)
        self.chunks_spin.setValue(4)
        self.chunks_spin.setToolTip("Chunks of the shipped text to score; more is slower and more precise")
        self.measure_button = QPushButton("&Measure")
        self.measure_button.setToolTip(
            "PPL, KL divergence and same-top rate of the selected quant (or of every unmeasured one) "
            "against the reference, on the shipped text (Ctrl+M)"
        )
        self.measure_button.clicked.connect(self.measure)
        self.weights_button = QPushButton("&Weight error")
        self.weights_button.setToolTip(
            "Per-tensor error of the selected quant's weights against the reference (Ctrl+E)"
        )
        self.weights_button.clicked.connect(self.weight_error)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.progress.setMaximumWidth(220)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel)
        tools = QHBoxLayout()
        tools.addWidget(QLabel("Context:"))
        tools.addWidget(self.ctx_spin)
        tools.addWidget(QLabel("Chunks:"))
        tools.addWidget(self.chunks_spin)
        tools.addWidget(self.measure_button)
        tools.addWidget(self.weights_button)
        tools.addStretch(1)
        tools.addWidget(self.progress)
        tools.addWidget(self.cancel_button)

        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.table = QTableWidget(0, len(QUANT_COLUMNS))
        self.table.setHorizontalHeaderLabels(QUANT_COLUMNS)
        self._table_style(self.table)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setColumnWidth(0, 260)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.doubleClicked.connect(lambda _i: self.weight_error())
        self.chart = ScatterChart()
        self.chart.placeholder = "Measure the quants to see their size against KL divergence."

        self.tensor_table = QTableWidget(0, len(TENSOR_COLUMNS))
        self.tensor_table.setHorizontalHeaderLabels(TENSOR_COLUMNS)
        self._table_style(self.tensor_table)
        self.tensor_table.setTextElideMode(Qt.TextElideMode.ElideLeft)
        self.tensor_table.setSortingEnabled(True)
        self.tensor_label = QLabel(
            "Select a quant and press Weight error to see where its weights lost precision. "
            "Informative only: judge a quant by its KLD."
        )
        self.tensor_label.setWordWrap(True)
        tensors = QGroupBox("Per-tensor weight error")
        t_layout = QVBoxLayout(tensors)
        t_layout.addWidget(self.tensor_label)
        t_layout.addWidget(self.tensor_table, 1)

        chart_box = QGroupBox("Size against error")
        c_layout = QVBoxLayout(chart_box)
        c_layout.addWidget(self.chart)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(chart_box)
        bottom.addWidget(tensors)
        bottom.setStretchFactor(0, 2)
        bottom.setStretchFactor(1, 3)
        bottom.setSizes([340, 660])
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(bottom)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([220, 380])
        layout = QVBoxLayout(self)
        layout.addLayout(head)
        layout.addLayout(tools)
        layout.addWidget(self.message)
        layout.addWidget(split, 1)
        ctx = Qt.ShortcutContext.WidgetWithChildrenShortcut
        for keys, slot in (("Ctrl+M", self.measure), ("Ctrl+E", self.weight_error), ("Esc", self.cancel)):
            sc = QShortcut(QKeySequence(keys), self)
            sc.setContext(ctx)
            sc.activated.connect(slot)
        self._update_buttons()

    @staticmethod
    def _table_style(t: QTableWidget) -> None:
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        t.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        t.verticalHeader().setVisible(False)
        t.setWordWrap(False)
        t.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        t.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)

    def _say(self, text: str, error: bool = False, status: bool = False) -> None:
        """A message on the page; measurements (``status``) and errors also go to the window's status bar."""
        self.message.setText(f"<span style='color:#b00020'>{text}</span>" if error else text)
        if text and (status or error):
            self.status.emit(text if not error else f"Compare: {text}")

    # --- data ----------------------------------------------------------------------------------
    def set_entries(self, entries: list[LibraryEntry]) -> GeneratorWorker:
        """Group the library's files by model (headers are read in the background)."""
        self._entries = list(entries)
        worker = GeneratorWorker(_job(lambda: group_quants(list(entries))))
        worker.signals.result.connect(self.show_groups)
        worker.signals.error.connect(lambda err: self._say(f"The library could not be read: {err}", True))
        self._scan_worker = worker
        return self.workers.start(worker)

    def show_groups(self, groups: list[ModelGroup]) -> None:
        current = self.current_group()
        keep = current.key if current else None
        self.groups = list(groups)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for g in self.groups:
            self.model_combo.addItem(g.label)
        idx = next((i for i, g in enumerate(self.groups) if g.key == keep), 0)
        self.model_combo.setCurrentIndex(idx if self.groups else -1)
        self.model_combo.blockSignals(False)
        self._fill()

    def current_group(self) -> ModelGroup | None:
        i = self.model_combo.currentIndex()
        return self.groups[i] if 0 <= i < len(self.groups) else None

    def select_model(self, path: str) -> None:
        """Show the group holding ``path`` (e.g. a freshly converted file)."""
        for i, g in enumerate(self.groups):
            if any(f.path == str(path) for f in g.files):
                self.model_combo.setCurrentIndex(i)
                return

    def base_file(self) -> QuantFile | None:
        g = self.current_group()
        i = self.base_combo.currentIndex()
        return g.files[i] if g and 0 <= i < len(g.files) else None

    def selected_file(self) -> QuantFile | None:
        g = self.current_group()
        rows = self.table.selectionModel().selectedRows()
        if not g or not rows:
            return None
        path = self.table.item(rows[0].row(), 0).data(Qt.ItemDataRole.UserRole)
        return next((f for f in g.files if f.path == path), None)

    def _fill(self) -> None:
        g = self.current_group()
        self.base_combo.blockSignals(True)
        self.base_combo.clear()
        if g:
            for f in g.files:
                self.base_combo.addItem(f"{Path(f.path).name} ({f.type_name}, {f.bpw:.2f} bpw)")
            self.base_combo.setCurrentIndex(0)
        self.base_combo.blockSignals(False)
        self._clear_tensors()
        if not g:
            self._say("No models in the library yet." if not self._entries else "")
        elif len(g.files) == 1:
            self._say(
                f"The library holds one file of {g.name}. Convert it to other presets (Convert page) "
                "to compare them here."
            )
        else:
            self._say("")
        self._refresh_numbers()

    def _refresh_numbers(self) -> None:
        g = self.current_group()
        base = self.base_file()
        t = self.table
        selected = self.selected_file()
        t.setSortingEnabled(False)
        t.setRowCount(len(g.files) if g else 0)
        points: list[ChartPoint] = []
        if g and base:
            base_ppl = self.store.base_ppl(base.path)
            for row, f in enumerate(g.files):
                is_base = f.path == base.path
                rec = None if is_base else self.store.latest(f.path, base.path)
                name = QTableWidgetItem(Path(f.path).name)
                name.setData(Qt.ItemDataRole.UserRole, f.path)
                name.setToolTip(f.path + ("\n(the reference)" if is_base else ""))
                cells: list[QTableWidgetItem] = [
                    name,
                    QTableWidgetItem(f.type_name),
                    _SortItem(human_size(f.size), f.size),
                    _SortItem(f"{f.bpw:.2f}", f.bpw),
                ]
                if is_base:
                    ppl = base_ppl
                    cells += [
                        _SortItem(f"{ppl:.3f}" if ppl else "–", ppl or 0.0),
                        _SortItem("0 (reference)", 0.0),
                        _SortItem("100%", 1.0),
                        QTableWidgetItem(""),
                    ]
                elif rec:
                    cells += [
                        _SortItem(f"{rec['ppl_quant']:.3f} ± {rec['ppl_quant_err']:.3f}", rec["ppl_quant"]),
                        _SortItem(f"{rec['kld']:.5f} ± {rec['kld_err']:.5f}", rec["kld"]),
                        _SortItem(f"{100 * rec['same_top']:.2f}%", rec["same_top"]),
                        QTableWidgetItem(f"{rec['n_chunks']}×{rec['n_ctx']} tokens"),
                    ]
                    points.append(ChartPoint(f.type_name, f.size / 2**20, rec["kld"]))
                else:
                    cells += [_SortItem("–", 0.0), _SortItem("not measured", 0.0), _SortItem("–", 0.0)]
                    cells.append(QTableWidgetItem(""))
                for col, item in enumerate(cells):
                    if is_base:
                        font = item.font()
                        font.setBold(True)
                        item.setFont(font)
                    t.setItem(row, col, item)
        t.setSortingEnabled(True)
        t.sortItems(3, Qt.SortOrder.DescendingOrder)  # the most precise first
        if selected is not None:
            for row in range(t.rowCount()):
                if t.item(row, 0).data(Qt.ItemDataRole.UserRole) == selected.path:
                    t.selectRow(row)
        self.chart.set_points(
            points, "file size (MiB)", f"KL divergence vs {base.type_name if base else ''}", True
        )
        self._update_buttons()

    def _update_buttons(self) -> None:
        busy = self._measure_worker is not None
        g = self.current_group()
        sel, base = self.selected_file(), self.base_file()
        can_measure = bool(g and len(g.files) > 1 and base)
        self.measure_button.setEnabled(can_measure and not busy)
        self.weights_button.setEnabled(
            sel is not None and base is not None and sel.path != base.path and self._weights_worker is None
        )

    # --- measuring ----------------------------------------------------------------------------
    def _targets(self) -> list[str]:
        g, base, sel = self.current_group(), self.base_file(), self.selected_file()
        if not g or not base:
            return []
        if sel is not None and sel.path != base.path:
            return [sel.path]
        return [f.path for f in g.files if f.path != base.path and not self.store.latest(f.path, base.path)]

    def measure(self) -> GeneratorWorker | None:
        base = self.base_file()
        targets = self._targets()
        if self._measure_worker is not None or base is None:
            return None
        if not targets:
            self._say("Every quant is measured against this reference; select one to measure it again.")
            return None
        factory = measure_error(
            base.path, targets, self.store, n_ctx=self.ctx_spin.value(), n_chunks=self.chunks_spin.value()
        )
        worker = GeneratorWorker(factory)
        self._measure_worker = worker
        self._busy(True)
        self._say(f"Measuring {len(targets)} quant(s) against {Path(base.path).name}…", status=True)
        started = time.monotonic()
        worker.signals.progress.connect(lambda ev: self._on_progress(ev, started, len(targets)))
        worker.signals.result.connect(
            lambda recs: self._say(
                "Measured {} quant(s): KLD {}.".format(len(recs), ", ".join(f"{r['kld']:.4f}" for r in recs)),
                status=True,
            )
        )
        worker.signals.error.connect(lambda err: self._say(f"The measurement failed: {err}", True))
        worker.signals.cancelled.connect(lambda: self._say("Measurement cancelled.", status=True))
        worker.signals.finished.connect(self._measure_done)
        return self.workers.start(worker)

    def _on_progress(self, ev: Any, started: float, count: int) -> None:
        if isinstance(ev, EvalProgress) and ev.total:
            self.progress.setRange(0, ev.total)
            self.progress.setValue(ev.done)
            elapsed = time.monotonic() - started
            extra = f" · KLD so far {ev.kld:.4f}" if getattr(ev, "kld", None) is not None else ""
            eta = elapsed / ev.done * (ev.total - ev.done) if ev.done else None
            self.progress.setFormat(f"chunk {ev.done}/{ev.total}")
            self.message.setText(f"{ev.message or ev.stage}{extra} · {human_eta(eta)} left")
        elif ev.message:
            self.progress.setRange(0, 0)
            self.message.setText(ev.message[:1].upper() + ev.message[1:] + "…")

    def _measure_done(self) -> None:
        self._measure_worker = None
        self._busy(False)
        self._refresh_numbers()

    def cancel(self) -> None:
        for w in (self._measure_worker, self._weights_worker):
            if w is not None:
                w.cancel()

    def _busy(self, on: bool) -> None:
        busy = on or self._measure_worker is not None or self._weights_worker is not None
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        if busy:
            self.progress.setRange(0, 0)
        self._update_buttons()

    # --- per-tensor error ---------------------------------------------------------------------
    def weight_error(self) -> GeneratorWorker | None:
        sel, base = self.selected_file(), self.base_file()
        if sel is None or base is None or sel.path == base.path or self._weights_worker is not None:
            return None
        self._clear_tensors()
        self.tensor_label.setText(
            f"Comparing the weights of {Path(sel.path).name} with {Path(base.path).name}…"
        )
        worker = GeneratorWorker(lambda token: weight_report(base.path, sel.path, cancel=token))
        self._weights_worker = worker
        self._busy(True)
        worker.signals.progress.connect(self._on_weights_progress)
        worker.signals.result.connect(lambda rep: self.show_report(rep, sel, base))
        worker.signals.error.connect(
            lambda err: self.tensor_label.setText(f"<span style='color:#b00020'>{err}</span>")
        )
        worker.signals.cancelled.connect(lambda: self.tensor_label.setText("Cancelled."))
        worker.signals.finished.connect(self._weights_done)
        return self.workers.start(worker)

    def _on_weights_progress(self, ev: Progress) -> None:
        if ev.total:
            self.progress.setRange(0, ev.total)
            self.progress.setValue(ev.done)
            self.progress.setFormat(f"tensor {ev.done}/{ev.total}")

    def _weights_done(self) -> None:
        self._weights_worker = None
        self._busy(False)

    def _clear_tensors(self) -> None:
        self.report = None
        self.tensor_table.setRowCount(0)

    def show_report(self, report: Any, quant: QuantFile, base: QuantFile) -> None:
        self.report = report
        t = self.tensor_table
        t.setSortingEnabled(False)
        t.setRowCount(len(report.tensors))
        worst = max((e.rel_err for e in report.tensors if e.rel_err == e.rel_err), default=1.0) or 1.0
        for row, e in enumerate(report.tensors):
            rel = _SortItem(f"{e.rel_err:.4f}", e.rel_err)
            heat = QColor("#d9822b")
            heat.setAlpha(int(30 + 160 * min(e.rel_err / worst, 1.0)))
            rel.setBackground(heat)
            snr = e.snr_db if e.snr_db == e.snr_db else 0.0
            cells = (
                QTableWidgetItem(e.name),
                QTableWidgetItem(f"{e.base_type}→{e.quant_type}"),
                _SortItem(f"{e.rmse:.3e}", e.rmse),
                _SortItem(f"{e.max_abs:.3e}", e.max_abs),
                _SortItem("∞" if snr == float("inf") else f"{snr:.2f}", snr),
                rel,
            )
            for col, item in enumerate(cells):
                t.setItem(row, col, item)
        t.setSortingEnabled(True)
        t.sortItems(5, Qt.SortOrder.DescendingOrder)
        o = report.overall
        skipped = f"; not compared: {len(report.skipped)} tensor(s)" if report.skipped else ""
        self.tensor_label.setText(
            f"<b>{Path(quant.path).name}</b> against <b>{Path(base.path).name}</b>: "
            f"{len(report.tensors)} tensors, overall RMSE {o.rmse:.3e}, SNR {o.snr_db:.1f} dB, "
            f"relative error {o.rel_err:.4f}{skipped}. Largest relative errors first; informative only "
            "— judge a quant by its KLD."
        )

    def shutdown(self) -> None:
        self.cancel()
