"""Convert: quantize a GGUF or import a Hugging Face safetensors model with llama.cpp's presets.

Drop a model anywhere on the main window (a ``.gguf``, a ``.safetensors`` file or its folder), pick
one on the Convert page, or use the library's Convert action: :class:`ConvertDialog` shows the
source (architecture, parameters, current tensor types), every preset with its predicted size and
this machine's fit verdict, the per-tensor plan (``engine.convert.plan_conversion``, headers only),
an optional policy and importance matrix, and the output path. The conversion
(``engine.convert.convert``) runs in a :class:`GeneratorWorker` with progress (tensor i of n, bytes,
ETA) and cancel; the finished file is registered in the library, and with "measure error" it is
evaluated against its source (``engine.eval``: PPL, KLD, same top) afterwards.

Closing the dialog does not stop a conversion: it goes on in the background and the Convert page
lists it with its progress and a Cancel button.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QColor, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.convert import (
    POLICIES,
    PRESETS,
    ConvertPlan,
    ConvertProgress,
    convert,
    make_plan,
    open_source,
    plan_conversion,
)
from engine.errors import KvantError
from engine.fit import HardwareProfile, describe_gguf, recommend
from engine.library import Library, LibraryEntry, register_file
from engine.paths import KvantPaths
from gui.pages.compare import EvalStore, comparison_rows, measure_error
from gui.widgets import human_eta, human_size, show_error
from gui.worker import GeneratorWorker, WorkerPool

MODEL_FILTER = "Models (*.gguf *.safetensors);;GGUF files (*.gguf);;Safetensors (*.safetensors)"
IMATRIX_FILTER = "Importance matrices (*.gguf *.dat);;All files (*)"
DEFAULT_PRESET = "Q4_K_M"
# Presets offered first: the ones people use; the rest follow in llama.cpp's order.
COMMON_PRESETS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "IQ4_XS", "Q3_K_M", "Q2_K", "F16", "BF16")
TIER_COLOURS = {"comfortable": "#1e7b34", "tight": "#9a6700", "disk": "#b35900", "does not run": "#b00020"}
_QUANT_SUFFIX = re.compile(
    r"[-_.](f32|f16|bf16|q\d(_[a-z0-9]+)*|iq\d(_[a-z0-9]+)*|tq\d_\d|mxfp4(_moe)?)$", re.IGNORECASE
)


# --- sources ---------------------------------------------------------------------------------------
def convertible(path: str | Path) -> Path:
    """The conversion source for a dropped or picked path: a GGUF file, a Hugging Face folder, or the
    folder of a ``.safetensors`` file. Raises :class:`KvantError` saying why anything else is not."""
    p = Path(path).expanduser()
    if not p.exists():
        raise KvantError(f"{p} does not exist")
    if p.is_file() and p.suffix.lower() == ".gguf":
        return p
    folder = p.parent if p.is_file() and p.suffix.lower() == ".safetensors" else p
    if folder.is_dir():
        if not any(folder.glob("*.safetensors")):
            raise KvantError(f"{folder} holds no .safetensors weights (and is not a GGUF file)")
        if not (folder / "config.json").exists():
            raise KvantError(
                f"{folder} has safetensors weights but no config.json: Kvant needs the whole Hugging Face "
                "model folder (config.json, tokenizer, *.safetensors)"
            )
        return folder
    raise KvantError(
        f"{p.name} is not a model Kvant can convert: drop a .gguf file, a .safetensors file or a Hugging "
        "Face model folder"
    )


def default_output(models: Path, src: Path, preset: str, policy: str | None = None) -> Path:
    """``models/<name>-<preset>.gguf`` (a quant suffix of the source's name replaced); never an existing
    file."""
    stem = src.name if src.is_dir() else src.name.removesuffix(src.suffix)
    stem = _QUANT_SUFFIX.sub("", stem) or "model"
    tag = f"{policy}-{preset}" if policy else preset
    out = models / f"{stem}-{tag}.gguf"
    n = 2
    while out.exists() or out == src:
        out = models / f"{stem}-{tag}-{n}.gguf"
        n += 1
    return out


@dataclass(frozen=True, slots=True)
class SourceSummary:
    path: str
    kind: str  # "GGUF file" / "Hugging Face folder"
    name: str
    architecture: str
    parameters: int
    layers: int
    types: dict[str, int]
    tensor_bytes: int
    tensors: int

    @property
    def is_gguf(self) -> bool:
        return not Path(self.path).is_dir()


@dataclass(frozen=True, slots=True)
class PresetFit:
    """One preset of this source: its predicted size and how it would run here."""

    preset: str
    bytes: int
    bits_per_weight: float
    tier: str  # comfortable / tight / disk / does not run, or "" when not planned
    verdict: str  # the planner's label
    tok_s: float
    blocker: str = ""  # why it cannot be made here (needs an imatrix, type not supported)

    @property
    def label(self) -> str:
        what = f"{self.preset} — {human_size(self.bytes)}, {self.bits_per_weight:.2f} bpw"
        if self.blocker:
            return f"{what} · {self.blocker}"
        return f"{what} · {self.tier}" if self.tier else what


@dataclass(frozen=True, slots=True)
class Inspection:
    source: SourceSummary
    presets: dict[str, PresetFit]
    best: str | None
    reason: str
    hardware: HardwareProfile | None


class _T:
    __slots__ = ("n_elements", "name", "nbytes")

    def __init__(self, name: str, n: int, nbytes: int) -> None:
        self.name, self.n_elements, self.nbytes = name, n, nbytes


class PlanHeader:
    """A conversion plan seen as the GGUF header it will write (what ``engine.fit.describe_gguf`` reads)."""

    def __init__(self, plan: ConvertPlan) -> None:
        self._meta = plan.metadata
        self.tensors = [_T(t.name, _prod(t.shape), t.dst_bytes) for t in plan.tensors]
        meta = 0
        for k, mv in plan.metadata.items():
            v = mv.value
            meta += len(k) + 16
            if isinstance(v, list):
                meta += sum(len(x) + 8 if isinstance(x, str | bytes) else 8 for x in v)
            elif hasattr(v, "nbytes"):
                meta += int(v.nbytes)
        self.file_size = plan.dst_bytes + meta + 64 * len(plan.tensors)

    def get(self, key: str, default: Any = None) -> Any:
        mv = self._meta.get(key)
        return default if mv is None else mv.value


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _blocker(plan: ConvertPlan) -> str:
    if plan.unsupported:
        return f"Kvant cannot make {', '.join(plan.unsupported)} yet"
    if plan.missing_imatrix:
        return "needs an imatrix"
    return ""


def fit_plans(
    plans: dict[str, ConvertPlan], hw: HardwareProfile | None
) -> tuple[dict[str, PresetFit], str | None, str]:
    """Predicted size and this machine's verdict for every plan (by preset), and the recommended one."""
    fits: dict[str, PresetFit] = {}
    if hw is None or not plans:
        for name, p in plans.items():
            fits[name] = PresetFit(name, p.dst_bytes, p.bits_per_weight, "", "", 0.0, _blocker(p))
        return fits, None, "No verdicts: the hardware could not be read."
    try:
        first = next(iter(plans.values()))
        shape, _ = describe_gguf(PlanHeader(first))
        pairs = [(describe_gguf(PlanHeader(p), quant_name=name)[1], None) for name, p in plans.items()]
        rec = recommend(shape, pairs, hw)
    except KvantError as err:
        for name, p in plans.items():
            fits[name] = PresetFit(name, p.dst_bytes, p.bits_per_weight, "", "", 0.0, _blocker(p))
        return fits, None, f"No verdicts: {err}"
    by_name = {o.quant: o for o in rec.options}
    for name, p in plans.items():
        o = by_name.get(name)
        fits[name] = PresetFit(
            name,
            p.dst_bytes,
            p.bits_per_weight,
            o.tier.value if o else "",
            o.plan.verdict.label if o else "",
            o.plan.tok_s if o else 0.0,
            _blocker(p),
        )
    makeable = [o for o in rec.options if not fits[o.quant].blocker]
    best = rec.best.quant if rec.best and not fits[rec.best.quant].blocker else None
    if best is None and makeable:
        best = next((o.quant for o in makeable if o.tier.value == "comfortable"), None)
    return fits, best, rec.reason


def inspect_source(path: str | Path, hardware: Callable[[], HardwareProfile] | None) -> Inspection:
    """Read the source's header, plan every preset and plan each on this machine (runs in a worker)."""
    src = open_source(path)
    try:
        meta = src.metadata

        def mv(key: str, default: Any = None) -> Any:
            v = meta.get(key)
            return default if v is None else v.value

        arch = str(mv("general.architecture", "?"))
        types: dict[str, int] = {}
        for t in src.tensors:
            name = _type_name(t.type)
            types[name] = types.get(name, 0) + 1
        summary = SourceSummary(
            path=str(path),
            kind="Hugging Face folder" if Path(path).is_dir() else "GGUF file",
            name=str(mv("general.name", Path(path).name)),
            architecture=arch,
            parameters=sum(_prod(t.shape) for t in src.tensors),
            layers=int(mv(f"{arch}.block_count", 0) or 0),
            types=dict(sorted(types.items(), key=lambda kv: -kv[1])),
            tensor_bytes=sum(t.nbytes for t in src.tensors),
            tensors=len(src.tensors),
        )
        plans: dict[str, ConvertPlan] = {}
        for preset in PRESETS:
            try:
                plans[preset] = make_plan(src, preset)
            except KvantError:
                continue  # a preset this model cannot take (e.g. MXFP4_MOE without experts)
    finally:
        src.close()
    hw = None
    if hardware is not None:
        try:
            hw = hardware()
        except Exception:
            hw = None
    fits, best, reason = fit_plans(plans, hw)
    return Inspection(summary, fits, best, reason, hw)


def _type_name(t: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        return f"type {t}"


def plan_with_fit(
    src: str, preset: str | None, policy: str | None, imatrix: str | None, hw: HardwareProfile | None
) -> tuple[ConvertPlan, PresetFit | None]:
    plan = plan_conversion(src, preset, imatrix=imatrix or None, policy=policy or None)
    fits, _, _ = fit_plans({plan.preset: plan}, hw)
    return plan, fits.get(plan.preset)


@dataclass(frozen=True, slots=True)
class ConvertDone:
    entry: LibraryEntry
    path: Path
    seconds: float
    mb_per_s: float
    plan: ConvertPlan


def conversion_job(
    paths: KvantPaths, src: str, out: str, preset: str, policy: str | None, imatrix: str | None
) -> Callable[[Any], Any]:
    """Worker factory: convert, then register the new file in the library (source "convert")."""

    def factory(token):
        result = yield from convert(src, out, preset, imatrix or None, policy or None, cancel=token)
        entry = register_file(Library(paths.library_file), Path(result.path), source="convert")
        return ConvertDone(entry, Path(result.path), result.seconds, result.mb_per_s, result.plan)

    return factory


def _job(fn: Callable[[], Any]):
    def factory(_token):
        return fn()
        yield  # pragma: no cover - makes this a generator

    return factory


# --- the plan table ----------------------------------------------------------------------------------
class PlanModel(QAbstractTableModel):
    COLUMNS = ("Tensor", "Shape", "From", "To", "Size", "Why")

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Any] = []

    def set_plan(self, plan: ConvertPlan | None) -> None:
        self.beginResetModel()
        self.rows = list(plan.tensors) if plan else []
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.COLUMNS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        t = self.rows[index.row()]
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return (
                t.name,
                "×".join(str(d) for d in t.shape),
                t.src_type,
                t.dst_type + (" (imatrix)" if t.imatrix else ""),
                human_size(t.dst_bytes),
                t.reason,
            )[col]
        if role == Qt.ItemDataRole.TextAlignmentRole and col == 4:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and col == 3 and t.copy:
            return QColor("#6a737d")
        if role == Qt.ItemDataRole.ToolTipRole:
            sizes = f"{t.src_type} {human_size(t.src_bytes)} → {t.dst_type} {human_size(t.dst_bytes)}"
            return f"{t.name}: {sizes}\n{t.reason}"
        return None


# --- the dialog ----------------------------------------------------------------------------------------
class ConvertDialog(QDialog):
    """One conversion: choose, plan, convert, register, optionally measure. Non-modal; closing it while a
    conversion runs leaves the conversion running (the Convert page shows it)."""

    converted = Signal(object)  # ConvertDone
    measured = Signal(object)  # the stored eval record (dict)
    state_changed = Signal(
        str
    )  # "inspecting", "ready", "converting", "measuring", "done", "cancelled", "failed"
    progress_changed = Signal(object)  # ConvertProgress

    def __init__(
        self,
        paths: KvantPaths,
        workers: WorkerPool,
        source: str | Path,
        hardware: Callable[[], HardwareProfile] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.paths = paths
        self.workers = workers
        self.source_path = Path(source)
        self._hardware_fn = hardware
        self.inspection: Inspection | None = None
        self.plan: ConvertPlan | None = None
        self.fit: PresetFit | None = None
        self.result: ConvertDone | None = None
        self.record: dict[str, Any] | None = None
        self.state = "inspecting"
        self.error = ""
        self._plan_gen = 0
        self._out_edited = False
        self._measure_after = False
        self._convert_worker: GeneratorWorker | None = None
        self._measure_worker: GeneratorWorker | None = None
        self.setWindowTitle(f"Convert {self.source_path.name}")
        self.resize(980, 760)
        self._build()
        self._inspect()

    # --- layout ------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.source_box = QGroupBox("Source")
        self.source_form = QFormLayout(self.source_box)
        self.source_form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.source_form.addRow(QLabel(f"Reading {self.source_path}…"))

        target = QGroupBox("Target")
        form = QFormLayout(target)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.preset_combo = QComboBox()
        self.preset_combo.setToolTip("llama.cpp's preset: the per-tensor type rules of llama-quantize")
        self.preset_combo.currentIndexChanged.connect(self._options_changed)
        form.addRow("&Preset:", self.preset_combo)
        self.policy_combo = QComboBox()
        self.policy_combo.addItem("None (the preset's rules)", "")
        for name in sorted(POLICIES):
            self.policy_combo.addItem(name, name)
        self.policy_combo.setToolTip(
            "dynamic-1.58: unsloth's dynamic 1.58-bit recipe — ternary (TQ1_0, or IQ1_S with an imatrix) "
            "for most feed-forward weights, more bits for the tensors that break the model otherwise"
        )
        self.policy_combo.currentIndexChanged.connect(self._policy_changed)
        form.addRow("P&olicy:", self.policy_combo)
        self.imatrix_edit = QLineEdit()
        self.imatrix_edit.setPlaceholderText("optional: llama.cpp imatrix (.gguf or legacy .dat)")
        self.imatrix_edit.editingFinished.connect(self._options_changed)
        im_button = QToolButton()
        im_button.setText("…")
        im_button.setToolTip("Choose an importance matrix file")
        im_button.clicked.connect(self.browse_imatrix)
        row = QHBoxLayout()
        row.addWidget(self.imatrix_edit, 1)
        row.addWidget(im_button)
        label = QLabel("&Imatrix:")
        label.setBuddy(self.imatrix_edit)
        form.addRow(label, row)
        self.out_edit = QLineEdit()
        self.out_edit.textEdited.connect(lambda _t: setattr(self, "_out_edited", True))
        out_button = QToolButton()
        out_button.setText("…")
        out_button.setToolTip("Choose where to write the GGUF")
        out_button.clicked.connect(self.browse_output)
        row = QHBoxLayout()
        row.addWidget(self.out_edit, 1)
        row.addWidget(out_button)
        label = QLabel("O&utput:")
        label.setBuddy(self.out_edit)
        form.addRow(label, row)
        self.predict_label = QLabel("")
        self.predict_label.setWordWrap(True)
        form.addRow("Here:", self.predict_label)

        top = QHBoxLayout()
        top.addWidget(self.source_box, 2)
        top.addWidget(target, 3)

        self.plan_label = QLabel("")
        self.plan_label.setWordWrap(True)
        self.warnings = QLabel("")
        self.warnings.setWordWrap(True)
        self.warnings.setVisible(False)
        self.plan_model = PlanModel()
        self.plan_view = QTableView()
        self.plan_view.setModel(self.plan_model)
        self.plan_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.plan_view.verticalHeader().setVisible(False)
        self.plan_view.verticalHeader().setDefaultSectionSize(22)
        self.plan_view.setWordWrap(False)
        self.plan_view.setAlternatingRowColors(True)
        h = self.plan_view.horizontalHeader()
        h.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        h.setStretchLastSection(True)
        for col, w in enumerate((230, 90, 60, 90, 80)):
            self.plan_view.setColumnWidth(col, w)
        plan_box = QWidget()
        pl = QVBoxLayout(plan_box)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(self.plan_label)
        pl.addWidget(self.warnings)
        pl.addWidget(self.plan_view, 1)

        self.measure_check = QCheckBox("&Measure the error afterwards (PPL, KL divergence, same top token)")
        self.measure_check.setToolTip(
            "After converting, compare the new file with its source on the shipped text "
            "(engine.eval: llama-perplexity's protocol). Results also appear on the Compare page."
        )
        self.chunks_spin = QSpinBox()
        self.chunks_spin.setRange(1, 25)
        self.chunks_spin.setValue(4)
        self.chunks_spin.setSuffix(" chunks of 512 tokens")
        mrow = QHBoxLayout()
        mrow.addWidget(self.measure_check)
        mrow.addWidget(self.chunks_spin)
        mrow.addStretch(1)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setVisible(False)
        self.progress_label = QLabel("")
        self.progress_label.setWordWrap(True)
        self.progress_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.results = QTableWidget(0, 2)
        self.results.setHorizontalHeaderLabels(("Measured against the source", "Value"))
        self.results.verticalHeader().setVisible(False)
        self.results.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.results.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.results.horizontalHeader().setStretchLastSection(True)
        self.results.setVisible(False)

        self.buttons = QDialogButtonBox()
        self.convert_button = self.buttons.addButton("&Convert", QDialogButtonBox.ButtonRole.ActionRole)
        self.convert_button.setDefault(True)
        self.convert_button.setEnabled(False)
        self.convert_button.clicked.connect(self.start)
        self.cancel_button = self.buttons.addButton(
            "C&ancel conversion", QDialogButtonBox.ButtonRole.ActionRole
        )
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.close_button.setToolTip("Close this window; a running conversion goes on (see the Convert page)")
        self.close_button.clicked.connect(self.close)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(plan_box, 1)
        line = QFrame()
        line.setFrameShape(QFrame.Shape.HLine)
        layout.addWidget(line)
        layout.addLayout(mrow)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.results)
        layout.addWidget(self.buttons)
        sc = QShortcut(QKeySequence("Ctrl+Return"), self)
        sc.activated.connect(self.start)

    # --- state --------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._convert_worker is not None or self._measure_worker is not None

    def _set_state(self, state: str) -> None:
        self.state = state
        editable = state in ("ready", "failed", "cancelled")
        for w in (self.preset_combo, self.imatrix_edit, self.out_edit, self.measure_check, self.chunks_spin):
            w.setEnabled(editable and (w is not self.preset_combo or not self.policy_combo.currentData()))
        self.policy_combo.setEnabled(editable)
        self.convert_button.setEnabled(editable and self.plan is not None and self.error == "")
        self.cancel_button.setEnabled(state in ("converting", "measuring"))
        self.state_changed.emit(state)

    def _fail(self, title: str, err: Exception | str) -> None:
        text = str(err)
        self.progress_label.setText(f"<span style='color:#b00020'>{title}: {text}</span>")
        if self.isVisible():
            show_error(self, title, text)

    # --- inspecting and planning ---------------------------------------------------------------------
    def _inspect(self) -> None:
        worker = GeneratorWorker(_job(lambda: inspect_source(self.source_path, self._hardware_fn)))
        worker.signals.result.connect(self._show_inspection)
        worker.signals.error.connect(self._inspect_failed)
        self.workers.start(worker)

    def _inspect_failed(self, err: Exception) -> None:
        while self.source_form.rowCount():
            self.source_form.removeRow(0)
        label = QLabel(f"<span style='color:#b00020'>{err}</span>")
        label.setWordWrap(True)
        self.source_form.addRow(label)
        self.error = str(err)
        self._set_state("failed")
        self._fail("Cannot read this model", err)

    def _show_inspection(self, ins: Inspection) -> None:
        self.inspection = ins
        s = ins.source
        while self.source_form.rowCount():
            self.source_form.removeRow(0)
        types = ", ".join(f"{k} ×{v}" for k, v in s.types.items())
        for k, v in (
            ("Name", s.name),
            ("Kind", s.kind),
            ("Path", s.path),
            ("Architecture", s.architecture),
            (
                "Parameters",
                f"{s.parameters / 1e6:,.1f} M" if s.parameters < 1e9 else f"{s.parameters / 1e9:,.2f} B",
            ),
            ("Layers", str(s.layers)),
            ("Tensor types", types),
            ("Weights", f"{human_size(s.tensor_bytes)} in {s.tensors} tensors"),
        ):
            label = QLabel(v)
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.source_form.addRow(k, label)
        if not s.is_gguf:
            self.measure_check.setChecked(False)
            self.measure_check.setEnabled(False)
            self.measure_check.setToolTip(
                "Measuring needs a GGUF source that Kvant can run; convert it to F16 first"
            )
        self.preset_combo.blockSignals(True)
        self.preset_combo.clear()
        order = [p for p in COMMON_PRESETS if p in ins.presets] + [
            p for p in ins.presets if p not in COMMON_PRESETS
        ]
        for i, name in enumerate(order):
            fit = ins.presets[name]
            self.preset_combo.addItem(("★ " if name == ins.best else "") + fit.label, name)
            colour = TIER_COLOURS.get(fit.tier)
            if fit.blocker:
                colour = "#6a737d"
            if colour:
                self.preset_combo.setItemData(i, QColor(colour), Qt.ItemDataRole.ForegroundRole)
            tip = fit.blocker or (f"{fit.verdict}, about {fit.tok_s:.1f} tok/s here" if fit.verdict else "")
            self.preset_combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        self.preset_combo.insertSeparator(len([p for p in COMMON_PRESETS if p in ins.presets]))
        start = DEFAULT_PRESET if DEFAULT_PRESET in ins.presets else (order[0] if order else None)
        if start is not None:
            self.preset_combo.setCurrentIndex(self.preset_combo.findData(start))
        self.preset_combo.blockSignals(False)
        self.error = ""
        self._set_state("ready")
        self._options_changed()

    def preset(self) -> str | None:
        return self.preset_combo.currentData()

    def set_preset(self, preset: str) -> None:
        i = self.preset_combo.findData(preset)
        if i < 0:
            raise KeyError(preset)
        self.preset_combo.setCurrentIndex(i)

    def _policy_changed(self) -> None:
        name = self.policy_combo.currentData()
        pol = POLICIES.get(name) if name else None
        if pol is not None:
            self.preset_combo.blockSignals(True)
            i = self.preset_combo.findData(pol.preset(bool(self.imatrix_edit.text().strip())))
            if i >= 0:
                self.preset_combo.setCurrentIndex(i)
            self.preset_combo.blockSignals(False)
        self.preset_combo.setEnabled(pol is None and self.state in ("ready", "failed", "cancelled"))
        self.preset_combo.setToolTip(
            "The policy chooses its own preset" if pol else "llama.cpp's preset: the per-tensor type rules"
        )
        self._options_changed()

    def _options_changed(self) -> None:
        if self.inspection is None or self.state not in ("ready", "failed", "cancelled"):
            return
        preset, policy = self.preset(), self.policy_combo.currentData() or None
        imatrix = self.imatrix_edit.text().strip() or None
        if policy:
            preset = POLICIES[policy].preset(imatrix is not None)
        if not self._out_edited and preset:
            self.out_edit.setText(str(default_output(self.paths.models, self.source_path, preset, policy)))
        self._plan_gen += 1
        gen = self._plan_gen
        self.plan = None
        self.convert_button.setEnabled(False)
        self.plan_label.setText("Planning…")
        hw = self.inspection.hardware
        src = str(self.source_path)
        worker = GeneratorWorker(_job(lambda: plan_with_fit(src, preset, policy, imatrix, hw)))
        worker.signals.result.connect(lambda res: gen == self._plan_gen and self._show_plan(*res))
        worker.signals.error.connect(lambda err: gen == self._plan_gen and self._plan_failed(err))
        self.workers.start(worker)

    def _plan_failed(self, err: Exception) -> None:
        self.plan = None
        self.plan_model.set_plan(None)
        self.error = str(err)
        self.plan_label.setText(f"<span style='color:#b00020'>No plan: {err}</span>")
        self.predict_label.setText("")
        self.convert_button.setEnabled(False)

    def _show_plan(self, plan: ConvertPlan, fit: PresetFit | None) -> None:
        self.plan, self.fit = plan, fit
        self.plan_model.set_plan(plan)
        mix = ", ".join(f"{k} ×{v}" for k, v in plan.type_counts().items())
        self.plan_label.setText(
            f"<b>Plan</b>: {len(plan.tensors)} tensors, {human_size(plan.src_bytes)} → "
            f"<b>{human_size(plan.dst_bytes)}</b> ({plan.bits_per_weight:.2f} bits/weight); "
            f"preset {plan.preset}" + (f", policy {plan.policy}" if plan.policy else "") + f". Types: {mix}."
        )
        blocker = _blocker(plan)
        warn = list(plan.warnings)
        self.warnings.setText("<br>".join(f"⚠ {w}" for w in warn))
        self.warnings.setStyleSheet("color: #9a6700;")
        self.warnings.setVisible(bool(warn))
        if fit is not None and fit.tier:
            colour = TIER_COLOURS.get(fit.tier, "#000")
            self.predict_label.setText(
                f"{human_size(fit.bytes)} · <span style='color:{colour}'><b>{fit.tier}</b></span>: "
                f"{fit.verdict}, about {fit.tok_s:.1f} tokens/s on this machine"
            )
        else:
            self.predict_label.setText(f"{human_size(plan.dst_bytes)} (no verdict for this machine)")
        self.error = blocker
        if blocker:
            self.predict_label.setText(
                self.predict_label.text()
                + f"<br><span style='color:#b00020'>Cannot convert: {blocker}.</span>"
            )
        self.convert_button.setEnabled(self.state in ("ready", "failed", "cancelled") and not blocker)

    # --- file pickers --------------------------------------------------------------------------------
    def browse_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Write the GGUF to", self.out_edit.text(), "GGUF (*.gguf)"
        )
        if path:
            if not path.lower().endswith(".gguf"):
                path += ".gguf"
            self.out_edit.setText(path)
            self._out_edited = True

    def browse_imatrix(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Importance matrix", str(self.source_path.parent), IMATRIX_FILTER
        )
        if path:
            self.imatrix_edit.setText(path)
            self._policy_changed()

    # --- converting -------------------------------------------------------------------------------------
    def output_path(self) -> Path:
        return Path(self.out_edit.text().strip()).expanduser()

    def _check_output(self) -> str:
        text = self.out_edit.text().strip()
        if not text:
            return "Choose where to write the converted model."
        out = self.output_path()
        if out.parent == self.paths.models:
            self.paths.ensure()
        if out.suffix.lower() != ".gguf":
            return f"The output must be a .gguf file, not {out.name}."
        if out.resolve() == self.source_path.resolve():
            return "The output would overwrite the source; choose another name."
        if out.exists():
            return f"{out} already exists; choose another name (Kvant never overwrites a model)."
        if not out.parent.is_dir():
            return f"The folder {out.parent} does not exist."
        return ""

    def start(self) -> GeneratorWorker | None:
        if self.plan is None or self.running or self.state not in ("ready", "failed", "cancelled"):
            return None
        problem = self._check_output()
        if problem:
            self._fail("Cannot convert", problem)
            return None
        out = self.output_path()
        plan = self.plan
        imatrix = self.imatrix_edit.text().strip() or None
        factory = conversion_job(
            self.paths, str(self.source_path), str(out), plan.preset, plan.policy, imatrix
        )
        worker = GeneratorWorker(factory)
        self._convert_worker = worker
        self._measure_after = self.measure_check.isChecked() and self.measure_check.isEnabled()
        self.result = None
        self.results.setVisible(False)
        self.progress.setVisible(True)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.progress_label.setText(f"Converting to {out.name}…")
        self._started = time.monotonic()
        worker.signals.progress.connect(self._on_progress)
        worker.signals.result.connect(self._converted)
        worker.signals.error.connect(self._convert_failed)
        worker.signals.cancelled.connect(self._convert_cancelled)
        worker.signals.finished.connect(self._convert_finished)
        self._set_state("converting")
        return self.workers.start(worker)

    def cancel(self) -> None:
        for w in (self._convert_worker, self._measure_worker):
            if w is not None:
                w.cancel()

    def _on_progress(self, ev: ConvertProgress) -> None:
        if getattr(ev, "warning", ""):
            return
        frac = ev.fraction
        if frac is not None:
            self.progress.setValue(int(frac * 1000))
        count = getattr(ev, "count", 0)
        current = min(getattr(ev, "index", 0) + 1, count) if count else 0
        eta = getattr(ev, "eta_s", None)
        self.progress.setFormat(f"%p% · tensor {current} of {count}")
        self.progress_label.setText(
            f"Tensor {current} of {count} · {getattr(ev, 'tensor', '')} · "
            f"{human_size(ev.done)} of {human_size(ev.total)} read, "
            f"{human_size(getattr(ev, 'written', 0))} written · {human_eta(eta)} left"
        )
        self.progress_changed.emit(ev)

    def _converted(self, done: ConvertDone) -> None:
        self.result = done
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        self.progress_label.setText(
            f"Wrote <b>{done.path.name}</b> ({human_size(done.path.stat().st_size)}, "
            f"{done.plan.bits_per_weight:.2f} bits/weight) in {done.seconds:.1f} s "
            f"({done.mb_per_s:.1f} MB/s of source weights). It is in the library."
        )
        self.converted.emit(done)

    def _convert_failed(self, err: Exception) -> None:
        self.progress.setVisible(False)
        self._fail("The conversion failed", err)

    def _convert_cancelled(self) -> None:
        self.progress.setVisible(False)
        self.progress_label.setText("Cancelled; nothing was written.")

    def _convert_finished(self) -> None:
        worker, self._convert_worker = self._convert_worker, None
        if self.result is not None:
            if self._measure_after:
                self._measure()
                return
            self._set_state("done")
        elif worker is not None and worker.token.cancelled:
            self._set_state("cancelled")
        else:
            self._set_state("failed")

    # --- measuring -------------------------------------------------------------------------------------
    def _measure(self) -> None:
        assert self.result is not None
        quant = str(self.result.path)
        factory = measure_error(
            str(self.source_path),
            [quant],
            EvalStore(self.paths),
            n_ctx=512,
            n_chunks=self.chunks_spin.value(),
        )
        worker = GeneratorWorker(factory)
        self._measure_worker = worker
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.progress_label.setText(
            self.progress_label.text() + "<br>Measuring the error against the source…"
        )
        worker.signals.progress.connect(self._on_measure_progress)
        worker.signals.result.connect(lambda recs: self.show_record(recs[0]))
        worker.signals.error.connect(lambda err: self._fail("The measurement failed", err))
        worker.signals.cancelled.connect(
            lambda: self.progress_label.setText("Measurement cancelled (the file is kept).")
        )
        worker.signals.finished.connect(self._measure_finished)
        self._set_state("measuring")
        self.workers.start(worker)

    def _on_measure_progress(self, ev: Any) -> None:
        if ev.total:
            self.progress.setRange(0, ev.total)
            self.progress.setValue(ev.done)
            self.progress.setFormat(f"{ev.stage}: chunk {ev.done} of {ev.total}")
        else:
            self.progress.setRange(0, 0)

    def show_record(self, rec: dict[str, Any]) -> None:
        self.record = rec
        rows = comparison_rows(rec)
        self.results.setRowCount(len(rows))
        for r, (k, v) in enumerate(rows):
            self.results.setItem(r, 0, QTableWidgetItem(k))
            self.results.setItem(r, 1, QTableWidgetItem(v))
        self.results.setVisible(True)
        self.results.setMinimumHeight(min(26 * (len(rows) + 1) + 4, 230))
        self.measured.emit(rec)

    def _measure_finished(self) -> None:
        self._measure_worker = None
        self.progress.setRange(0, 1000)
        self.progress.setValue(1000)
        self.progress.setFormat("done")
        self._set_state("done")


