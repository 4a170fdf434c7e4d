"""Small reusable widgets."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPalette
from PySide6.QtWidgets import QSizePolicy, QWidget

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
