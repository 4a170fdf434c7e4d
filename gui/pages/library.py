"""Library page: the local models and the selected model's vital statistics."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.gguf import ModelInfo
from engine.library import LibraryEntry

_COLUMNS = ("Model", "Size", "Source", "File")


def _mib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


class LibraryPage(QWidget):
    model_selected = Signal(object)  # LibraryEntry
    chat_requested = Signal(object)  # LibraryEntry: open it on the chat page
    convert_requested = Signal(object)  # LibraryEntry: open the Convert dialog for it

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._entries: list[LibraryEntry] = []
        title = QLabel("<h2>Library</h2>")
        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(_COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.table.doubleClicked.connect(lambda _index: self.request_chat())
        self.chat_button = QPushButton("Chat")
        self.chat_button.setToolTip("Chat with the selected model (or double-click it)")
        self.chat_button.setEnabled(False)
        self.chat_button.clicked.connect(self.request_chat)
        self.convert_button = QPushButton("Convert…")
        self.convert_button.setToolTip("Quantize the selected model to another preset")
        self.convert_button.setEnabled(False)
        self.convert_button.clicked.connect(self.request_convert)

        self.details = QGroupBox("Model")
        self.form = QFormLayout(self.details)
        self.form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.placeholder = QLabel("Select a model to see what it holds.")
        self.form.addRow(self.placeholder)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.details)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        layout = QVBoxLayout(self)
        head = QHBoxLayout()
        head.addWidget(title)
        head.addStretch(1)
        head.addWidget(self.convert_button)
        head.addWidget(self.chat_button)
        layout.addLayout(head)
        layout.addWidget(split, 1)

    def set_entries(self, entries: list[LibraryEntry], select_id: str | None = None) -> None:
        self._entries = list(entries)
        self.table.setRowCount(len(entries))
        for row, e in enumerate(entries):
            for col, text in enumerate((e.name, _mib(e.size), e.source, e.path)):
                item = QTableWidgetItem(text)
                if col == 1:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, item)
        if select_id is not None:
            for row, e in enumerate(entries):
                if e.id == select_id:
                    self.table.selectRow(row)

    def selected(self) -> LibraryEntry | None:
        rows = self.table.selectionModel().selectedRows()
        return self._entries[rows[0].row()] if rows else None

    def _on_selection(self) -> None:
        entry = self.selected()
        self.chat_button.setEnabled(entry is not None)
        self.convert_button.setEnabled(entry is not None)
        if entry is not None:
            self.model_selected.emit(entry)

    def request_chat(self) -> None:
        entry = self.selected()
        if entry is not None:
            self.chat_requested.emit(entry)

    def request_convert(self) -> None:
        entry = self.selected()
        if entry is not None:
            self.convert_requested.emit(entry)

    def show_info(self, info: ModelInfo) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self.details.setTitle(info.name)
        types = ", ".join(f"{k} ×{v}" for k, v in info.tensor_types.items())
        kv = info.kv_heads if not isinstance(info.kv_heads, list) else "per layer"
        rows = [
            ("Architecture", info.architecture),
            ("Parameters", f"{info.parameters / 1e6:,.0f} M"),
            ("Quantization", f"{info.file_type or '?'} · {info.bits_per_weight:.2f} bits/weight"),
            ("Tensor types", types),
            ("Layers", str(info.layers)),
            ("Context length", f"{info.context_length:,}" if info.context_length else "?"),
            ("Embedding", str(info.embedding_length)),
            ("Heads / KV heads", f"{info.heads} / {kv}"),
            ("Vocabulary", f"{info.vocab_size:,} ({info.tokenizer})" if info.vocab_size else "?"),
            (
                "Chat template",
                "in file"
                if info.chat_template
                else "none: a base model, it continues text"
                if info.base_model
                else "built-in",
            ),
            ("File size", _mib(info.file_size)),
        ]
        for k, v in rows:
            label = QLabel(v)
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.form.addRow(k, label)

    def show_error(self, message: str) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        self.details.setTitle("Cannot read this model")
        label = QLabel(message)
        label.setWordWrap(True)
        self.form.addRow(label)
