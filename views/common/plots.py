"""Drawing shared by views: a matrix heatmap (pyqtgraph ImageItem and ColorBarItem, as
pyqtgraph's MatrixDisplayExample), overlaid step histograms, and helpers that paint
plots, tables and hints into any QPainter for figure export."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QPainter, QPen, QPicture, QTransform
from PySide6.QtWidgets import QGraphicsRectItem

NAN_GREY = QColor(190, 190, 190)
MAX_CELL_TEXT = 12  # write values into the cells up to 12 x 12
TICK_PX, LABEL_PX = 11, 12  # font sizes in pixels
FIGURE_WIDTH, FIGURE_HEIGHT = 1000.0, 700.0  # exported plots keep screen-size text up to this

# measure -> (low, high, colour map, what the value means); None: from the data
_SIMILARITY = (0.0, 1.0, "viridis", "similarity")
_SIGNED = (-1.0, 1.0, "CET-D1", "similarity")
MEASURE_STYLE: dict[str, tuple[float | None, float | None, str, str]] = {
    "linear_cka": _SIMILARITY, "rbf_cka": _SIMILARITY, "svcca": _SIMILARITY,
    "pwcca": _SIMILARITY, "mutual_knn": _SIMILARITY, "debiased_cka": _SIGNED,
    "rsa_pearson": _SIGNED, "rsa_spearman": _SIGNED,
    "procrustes": (0.0, math.sqrt(2.0), "viridis_r", "distance"),
    "procrustes_angular": (0.0, math.pi / 2, "viridis_r", "distance"),
}


def colour_map(name: str) -> pg.ColorMap:
    """A pyqtgraph colour map by name; ``_r`` reverses it (distances: bright = similar)."""
    cmap = pg.colormap.get(name.removesuffix("_r"))
    if name.endswith("_r"):
        cmap.reverse()
    return cmap


def measure_levels(measure: str, values: np.ndarray) -> tuple[float, float, str, str]:
    """Colour-bar range, colour map and meaning for a measure, widened to hold the data;
    (0, 1) when no value is finite."""
    lo, hi, cmap, kind = MEASURE_STYLE.get(measure, (None, None, "viridis", "value"))
    finite = values[np.isfinite(values)]
    if finite.size:
        lo = float(finite.min()) if lo is None else min(lo, float(finite.min()))
        hi = float(finite.max()) if hi is None else max(hi, float(finite.max()))
    lo = 0.0 if lo is None else lo
    hi = lo + 1.0 if hi is None or hi <= lo else hi
    return lo, hi, cmap, kind


def px_font(pixels: int) -> QFont:
    """A font sized in pixels: text keeps its place in SVG and PDF exports, whose
    resolution differs from the screen's."""
    font = QFont()
    font.setPixelSize(pixels)
    return font


def style_plot(plot: pg.PlotWidget) -> None:
    """Pixel-sized tick fonts on every axis of a plot."""
    for side in ("left", "bottom", "top", "right"):
        plot.getAxis(side).setStyle(tickFont=px_font(TICK_PX))


def set_label(axis: pg.AxisItem, text: str) -> None:
    """An axis title in a pixel-sized font."""
    axis.setLabel(text, **{"font-size": f"{LABEL_PX}px"})


def set_title(plot: pg.PlotWidget, text: str) -> None:
    plot.setTitle(text, size=f"{LABEL_PX + 1}px", color="#444")


def tick_label(hook: str) -> str:
    """A short axis label: ``blocks.3.hook_resid_post`` -> ``3.resid_post``."""
    return re.sub(r"^(?:model\.)?(?:blocks|layers|h)\.(\d+)\.", r"\1.", hook).replace("hook_", "")


