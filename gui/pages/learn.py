"""Learn page: what quantization is, shown rather than told.

Four tabs: a short explanation (after two Russian-language introductions to quantization: fewer levels
than the data has means rounding error; images lose colours, sound gains noise, weights are stored in
blocks with scales; judge a model by its outputs, not by its weight error), then three interactive
demos — a picture whose bit depth falls with a slider, a chord whose bit depth falls (waveform and
error waveform; played with QtMultimedia when the installed PySide6 has it), and a real tensor of a
library model quantized to every type Kvant makes, with a histogram and the RMS error per type.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QColor, QDesktopServices, QImage, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QSlider,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from engine.gguf import open_gguf
from engine.library import DEFAULT_MODEL_ID, LibraryEntry
from engine.paths import KvantPaths
from engine.progress import Progress
from engine.quant import dequantize, format_of, quantize, supported
from gui.widgets import ChartPoint, Histogram, ScatterChart, WaveformView, human_size
from gui.worker import GeneratorWorker, WorkerPool

try:  # PySide6-Essentials has no QtMultimedia; the full PySide6 (Addons) does
    from PySide6.QtMultimedia import QSoundEffect
except ImportError:  # pragma: no cover - depends on the installed wheel
    QSoundEffect = None

AUDIO_AVAILABLE = QSoundEffect is not None
NO_AUDIO_WHY = (
    "Qt Multimedia is not in the installed PySide6 (pyside6-essentials), so the chord is written to a WAV "
    "file and opened in this computer's audio player (pip install pyside6 plays it inside Kvant)."
)
ORIGINAL = QColor("#8a939c")
QUANT = QColor("#d9822b")
ERROR = QColor("#b00020")
SAMPLE_RATE = 22050

INTRO_HTML = """
<h2>Quantization, shown</h2>
<p><b>Quantization</b> turns values stored with high precision into values with fewer possible levels:
32-bit floating-point numbers become, say, 4-bit integers. Sound and image compression do it, and so
does every GGUF you download. It always loses information: when the data has more gradations than the
format can store, each value is rounded to the nearest level that exists, and the difference is the
<b>quantization error</b>.</p>
<ul>
<li><b>Sound.</b> A 16-bit recording has 65,536 levels per sample; at 8 bits only 256 remain, and the
rounding adds a hiss, <i>quantization noise</i> — about 6 dB more for every bit taken away
(the <i>Sound</i> tab).</li>
<li><b>Pictures.</b> Old 8-bit consoles had palettes of 256 colours: smooth skies turned into bands with
hard edges. Fewer bits per channel, fewer colours, more banding (the <i>Picture</i> tab).</li>
<li><b>Neural networks.</b> Quantization is applied mostly to the <b>weights</b>. They are split into
blocks; each block stores one scale (and, for some types, a minimum) in higher precision and its values
as small integers. llama.cpp has three families: <b>type-0</b> (symmetric: a scale per block, Q4_0,
Q8_0), <b>type-1</b> (asymmetric: a scale and a minimum, Q4_1) and <b>K-quants</b> (blocks grouped in
256-value super-blocks whose scales are themselves quantized: Q2_K … Q6_K). I-quants (IQ*) go further
with lattice codebooks and an importance matrix (the <i>Model weights</i> tab quantizes a real tensor to
each of them).</li>
</ul>
<table cellspacing="0" cellpadding="4" border="1" style="border-collapse: collapse; border-color: #bbb">
<tr><th>format</th><th>bits per weight</th><th>vs FP32</th><th>used for</th></tr>
<tr><td>FP32</td><td>32</td><td>1×</td><td>training, reference</td></tr>
<tr><td>FP16 / BF16</td><td>16</td><td>2× smaller</td><td>the usual published checkpoints</td></tr>
<tr><td>Q8_0 (INT8 + scale)</td><td>8.5</td><td>~4× smaller</td><td>practically lossless</td></tr>
<tr><td>Q4_K_M (mostly INT4)</td><td>~4.9</td><td>~6.5× smaller</td><td>the common default</td></tr>
<tr><td>1.58-bit (ternary −1, 0, 1; log₂3 ≈ 1.58)</td><td>~1.6–2</td><td>up to ~20× smaller</td>
<td>DeepSeek R1 671B: 720 GB → 131 GB</td></tr>
</table>
<p>Not every layer can take the same treatment: quantize all of DeepSeek's layers to 1.58 bits and it
starts repeating itself; unsloth's <i>dynamic</i> recipe keeps attention and a few sensitive tensors at
higher precision (Kvant's <code>dynamic-1.58</code> policy on the Convert page). Models trained knowing
they will be quantized (<b>QAT</b>, quantization-aware training, such as Gemma 3's Q4 releases) lose
even less.</p>
<p><b>How to judge a quant.</b> The raw difference between original and quantized weights says little
about quality: the same error hurts some tensors far more than others. Look at what the model
<i>outputs</i>: perplexity on a reference text, and better, the <b>KL divergence</b> between the
original's and the quant's next-token distributions, token by token. Done well, quantization leaves a
model's answers nearly unchanged — like a little added noise in audio — while making it several times
smaller and faster. The Compare page measures exactly this for the quants in your library.</p>
"""


# --- the picture ------------------------------------------------------------------------------------
def demo_image(width: int = 440, height: int = 290) -> np.ndarray:
    """A procedural landscape full of smooth gradients (sky, sun, sea, hills): uint8 RGB (h, w, 3)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / (width - 1), y / (height - 1)
    horizon = 0.62
    sky_top = np.array([0.10, 0.18, 0.45], np.float32)
    sky_mid = np.array([0.85, 0.45, 0.55], np.float32)
    sky_low = np.array([1.00, 0.78, 0.42], np.float32)
    t = np.clip(v / horizon, 0, 1)[..., None]
    sky = np.where(
        t < 0.6, sky_top + (sky_mid - sky_top) * (t / 0.6), sky_mid + (sky_low - sky_mid) * ((t - 0.6) / 0.4)
    )
    # the sun and its glow
    sx, sy = 0.68, horizon - 0.08
    d = np.sqrt(((u - sx) * width / height) ** 2 + (v - sy) ** 2)[..., None]
    glow = np.exp(-((d / 0.22) ** 2)) * 0.55
    sky = sky + glow * np.array([1.0, 0.75, 0.35], np.float32)
    sky = np.where(d < 0.075, np.array([1.0, 0.93, 0.70], np.float32), sky)
    # the sea: the sky's colours darkened, with soft ripples
    depth = np.clip((v - horizon) / (1 - horizon), 0, 1)[..., None]
    d0 = depth[..., 0]
    ripple = 0.025 * np.sin(v * 260 * (1 - 0.5 * d0) + 2.5 * np.sin(u * 9))[..., None] * (1 - depth)
    sea = sky_low * (0.55 - 0.35 * depth) + np.array([0.05, 0.12, 0.25], np.float32) * depth + ripple
    refl = np.exp(-(((u - sx) / (0.05 + 0.12 * depth[..., 0])) ** 2))[..., None] * (1 - depth) * 0.5
    sea = sea + refl * np.array([1.0, 0.8, 0.45], np.float32)
    img = np.where((v < horizon)[..., None], sky, sea)
    # two ranges of hills, each a smooth gradient
    for base, amp, freq, phase, col in (
        (0.55, 0.07, 7.0, 0.3, (0.28, 0.20, 0.38)),
        (0.60, 0.05, 11.0, 1.7, (0.16, 0.12, 0.26)),
    ):
        ridge = base - amp * (0.6 * np.sin(u * freq + phase) + 0.4 * np.sin(u * freq * 2.3 + 2 * phase))
        hill = (v > ridge) & (v < horizon + 0.005)
        shade = np.clip((v - ridge) / 0.12, 0, 1)[..., None]
        colour = np.array(col, np.float32) * (1.0 - 0.35 * shade) + glow * 0.25
        img = np.where(hill[..., None], colour, img)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


_BAYER4 = (
    np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]], np.float32) / 16 - 0.5 + 1 / 32
)


