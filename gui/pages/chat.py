"""Chat page: load a library model, talk to it with streamed, markdown-rendered answers; chats are saved.

Loading runs ``engine.open_model`` and every answer runs ``Model.chat`` in a :class:`GeneratorWorker`,
so the UI thread only renders. The answer's text is accumulated in the worker (its progress signal
is throttled), so no token is lost between two repaints. Each conversation is one JSON file under
``KVANT_HOME/chats``, written atomically after every finished message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import (
    QFont,
    QGuiApplication,
    QKeySequence,
    QPalette,
    QShortcut,
    QTextCharFormat,
    QTextCursor,
    QTextFrameFormat,
)
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

import engine
from engine.fit import CalibrationStore, record_run
from engine.library import LibraryEntry
from engine.paths import KvantPaths
from engine.progress import CancelToken, Progress
from gui.chat_store import ChatStore, Conversation, chats_dir
from gui.widgets import tint
from gui.worker import GeneratorWorker, WorkerPool, callback_generator

CALIBRATE_MIN_TOKENS = 16  # decoded tokens an answer needs before its speed counts as a measurement
GPU_NOTE = (
    "Auto: the planner puts as many layers on NVIDIA GPUs as fit in free VRAM (CPU only when there is no "
    "usable GPU, and the model line says why)"
)
MODE_CHOICES = (
    ("Chat (the model's chat template)", "chat"),
    ("Complete text (no template: the model continues the conversation's text)", "complete"),
)
CHAT_PLACEHOLDER = "Message the model…  (Ctrl+Enter sends, Esc stops)"
COMPLETE_PLACEHOLDER = (
    "Text for the model to continue, e.g. def reverse_string(s):  (Ctrl+Enter sends, Esc stops)"
)
COMPILING_TEXT = "Compiling the kernels for the first answer (first run only: later answers start at once)…"
GPU_CHOICES = (("Auto (fit in free VRAM)", "auto"), ("CPU only", 0), ("All layers", "all"), ("Layers:", "n"))
RENDER_INTERVAL_MS = 80
# message backgrounds (light theme, dark theme): the system's dark mode gets dark bubbles
USER_BG = ("#e8f0fb", "#23344a")
ASSISTANT_BG = ("#f6f6f4", "#2b2b2b")
ERROR_BG = ("#fbeaea", "#4a2323")
FINISH_TEXT = {
    "stop": "end of turn",
    "length": "max tokens reached",
    "context": "context window full",
    "cancelled": "stopped",
}


@dataclass(frozen=True, slots=True)
class ChatUpdate:
    """What the chat worker reports: the whole answer so far (never a lost delta) and the last event."""

    text: str
    event: Any  # engine GenerationEvent


_BLOCK_START = re.compile(r"\s|[-*+>#|]|\d+[.)]\s|```|~~~")


def hard_breaks(text: str) -> str:
    """``text`` with each single line break made a Markdown hard break, as chat apps show answers
    (a poem's lines stay lines), except inside code fences, before lines that start a list item,
    quote, heading, table row or indented block, and around blank lines."""
    lines = text.split("\n")
    out: list[str] = []
    fenced = False
    for i, line in enumerate(lines):
        fence = line.lstrip().startswith(("```", "~~~"))
        fenced ^= fence
        nxt = lines[i + 1] if i + 1 < len(lines) else None
        if (
            not fenced
            and not fence
            and nxt is not None
            and line.strip()
            and nxt.strip()
            and not _BLOCK_START.match(nxt)
            and not line.endswith("  ")
        ):
            line += "  "
        out.append(line)
    return "\n".join(out)


def _chat_job(
    model: Any,
    messages: list[dict[str, str]],
    sampling: dict[str, Any],
    stop: CancelToken,
    mode: str = "chat",
    compiling: Callable[[], None] | None = None,
):
    """Answer with the chat template (``mode`` "chat") or continue the text ("complete");
    ``compiling()`` is called (on the worker thread) if Numba starts compiling a kernel."""

    def factory(token: CancelToken) -> Generator[ChatUpdate, None, ChatUpdate]:
        text = ""
        last = None
        answer = model.complete if mode == "complete" else model.chat
        events: Iterator[Any] = answer(messages, cancel=stop, **sampling)
        with engine.on_compile(compiling or (lambda: None)):
            for ev in events:
                if token.cancelled:  # the app is closing
                    stop.cancel()
                text += ev.text
                last = ev
                yield ChatUpdate(text, ev)
        return ChatUpdate(text, last)

    return factory


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _load_job(path: str, n_ctx: int, n_gpu_layers: int | str = 0):
    def factory(token: CancelToken) -> Generator[Progress, None, Any]:
        def call(report):
            before = _rss()
            model = engine.open_model(
                path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, progress=report, cancel=token
            )
            try:  # one tiny forward pass: the first answer then pays no lazy imports or dispatch
                model.logits(model.tokenize("Hello"))
                model.reset()
            except Exception:
                model.close()
                raise
            return LoadedModel(model, max(0, _rss() - before))

        return (yield from callback_generator(call, token))

    return factory


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: Any
    loaded_bytes: int  # process RSS growth over the load: what the planner's estimate is checked against


def _calibration_job(path: str, n_ctx: int, tok_s: float, loaded_bytes: int, paths: KvantPaths):
    """Record a decode speed and the load's memory next to the planner's prediction (engine.fit)."""

    def factory(token: CancelToken) -> Generator[Progress, None, Any]:
        store = CalibrationStore.default(paths)
        yield Progress("calibrate", 0, 1)
        return record_run(path, n_ctx=n_ctx, measured_tok_s=tok_s, measured_bytes=loaded_bytes, store=store)

    return factory


def _where(model: Any) -> str:
    """Where the loaded model runs: "CPU", or its GPU layer split."""
    offload = getattr(model, "offload", None)
    n = getattr(offload, "n_gpu_layers", 0) or 0
    if n <= 0:
        return "CPU"
    total = getattr(offload, "n_layer", 0)
    out = " + output" if getattr(offload, "output_on_gpu", False) else ""
    return f"GPU: {n} of {total} layers{out}"


def _rate(v: float | None, unit: str, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f} {unit}"


def stats_text(ev: Any, n_ctx: int | None) -> str:
    """One line of live numbers from a generation event."""
    if ev is None:
        return ""
    if ev.kind == "prefill":
        return f"Reading the prompt: {ev.n_prompt_done:,} / {ev.n_prompt:,} tokens"
    used = ev.n_prompt + ev.n_generated
    parts = [
        f"{_rate(ev.decode_tok_s, 'tok/s')}",
        f"first token {_rate(ev.ttft_s, 's', 2)}",
        f"context {used:,} / {n_ctx:,}" if n_ctx else f"context {used:,}",
        f"{ev.n_generated} tokens",
    ]
    if ev.prefill_tok_s:
        parts.append(f"prompt {ev.prefill_tok_s:.0f} tok/s")
    if ev.kind == "done" and ev.finish_reason:
        parts.append(FINISH_TEXT.get(ev.finish_reason, ev.finish_reason))
    return " · ".join(parts)


def _stats_dict(ev: Any) -> dict[str, Any] | None:
    if ev is None:
        return None
    return {
        "prompt_tokens": ev.n_prompt,
        "generated_tokens": ev.n_generated,
        "decode_tok_s": ev.decode_tok_s,
        "prefill_tok_s": ev.prefill_tok_s,
        "ttft_s": ev.ttft_s,
        "finish_reason": ev.finish_reason,
    }


class ChatPage(QWidget):
    status = Signal(str)  # a line for the main window's status bar
    calibrated = Signal(object)  # an engine.fit.Measurement recorded after an answer
    compiling = Signal()  # emitted from the answer's worker thread when Numba starts compiling

    def __init__(self, paths: KvantPaths, workers: WorkerPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.paths = paths
        self._loaded_bytes = 0
        self.workers = workers
        self.store = ChatStore(chats_dir(paths))
        self.conversation = Conversation()
        self.model: Any = None  # engine Model
        self.model_entry: LibraryEntry | None = None
        self._entries: list[LibraryEntry] = []
        self._load_worker: GeneratorWorker | None = None
        self._gen_worker: GeneratorWorker | None = None
        self._gen_conv: Conversation | None = None
        self._gen_mode = "chat"
        self._stop = CancelToken()
        self._streaming: str | None = None  # the answer being generated, None when idle
        self._stream_error: str | None = None
        self._last_event: Any = None
        self._send_after_load = False
        self._stream_start = 0
        self._known: dict[str, Conversation] | None = None  # the saved chats, read once

        self._build()
        self.compiling.connect(self._on_compiling)
        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(RENDER_INTERVAL_MS)
        self._render_timer.timeout.connect(self._render_stream)
        self.refresh_chat_list()
        self._render_all()
        self._update_buttons()

    # --- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        # the side list of saved chats
        self.new_button = QPushButton("New chat")
        self.new_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.new_button.clicked.connect(self.new_chat)
        self.chat_list = QListWidget()
        self.chat_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.chat_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.chat_list.setWordWrap(False)
        self.chat_list.itemClicked.connect(self._on_chat_clicked)
        self.delete_button = QPushButton("Delete chat")
        self.delete_button.clicked.connect(self.delete_current)
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(self.new_button)
        side_layout.addWidget(self.chat_list, 1)
        side_layout.addWidget(self.delete_button)

        # model, context, load
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.model_combo.setMinimumWidth(180)
        self.model_combo.currentIndexChanged.connect(lambda _i: self._update_buttons())
        self.ctx_spin = QSpinBox()
        self.ctx_spin.setRange(256, 131072)
        self.ctx_spin.setSingleStep(1024)
        self.ctx_spin.setValue(4096)
        self.ctx_spin.setSuffix(" tokens")
        self.ctx_spin.setToolTip("Context window; changing it needs a reload")
        self.ctx_spin.valueChanged.connect(lambda _v: self._update_buttons())
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.load_or_cancel)
        self.load_progress = QProgressBar()
        self.load_progress.setMaximumWidth(160)
        self.load_progress.setVisible(False)
        self.model_status = QLabel("No model loaded.")
        self.model_status.setWordWrap(True)
        head = QHBoxLayout()
        head.addWidget(QLabel("<h2>Chat</h2>"))
        head.addSpacing(12)
        head.addWidget(QLabel("Model"))
        head.addWidget(self.model_combo)
        head.addWidget(QLabel("Context"))
        head.addWidget(self.ctx_spin)
        head.addWidget(self.load_button)
        head.addWidget(self.load_progress)
        head.addStretch(1)

        # collapsible settings
        self.settings_toggle = QToolButton()
        self.settings_toggle.setText("Settings: system prompt, sampling, GPU offload")
        self.settings_toggle.setCheckable(True)
        self.settings_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.settings_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.settings_toggle.setAutoRaise(True)
        self.settings_toggle.toggled.connect(self._toggle_settings)
        self.settings_panel = QFrame()
        self.settings_panel.setFrameShape(QFrame.Shape.StyledPanel)
        self.settings_panel.setVisible(False)
        self.system_edit = QPlainTextEdit()
        self.system_edit.setPlaceholderText("Optional: instructions the model follows in this chat")
        self.system_edit.setFixedHeight(56)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(0.8)
        self.temperature.setToolTip("0 = greedy (always the most likely token)")
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 1000)
        self.top_k.setValue(40)
        self.top_k.setSpecialValueText("off")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.0, 1.0)
        self.top_p.setSingleStep(0.01)
        self.top_p.setValue(0.95)
        self.min_p = QDoubleSpinBox()
        self.min_p.setRange(0.0, 1.0)
        self.min_p.setSingleStep(0.01)
        self.min_p.setValue(0.05)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 131072)
        self.max_tokens.setValue(512)
        self.seed = QSpinBox()
        self.seed.setRange(-1, 2**31 - 1)
        self.seed.setValue(-1)
        self.seed.setSpecialValueText("random")
        self.mode_combo = QComboBox()
        for text, value in MODE_CHOICES:
            self.mode_combo.addItem(text, value)
        self.mode_combo.setToolTip(
            "Loading a base (pretrained) model switches to Complete text: such a model continues text "
            "and answers nonsense inside a chat template"
        )
        self.mode_combo.currentIndexChanged.connect(self._on_mode)
        self.gpu_combo = QComboBox()
        for text, value in GPU_CHOICES:
            self.gpu_combo.addItem(text, value)
        self.gpu_layers_spin = QSpinBox()
        self.gpu_layers_spin.setRange(1, 999)
        self.gpu_layers_spin.setValue(8)
        self.gpu_layers_spin.setToolTip("the last N layers run on the GPU (llama.cpp's -ngl)")
        self.gpu_combo.currentIndexChanged.connect(self._on_gpu_choice)
        self.gpu_label = QLabel(GPU_NOTE)
        self.gpu_label.setWordWrap(True)
        self.gpu_label.setEnabled(False)
        gpu_row = QHBoxLayout()
        gpu_row.addWidget(self.gpu_combo)
        gpu_row.addWidget(self.gpu_layers_spin)
        gpu_row.addStretch(1)
        self._on_gpu_choice()
        form_left = QFormLayout()
        form_left.addRow("Mode", self.mode_combo)
        form_left.addRow("System prompt", self.system_edit)
        form_left.addRow("GPU offload", gpu_row)
        form_left.addRow("", self.gpu_label)
        form_right = QFormLayout()
        form_right.addRow("Temperature", self.temperature)
        form_right.addRow("Top-k", self.top_k)
        form_right.addRow("Top-p", self.top_p)
        form_mid = QFormLayout()
        form_mid.addRow("Min-p", self.min_p)
        form_mid.addRow("Max tokens", self.max_tokens)
        form_mid.addRow("Seed", self.seed)
        panel = QHBoxLayout(self.settings_panel)
        panel.addLayout(form_left, 3)
        panel.addLayout(form_right, 1)
        panel.addLayout(form_mid, 1)

        # the conversation
        self.view = QTextBrowser()
        self.view.setOpenExternalLinks(True)
        self.view.document().setDocumentMargin(10)
        self.stats_label = QLabel("")
        self.stats_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText(CHAT_PLACEHOLDER)
        self.input.setFixedHeight(76)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.setToolTip("Ctrl+Enter")
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Esc")
        self.stop_button.clicked.connect(self.stop)
        self.regen_button = QPushButton("Regenerate")
        self.regen_button.clicked.connect(self.regenerate)
        self.edit_button = QPushButton("Edit last")
        self.edit_button.setToolTip("Put your last message back in the box to change and resend it")
        self.edit_button.clicked.connect(self.edit_last)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the last answer")
        self.copy_button.clicked.connect(self.copy_last)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        row = QHBoxLayout()
        row.addWidget(self.input, 1)
        row.addLayout(buttons)
        tools = QHBoxLayout()
        tools.addWidget(self.stats_label, 1)
        tools.addWidget(self.regen_button)
        tools.addWidget(self.edit_button)
        tools.addWidget(self.copy_button)

        main = QWidget()
        main_layout = QVBoxLayout(main)
        main_layout.setContentsMargins(0, 0, 0, 0)
        main_layout.addWidget(self.model_status)
        main_layout.addWidget(self.settings_toggle, 0, Qt.AlignmentFlag.AlignLeft)
        main_layout.addWidget(self.settings_panel)
        main_layout.addWidget(self.view, 1)
        main_layout.addLayout(tools)
        main_layout.addLayout(row)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(side)
        split.addWidget(main)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([190, 800])
        side.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        layout = QVBoxLayout(self)
        layout.addLayout(head)
        layout.addWidget(split, 1)

        ctx = Qt.ShortcutContext.WidgetWithChildrenShortcut
        for keys, slot in (
            ("Ctrl+Return", self.send),
            ("Ctrl+Enter", self.send),
            ("Esc", self.stop),
            ("Ctrl+N", self.new_chat),
        ):
            sc = QShortcut(QKeySequence(keys), self)
            sc.setContext(ctx)
            sc.activated.connect(slot)

    def _toggle_settings(self, on: bool) -> None:
        self.settings_panel.setVisible(on)
        self.settings_toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    # --- state -------------------------------------------------------------------------------
    @property
    def is_loading(self) -> bool:
        return self._load_worker is not None

    @property
    def is_generating(self) -> bool:
        return self._gen_worker is not None

    def mode(self) -> str:
        """How the next answer is made: "chat" (the chat template) or "complete" (plain text)."""
        return self.mode_combo.currentData()

    def set_mode(self, mode: str) -> None:
        self.mode_combo.setCurrentIndex(max(0, self.mode_combo.findData(mode)))

    def _on_mode(self) -> None:
        self.input.setPlaceholderText(COMPLETE_PLACEHOLDER if self.mode() == "complete" else CHAT_PLACEHOLDER)
        if not self.is_generating:
            self._render_all()

    def _on_gpu_choice(self) -> None:
        self.gpu_layers_spin.setVisible(self.gpu_combo.currentData() == "n")

    def gpu_layers(self) -> int | str:
        """What the next load asks for: "auto", "all", 0 or a number of layers."""
        value = self.gpu_combo.currentData()
        return self.gpu_layers_spin.value() if value == "n" else value

    def set_gpu_layers(self, value: int | str) -> None:
        if isinstance(value, int) and value > 0:
            self.gpu_layers_spin.setValue(value)
            value = "n"
        for i in range(self.gpu_combo.count()):
            if self.gpu_combo.itemData(i) == value:
                self.gpu_combo.setCurrentIndex(i)

    def sampling(self) -> dict[str, Any]:
        seed = self.seed.value()
        return {
            "temperature": round(self.temperature.value(), 4),
            "top_k": self.top_k.value(),
            "top_p": round(self.top_p.value(), 4),
            "min_p": round(self.min_p.value(), 4),
            "max_tokens": self.max_tokens.value(),
            "seed": None if seed < 0 else seed,
        }

    def set_sampling(self, settings: dict[str, Any]) -> None:
        for name, box in (
            ("temperature", self.temperature),
            ("top_k", self.top_k),
            ("top_p", self.top_p),
            ("min_p", self.min_p),
            ("max_tokens", self.max_tokens),
        ):
            if isinstance(settings.get(name), int | float):
                box.setValue(settings[name])
        if "seed" in settings:
            self.seed.setValue(-1 if settings["seed"] is None else int(settings["seed"]))

    def _update_buttons(self) -> None:
        busy = self.is_generating
        has_msgs = bool(self.conversation.messages)
        self.send_button.setEnabled(not busy)  # while loading, the message waits for the model
        self.stop_button.setEnabled(busy or self.is_loading)
        self.regen_button.setEnabled(not busy and not self.is_loading and has_msgs)
        self.edit_button.setEnabled(
            not busy and not self.is_loading and any(m.role == "user" for m in self.conversation.messages)
        )
        self.copy_button.setEnabled(any(m.role == "assistant" for m in self.conversation.messages))
        self.new_button.setEnabled(True)
        self.delete_button.setEnabled(not busy and bool(self.chat_list.currentItem()))
        self.model_combo.setEnabled(not busy and not self.is_loading)
        self.ctx_spin.setEnabled(not busy and not self.is_loading)
        if self.is_loading:
            self.load_button.setText("Cancel")
            self.load_button.setEnabled(True)
        else:
            entry = self.selected_entry()
            same = (
                self.model is not None
                and entry is not None
                and self.model_entry is not None
                and entry.id == self.model_entry.id
            )
            fresh = same and self.model.n_ctx == self.ctx_spin.value()
            self.load_button.setText("Reload" if same and not fresh else ("Loaded" if fresh else "Load"))
            self.load_button.setEnabled(entry is not None and not busy and not fresh)

    # --- models ------------------------------------------------------------------------------
    def set_entries(self, entries: list[LibraryEntry], select_id: str | None = None) -> None:
        current = self.selected_entry()
        keep = select_id or (current.id if current else None)
        self._entries = list(entries)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for e in entries:
            self.model_combo.addItem(e.name, e.id)
        self.model_combo.blockSignals(False)
        if keep is not None:
            i = self.model_combo.findData(keep)
            if i >= 0:
                self.model_combo.setCurrentIndex(i)
        self._update_buttons()

    def selected_entry(self) -> LibraryEntry | None:
        i = self.model_combo.currentIndex()
        return self._entries[i] if 0 <= i < len(self._entries) else None

    def open_entry(self, entry: LibraryEntry) -> None:
        """Select ``entry`` and load it unless it is loaded already (the library's Chat action)."""
        if entry.id not in [e.id for e in self._entries]:
            self._entries.append(entry)
            self.model_combo.addItem(entry.name, entry.id)
        self.model_combo.setCurrentIndex(self.model_combo.findData(entry.id))
        if self.model_entry is not None and self.model_entry.id == entry.id and self.model is not None:
            return
        if not self.is_generating and not self.is_loading:
            self.load_model()

    def load_or_cancel(self) -> None:
        if self.is_loading:
            self._load_worker.cancel()
        else:
            self.load_model()

    def load_model(self) -> GeneratorWorker | None:
        entry = self.selected_entry()
        if entry is None or self.is_loading or self.is_generating:
            return None
        self._close_model()
        n_ctx = self.ctx_spin.value()
        worker = GeneratorWorker(_load_job(entry.path, n_ctx, self.gpu_layers()))
        self._load_worker = worker
        self.load_progress.setRange(0, 0)
        self.load_progress.setVisible(True)
        self.model_status.setText(f"Loading {entry.name}…")
        t0 = time.monotonic()

        def progress(ev: Progress) -> None:
            if ev.total:
                self.load_progress.setRange(0, ev.total)
                self.load_progress.setValue(ev.done)
            if ev.message:
                self.model_status.setText(f"Loading {entry.name}: {ev.message}…")

        def ready(loaded: LoadedModel) -> None:
            model = loaded.model
            self.model, self.model_entry = model, entry
            self._loaded_bytes = loaded.loaded_bytes
            n = model.info
            base = n.base_model
            self.set_mode("complete" if base else "chat")
            how = (
                "base model (no chat template): completes text"
                if base
                else f"{model.template.source} chat template"
            )
            self.model_status.setText(
                f"<b>{entry.name}</b> loaded in {time.monotonic() - t0:.1f} s · {n.architecture}, "
                f"{n.parameters / 1e6:,.0f} M parameters, {n.file_type or '?'} · "
                f"context {model.n_ctx:,} · {how} · {_where(model)}"
            )
            offload = getattr(model, "offload", None)
            if offload is not None:
                self.gpu_label.setText(offload.message())
            self.status.emit(
                f"{entry.name} looks like a base (pretrained) model: write the start of a text and it "
                "continues it (Settings → Mode: Chat uses a chat template anyway)."
                if base
                else f"{entry.name} is ready to chat."
            )

        def failed(err: Exception) -> None:
            self._send_after_load = False
            self.model_status.setText(f"<span style='color:#b00020'>Cannot load {entry.name}: {err}</span>")

        def cancelled() -> None:
            self._send_after_load = False
            self.model_status.setText("Loading was cancelled; no model loaded.")

        def finished() -> None:
            self._load_worker = None
            self.load_progress.setVisible(False)
            self._update_buttons()
            if self._send_after_load and self.model is not None:
                self._send_after_load = False
                self._generate()

        worker.signals.progress.connect(progress)
        worker.signals.result.connect(ready)
        worker.signals.error.connect(failed)
        worker.signals.cancelled.connect(cancelled)
        worker.signals.finished.connect(finished)
        self.workers.start(worker)
        self._update_buttons()
        return worker

    def _close_model(self) -> None:
        if self.model is not None:
            self.model.close()
        self.model = None
        self.model_entry = None

    def shutdown(self) -> None:
        """Stop everything and release the model (the window is closing; workers already waited)."""
        self._stop.cancel()
        if self._load_worker is not None:
            self._load_worker.cancel()
        if self._gen_worker is None:
            self._close_model()

    # --- conversation actions ----------------------------------------------------------------
    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self.is_generating:
            return
        if self.model is None and self.selected_entry() is None:
            self.stats_label.setText("Add a model to the library first.")
            return
        self.input.clear()
        self.conversation.add("user", text)
        self._remember_settings()
        self._save(self.conversation)
        self._render_all()
        if self.model is None:
            self._send_after_load = True
            if not self.is_loading:
                self.load_model()
        else:
            self._generate()

    def _generate(self) -> None:
        if self.model is None or self.is_generating:
            return
        conv = self.conversation
        conv.model_id = self.model_entry.id if self.model_entry else None
        conv.model_name = self.model_entry.name if self.model_entry else None
        self._stop = CancelToken()
        self._gen_mode = self.mode()
        messages, sampling = conv.engine_messages(), self.sampling()
        job = _chat_job(self.model, messages, sampling, self._stop, self._gen_mode, self.compiling.emit)
        worker = GeneratorWorker(job)
        self._gen_worker, self._gen_conv = worker, conv
        self._streaming, self._stream_error, self._last_event = "", None, None
        self.stats_label.setText("Thinking…")
        worker.signals.progress.connect(self._on_stream)
        worker.signals.result.connect(self._on_answer)
        worker.signals.error.connect(self._on_gen_error)
        worker.signals.cancelled.connect(self._on_gen_cancelled)
        worker.signals.finished.connect(self._on_gen_finished)
        self._render_all()
        self._update_buttons()
        self.workers.start(worker)

    def _on_compiling(self) -> None:
        if self.is_generating and not self._streaming:
            self.stats_label.setText(COMPILING_TEXT)

    def _on_stream(self, update: ChatUpdate) -> None:
        self._streaming = update.text
        self._last_event = update.event
        self.stats_label.setText(stats_text(update.event, self.model.n_ctx if self.model else None))
        if not self._render_timer.isActive():
            self._render_timer.start()

    def _on_answer(self, update: ChatUpdate) -> None:
        conv = self._gen_conv
        ev = update.event
        text = self._answer_text(update.text)
        if conv is not None and (text or (ev is not None and ev.finish_reason != "cancelled")):
            conv.add("assistant", text, _stats_dict(ev))
            self._save(conv)
        self._last_event = ev
        self.stats_label.setText(stats_text(ev, self.model.n_ctx if self.model else None))
        self._calibrate(ev)

    def _answer_text(self, text: str) -> str:
        """An answer as the conversation keeps it: a chat turn stripped; a completion as the model
        wrote it, since it continues the text before it (only trailing blanks go)."""
        return text.rstrip() if self._gen_mode == "complete" else text.strip()

    def _calibrate(self, ev: Any) -> None:
        """A finished answer with enough decoded tokens is a speed measurement for the planner."""
        if ev is None or not ev.decode_tok_s or ev.n_generated < CALIBRATE_MIN_TOKENS:
            return
        if self.model is None or self.model_entry is None or not Path(self.model_entry.path).is_file():
            return
        offload = getattr(self.model, "offload", None)
        if offload is not None and offload.requested not in (0, None, "auto"):
            return  # a hand-picked layer split is not what the planner predicts
        job = _calibration_job(
            self.model_entry.path, self.model.n_ctx, ev.decode_tok_s, self._loaded_bytes, self.paths
        )
        worker = GeneratorWorker(job)
        worker.signals.result.connect(self.calibrated.emit)
        self.workers.start(worker)

    def _on_gen_error(self, err: Exception) -> None:
        self._stream_error = str(err)
        self.stats_label.setText(f"The answer failed: {err}")

    def _on_gen_cancelled(self) -> None:
        conv = self._gen_conv
        if conv is not None and self._streaming:
            conv.add("assistant", self._answer_text(self._streaming), {"finish_reason": "cancelled"})
            self._save(conv)

    def _on_gen_finished(self) -> None:
        self._gen_worker = None
        self._gen_conv = None
        self._streaming = None
        self._render_timer.stop()
        self._render_all()
        self._update_buttons()
        self.refresh_chat_list()

    def stop(self) -> None:
        if self.is_generating:
            self._stop.cancel()
        elif self.is_loading:
            self._send_after_load = False
            self._load_worker.cancel()

    def regenerate(self) -> None:
        if self.is_generating or self.is_loading or not self.conversation.messages:
            return
        msgs = self.conversation.messages
        if msgs[-1].role == "assistant":
            msgs.pop()
        if not msgs or msgs[-1].role != "user":
            return
        self._save(self.conversation)
        self._render_all()
        if self.model is None:
            self._send_after_load = True
            self.load_model()
        else:
            self._generate()

    def edit_last(self) -> None:
        if self.is_generating:
            return
        msgs = self.conversation.messages
        idx = max((i for i, m in enumerate(msgs) if m.role == "user"), default=None)
        if idx is None:
            return
        self.input.setPlainText(msgs[idx].content)
        del msgs[idx:]
        self._save(self.conversation)
        self._render_all()
        self._update_buttons()
        self.input.setFocus()
        self.input.moveCursor(QTextCursor.MoveOperation.End)

    def copy_last(self) -> None:
        for m in reversed(self.conversation.messages):
            if m.role == "assistant":
                QGuiApplication.clipboard().setText(m.content)
                self.status.emit("The last answer was copied.")
                return

    def new_chat(self) -> None:
        if self.is_generating:
            self._stop.cancel()  # the answer still lands in its own chat
        self.conversation = Conversation()
        self._remember_settings()
        self.chat_list.clearSelection()
        self.chat_list.setCurrentItem(None)
        self.input.clear()
        self.stats_label.setText("")
        self._render_all()
        self._update_buttons()
        self.input.setFocus()

    def delete_current(self) -> None:
        item = self.chat_list.currentItem()
        if item is None or self.is_generating:
            return
        conv = item.data(Qt.ItemDataRole.UserRole)
        answer = QMessageBox.question(self, "Delete chat", f"Delete “{conv.display_title}”?")
        if answer != QMessageBox.StandardButton.Yes:
            return
        self.store.delete(conv)
        if self._known is not None:
            self._known.pop(conv.id, None)
        if conv.id == self.conversation.id:
            self.conversation = Conversation()
            self._render_all()
        self.refresh_chat_list()

    def open_conversation(self, conv: Conversation) -> None:
        if self.is_generating:
            return
        self.conversation = conv
        self.system_edit.setPlainText(conv.system)
        self.set_sampling(conv.settings)
        if conv.settings.get("mode") in ("chat", "complete"):
            self.set_mode(conv.settings["mode"])  # a chat goes on as it was written
        self.stats_label.setText("")
        self._render_all()
        self._update_buttons()
        if conv.model_id and self.model is None:
            i = self.model_combo.findData(conv.model_id)
            if i >= 0:
                self.model_combo.setCurrentIndex(i)

    def _on_chat_clicked(self, item: QListWidgetItem) -> None:
        conv = item.data(Qt.ItemDataRole.UserRole)
        if conv is not None and conv.id != self.conversation.id:
            try:
                conv = self.store.load(self.store.path(conv))
            except (OSError, ValueError, KeyError, TypeError) as err:
                self.stats_label.setText(f"This chat cannot be read: {err}")
                return
            self.open_conversation(conv)
        self._update_buttons()

    def _remember_settings(self) -> None:
        self.conversation.system = self.system_edit.toPlainText()
        self.conversation.settings = {**self.sampling(), "mode": self.mode()}

    def _save(self, conv: Conversation) -> None:
        try:
            self.store.save(conv)
        except OSError as err:
            self.stats_label.setText(f"The chat could not be saved: {err}")
        if self._known is not None:
            self._known[conv.id] = conv
        self.refresh_chat_list()

    def refresh_chat_list(self, reload: bool = False) -> None:
        """Fill the side list; ``reload`` reads the chats folder again (done once at start)."""
        if reload or self._known is None:
            self._known = {c.id: c for c in self.store.list()}
        convs = sorted(self._known.values(), key=lambda c: c.updated, reverse=True)
        self.chat_list.clear()
        for conv in convs:
            item = QListWidgetItem(conv.display_title)
            item.setData(Qt.ItemDataRole.UserRole, conv)
            item.setToolTip(
                f"{conv.model_name or 'no model'} · {len(conv.messages)} messages · "
                + time.strftime("%Y-%m-%d %H:%M", time.localtime(conv.updated))
            )
            self.chat_list.addItem(item)
            if conv.id == self.conversation.id:
                self.chat_list.setCurrentItem(item)

    # --- rendering ---------------------------------------------------------------------------
    def _frame(
        self, cursor: QTextCursor, role: str, text: str, colours: tuple[str, str], markdown: bool = True
    ) -> None:
        """A message's box: ``role`` in bold, then ``text`` as Markdown (a chat answer, each line
        break kept) or, with ``markdown`` False, as typed (what you wrote; a completion), blanks kept."""
        background = tint(self.view, *colours)
        fmt = QTextFrameFormat()
        fmt.setBackground(background)
        fmt.setPadding(8)
        fmt.setBorder(0)
        fmt.setTopMargin(4)
        fmt.setBottomMargin(4)
        cursor.insertFrame(fmt)
        head = QTextCharFormat()
        head.setFontWeight(QFont.Weight.Bold)
        head.setForeground(self.view.palette().color(QPalette.ColorRole.PlaceholderText))
        cursor.insertText(role, head)
        cursor.insertBlock()
        cursor.setCharFormat(QTextCharFormat())
        if markdown:
            cursor.insertMarkdown(hard_breaks(text) or " ")
        else:
            plain = QTextCharFormat()
            if self.mode() == "complete":
                plain.setFontFamilies(["monospace"])
                plain.setFontStyleHint(QFont.StyleHint.Monospace)
            cursor.insertText(text or " ", plain)

    def _assistant_name(self) -> str:
        if self.model_entry is not None:
            return self.model_entry.name
        return self.conversation.model_name or "Assistant"

    def _render_all(self) -> None:
        view = self.view
        bar = view.verticalScrollBar()
        doc = view.document()
        doc.clear()
        cursor = QTextCursor(doc)
        if not self.conversation.messages and self._streaming is None:
            cursor.insertMarkdown(
                "### Start a conversation\n\nPick a model above, type a message below and press "
                "**Ctrl+Enter**. Answers stream in as they are generated; **Esc** stops them. "
                "Every chat is saved as you go and listed on the left."
            )
            return
        for m in self.conversation.messages:
            name = "You" if m.role == "user" else (self.conversation.model_name or "Assistant")
            user = m.role == "user"
            markdown = not user and self.mode() == "chat"
            self._frame(cursor, name, m.content, USER_BG if user else ASSISTANT_BG, markdown)
            cursor.movePosition(QTextCursor.MoveOperation.End)
        if self._streaming is not None and self._gen_conv is self.conversation:
            self._stream_start = cursor.position()
            self._frame(
                cursor, self._assistant_name(), self._streaming or "…", ASSISTANT_BG, self.mode() == "chat"
            )
        bar.setValue(bar.maximum())

    def _render_stream(self) -> None:
        if self._streaming is None or self._gen_conv is not self.conversation:
            return
        bar = self.view.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 4
        doc = self.view.document()
        cursor = QTextCursor(doc)
        cursor.setPosition(self._stream_start)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        cursor.removeSelectedText()
        cursor.setPosition(self._stream_start)
        cursor.movePosition(QTextCursor.MoveOperation.End)
        self._frame(
            cursor, self._assistant_name(), self._streaming or "…", ASSISTANT_BG, self.mode() == "chat"
        )
        if at_bottom:
            bar.setValue(bar.maximum())

    def rendered_text(self) -> str:
        return self.view.toPlainText()