# ---------------------------------------------------------------- the heatmap
class HeatmapPlot(pg.PlotWidget):
    """A matrix drawn cell by cell: row i (hook of A) down the left axis, column j (hook
    of B) along the bottom; NaN cells grey; values written in small matrices; a click on
    a cell emits ``cell_clicked(i, j)``."""

    cell_clicked = Signal(int, int)

    def __init__(self, parent=None) -> None:
        super().__init__(parent, background="w")
        pi = self.getPlotItem()
        pi.invertY(True)
        pi.setDefaultPadding(0.0)
        pi.setMouseEnabled(False, False)
        pi.hideButtons()
        pi.setMenuEnabled(False)
        pi.showAxes(True, showValues=(True, False, False, True))
        style_plot(self)
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setTransform(QTransform().translate(-0.5, -0.5))  # cell (i, j) centred on (j, i)
        self.backing = QGraphicsRectItem()
        self.backing.setBrush(QBrush(NAN_GREY))
        self.backing.setPen(QPen(Qt.PenStyle.NoPen))
        self.frame = QGraphicsRectItem()
        frame_pen = QPen(QColor(230, 0, 60), 3)
        frame_pen.setCosmetic(True)
        self.frame.setPen(frame_pen)
        self.frame.setZValue(20)
        for item in (self.backing, self.image, self.frame):
            pi.addItem(item)
        self.bar = pg.ColorBarItem(values=(0, 1), colorMap=colour_map("viridis"), interactive=False,
                                   pen="k", colorMapMenu=False)
        self.bar.axis.setStyle(tickFont=px_font(TICK_PX))
        self.bar.setImageItem(self.image, insert_in=pi)
        self.texts: list[pg.TextItem] = []
        self.values = np.zeros((0, 0))
        self.rows: list[str] = []
        self.cols: list[str] = []
        self.clear_matrix()
        self.scene().sigMouseClicked.connect(self._on_click)
        self.scene().sigMouseMoved.connect(self._on_move)

    def clear_matrix(self) -> None:
        """No matrix: an empty plot."""
        self.values, self.rows, self.cols = np.zeros((0, 0)), [], []
        self.image.clear()
        self.backing.hide()
        self.frame.hide()
        self._clear_texts()
        for side in ("left", "bottom"):
            self.getAxis(side).setTicks([[], []])
            set_label(self.getAxis(side), "")

    def set_matrix(self, values: np.ndarray, rows: list[str], cols: list[str], measure: str,
                   row_title: str = "", col_title: str = "") -> None:
        """Draw ``values`` (len(rows), len(cols)) with the measure's colour map and range."""
        values = np.asarray(values, dtype=np.float64)
        self.values, self.rows, self.cols = values, list(rows), list(cols)
        n, m = values.shape
        lo, hi, cmap_name, kind = measure_levels(measure, values)
        cmap = colour_map(cmap_name)
        self.bar.setColorMap(cmap)
        self.bar.setLevels((lo, hi))
        set_label(self.bar.axis, f"{measure} ({kind})")
        self.image.setImage(values, autoLevels=False, levels=(lo, hi))
        self.backing.setRect(QRectF(-0.5, -0.5, m, n))
        self.backing.show()
        self.frame.hide()
        left, bottom = self.getAxis("left"), self.getAxis("bottom")
        left.setTicks([[(i, tick_label(h)) for i, h in enumerate(rows)], []])
        bottom.setTicks([[(j, tick_label(h)) for j, h in enumerate(cols)], []])
        set_label(left, row_title)
        set_label(bottom, col_title)
        self._write_values(cmap, lo, hi)
        self.getPlotItem().setRange(xRange=(-0.5, m - 0.5), yRange=(-0.5, n - 0.5), padding=0)

    def _clear_texts(self) -> None:
        for t in self.texts:
            self.getPlotItem().removeItem(t)
        self.texts = []

    def _write_values(self, cmap: pg.ColorMap, lo: float, hi: float) -> None:
        """The value in each cell (small matrices only), black or white by the cell's shade."""
        self._clear_texts()
        n, m = self.values.shape
        if n > MAX_CELL_TEXT or m > MAX_CELL_TEXT:
            return
        font = px_font(11 if max(n, m) > 6 else 13)
        for (i, j), v in np.ndenumerate(self.values):
            if np.isfinite(v):
                shade = cmap.mapToQColor(np.array([(v - lo) / (hi - lo)]))[0]
                luma = 0.299 * shade.redF() + 0.587 * shade.greenF() + 0.114 * shade.blueF()
                colour = "k" if luma > 0.5 else "w"
            else:
                colour = (80, 80, 80)
            text = pg.TextItem(f"{v:.2f}" if np.isfinite(v) else "NaN", color=colour, anchor=(0.5, 0.5))
            text.setFont(font)
            text.setPos(j, i)
            text.setZValue(10)
            self.getPlotItem().addItem(text)
            self.texts.append(text)

    def mark(self, cell: tuple[int, int] | None) -> None:
        """Outline the chosen cell (or nothing)."""
        if cell is None or not self.values.size:
            self.frame.hide()
            return
        i, j = cell
        self.frame.setRect(QRectF(j - 0.5, i - 0.5, 1, 1))
        self.frame.show()

    def cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        """The (row, column) under a scene position, or None outside the matrix."""
        vb = self.getPlotItem().vb
        if not self.values.size or not vb.sceneBoundingRect().contains(scene_pos):
            return None
        p = vb.mapSceneToView(scene_pos)
        i, j = int(math.floor(p.y() + 0.5)), int(math.floor(p.x() + 0.5))
        n, m = self.values.shape
        return (i, j) if 0 <= i < n and 0 <= j < m else None

    def cell_scene_pos(self, i: int, j: int) -> QPointF:
        """The scene position of cell (i, j)'s centre."""
        return self.getPlotItem().vb.mapViewToScene(QPointF(j, i))

    def _on_click(self, ev) -> None:
        if ev.button() != Qt.MouseButton.LeftButton:
            return
        cell = self.cell_at(ev.scenePos())
        if cell is not None:
            ev.accept()
            self.cell_clicked.emit(*cell)

    def _on_move(self, scene_pos: QPointF) -> None:
        cell = self.cell_at(scene_pos)
        if cell is None:
            self.setToolTip("")
            return
        i, j = cell
        self.setToolTip(f"{self.rows[i]} \u00d7 {self.cols[j]}: {self.values[i, j]:.4g}")


