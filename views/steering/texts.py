"""The Generate tab's continuations: the baseline and the steered text with the tokens from
their first divergence on shaded, side by side where there is room for both and one above
the other where there is not, the next-token comparison below them, and the same drawn
into a figure."""

from __future__ import annotations

import html

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QPainter, QResizeEvent, QTextDocument
from PySide6.QtWidgets import QLabel, QSplitter, QTextBrowser, QVBoxLayout, QWidget

from engine.api import Generation, first_divergence, shift_text
from views.steering.common import printable

STEERED_BG, BASELINE_BG = "#ffd59e", "#dfe6ee"  # tokens from the first divergence on
SIDE_BY_SIDE = 600  # px: narrower than this, the two texts stack (each keeps a readable width)


def tokens_html(texts: list[str], start: int, colour: str) -> str:
    """Token texts as HTML, the ones from ``start`` on (start >= 0) on a coloured ground."""
    out = []
    for i, text in enumerate(texts):
        piece = html.escape(printable(text)).replace("\n", "\u23ce<br>")
        if 0 <= start <= i:
            piece = f'<span style="background:{colour}">{piece}</span>'
        out.append(piece)
    return "".join(out)


def divergence(baseline: Generation | None, steered: Generation | None) -> int:
    """First new token where the two texts differ so far (-1: none yet)."""
    if baseline is None or steered is None:
        return -1
    a, b = baseline.tokens, steered.tokens
    if not (baseline.done and steered.done):
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
    return first_divergence(a, b)


def comparison_text(baseline: Generation | None, steered: Generation | None, start: int) -> str:
    """Where the finished texts diverge, the next-token KL and the tokens gained and lost
    ("" until both are done)."""
    s = steered
    if s is None or not s.done or baseline is None or not baseline.done:
        return ""
    where = "identical to the baseline" if start < 0 else f"diverges at new token {start}"
    text = f"Steered text {where}; next-token KL(steered \u2016 baseline) {s.kl:.4f}."
    if s.gained or s.lost:
        text += "\nGained: " + shift_text(s.gained[:5]) + "\nLost: " + shift_text(s.lost[:5])
    return text


def paint_html(painter: QPainter, at: QPointF, width: float, text: str) -> float:
    """Draw rich text at ``at`` wrapped to ``width``; the y just below it."""
    doc = QTextDocument()
    font = doc.defaultFont()
    font.setPixelSize(14)
    doc.setDefaultFont(font)
    doc.setHtml(text)
    doc.setTextWidth(width)
    painter.save()
    painter.translate(at)
    doc.drawContents(painter)
    painter.restore()
    return at.y() + doc.size().height()


class TextPair(QSplitter):
    """Two panes side by side from SIDE_BY_SIDE pixels wide, one above the other below it."""

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt's name
        wide = event.size().width() >= SIDE_BY_SIDE
        want = Qt.Orientation.Horizontal if wide else Qt.Orientation.Vertical
        if self.orientation() != want:
            self.setOrientation(want)
        super().resizeEvent(event)


class Continuations(QWidget):
    """The baseline and steered text boxes and the comparison line below them; ``html``
    holds what each box shows."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.html = {"baseline": "", "steered": ""}
        self._shown_divergence = -2  # the divergence the texts were drawn with
        self.pair = TextPair(Qt.Orientation.Horizontal)
        self.baseline_text, self.steered_text = QTextBrowser(), QTextBrowser()
        for title, box in (("Baseline", self.baseline_text), ("Steered", self.steered_text)):
            pane = QWidget()
            v = QVBoxLayout(pane)
            v.setContentsMargins(0, 0, 0, 0)
            v.addWidget(QLabel(f"<b>{title}</b>"))
            box.setOpenLinks(False)
            v.addWidget(box)
            self.pair.addWidget(pane)
        self.pair.setChildrenCollapsible(False)
        self.comparison = QLabel("")
        self.comparison.setWordWrap(True)
        self.comparison.setTextFormat(Qt.TextFormat.PlainText)
        v = QVBoxLayout(self)
        v.setContentsMargins(0, 0, 0, 0)
        v.addWidget(self.pair, 1)
        v.addWidget(self.comparison)

    def render(self, changed: str, prompt: str, baseline: Generation | None, steered: Generation | None) -> None:
        """Redraw the text that changed (both when the divergence point moved): a streamed
        token costs one text box, not two."""
        start = divergence(baseline, steered)
        redraw = {"baseline", "steered"} if start != self._shown_divergence else {changed}
        self._shown_divergence = start
        shown_prompt = html.escape(printable(prompt))
        for which in redraw:
            gen, box, colour = ((baseline, self.baseline_text, BASELINE_BG) if which == "baseline"
                                else (steered, self.steered_text, STEERED_BG))
            body = "" if gen is None else tokens_html(gen.texts, start, colour)
            more = "" if gen is None or gen.done else " \u2026"
            self.html[which] = f'<p><span style="color:#777">{shown_prompt}</span>{body}{more}</p>'
            box.setHtml(self.html[which])
        self.comparison.setText(comparison_text(baseline, steered, start))

    def paint(self, painter: QPainter, rect: QRectF, y: float) -> None:
        """The two texts side by side from ``y`` down in ``rect``, the comparison below."""
        pad, width = 16.0, rect.width() - 32.0
        half = (width - pad) / 2
        heights = [paint_html(painter, QPointF(rect.left() + pad + k * (half + pad), y + 8), half,
                              f"<h3>{title}</h3>{self.html[which]}")
                   for k, (title, which) in enumerate((("Baseline", "baseline"), ("Steered", "steered")))]
        paint_html(painter, QPointF(rect.left() + pad, max(heights) + 8), width,
                   html.escape(self.comparison.text()).replace("\n", "<br>"))
