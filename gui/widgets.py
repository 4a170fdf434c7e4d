"""Small reusable widgets."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPalette, QPen
from PySide6.QtWidgets import QMessageBox, QSizePolicy, QWidget

USED = QColor("#d9822b")
MODEL = QColor("#2b7bd9")
FREE = QColor("#d8dde3")


class StackedBar(QWidget):
    """A horizontal bar of coloured segments ``(label, bytes, colour)`` over a total."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._segments: list[tuple[str, int, QColor]] = []
        self._total = 0
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumHeight(22)

    def sizeHint(self) -> QSize:
        return QSize(300, 22)

    def set_segments(self, total: int, segments: list[tuple[str, int, QColor]]) -> None:
        self._total = max(int(total), 1)
        self._segments = segments
        self.setToolTip("\n".join(f"{label}: {n / 2**30:.2f} GiB" for label, n, _ in segments))
        self.update()

    def segments(self) -> list[tuple[str, int, QColor]]:
        return list(self._segments)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(FREE)
        p.drawRoundedRect(rect, 4, 4)
        x = rect.left()
        for _label, n, colour in self._segments:
            w = rect.width() * min(max(n, 0) / self._total, 1.0)
            p.setBrush(colour)
            p.drawRect(QRectF(x, rect.top(), w, rect.height()))
            x += w
        p.setPen(self.palette().color(QPalette.ColorRole.Mid))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRoundedRect(rect, 4, 4)


# --- shared helpers ------------------------------------------------------------------------------
def human_size(n: float) -> str:
    """Bytes as KiB / MiB / GiB, the way the pages show sizes."""
    n = float(n)
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    if n >= 2**10:
        return f"{n / 2**10:.0f} KiB"
    return f"{n:.0f} B"