# ---------------------------------------------------------------- histograms
def step_histograms(plot: pg.PlotWidget, series: list[tuple[str, np.ndarray, tuple[int, int, int]]],
                    bins: int = 30) -> None:
    """Overlaid step histograms of each (name, values, colour) on shared bins (NaNs and
    infinities left out), with a legend."""
    plot.clear()
    legend = plot.getPlotItem().legend or plot.addLegend(offset=(-10, 10), labelTextColor="k",
                                                           labelTextSize=f"{LABEL_PX}px")
    legend.clear()
    finite = [v[np.isfinite(v)] for _, v, _ in series]
    pooled = np.concatenate(finite) if finite else np.zeros(0)
    if not pooled.size:
        return
    edges = np.histogram_bin_edges(pooled, bins=bins if np.ptp(pooled) > 0 else 1)
    for (name, _, rgb), vals in zip(series, finite, strict=True):
        counts, _ = np.histogram(vals, bins=edges)
        item = pg.PlotDataItem(edges, counts.astype(float), stepMode="center", fillLevel=0,
                               brush=(*rgb, 70), pen=pg.mkPen(rgb, width=2), name=name)
        plot.addItem(item)


# ---------------------------------------------------------------- painting for export
class _DeviceScaledAxis:
    """Stands in for an AxisItem's cached QPicture while exporting: Qt replays a QPicture
    scaled by the device's DPI / 96, which misplaces axes on a 150 dpi PNG or a PDF, so
    the axis is recorded afresh and replayed with that factor undone."""

    def __init__(self, axis: pg.AxisItem) -> None:
        self.axis = axis

    def play(self, painter: QPainter) -> None:
        picture = _axis_picture(self.axis)
        device = painter.device()
        painter.save()
        painter.scale(picture.logicalDpiX() / max(device.logicalDpiX(), 1),
                      picture.logicalDpiY() / max(device.logicalDpiY(), 1))
        picture.play(painter)
        painter.restore()


