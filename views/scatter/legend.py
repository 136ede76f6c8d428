"""The scatter's legend / colour bar and its hover tip (private to views/scatter/view.py). The
legend paints itself through ``paint_to`` so the figure export draws the same thing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPoint, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QFrame, QLabel, QVBoxLayout, QWidget

from views.scatter.colour import Legend

WIDTH = 150


class LegendWidget(QWidget):
    """Categorical swatches or a continuous colour bar, beside the plot."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.legend = Legend("")
        self.setFixedWidth(WIDTH)

    def set_legend(self, legend: Legend) -> None:
        self.legend = legend
        self.setVisible(bool(legend.title or legend.entries or legend.bar is not None))
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(WIDTH, 200)

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        try:
            paint_legend(painter, QRectF(self.rect()), self.legend)
        finally:
            painter.end()


def paint_legend(painter: QPainter, rect: QRectF, legend: Legend) -> None:
    """Draw ``legend`` into ``rect`` (white background, title, swatches or bar)."""
    painter.save()
    painter.fillRect(rect, QColor("white"))
    font = QFont(painter.font())
    font.setPointSizeF(9)
    painter.setFont(font)
    line = QFontMetricsF(font).height() * 1.25
    x, y = rect.left() + 6, rect.top() + 4
    painter.setPen(QColor(40, 40, 40))
    if legend.title:
        painter.drawText(QRectF(x, y, rect.width() - 12, line), Qt.AlignmentFlag.AlignLeft,
                         legend.title)
        y += line * 1.2
    if legend.bar is not None:
        y = _paint_bar(painter, QRectF(x, y, rect.width() - 12, rect.bottom() - y - 4), legend)
        y += line * 0.5
    for rgba, text in legend.entries:
        if y + line > rect.bottom():
            break
        painter.fillRect(QRectF(x, y + line * 0.2, line * 0.6, line * 0.6), QColor(*rgba))
        painter.drawText(QRectF(x + line * 0.9, y, rect.width() - line - 12, line),
                         Qt.AlignmentFlag.AlignLeft, text)
        y += line
    painter.restore()


def _paint_bar(painter: QPainter, rect: QRectF, legend: Legend) -> float:
    """A vertical colour bar (high at the top) with its end values; returns its bottom."""
    bar = np.ascontiguousarray(legend.bar[::-1, None, :].repeat(8, 1))  # (levels, 8, 4)
    image = QImage(bar.data, 8, len(bar), 32, QImage.Format.Format_RGBA8888).copy()
    height = min(rect.height(), 240.0)
    target = QRectF(rect.left(), rect.top(), 18, max(height, 20.0))
    painter.drawImage(target, image)

    def label(v: float) -> str:
        return f"{10 ** v:.3g}" if legend.log else f"{v:.3g}"

    text_x = target.right() + 6
    painter.drawText(QRectF(text_x, target.top() - 2, rect.width() - 30, 16),
                     Qt.AlignmentFlag.AlignLeft, label(legend.hi))
    painter.drawText(QRectF(text_x, target.bottom() - 14, rect.width() - 30, 16),
                     Qt.AlignmentFlag.AlignLeft, label(legend.lo))
    return target.bottom()


class HoverTip(QFrame):
    """A tooltip-like popup naming the point under the cursor (text and an optional image)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, Qt.WindowType.ToolTip)
        self.setFrameShape(QFrame.Shape.Box)
        self.setStyleSheet("background: #ffffe8; color: black;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 4)
        self.image = QLabel(self)
        self.text = QLabel(self)
        self.text.setTextFormat(Qt.TextFormat.RichText)
        self.text.setWordWrap(True)
        self.text.setMaximumWidth(420)
        layout.addWidget(self.image)
        layout.addWidget(self.text)

    def show_at(self, global_pos: QPoint, html: str, image: np.ndarray | None = None) -> None:
        """Show ``html`` (and a grey-level image, scaled up) near ``global_pos``."""
        self.text.setText(html)
        self.image.setVisible(image is not None)
        if image is not None:
            self.image.setPixmap(grey_pixmap(image, 72))
        self.adjustSize()
        self.move(global_pos + QPoint(14, 14))
        self.show()


def grey_pixmap(image: np.ndarray, size: int) -> QPixmap:
    """A small grey-level image (any range) as a pixmap about ``size`` pixels wide."""
    a = np.asarray(image, np.float64)
    a = a.reshape(a.shape[0], -1) if a.ndim >= 2 else a.reshape(1, -1)
    span = float(a.max() - a.min())
    g = np.ascontiguousarray(((a - a.min()) / span * 255 if span > 0 else a * 0).astype(np.uint8))
    h, w = g.shape
    img = QImage(g.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
    return QPixmap.fromImage(img).scaled(size, size * h // max(w, 1),
                                         Qt.AspectRatioMode.KeepAspectRatio,
                                         Qt.TransformationMode.FastTransformation)


class LeaveFilter(QObject):
    """Calls ``on_leave`` when the pointer leaves the filtered widget (hides the hover tip)."""

    def __init__(self, on_leave: Callable[[], None]) -> None:
        super().__init__()
        self.on_leave = on_leave

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Leave:
            self.on_leave()
        return False
