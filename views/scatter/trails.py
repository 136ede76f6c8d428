"""Steering trails over the embedding scatter (private to views/scatter/view.py): the
steering view's runs (``state.trails``: the baseline first, then one steered run or one run
per strength of a sweep) placed in the shown row layout by an engine job (``place_rows``:
the PCA basis, or UMAP's k-NN placement) and drawn as linked polylines on either drawing
path, with a legend in the plot's corner that the figure export paints too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QPainter, QPen
from PySide6.QtWidgets import QWidget

from desktop_app.state import AppState
from engine import api
from engine.api import Layout, Trail

BASELINE = (70, 70, 70)
STEERED = (214, 39, 40)
SWEEP = ((253, 174, 97), (244, 109, 67), (215, 48, 39), (165, 0, 38), (103, 0, 13))  # light to dark by strength
LINK = (120, 120, 120, 110)  # the thin segments joining a baseline token to the steered one
SUBMIT = Callable[..., None]  # the view's _submit(what, fn, on_result, **params)


class DrawnTrail(NamedTuple):
    """One trail as drawn: its coordinates, colour, legend text and prompt length."""

    xy: np.ndarray  # (n, 2) float32 in the layout's coordinates
    rgb: tuple[int, int, int]
    label: str
    n_prompt: int
    texts: list[str]


def trail_colours(trails: tuple[Trail, ...]) -> list[tuple[int, int, int]]:
    """Baseline grey; one steered run red; a sweep's runs light to dark by strength."""
    steered = [t for t in trails if t.which != "baseline"]
    if len(steered) <= 1:
        return [BASELINE if t.which == "baseline" else STEERED for t in trails]
    order = {id(t): i for i, t in enumerate(sorted(steered, key=lambda t: abs(t.strength or 0.0)))}
    pick = np.linspace(0, len(SWEEP) - 1, len(steered)).round().astype(int)
    return [BASELINE if t.which == "baseline" else SWEEP[pick[order[id(t)]]] for t in trails]


def drawing_order(drawn: list[DrawnTrail]) -> list[DrawnTrail]:
    """Bottom to top: a sweep's baseline last, over its strength-0 twin and the others; a
    pair's steered run over its baseline."""
    if len(drawn) <= 2:
        return list(drawn)
    return [t for t in drawn if t.label != "baseline"] + [t for t in drawn if t.label == "baseline"]


def line_width(drawn: list[DrawnTrail]) -> float:
    return 2.5 if len(drawn) <= 2 else 1.6


def links(drawn: list[DrawnTrail]) -> np.ndarray:
    """(m, 2, 2) segments from each baseline token to the same token of the one steered run
    (none for a sweep, where they would hide the trails)."""
    if len(drawn) != 2:
        return np.empty((0, 2, 2), np.float32)
    a, b = drawn[0].xy, drawn[1].xy
    n = min(len(a), len(b))
    return np.stack([a[:n], b[:n]], axis=1).astype(np.float32)


def _drawn(trail: Trail, xy: np.ndarray, rgb: tuple[int, int, int], sinks: np.ndarray) -> DrawnTrail:
    """A placed trail without the baseline's attention-sink positions (far outside the cloud,
    which the layout itself leaves out) and points without finite coordinates; every trail
    loses the same positions, so the baseline and steered tokens stay paired."""
    keep = np.isfinite(xy).all(1)
    n = min(len(keep), len(sinks))
    keep[:n] &= ~sinks[:n]
    return DrawnTrail(np.ascontiguousarray(xy[keep], np.float32), rgb, trail.label,
                      int(keep[:trail.n_prompt].sum()), [t for t, k in zip(trail.texts, keep, strict=False) if k])