def human_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def show_error(parent: QWidget, title: str, text: str, detail: str = "") -> QMessageBox:
    """A native warning box that does not block the event loop (window-modal, opened with ``open``)."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, parent)
    if detail:
        box.setInformativeText(detail)
    box.setWindowModality(Qt.WindowModality.WindowModal)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.open()
    return box


def _nice_step(span: float, ticks: int = 5) -> float:
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 or a < 0.001:
        return f"{v:.0e}"
    if a >= 10:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


# --- charts ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChartPoint:
    label: str
    x: float
    y: float
    highlight: bool = False


class ScatterChart(QWidget):
    """Labelled points on x/y axes (y optionally logarithmic), joined in x order: e.g. size vs error."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._points: list[ChartPoint] = []
        self.x_label = ""
        self.y_label = ""
        self.log_y = False
        self.placeholder = "Nothing to show yet."
        self.setMinimumSize(260, 200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(420, 300)

    def set_points(
        self, points: list[ChartPoint], x_label: str = "", y_label: str = "", log_y: bool = False
    ) -> None:
        self._points = [p for p in points if math.isfinite(p.x) and math.isfinite(p.y)]
        if log_y:
            self._points = [p for p in self._points if p.y > 0]
        self.x_label, self.y_label, self.log_y = x_label, y_label, log_y
        self.setToolTip("\n".join(f"{p.label}: {p.x:.4g}, {p.y:.4g}" for p in self._points))
        self.update()

    def points(self) -> list[ChartPoint]:
        return list(self._points)

    def _ty(self, y: float) -> float:
        return math.log10(y) if self.log_y else y

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        p.fillRect(self.rect(), pal.color(QPalette.ColorRole.Base))
        text_colour = pal.color(QPalette.ColorRole.Text)
        fm = p.fontMetrics()
        if not self._points:
            p.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
            return
        left, right, top, bottom = 16 + fm.horizontalAdvance("0.0001") + fm.height(), 24, 14, 28 + fm.height()
        plot = QRectF(left, top, max(self.width() - left - right, 10), max(self.height() - top - bottom, 10))
        xs = [pt.x for pt in self._points]
        ys = [self._ty(pt.y) for pt in self._points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        pad_x = (x1 - x0) * 0.08 or max(abs(x0) * 0.1, 1.0)
        x0, x1 = max(0.0, x0 - pad_x) if x0 >= 0 else x0 - pad_x, x1 + pad_x
        if self.log_y:
            y0, y1 = math.floor(y0 - 0.05), math.ceil(y1 + 0.05)
            if y1 - y0 < 1:
                y1 = y0 + 1
        else:
            pad_y = (y1 - y0) * 0.1 or max(abs(y1) * 0.1, 1e-6)
            y0, y1 = (max(0.0, y0 - pad_y) if y0 >= 0 else y0 - pad_y), y1 + pad_y

        def px(x: float) -> float:
            return plot.left() + (x - x0) / (x1 - x0) * plot.width()

        def py(y: float) -> float:
            return plot.bottom() - (y - y0) / (y1 - y0) * plot.height()

        grid = QColor(pal.color(QPalette.ColorRole.Mid))
        grid.setAlpha(70)
        p.setPen(QPen(grid, 1))
        step = _nice_step(x1 - x0)
        x = math.ceil(x0 / step) * step
        while x <= x1 + 1e-9:
            p.setPen(QPen(grid, 1))
            p.drawLine(QPointF(px(x), plot.top()), QPointF(px(x), plot.bottom()))
            p.setPen(text_colour)
            label = _fmt_tick(x)
            p.drawText(
                QPointF(px(x) - fm.horizontalAdvance(label) / 2, plot.bottom() + fm.ascent() + 4), label
            )
            x += step
        if self.log_y:
            ticks = [float(v) for v in range(int(y0), int(y1) + 1)]
        else:
            ystep = _nice_step(y1 - y0)
            ticks, y = [], math.ceil(y0 / ystep) * ystep
            while y <= y1 + 1e-12:
                ticks.append(y)
                y += ystep
        for y in ticks:
            p.setPen(QPen(grid, 1))
            p.drawLine(QPointF(plot.left(), py(y)), QPointF(plot.right(), py(y)))
            p.setPen(text_colour)
            label = _fmt_tick(10**y if self.log_y else y)
            p.drawText(
                QPointF(plot.left() - fm.horizontalAdvance(label) - 4, py(y) + fm.ascent() / 2 - 1), label
            )
        p.setPen(QPen(pal.color(QPalette.ColorRole.Mid), 1))
        p.drawRect(plot)
        # axis titles
        p.setPen(text_colour)
        p.drawText(
            QRectF(plot.left(), self.height() - fm.height() - 4, plot.width(), fm.height()),
            Qt.AlignmentFlag.AlignCenter,
            self.x_label,
        )
        p.save()
        p.translate(fm.height() * 0.2, plot.center().y())
        p.rotate(-90)
        p.drawText(QRectF(-plot.height() / 2, 0, plot.height(), fm.height()), Qt.AlignmentFlag.AlignCenter,
                   self.y_label + (" (log scale)" if self.log_y else ""))  # fmt: skip
        p.restore()
        # the points, joined in x order
        pts = sorted(self._points, key=lambda q: q.x)
        p.setPen(QPen(MODEL, 1.5, Qt.PenStyle.DashLine))
        for a, b in itertools.pairwise(pts):
            p.drawLine(QPointF(px(a.x), py(self._ty(a.y))), QPointF(px(b.x), py(self._ty(b.y))))
        centres = [QPointF(px(pt.x), py(self._ty(pt.y))) for pt in pts]
        for pt, c in zip(pts, centres, strict=True):
            p.setPen(QPen(pal.color(QPalette.ColorRole.Base), 1.5))
            p.setBrush(USED if pt.highlight else MODEL)
            p.drawEllipse(c, 5.5, 5.5)
        # labels where they do not collide with one already drawn (every point is in the tooltip)
        p.setPen(text_colour)
        taken = [QRectF(c.x() - 6, c.y() - 6, 12, 12) for c in centres]  # labels never cover a point
        for pt, c in sorted(zip(pts, centres, strict=True), key=lambda pc: (not pc[0].highlight, pc[0].y)):
            w, h = fm.horizontalAdvance(pt.label), fm.height()
            for dx, dy in ((8, -6 - h), (-8 - w, -6 - h), (8, 6), (-8 - w, 6)):
                r = QRectF(c.x() + dx, c.y() + dy, w, h)
                if plot.contains(r) and not any(r.intersects(t) for t in taken):
                    taken.append(r)
                    p.drawText(r, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, pt.label)
                    break


class Histogram(QWidget):
    """Counts over shared bins: the first series as filled bars, the others as outlined bars on top."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._edges: list[float] = []
        self._series: list[tuple[str, list[float], QColor]] = []
        self.setMinimumSize(240, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(420, 220)

    def set_data(self, edges, series: list[tuple[str, list[float], QColor]]) -> None:
        self._edges = [float(e) for e in edges]
        self._series = [(label, [float(c) for c in counts], colour) for label, counts, colour in series]
        self.update()

    def series(self) -> list[tuple[str, list[float], QColor]]:
        return list(self._series)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        p.fillRect(self.rect(), pal.color(QPalette.ColorRole.Base))
        fm = p.fontMetrics()
        if not self._series or len(self._edges) < 2:
            p.setPen(pal.color(QPalette.ColorRole.PlaceholderText))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No data yet.")
            return
        plot = QRectF(10, 8 + fm.height() + 4, self.width() - 20, self.height() - 2 * fm.height() - 22)
        top = max((max(c) for _, c, _ in self._series if c), default=1.0) or 1.0
        n = len(self._edges) - 1
        bw = plot.width() / n
        for k, (_label, counts, colour) in enumerate(self._series):
            fill = QColor(colour)
            fill.setAlpha(200 if k == 0 else 0)
            p.setBrush(fill if k == 0 else Qt.BrushStyle.NoBrush)
            p.setPen(Qt.PenStyle.NoPen if k == 0 else QPen(colour, 1.6))
            for i, c in enumerate(counts[:n]):
                if c <= 0:
                    continue
                h = plot.height() * c / top
                p.drawRect(
                    QRectF(plot.left() + i * bw, plot.bottom() - h, max(bw - (1 if k == 0 else 0), 1), h)
                )
        p.setPen(QPen(pal.color(QPalette.ColorRole.Mid), 1))
        p.drawLine(plot.bottomLeft(), plot.bottomRight())
        p.setPen(pal.color(QPalette.ColorRole.Text))
        lo, hi = _fmt_tick(self._edges[0]), _fmt_tick(self._edges[-1])
        y = plot.bottom() + fm.ascent() + 4
        p.drawText(QPointF(plot.left(), y), lo)
        p.drawText(QPointF(plot.right() - fm.horizontalAdvance(hi), y), hi)
        p.drawText(QPointF(plot.center().x() - fm.horizontalAdvance("0") / 2, y), "0")
        x = plot.left()
        for label, _counts, colour in self._series:
            p.fillRect(QRectF(x, 8, 12, fm.height() - 4), colour)
            p.drawText(QPointF(x + 16, 8 + fm.ascent() - 2), label)
            x += 16 + fm.horizontalAdvance(label) + 18


class WaveformView(QWidget):
    """Sample sequences drawn as lines over a symmetric vertical range (auto or fixed)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._signals: list[tuple[str, list[float], QColor]] = []
        self.y_range: float | None = 1.0
        self.title = ""
        self.steps = False
        self.setMinimumSize(240, 110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:
        return QSize(420, 150)

    def set_signals(
        self, signals: list[tuple[str, list[float], QColor]], y_range: float | None = 1.0
    ) -> None:
        self._signals = [(label, [float(v) for v in s], c) for label, s, c in signals]
        self.y_range = y_range
        self.update()

    def signals(self) -> list[tuple[str, list[float], QColor]]:
        return list(self._signals)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        p.fillRect(self.rect(), pal.color(QPalette.ColorRole.Base))
        fm = p.fontMetrics()
        plot = QRectF(8, 6 + fm.height(), self.width() - 16, self.height() - 12 - fm.height())
        p.setPen(QPen(pal.color(QPalette.ColorRole.Mid), 1, Qt.PenStyle.DotLine))
        p.drawLine(QPointF(plot.left(), plot.center().y()), QPointF(plot.right(), plot.center().y()))
        amp = self.y_range
        if amp is None:
            amp = max((max((abs(v) for v in s), default=0.0) for _, s, _ in self._signals), default=0.0)
        amp = amp or 1.0
        for _label, samples, colour in self._signals:
            if len(samples) < 2:
                continue
            path = QPainterPath()
            n = len(samples)
            for i, v in enumerate(samples):
                x = plot.left() + plot.width() * i / (n - 1)
                y = plot.center().y() - max(-1.0, min(1.0, v / amp)) * plot.height() / 2
                if i == 0:
                    path.moveTo(x, y)
                elif self.steps:
                    path.lineTo(x, path.currentPosition().y())
                    path.lineTo(x, y)
                else:
                    path.lineTo(x, y)
            p.setPen(QPen(colour, 1.4))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawPath(path)
        x = plot.left()
        p.setPen(pal.color(QPalette.ColorRole.Text))
        if self.title:
            p.drawText(QPointF(x, 4 + fm.ascent()), self.title)
            x += fm.horizontalAdvance(self.title) + 16
        for label, _s, colour in self._signals:
            p.fillRect(QRectF(x, 6, 12, fm.height() - 4), colour)
            p.drawText(QPointF(x + 16, 4 + fm.ascent()), label)
            x += 16 + fm.horizontalAdvance(label) + 18


def is_dark(widget: QWidget) -> bool:
    """Whether ``widget`` is drawn with a dark palette (the system's dark mode)."""
    return widget.palette().color(QPalette.ColorRole.Window).lightness() < 128


def tint(widget: QWidget, light: str, dark: str) -> QColor:
    """A background colour that suits the palette: ``light`` on a light theme, ``dark`` on a dark one."""
    return QColor(dark if is_dark(widget) else light)
