"""The pyqtgraph drawing path of the embedding scatter (private to views/scatter/view.py), for
software OpenGL: a ``ScatterPlotItem(pxMode=True, pen=None)`` while at most LOD_ABOVE
points are in view, and above that a count image of the visible points (one ImageItem,
recomputed on every pan or zoom)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsPathItem, QWidget

from views.scatter.geom import CountImage, brush_polygon, extend_brush, fit_rect
from views.scatter.legend import LeaveFilter

LOD_ABOVE = 100_000  # more points than this in view: draw the count image instead
BIN_PX = 2  # count-image bin size in screen pixels

BrushFn = Callable[[np.ndarray, Qt.KeyboardModifier, bool], None]  # polygon, modifiers, final
HoverFn = Callable[[float, float, QPoint], None]


class _BrushViewBox(pg.ViewBox):
    """A ViewBox whose left-button drag pans, or draws a lasso or a box, by mode."""

    def __init__(self, owner: PgBackend) -> None:
        super().__init__(enableMenu=False, defaultPadding=0.0)
        self.owner = owner

    def mouseDragEvent(self, ev, axis=None) -> None:  # noqa: N802 - pyqtgraph's name
        if self.owner.mode == "pan" or ev.button() != Qt.MouseButton.LeftButton:
            super().mouseDragEvent(ev, axis)
            return
        ev.accept()
        here = self.mapToView(ev.pos())
        if ev.isStart():
            start = self.mapToView(ev.buttonDownPos())
            self.owner.path = [(start.x(), start.y())]
        self.owner.extend_path(here.x(), here.y(), ev.modifiers())
        if ev.isFinish():
            self.owner.finish_path(ev.modifiers())


class PgBackend:
    """pyqtgraph drawing: markers, the count image above LOD_ABOVE visible points, brushes."""

    name = "pyqtgraph"

    def __init__(self, on_brush: BrushFn, on_hover: HoverFn, on_leave: Callable[[], None]) -> None:
        self.on_brush, self.on_hover = on_brush, on_hover
        self.mode = "pan"
        self.path: list[tuple[float, float]] = []
        self.widget = pg.GraphicsView(background="w")
        self.vb = _BrushViewBox(self)
        self.vb.disableAutoRange()
        self.widget.setCentralItem(self.vb)
        self.scatter = pg.ScatterPlotItem(pxMode=True, pen=None, size=5)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setVisible(False)
        self.path_item = QGraphicsPathItem()
        pen = QPen(QColor(30, 30, 30))
        pen.setCosmetic(True)
        pen.setStyle(Qt.PenStyle.DashLine)
        self.path_item.setPen(pen)
        for item in (self.image, self.scatter, self.path_item):
            self.vb.addItem(item, ignoreBounds=True)
        self.xy = np.empty((0, 2), np.float32)
        self.count = CountImage(self.xy)
        self.codes = np.empty(0, np.int64)
        self.palette = np.zeros((1, 4), np.uint8)
        self.lod = False
        self._scatter_stale = self._brush_stale = False
        self._brushes: dict[tuple[int, ...], QBrush] = {}
        self.vb.sigRangeChanged.connect(self._on_range)
        self.widget.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self._leave = LeaveFilter(on_leave)
        self.widget.viewport().installEventFilter(self._leave)

    # ------------------------------------------------------------------ data
    def set_points(self, xy: np.ndarray, size: float) -> None:
        """New coordinates (finite points only); colours keep their codes if n matches."""
        self.xy = xy
        self.count = CountImage(xy)
        if len(self.codes) != len(xy):
            self.codes = np.zeros(len(xy), np.int64)
        self.count.set_colors(self.codes, self.palette)
        self.scatter.opts["size"] = float(size)
        self._scatter_stale = self._brush_stale = True
        self._refresh()

    def set_colors(self, codes: np.ndarray, palette: np.ndarray) -> None:
        """Per-point palette codes and the (K, 4) uint8 palette; coordinates stay as they are."""
        self.codes, self.palette = codes, palette
        self.count.set_colors(codes, palette)
        self._brush_stale = True
        self._refresh()

    def _refresh(self) -> None:
        """Pick markers or the count image for the current view and bring that one up to date."""
        rect = self.view_range()
        self.lod = self.count.count_visible(rect) > LOD_ABOVE
        self.scatter.setVisible(not self.lod)
        self.image.setVisible(self.lod)
        if self.lod:
            self._render_image(rect)
            return
        if self._scatter_stale:
            self.scatter.setData(x=self.xy[:, 0], y=self.xy[:, 1])
            self._scatter_stale = False
        if self._brush_stale:
            self._apply_brushes()
            self._brush_stale = False

    def _apply_brushes(self) -> None:
        """Give every spot its palette brush in a few vectorised assignments: one brush and
        one atlas entry per palette colour, then the per-spot columns by fancy indexing."""
        sp = self.scatter
        if not len(sp.data):
            return
        brushes = np.empty(len(self.palette), object)
        for i, rgba in enumerate(self.palette):
            key = tuple(int(v) for v in rgba)
            brushes[i] = self._brushes.setdefault(key, QBrush(QColor(*key)))
        styles = [(sp.opts["symbol"], sp.opts["size"], sp.opts["pen"], b) for b in brushes]
        rects = np.array([tuple(r) for r in sp.fragmentAtlas[styles]],
                         dtype=sp.data["sourceRect"].dtype)
        sp.data["brush"] = brushes[self.codes]
        sp.data["sourceRect"] = rects[self.codes]
        sp._updateMaxSpotSizes(data=sp.data)
        sp.invalidate()

    def _render_image(self, rect: tuple[float, float, float, float]) -> None:
        w, h = self._bins_shape()
        self.image.setImage(self.count.render(rect, (w, h)), autoLevels=False, levels=(0, 255))
        x0, x1, y0, y1 = rect
        self.image.setRect(QRectF(x0, y0, x1 - x0, y1 - y0))

    def _bins_shape(self) -> tuple[int, int]:
        size = self.vb.size()
        return max(1, int(size.width()) // BIN_PX), max(1, int(size.height()) // BIN_PX)

    def _on_range(self, *args) -> None:
        self._refresh()

    # ------------------------------------------------------------------ view
    def view_range(self) -> tuple[float, float, float, float]:
        (x0, x1), (y0, y1) = self.vb.viewRange()
        return x0, x1, y0, y1

    def set_view_range(self, x0: float, x1: float, y0: float, y1: float) -> None:
        self.vb.setRange(xRange=(x0, x1), yRange=(y0, y1), padding=0)

    def pixel_size(self) -> tuple[float, float]:
        """Data units per screen pixel along x and y."""
        px, py = self.vb.viewPixelSize()
        return float(px), float(py)

    def data_to_widget(self, x: float, y: float) -> QPointF:
        """Where a data point lies in the viewport's coordinates (for mouse events)."""
        scene = self.vb.mapViewToScene(QPointF(x, y))
        return self.widget.viewportTransform().map(scene)

    def viewport(self) -> QWidget:
        return self.widget.viewport()

    def set_mode(self, mode: str) -> None:
        self.mode = mode

    def paint(self, painter: QPainter, target: QRectF) -> None:
        """Render the plot area (markers or count image) into any painter."""
        self.path_item.setVisible(False)
        source = self.vb.sceneBoundingRect()
        fitted = QRectF(*fit_rect(target.getRect(), source.width(), source.height()))
        try:
            self.widget.scene().render(painter, fitted, source, Qt.AspectRatioMode.IgnoreAspectRatio)
        finally:
            self.path_item.setVisible(True)

    # ------------------------------------------------------------------ mouse
    def extend_path(self, x: float, y: float,
                    modifiers: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> None:
        """Draw the brush so far and report it (not final) for live brushing."""
        poly = extend_brush(self.path, x, y, self.mode == "box")
        qpath = QPainterPath(QPointF(*poly[0]))
        for px, py in poly[1:]:
            qpath.lineTo(px, py)
        qpath.closeSubpath()
        self.path_item.setPath(qpath)
        self.on_brush(brush_polygon(self.path, self.mode == "box"), modifiers, False)

    def finish_path(self, modifiers: Qt.KeyboardModifier) -> None:
        poly = brush_polygon(self.path, self.mode == "box")
        self.path = []
        self.path_item.setPath(QPainterPath())
        self.on_brush(poly, modifiers, True)

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        if not self.vb.sceneBoundingRect().contains(scene_pos):
            return
        p = self.vb.mapSceneToView(scene_pos)
        where = self.widget.viewport().mapToGlobal(self.widget.mapFromScene(scene_pos))
        self.on_hover(p.x(), p.y(), where)