# ---------------------------------------------------------------- drawing paths
class _PgTrails:
    """Trails as pyqtgraph items in the backend's ViewBox."""

    def __init__(self, backend: Any) -> None:
        self.vb = backend.vb
        self.items: list[Any] = []

    def draw(self, drawn: list[DrawnTrail]) -> None:
        import pyqtgraph as pg
        for item in self.items:
            self.vb.removeItem(item)
        self.items = []
        seg = links(drawn)
        if len(seg):
            link = pg.PlotCurveItem(seg[:, :, 0].ravel(), seg[:, :, 1].ravel(), connect="pairs",
                                    pen=pg.mkPen(QColor(*LINK), width=1))
            self.items.append(link)
        for t in drawing_order(drawn):
            pen = pg.mkPen(QColor(*t.rgb), width=line_width(drawn),
                           style=Qt.PenStyle.DashLine if t.label == "baseline" else Qt.PenStyle.SolidLine)
            sizes = np.where(np.arange(len(t.xy)) < t.n_prompt, 5.0, 8.0)
            line = pg.PlotDataItem(t.xy[:, 0], t.xy[:, 1], pen=pen, symbol="o", symbolSize=sizes,
                                   symbolBrush=QColor(*t.rgb), symbolPen=pg.mkPen("w", width=1))
            self.items.append(line)
        for z, item in enumerate(self.items):
            item.setZValue(10 + z)
            self.vb.addItem(item, ignoreBounds=True)


class _VispyTrails:
    """Trails as vispy Line and Markers visuals in the backend's scene, above the points."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.visuals: list[Any] = []

    def draw(self, drawn: list[DrawnTrail]) -> None:
        from vispy import scene
        for v in self.visuals:
            v.parent = None
        self.visuals = []
        parent = self.backend.view.scene
        seg = links(drawn)
        if len(seg):
            self._add(scene.visuals.Line(seg.reshape(-1, 2), color=np.array(LINK) / 255.0, width=1,
                                         connect="segments", parent=parent))
        for t in drawing_order(drawn):
            rgba = (*(c / 255.0 for c in t.rgb), 1.0)
            if len(t.xy) > 1:
                self._add(scene.visuals.Line(t.xy, color=rgba, width=line_width(drawn), parent=parent))
            markers = scene.visuals.Markers(parent=parent)
            markers.set_data(t.xy, face_color=rgba, edge_color="white", edge_width=1,
                             size=np.where(np.arange(len(t.xy)) < t.n_prompt, 5.0, 8.0))
            self._add(markers)
        self.backend.canvas.update()

    def _add(self, visual: Any) -> None:
        visual.set_gl_state(depth_test=False, blend=True)
        visual.order = 5 + len(self.visuals)
        self.visuals.append(visual)


# ---------------------------------------------------------------- legend
def paint_trail_legend(painter: QPainter, rect: QRectF, drawn: list[DrawnTrail], dashed: bool = True,
                       note: str = "") -> QRectF:
    """Draw the trails' legend in the top-left corner of ``rect`` (the baseline's line
    ``dashed`` as the pyqtgraph path draws it; vispy's lines are solid), or, with no trail
    drawn, the ``note`` saying why; returns the box."""
    if not drawn and not note:
        return QRectF()
    painter.save()
    font = QFont(painter.font())
    font.setPointSizeF(9)
    painter.setFont(font)
    metrics = QFontMetricsF(font)
    line = metrics.height() * 1.3
    title = "Steering trails"
    rows = [t.label for t in drawn] or [note]
    width = max(metrics.horizontalAdvance(s) for s in [title, *rows]) + 40
    box = QRectF(rect.left() + 8, rect.top() + 8, width, line * (len(rows) + 1) + 8)
    painter.setPen(QColor(190, 190, 190))
    painter.setBrush(QColor(255, 255, 255, 225))
    painter.drawRect(box)
    painter.setPen(QColor(40, 40, 40))
    painter.drawText(QRectF(box.left() + 6, box.top() + 4, width, line), Qt.AlignmentFlag.AlignVCenter, title)
    for i, t in enumerate(drawn):
        y = box.top() + 4 + line * (i + 1.5)
        pen = QPen(QColor(*t.rgb), 2.5)
        if t.label == "baseline" and dashed:
            pen.setStyle(Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawLine(QPointF(box.left() + 6, y), QPointF(box.left() + 26, y))
        painter.setPen(QColor(40, 40, 40))
        painter.drawText(QRectF(box.left() + 32, y - line / 2, width, line), Qt.AlignmentFlag.AlignVCenter, t.label)
    if not drawn:
        painter.setPen(QColor(120, 120, 120))
        painter.drawText(QRectF(box.left() + 6, box.top() + 4 + line, width, line), Qt.AlignmentFlag.AlignVCenter, note)
    painter.restore()
    return box


class TrailLegend(QWidget):
    """The legend as a widget floating over the plot's top-left corner."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.drawn: list[DrawnTrail] = []
        self.note = ""  # why there are trails but none is drawn
        self.dashed = True  # the baseline's line style, as the drawing path draws it
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.hide()

    def set_trails(self, drawn: list[DrawnTrail], note: str = "") -> None:
        self.drawn, self.note = drawn, note
        self.setVisible(bool(drawn or note))
        self.updateGeometry()
        self.adjustSize()
        self.update()

    def sizeHint(self) -> QSize:
        metrics = QFontMetricsF(self.font())
        labels = ["Steering trails", *([t.label for t in self.drawn] or [self.note])]
        width = max(metrics.horizontalAdvance(s) for s in labels) + 60
        return QSize(int(width), int(metrics.height() * 1.3 * len(labels) + 24))

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        try:
            paint_trail_legend(painter, QRectF(self.rect()), self.drawn, self.dashed, self.note)
        finally:
            painter.end()