def reduce_bits(img: np.ndarray, bits: int, dither: bool = False) -> np.ndarray:
    """Keep ``bits`` bits per channel (2**bits levels, spread over 0..255), optionally ordered-dithered."""
    levels = 2**bits - 1
    x = img.astype(np.float32) / 255 * levels
    if dither:
        h, w = img.shape[:2]
        x = x + np.tile(_BAYER4, (h // 4 + 1, w // 4 + 1))[:h, :w, None]
    q = np.clip(np.round(x), 0, levels)
    return (q / levels * 255 + 0.5).astype(np.uint8)


def to_qimage(img: np.ndarray) -> QImage:
    h, w, _ = img.shape
    data = np.ascontiguousarray(img)
    return QImage(data.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


# --- the sound --------------------------------------------------------------------------------------------
def demo_chord(seconds: float = 1.6, rate: int = SAMPLE_RATE) -> np.ndarray:
    """An A-minor chord (A3 C4 E4) with a soft attack and decay, in [-1, 1] (float64)."""
    t = np.arange(int(seconds * rate)) / rate
    sig = np.zeros_like(t)
    for f, a in ((220.0, 0.5), (261.63, 0.35), (329.63, 0.3), (440.0, 0.12)):
        sig += a * np.sin(2 * np.pi * f * t + 0.3 * np.sin(2 * np.pi * 5 * t) * (f / 440))
    env = np.minimum(t / 0.03, 1.0) * np.exp(-t * 1.2)
    sig *= env
    return sig / np.abs(sig).max() * 0.9


def quantize_audio(sig: np.ndarray, bits: int) -> np.ndarray:
    """Round to a signed ``bits``-bit integer grid (mid-tread, as PCM): 2**bits levels over [-1, 1)."""
    scale = 2 ** (bits - 1)
    return np.clip(np.round(sig * scale), -scale, scale - 1) / scale


def snr_db(sig: np.ndarray, q: np.ndarray) -> float:
    e = float(np.sum((q - sig) ** 2))
    return math.inf if e == 0 else 10 * math.log10(float(np.sum(sig**2)) / e)


def write_wav(path: Path, sig: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    pcm = (np.clip(sig, -1, 1) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


# --- the model weights ------------------------------------------------------------------------------------
DEMO_TYPES = (
    "F16",
    "Q8_0",
    "Q6_K",
    "Q5_K",
    "Q5_0",
    "Q4_K",
    "Q4_0",
    "IQ4_XS",
    "MXFP4",
    "Q3_K",
    "IQ3_XXS",
    "Q2_K",
    "IQ2_XXS",
    "TQ2_0",
    "IQ1_S",
)
MAX_VALUES = 256 * 1024  # values of the tensor that are quantized (its first rows)
HIST_BINS = 121


@dataclass(frozen=True, slots=True)
class TypeResult:
    type: str
    bits_per_weight: float
    nbytes: int
    rmse: float
    snr_db: float
    rel_err: float
    counts: tuple[int, ...]  # histogram of the dequantized values over the demo's bins


@dataclass(frozen=True, slots=True)
class TensorDemo:
    model: str
    tensor: str
    shape: tuple[int, ...]
    source_type: str
    n_values: int
    edges: tuple[float, ...]
    counts: tuple[int, ...]  # histogram of the original values
    results: tuple[TypeResult, ...]


@dataclass(frozen=True, slots=True)
class TensorChoice:
    name: str
    shape: tuple[int, ...]
    type: str
    bpw: float


def list_tensors(path: str | Path) -> list[TensorChoice]:
    """The 2-D tensors of a GGUF, the most precise first (those show quantization best)."""
    with open_gguf(path) as g:
        out = []
        for t in g.tensors:
            if len(t.shape) != 2:
                continue
            fmt = format_of(t.type)
            out.append(TensorChoice(t.name, tuple(t.shape), fmt.name, fmt.type_size * 8 / fmt.block_size))
    out.sort(key=lambda c: (-c.bpw, not c.name.startswith("blk."), _layer(c.name), c.name))
    return out


def _layer(name: str) -> int:
    part = name.split(".")[1] if name.startswith("blk.") else ""
    return int(part) if part.isdigit() else -1


def tensor_values(
    path: str | Path, name: str, max_values: int = MAX_VALUES
) -> tuple[np.ndarray, TensorChoice]:
    """The first rows of a tensor (at most ``max_values`` values), dequantized to float32."""
    with open_gguf(path) as g:
        t = g.tensor(name)
        shape = tuple(t.shape)
        fmt = format_of(t.type)
        ne0 = shape[-1]
        n_rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        rows = max(1, min(n_rows, max_values // ne0))
        row_bytes = t.nbytes // n_rows
        raw = np.asarray(g.raw(name))[: rows * row_bytes]
        x = dequantize(raw, fmt.name, (rows, ne0))
    return np.asarray(x, np.float32), TensorChoice(name, shape, fmt.name, fmt.type_size * 8 / fmt.block_size)


def tensor_demo(
    path: str | Path, name: str, types: tuple[str, ...] = DEMO_TYPES, cancel: Any = None
) -> Generator[Progress, None, TensorDemo]:
    """Quantize the tensor's first values to every type and back: the error and histogram of each."""
    yield Progress("read", 0, len(types), f"reading {name}")
    x, choice = tensor_values(path, name)
    flat = x.reshape(-1)
    n = flat.size // 256 * 256
    if n == 0:
        raise ValueError(f"{name} has fewer than 256 values")
    blocks = flat[:n].reshape(-1, 256)  # rows of 256 so that every block size fits
    lim = float(np.percentile(np.abs(blocks), 99.9)) * 1.25 or 1.0
    edges = np.linspace(-lim, lim, HIST_BINS + 1)
    counts, _ = np.histogram(blocks, edges)
    support = {s.name: s for s in supported()}
    ones = np.ones(256, np.float32)
    results = []
    base = blocks.astype(np.float64)
    sw = float(np.sum(base * base))
    for i, tname in enumerate(types):
        if cancel is not None:
            cancel.raise_if_cancelled()
        yield Progress("quantize", i, len(types), f"quantizing to {tname}")
        s = support.get(tname)
        if s is None or not s.can_quantize:
            continue
        q = quantize(blocks, tname, ones if s.needs_imatrix else None)
        y = dequantize(q, tname, blocks.shape).astype(np.float64)
        se = float(np.sum((y - base) ** 2))
        c, _ = np.histogram(y, edges)
        results.append(
            TypeResult(
                tname,
                q.nbytes * 8 / n,
                round(choice_size(choice, q.nbytes * 8 / n)),
                math.sqrt(se / n),
                math.inf if se == 0 else 10 * math.log10(sw / se),
                math.sqrt(se / sw) if sw else 0.0,
                tuple(int(v) for v in c),
            )
        )
    yield Progress("quantize", len(types), len(types), "done")
    return TensorDemo(
        Path(path).name,
        name,
        choice.shape,
        choice.type,
        n,
        tuple(float(e) for e in edges),
        tuple(int(v) for v in counts),
        tuple(results),
    )


def choice_size(choice: TensorChoice, bpw: float) -> float:
    """Bytes of the whole tensor at ``bpw`` bits per weight."""
    return int(np.prod(choice.shape)) * bpw / 8


# --- the page -------------------------------------------------------------------------------------------
class _Num(QTableWidgetItem):
    def __init__(self, text: str, key: float) -> None:
        super().__init__(text)
        self.key = key
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return self.key < other.key if isinstance(other, _Num) else super().__lt__(other)


def _scrolling(widget: QWidget) -> QScrollArea:
    """A tab that scrolls instead of forcing the window wider than a laptop screen."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    return area


class LearnPage(QWidget):
    def __init__(self, paths: KvantPaths, workers: WorkerPool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.paths = paths
        self.workers = workers
        self._entries: list[LibraryEntry] = []
        self.demo: TensorDemo | None = None
        self._tensor_worker: GeneratorWorker | None = None
        self.demo_types: tuple[str, ...] = DEMO_TYPES
        self._list_worker: GeneratorWorker | None = None
        self._image = demo_image()
        self._chord = demo_chord()
        self._effects: dict[str, Any] = {}
        self.tabs = QTabWidget()
        for tab, title in (
            (self._intro_tab(), "What it is"),
            (self._image_tab(), "Picture"),
            (self._sound_tab(), "Sound"),
            (self._tensor_tab(), "Model weights"),
        ):
            self.tabs.addTab(_scrolling(tab), title)
        self.tabs.currentChanged.connect(self._tab_changed)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("<h2>Learn</h2>"))
        layout.addWidget(self.tabs, 1)
        self.set_image_bits(3)
        self.set_sound_bits(4)

    # --- tabs ---------------------------------------------------------------------------------------
    def _intro_tab(self) -> QWidget:
        self.intro = QTextBrowser()
        self.intro.setOpenExternalLinks(True)
        self.intro.setHtml(INTRO_HTML)
        return self.intro

    def _image_tab(self) -> QWidget:
        self.image_slider = QSlider(Qt.Orientation.Horizontal)
        self.image_slider.setRange(1, 8)
        self.image_slider.setPageStep(1)
        self.image_slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.image_slider.setTickInterval(1)
        self.image_slider.setToolTip("Bits per colour channel (←/→ with the keyboard)")
        self.image_slider.valueChanged.connect(self.set_image_bits)
        self.image_bits_label = QLabel("")
        self.image_bits_label.setMinimumWidth(150)
        self.dither_check = QCheckBox("&Dither")
        self.dither_check.setToolTip("Ordered dithering trades banding for a fine pattern of noise")
        self.dither_check.toggled.connect(lambda _on: self.set_image_bits(self.image_slider.value()))
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Bits per channel:"))
        controls.addWidget(self.image_slider, 1)
        controls.addWidget(self.image_bits_label)
        controls.addWidget(self.dither_check)
        self.original_view = QLabel()
        self.original_view.setPixmap(QPixmap.fromImage(to_qimage(self._image)))
        self.original_view.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.reduced_view = QLabel()
        self.reduced_view.setAlignment(Qt.AlignmentFlag.AlignCenter)
        grid = QGridLayout()
        grid.addWidget(QLabel("<b>Original</b> — 8 bits per channel, 16.7 million colours"), 0, 0)
        self.reduced_title = QLabel("")
        grid.addWidget(self.reduced_title, 0, 1)
        grid.addWidget(self.original_view, 1, 0)
        grid.addWidget(self.reduced_view, 1, 1)
        self.image_stats = QLabel("")
        self.image_stats.setWordWrap(True)
        tab = QWidget()
        layout = QVBoxLayout(tab)
        layout.addWidget(
            _para(
                "Each pixel is three numbers (red, green, blue) of 8 bits: 256 levels each. Lower the "
                "bits and every channel is rounded to fewer levels: smooth gradients break into bands "
                "with hard edges — the look of old 256-colour games. The error is largest where the "
                "picture changes slowly."
            )
        )
        layout.addLayout(controls)
        layout.addLayout(grid)
        layout.addWidget(self.image_stats)
        layout.addStretch(1)
        return tab

    def _sound_tab(self) -> QWidget:
        self.sound_slider = QSlider(Qt.Orientation.Horizontal)
        self.sound_slider.setRange(1, 16)
        self.sound_slider.setPageStep(1)
        self.sound_slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.sound_slider.setTickInterval(1)
        self.sound_slider.setToolTip("Bits per sample (←/→ with the keyboard)")
        self.sound_slider.valueChanged.connect(self.set_sound_bits)
        self.sound_bits_label = QLabel("")
        self.sound_bits_label.setMinimumWidth(170)
        self.play_original = QPushButton("▶ Play original")
        self.play_quant = QPushButton("▶ Play quantized")
        for b, which in ((self.play_original, "original"), (self.play_quant, "quantized")):
            b.clicked.connect(lambda _c=False, w=which: self.play(w))
            b.setToolTip(f"Play the {which} chord" if AUDIO_AVAILABLE else NO_AUDIO_WHY)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Bits per sample:"))
        controls.addWidget(self.sound_slider, 1)
        controls.addWidget(self.sound_bits_label)
        controls.addWidget(self.play_original)
        controls.addWidget(self.play_quant)
        self.wave_view = WaveformView()
        self.wave_view.steps = True
        self.wave_view.title = "First 12 ms"
        self.error_view = WaveformView()
        self.error_view.title = "Error (quantized − original), scaled to fit"
        self.whole_view = WaveformView()
        self.whole_view.title = "The whole chord (1.6 s)"
        self.sound_stats = QLabel("")
        self.sound_stats.setWordWrap(True)
        tab = QWidget()
        layout = QVBoxLayout(tab)
        layout.addWidget(
            _para(
                "A CD stores each sample of sound as a 16-bit number: 65,536 levels. Take bits away and "
                "each sample is rounded to the nearest remaining level; the rounding error is heard as "
                "hiss. Every bit removed makes the error twice as large (6 dB louder)."
                + ("" if AUDIO_AVAILABLE else " <i>(Play opens the sound in your audio player.)</i>")
            )
        )
        layout.addLayout(controls)
        layout.addWidget(self.wave_view, 3)
        layout.addWidget(self.error_view, 2)
        layout.addWidget(self.whole_view, 2)
        layout.addWidget(self.sound_stats)
        return tab

    def _tensor_tab(self) -> QWidget:
        self.model_combo = QComboBox()
        self.model_combo.setMinimumContentsLength(24)
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.tensor_combo = QComboBox()
        self.tensor_combo.setMinimumContentsLength(30)
        self.tensor_combo.currentIndexChanged.connect(lambda _i: self.run_tensor_demo())
        head = QHBoxLayout()
        head.addWidget(QLabel("Model:"))
        head.addWidget(self.model_combo, 1)
        head.addWidget(QLabel("Tensor:"))
        head.addWidget(self.tensor_combo, 1)
        self.tensor_label = QLabel("Choose a model from the library.")
        self.tensor_label.setWordWrap(True)
        self.type_table = QTableWidget(0, 5)
        self.type_table.setHorizontalHeaderLabels(
            ("Type", "Bits/weight", "Tensor size", "RMS error", "SNR dB")
        )
        self.type_table.verticalHeader().setVisible(False)
        self.type_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.type_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.type_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.type_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.type_table.horizontalHeader().setStretchLastSection(True)
        self.type_table.itemSelectionChanged.connect(self._show_histogram)
        self.histogram = Histogram()
        self.error_chart = ScatterChart()
        self.error_chart.placeholder = "RMS error per type appears here."
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.histogram)
        right.addWidget(self.error_chart)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.type_table)
        split.addWidget(right)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setSizes([470, 500])
        tab = QWidget()
        layout = QVBoxLayout(tab)
        layout.addWidget(
            _para(
                "A real weight tensor, quantized to each type the way llama.cpp does it (blocks with "
                "their own scales) and dequantized again. The histogram shows how the values collapse "
                "onto fewer levels; select a type to see its histogram. The error falls about twofold per"
                " extra bit — but what it costs the model is measured by KL divergence, on the Compare "
                "page."
            )
        )
        layout.addLayout(head)
        layout.addWidget(self.tensor_label)
        layout.addWidget(split, 1)
        return tab

    # --- picture ------------------------------------------------------------------------------------
    def set_image_bits(self, bits: int) -> None:
        if self.image_slider.value() != bits:
            self.image_slider.setValue(bits)  # calls back here
            return
        reduced = reduce_bits(self._image, bits, self.dither_check.isChecked())
        self.reduced = reduced
        self.reduced_view.setPixmap(QPixmap.fromImage(to_qimage(reduced)))
        colours = len(np.unique(reduced.reshape(-1, 3), axis=0))
        self.image_bits_label.setText(f"{bits} bit{'s' if bits > 1 else ''} · {2**bits} levels")
        self.reduced_title.setText(
            f"<b>{bits} bit{'s' if bits > 1 else ''} per channel</b> — {2 ** (3 * bits):,} possible colours"
        )
        p = psnr(self._image, reduced)
        h, w, _ = self._image.shape
        self.image_stats.setText(
            f"{colours:,} distinct colours used · {3 * bits} bits per pixel instead of 24 "
            f"({human_size(h * w * 3 * bits / 8)} instead of {human_size(h * w * 3)}) · "
            f"PSNR {'∞' if math.isinf(p) else f'{p:.1f}'} dB (higher is closer to the original)"
        )

    # --- sound -------------------------------------------------------------------------------------
    def set_sound_bits(self, bits: int) -> None:
        if self.sound_slider.value() != bits:
            self.sound_slider.setValue(bits)
            return
        sig = self._chord
        q = quantize_audio(sig, bits)
        self.quantized_sound = q
        start = int(0.25 * SAMPLE_RATE)
        n = int(0.012 * SAMPLE_RATE)
        self.wave_view.set_signals(
            [
                ("original", sig[start : start + n].tolist(), ORIGINAL),
                (f"{bits}-bit", q[start : start + n].tolist(), QUANT),
            ]
        )
        err = q - sig
        peak = float(np.abs(err[start : start + n]).max()) or 1e-9
        self.error_view.set_signals([(f"error (±{peak:.2g})", err[start : start + n].tolist(), ERROR)], None)
        step = max(1, len(sig) // 1200)
        self.whole_view.set_signals(
            [("original", sig[::step].tolist(), ORIGINAL), (f"{bits}-bit", q[::step].tolist(), QUANT)]
        )
        s = snr_db(sig, q)
        self.sound_bits_label.setText(f"{bits} bit{'s' if bits > 1 else ''} · {2**bits:,} levels")
        self.sound_stats.setText(
            f"Signal-to-noise ratio {'∞' if math.isinf(s) else f'{s:.1f}'} dB "
            f"(theory for a full-scale sine: 6.02 × {bits} + 1.76 = {6.02 * bits + 1.76:.1f} dB) · "
            f"{bits * SAMPLE_RATE / 1000:.0f} kbit/s instead of {16 * SAMPLE_RATE / 1000:.0f} kbit/s"
        )

    def play(self, which: str) -> Path:
        """Play the original or the quantized chord (inside Kvant with Qt Multimedia, else in the
        system's audio player); returns the WAV file written."""
        sig = self._chord if which == "original" else self.quantized_sound
        bits = self.sound_slider.value()
        path = write_wav(
            self.paths.cache / f"learn-{which}-{bits if which != 'original' else 16}bit.wav", sig
        )
        if QSoundEffect is None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))
            return path
        effect = self._effects.get(which)
        if effect is None:
            effect = QSoundEffect(self)
            self._effects[which] = effect
        for other in self._effects.values():
            other.stop()
        effect.setSource(QUrl())
        effect.setSource(QUrl.fromLocalFile(str(path)))
        effect.setVolume(0.6)
        effect.play()
        return path

    # --- model weights ------------------------------------------------------------------------------
    def set_entries(self, entries: list[LibraryEntry]) -> None:
        current = self.model_combo.currentData()
        self._entries = list(entries)
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for e in entries:
            self.model_combo.addItem(f"{e.name} · {Path(e.path).name}", e.path)
        pick = current or next((e.path for e in entries if e.id == DEFAULT_MODEL_ID), None)
        i = self.model_combo.findData(pick) if pick else 0
        self.model_combo.setCurrentIndex(max(i, 0) if entries else -1)
        self.model_combo.blockSignals(False)
        if self.model_combo.currentData() != current:
            self._model_changed()

    def _tab_changed(self, index: int) -> None:
        idle = self.demo is None and self._tensor_worker is None and self.tensor_combo.count() > 0
        if self.tabs.tabText(index) == "Model weights" and idle:
            self.run_tensor_demo()

    def _model_changed(self) -> None:
        path = self.model_combo.currentData()
        self.tensor_combo.blockSignals(True)
        self.tensor_combo.clear()
        self.tensor_combo.blockSignals(False)
        if not path:
            return
        self.tensor_label.setText("Reading the model's tensors…")
        worker = GeneratorWorker(_job(lambda: list_tensors(path)))
        worker.signals.result.connect(lambda tensors: self._show_tensors(path, tensors))
        worker.signals.error.connect(lambda err: self.tensor_label.setText(f"Cannot read the model: {err}"))
        self._list_worker = worker
        self.workers.start(worker)

    def _show_tensors(self, path: str, tensors: list[TensorChoice]) -> None:
        if path != self.model_combo.currentData():
            return
        self.tensor_combo.blockSignals(True)
        self.tensor_combo.clear()
        for t in tensors:
            self.tensor_combo.addItem(f"{t.name} ({t.type}, {'×'.join(map(str, t.shape))})", t.name)
        self.tensor_combo.blockSignals(False)
        self.tensor_label.setText(f"{len(tensors)} matrices; the most precise come first.")
        if self.tabs.tabText(self.tabs.currentIndex()) == "Model weights" or self.demo is not None:
            self.run_tensor_demo()

    def run_tensor_demo(self) -> GeneratorWorker | None:
        path, name = self.model_combo.currentData(), self.tensor_combo.currentData()
        if not path or not name:
            return None
        if self._tensor_worker is not None:
            self._tensor_worker.cancel()
        types = self.demo_types
        self.tensor_label.setText(f"Quantizing {name} to {len(types)} types…")
        worker = GeneratorWorker(lambda token: tensor_demo(path, name, types, cancel=token))
        self._tensor_worker = worker
        worker.signals.progress.connect(
            lambda ev: (
                worker is self._tensor_worker
                and ev.message
                and self.tensor_label.setText(
                    f"{ev.message[:1].upper()}{ev.message[1:]}… ({ev.done} of {ev.total})"
                )
            )
        )
        worker.signals.result.connect(lambda demo: worker is self._tensor_worker and self.show_demo(demo))
        worker.signals.error.connect(
            lambda err: (
                worker is self._tensor_worker
                and self.tensor_label.setText(f"<span style='color:#b00020'>{err}</span>")
            )
        )
        worker.signals.finished.connect(lambda: self._tensor_finished(worker))
        return self.workers.start(worker)

    def _tensor_finished(self, worker: GeneratorWorker) -> None:
        if worker is self._tensor_worker:
            self._tensor_worker = None

    def show_demo(self, demo: TensorDemo) -> None:
        self.demo = demo
        t = self.type_table
        t.setSortingEnabled(False)
        t.setRowCount(len(demo.results))
        for row, r in enumerate(demo.results):
            snr = "∞" if math.isinf(r.snr_db) else f"{r.snr_db:.1f}"
            for col, item in enumerate(
                (
                    QTableWidgetItem(r.type),
                    _Num(f"{r.bits_per_weight:.2f}", r.bits_per_weight),
                    _Num(human_size(r.nbytes), r.nbytes),
                    _Num(f"{r.rmse:.2e}", r.rmse),
                    _Num(snr, r.snr_db if not math.isinf(r.snr_db) else 1e9),
                )
            ):
                t.setItem(row, col, item)
        t.setSortingEnabled(True)
        t.sortItems(1, Qt.SortOrder.DescendingOrder)
        shape = "×".join(map(str, demo.shape))
        self.tensor_label.setText(
            f"<b>{demo.tensor}</b> of {demo.model} ({shape}, stored as {demo.source_type}): its first "
            f"{demo.n_values:,} values, quantized in rows of 256. The reference is the {demo.source_type} "
            "values themselves, so a type at or above the stored precision shows (almost) no error."
        )
        pick = next((row for row in range(t.rowCount()) if t.item(row, 0).text() == "Q2_K"), 0)
        t.selectRow(pick)
        self._show_histogram()

    def _show_histogram(self) -> None:
        if self.demo is None:
            return
        rows = self.type_table.selectionModel().selectedRows()
        series = [(f"{self.demo.source_type} (original)", list(self.demo.counts), ORIGINAL)]
        name = self.type_table.item(rows[0].row(), 0).text() if rows else ""
        self.error_chart.set_points(
            [
                ChartPoint(r.type, r.bits_per_weight, r.rmse, r.type == name)
                for r in self.demo.results
                if r.rmse > 0
            ],
            "bits per weight",
            "RMS error",
            log_y=True,
        )
        if rows:
            r = next((x for x in self.demo.results if x.type == name), None)
            if r is not None:
                series.append((f"{r.type} ({r.bits_per_weight:.2f} bpw)", list(r.counts), QUANT))
        self.histogram.set_data(self.demo.edges, series)


def _para(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def _job(fn):
    def factory(_token):
        return fn()
        yield  # pragma: no cover - makes this a generator

    return factory
