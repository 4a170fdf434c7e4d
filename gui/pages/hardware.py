"""Hardware page: memory, disk and GPUs as bars, the CPU and its SIMD, measured bandwidth; live."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.fit import CalibrationStore, HardwareProfile
from engine.hardware import HardwareInfo, detect, detect_disk, detect_memory
from engine.paths import KvantPaths
from gui.widgets import USED, StackedBar
from gui.worker import GeneratorWorker, WorkerPool


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _detect_job(paths: KvantPaths, refresh: bool):
    def factory(_token):
        return detect(paths, refresh=refresh)
        yield  # pragma: no cover - makes this a generator

    return factory


CALIBRATION_ROWS = 5  # latest measurements listed


class HardwarePage(QWidget):
    LIVE_INTERVAL_MS = 2000

    def __init__(self, paths: KvantPaths, workers: WorkerPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.paths = paths
        self.workers = workers
        self.info: HardwareInfo | None = None

        self.ram_bar, self.ram_label = StackedBar(), QLabel("…")
        self.swap_bar, self.swap_label = StackedBar(), QLabel("…")
        self.disk_bar, self.disk_label = StackedBar(), QLabel("…")
        memory = QGroupBox("Memory and disk")
        grid = QGridLayout(memory)
        for row, (name, bar, label) in enumerate(
            (
                ("RAM", self.ram_bar, self.ram_label),
                ("Swap", self.swap_bar, self.swap_label),
                ("Models disk", self.disk_bar, self.disk_label),
            )
        ):
            grid.addWidget(QLabel(name), row, 0)
            grid.addWidget(bar, row, 1)
            grid.addWidget(label, row, 2)
        grid.setColumnStretch(1, 1)

        self.gpu_box = QGroupBox("GPUs")
        self.gpu_layout = QGridLayout(self.gpu_box)
        self.gpu_layout.setColumnStretch(1, 1)

        self.cpu_label = QLabel("Detecting…")
        self.cpu_label.setWordWrap(True)
        self.cpu_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        cpu = QGroupBox("CPU and memory bandwidth")
        QVBoxLayout(cpu).addWidget(self.cpu_label)

        self.calib_label = QLabel("No runs measured yet.")
        self.calib_label.setWordWrap(True)
        self.calib_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        calib = QGroupBox("Planner calibration (predicted vs. measured on this machine)")
        QVBoxLayout(calib).addWidget(self.calib_label)

        self.remeasure = QPushButton("Measure bandwidth again")
        self.remeasure.clicked.connect(lambda: self.refresh(remeasure=True))
        head = QHBoxLayout()
        head.addWidget(QLabel("<h2>Hardware</h2>"))
        head.addStretch(1)
        head.addWidget(self.remeasure)

        layout = QVBoxLayout(self)
        layout.addLayout(head)
        layout.addWidget(memory)
        layout.addWidget(self.gpu_box)
        layout.addWidget(cpu)
        layout.addWidget(calib)
        layout.addStretch(1)

        self.timer = QTimer(self)
        self.timer.setInterval(self.LIVE_INTERVAL_MS)
        self.timer.timeout.connect(self._live_update)

    def showEvent(self, event) -> None:
        if self.info is None:
            self.refresh()
        self.timer.start()
        super().showEvent(event)

    def hideEvent(self, event) -> None:
        self.timer.stop()
        super().hideEvent(event)

    def refresh(self, remeasure: bool = False) -> None:
        self.remeasure.setEnabled(False)
        worker = GeneratorWorker(_detect_job(self.paths, remeasure))
        worker.signals.result.connect(self.show_info)
        worker.signals.error.connect(lambda err: self.cpu_label.setText(f"Detection failed: {err}"))
        worker.signals.finished.connect(lambda: self.remeasure.setEnabled(True))
        self.workers.start(worker)

    def _live_update(self) -> None:
        try:
            self._show_memory(detect_memory())
            self._show_disk(detect_disk(self.paths.models))
        except Exception as err:  # a failed refresh must not break the page
            self.ram_label.setText(f"unavailable: {err}")

    def _show_memory(self, mem) -> None:
        used = mem.total_bytes - mem.available_bytes
        self.ram_bar.set_segments(mem.total_bytes, [("used", used, USED)])
        self.ram_label.setText(f"{_gib(mem.available_bytes)} free of {_gib(mem.total_bytes)}")
        swap_used = mem.swap_total_bytes - mem.swap_free_bytes
        self.swap_bar.set_segments(mem.swap_total_bytes, [("used", swap_used, USED)])
        swap = mem.swap_total_bytes
        self.swap_label.setText(f"{_gib(mem.swap_free_bytes)} free of {_gib(swap)}" if swap else "none")

    def _show_disk(self, disk) -> None:
        self.disk_bar.set_segments(disk.total_bytes, [("used", disk.total_bytes - disk.free_bytes, USED)])
        self.disk_label.setText(f"{_gib(disk.free_bytes)} free of {_gib(disk.total_bytes)}")
        self.disk_bar.setToolTip(str(disk.path))

    def show_info(self, info: HardwareInfo) -> None:
        self.info = info
        self._show_memory(info.memory)
        self._show_disk(info.disk)
        while self.gpu_layout.count():
            item = self.gpu_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        if info.gpus:
            for row, g in enumerate(info.gpus):
                bar = StackedBar()
                bar.set_segments(g.total_vram_bytes, [("used", g.total_vram_bytes - g.free_vram_bytes, USED)])
                cc = g.compute_capability_str or "?"
                self.gpu_layout.addWidget(QLabel(f"GPU {g.index}: {g.name}"), row, 0)
                self.gpu_layout.addWidget(bar, row, 1)
                self.gpu_layout.addWidget(
                    QLabel(
                        f"{_gib(g.free_vram_bytes)} free of {_gib(g.total_vram_bytes)} · "
                        f"compute {cc} · driver {g.driver_version or '?'}"
                    ),
                    row,
                    2,
                )
        else:
            note = QLabel(info.gpu_note or "No NVIDIA GPU found.")
            note.setWordWrap(True)
            self.gpu_layout.addWidget(note, 0, 0, 1, 3)
        if info.unified_memory is not None:
            um = info.unified_memory
            text = (
                f"Apple unified memory: {_gib(um.total_bytes)}, of which about "
                f"{_gib(um.gpu_budget_bytes)} usable by the GPU (estimate)"
            )
            self.gpu_layout.addWidget(QLabel(text), len(info.gpus) + 1, 0, 1, 3)
        self.show_calibration(info)
        c = info.cpu
        bw = info.bandwidth
        bw_text = (
            f"{bw.single_thread_bytes_per_s / 1e9:.1f} GB/s one thread, "
            f"{bw.all_threads_bytes_per_s / 1e9:.1f} GB/s with {bw.threads} threads"
            + (" (cached)" if bw.cached else "")
            if bw is not None
            else info.bandwidth_note
        )
        self.cpu_label.setText(
            f"<b>{c.model_name}</b><br>{c.physical_cores} physical / {c.logical_cores} logical cores "
            f"({c.usable_threads} usable), {c.architecture}<br>"
            f"SIMD: {', '.join(c.features) or 'none detected'}<br>"
            f"Memory bandwidth: {bw_text}"
        )

    def show_calibration(self, info: HardwareInfo) -> None:
        """What real runs measured next to the planner's predictions, and the correction it now applies."""
        store = CalibrationStore.default(self.paths)
        key = HardwareProfile.from_hardware_info(info).key
        records = [r for r in store.load() if r.machine == key]
        if not records:
            self.calib_label.setText(
                "No runs measured yet. Each chat answer of 16 tokens or more records its decode speed "
                "and the model's memory next to what the planner predicted, and later estimates are "
                "corrected by what was measured."
            )
            return
        c = store.correction(key)
        lines = [
            f"Speed estimates × {c.tok_s:.2f}, compute-buffer estimates × {c.buffers:.2f} "
            f"(from {c.samples} run{'s' if c.samples != 1 else ''} on this machine)."
        ]
        for r in records[-CALIBRATION_ROWS:][::-1]:
            speed = (
                f"{r.measured_tok_s:.1f} tok/s measured vs {r.predicted_tok_s:.1f} predicted"
                if r.measured_tok_s
                else "no speed"
            )
            mem = (
                f", {r.measured_bytes / 2**20:,.0f} MiB vs {r.predicted_bytes / 2**20:,.0f} MiB"
                if r.measured_bytes and r.predicted_bytes
                else ""
            )
            lines.append(f"{r.at[:16].replace('T', ' ')} · {r.model} {r.quant} · {speed}{mem}")
        self.calib_label.setText("<br>".join(lines))