@contextmanager
def _export_axes(scene) -> Iterator[None]:
    axes = [it for it in scene.items() if isinstance(it, pg.AxisItem)]
    for axis in axes:
        axis.picture = _DeviceScaledAxis(axis)
    try:
        yield
    finally:
        for axis in axes:
            axis.picture = None  # recorded again for the screen on its next paint


def _axis_picture(axis: pg.AxisItem) -> QPicture:
    """The axis drawn afresh into a QPicture (which also measures its labels' text size)."""
    picture = QPicture()
    recorder = QPainter(picture)
    try:
        if axis.style["tickFont"]:
            recorder.setFont(axis.style["tickFont"])
        specs = axis.generateDrawSpecs(recorder)
        if specs is not None:
            axis.drawPicture(recorder, *specs)
    finally:
        recorder.end()
    return picture


def _fit_axis_text(scene) -> None:
    """Size each axis' text space by the labels it draws now: pyqtgraph keeps the largest
    size seen since it last drew none, so a figure would depend on what the screen drew."""
    for axis in [it for it in scene.items() if isinstance(it, pg.AxisItem)]:
        axis.textWidth = axis.textHeight = 0
        _axis_picture(axis)


def paint_plot(plot: pg.PlotWidget, painter: QPainter, target: QRectF) -> None:
    """Render a plot widget's plot item (axes, colour bar, legend) filling ``target``: the
    item is laid out at the figure's size (text at screen size up to FIGURE_WIDTH pixels
    wide, scaled beyond), rendered, then put back."""
    item = plot.getPlotItem()
    old = item.geometry()
    scale = max(1.0, min(target.width() / FIGURE_WIDTH, target.height() / FIGURE_HEIGHT))
    item.setGeometry(QRectF(old.x(), old.y(), target.width() / scale, target.height() / scale))
    item.layout.activate()
    plot.scene().prepareForPaint()  # settle the view ranges first: a change resets axes
    _fit_axis_text(plot.scene())
    item.layout.activate()
    try:
        with _export_axes(plot.scene()):
            plot.scene().render(painter, target, item.sceneBoundingRect(),
                                Qt.AspectRatioMode.IgnoreAspectRatio)
    finally:
        item.setGeometry(old)
        item.layout.activate()


def paint_hint(painter: QPainter, rect: QRectF, text: str) -> None:
    painter.save()
    painter.setPen(QColor(120, 120, 120))
    painter.drawText(rect, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, text)
    painter.restore()


def paint_table(painter: QPainter, rect: QRectF, header: list[str], rows: list[list[str]]) -> None:
    """A plain text grid (header row bold), columns of equal width, into ``rect``."""
    if not rows:
        return
    n_rows, n_cols = len(rows) + 1, len(header)
    h = min(rect.height() / n_rows, 28.0)
    w = rect.width() / max(n_cols, 1)
    painter.save()
    font = px_font(max(8, int(h * 0.55)))
    for r, cells in enumerate([header, *rows]):
        font.setBold(r == 0)
        painter.setFont(font)
        painter.setPen(QColor(0, 0, 0))
        for c, text in enumerate(cells):
            cell = QRectF(rect.x() + c * w, rect.y() + r * h, w, h)
            painter.drawText(cell.adjusted(4, 0, -4, 0), Qt.AlignmentFlag.AlignVCenter
                             | (Qt.AlignmentFlag.AlignLeft if c == 0 else Qt.AlignmentFlag.AlignRight), text)
        painter.setPen(QPen(QColor(200, 200, 200), 1))
        painter.drawLine(QPointF(rect.x(), rect.y() + (r + 1) * h), QPointF(rect.right(), rect.y() + (r + 1) * h))
    painter.restore()