# --- the page -----------------------------------------------------------------------------------------
JOB_COLUMNS = ("Source", "Preset", "Output", "Progress", "Status", "")


class DropZone(QLabel):
    """The big target on the Convert page (drops anywhere on the window work too)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setWordWrap(True)
        self.setMinimumHeight(150)
        self.setText(
            "<p style='font-size:15pt'><b>Drop a model here</b></p>"
            "<p>a <code>.gguf</code> file to requantize, or a Hugging Face model folder "
            "(or one of its <code>.safetensors</code> files) to import<br>"
            "— anywhere on this window works too —</p>"
        )
        self.setStyleSheet(
            "QLabel { border: 2px dashed palette(mid); border-radius: 10px; padding: 18px; "
            "color: palette(text); }"
        )


class ConvertPage(QWidget):
    """Where conversions start (drop zone, file and folder pickers) and where running ones are listed."""

    open_requested = Signal(str)  # a path to convert
    status = Signal(str)

    def __init__(self, paths: KvantPaths, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.paths = paths
        self.dialogs: list[ConvertDialog] = []
        self.drop_zone = DropZone()
        self.file_button = QPushButton("Choose a &file…")
        self.file_button.setToolTip("A .gguf or .safetensors file (Ctrl+O)")
        self.file_button.clicked.connect(self.pick_file)
        self.folder_button = QPushButton("Choose a f&older…")
        self.folder_button.setToolTip("A Hugging Face model folder (config.json, tokenizer, *.safetensors)")
        self.folder_button.clicked.connect(self.pick_folder)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.file_button)
        buttons.addWidget(self.folder_button)
        buttons.addStretch(1)
        self.jobs = QTableWidget(0, len(JOB_COLUMNS))
        self.jobs.setHorizontalHeaderLabels(JOB_COLUMNS)
        self.jobs.verticalHeader().setVisible(False)
        self.jobs.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.jobs.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.jobs.setWordWrap(False)
        self.jobs.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        hh = self.jobs.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        hh.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        hh.setSectionResizeMode(3, QHeaderView.ResizeMode.Fixed)
        self.jobs.setColumnWidth(3, 200)
        about = QLabel(
            "Conversions use llama.cpp's presets and per-tensor rules (byte-identical with llama-quantize), "
            "run in the background and land in the library. Requantizing an already quantized file compounds "
            "its errors: convert from F16/BF16/F32 when you can."
        )
        about.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<h2>Convert</h2>"))
        layout.addWidget(about)
        layout.addWidget(self.drop_zone)
        layout.addLayout(buttons)
        layout.addWidget(QLabel("<b>Conversions</b>"))
        layout.addWidget(self.jobs, 1)

    def pick_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Convert a model", str(Path.home()), MODEL_FILTER)
        if path:
            self.open_requested.emit(path)

    def pick_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Convert a Hugging Face model folder", str(Path.home()))
        if path:
            self.open_requested.emit(path)

    def track(self, dialog: ConvertDialog) -> None:
        """List a dialog's conversion here (its progress, state, and Show / Cancel)."""
        self.dialogs.append(dialog)
        row = self.jobs.rowCount()
        self.jobs.insertRow(row)
        self.jobs.setItem(row, 0, QTableWidgetItem(dialog.source_path.name))
        self.jobs.item(row, 0).setToolTip(str(dialog.source_path))
        self.jobs.setItem(row, 1, QTableWidgetItem("–"))
        self.jobs.setItem(row, 2, QTableWidgetItem("–"))
        bar = QProgressBar()
        bar.setRange(0, 1000)
        bar.setValue(0)
        self.jobs.setCellWidget(row, 3, bar)
        self.jobs.setItem(row, 4, QTableWidgetItem("reading"))
        show = QPushButton("Show")
        show.setToolTip("Bring this conversion's window back")
        show.clicked.connect(lambda: (dialog.show(), dialog.raise_(), dialog.activateWindow()))
        cancel = QPushButton("Cancel")
        cancel.setEnabled(False)
        cancel.clicked.connect(dialog.cancel)
        cell = QWidget()
        cl = QHBoxLayout(cell)
        cl.setContentsMargins(2, 0, 2, 0)
        cl.addWidget(show)
        cl.addWidget(cancel)
        self.jobs.setCellWidget(row, 5, cell)

        def on_state(state: str) -> None:
            r = self.dialogs.index(dialog)
            self.jobs.item(r, 4).setText(
                {"ready": "not started", "inspecting": "reading", "converting": "converting"}.get(
                    state, state
                )
            )
            cancel.setEnabled(state in ("converting", "measuring"))
            if state == "converting" and dialog.plan is not None:
                self.jobs.item(r, 1).setText(
                    dialog.plan.preset + (f" ({dialog.plan.policy})" if dialog.plan.policy else "")
                )
                self.jobs.item(r, 2).setText(str(dialog.output_path()))
                self.jobs.item(r, 2).setToolTip(str(dialog.output_path()))
                self.status.emit(f"Converting {dialog.source_path.name} to {dialog.plan.preset}…")
            if state == "done":
                bar.setValue(1000)
            if state in ("cancelled", "failed"):
                bar.setValue(0)

        def on_progress(ev: ConvertProgress) -> None:
            if ev.fraction is not None:
                bar.setValue(int(ev.fraction * 1000))
            r = self.dialogs.index(dialog)
            eta = getattr(ev, "eta_s", None)
            self.jobs.item(r, 4).setText(
                f"tensor {min(ev.index + 1, ev.count)} of {ev.count} · {human_eta(eta)} left"
            )

        dialog.state_changed.connect(on_state)
        dialog.progress_changed.connect(on_progress)
        dialog.converted.connect(
            lambda done: self.status.emit(f"Converted {done.path.name}; it is in the library.")
        )