# ---------------------------------------------------------------- the layer
class TrailLayer:
    """Places ``state.trails`` in the scatter's row layout (a job, latest wins) and draws
    them; nothing for a latent layout, a moving UMAP or runs read at another hook point."""

    def __init__(self, state: AppState, backend: Any, submit: SUBMIT, legend: TrailLegend) -> None:
        self.state, self.submit, self.legend = state, submit, legend
        self.paths = _VispyTrails(backend) if backend.name == "vispy" else _PgTrails(backend)
        legend.dashed = backend.name != "vispy"
        self.layout: Layout | None = None
        self.drawn: list[DrawnTrail] = []
        self.note = ""  # why no trails are drawn, for the status line
        state.trails_changed.connect(self.refresh)
        state.hook_changed.connect(self.refresh)

    def set_layout(self, layout: Layout | None) -> None:
        """The scatter shows ``layout`` now (a new frame of a moving UMAP included)."""
        moved = self.layout is None or layout is None or self.layout.xy is not layout.xy
        self.layout = layout
        if moved:
            self.refresh()

    def refresh(self, *_: Any) -> None:
        """Place the current trails in the current layout, or clear them with a reason."""
        trails, layout = self.state.trails, self.layout
        self.note = self._why_not(trails, layout)
        if self.note or not trails:
            self._show([])
            return
        self.submit("trails", api.place_rows, lambda xy: self._on_placed(trails, layout, xy),
                    store_path=self.state.store, hook=trails[0].hook, layout=layout,
                    runs=[t.acts for t in trails])

    def _why_not(self, trails: tuple[Trail, ...], layout: Layout | None) -> str:
        if not trails:
            return ""
        if layout is None:
            return "trails: no layout yet"
        if not layout.name.startswith("rows/"):
            return "trails: shown over a rows layout"
        if not layout.final:
            return "trails: after the layout settles"
        if self.state.store is None or trails[0].hook != self.state.hook:
            return f"trails read at {trails[0].hook}, the map shows {self.state.hook}"
        return ""

    def _on_placed(self, trails: tuple[Trail, ...], layout: Layout, placed: list[np.ndarray]) -> None:
        if trails is not self.state.trails or layout is not self.layout:
            return
        colours = trail_colours(trails)
        base = next((t for t in trails if t.which == "baseline"), None)
        sinks = api.sink_positions(base.acts) if base is not None else np.zeros(0, bool)
        self._show([_drawn(t, xy, rgb, sinks) for t, xy, rgb in zip(trails, placed, colours, strict=True)])

    def _show(self, drawn: list[DrawnTrail]) -> None:
        self.drawn = drawn
        self.paths.draw(drawn)
        self.legend.set_trails(drawn, self.note)

    def paint_legend(self, painter: QPainter, plot_rect: QRectF) -> None:
        """The legend into an exported figure's plot area."""
        paint_trail_legend(painter, plot_rect, self.drawn, self.legend.dashed)
