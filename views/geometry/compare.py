"""The geometry view's Compare tab: two stores (hook points of each), a measure, the
layer x layer similarity heatmap, and for a clicked cell every measure, the matched-neuron
correlations and, for two digits-zoo classifiers, a stitching test."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop_app.state import AppState
from engine.api import (
    MEASURES,
    Comparison,
    LayerMatrix,
    NeuronMatch,
    StitchResult,
    compare,
    layer_matrix,
    match,
    stitch,
)
from views.common.plots import (
    HeatmapPlot,
    paint_hint,
    paint_plot,
    set_label,
    set_title,
    style_plot,
)
from views.common.requests import Requests
from views.geometry.common import StorePicker, resolve_zoo_folder


class Sources(NamedTuple):
    """What the shown matrix was computed from (the pickers may have moved on since)."""

    store_a: Path
    store_b: Path
    max_rows: int | None
    model_a: str | None  # the stores' meta.model_id
    model_b: str | None


MATCH_METHOD = "hungarian"
MATCH_ROWS = 20_000  # rows the neuron matching reads when no row cap is set


class CompareTab(QWidget):
    """Pick A and B, compute the layer matrix, inspect one (hook_a, hook_b) cell."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.matrix: LayerMatrix | None = None
        self.sources: Sources | None = None
        self.cell: tuple[int, int] | None = None
        self.comparison: Comparison | None = None
        self.match: NeuronMatch | None = None
        self.stitched: StitchResult | None = None
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._build_controls())
        split.addWidget(self._build_heatmap())
        split.addWidget(self._build_detail())
        split.setSizes([280, 520, 340])
        QVBoxLayout(self).addWidget(split)
        self.jobs = Requests(state, self.progress, self.status, self)
        self.cell_jobs = Requests(state, self.cell_progress, self.cell_status, self)
        self._show_cell()

    # ------------------------------------------------------------ widgets
    def _build_controls(self) -> QWidget:
        self.picker_a, self.picker_b = StorePicker("A"), StorePicker("B")
        self.measure = QComboBox()
        self.measure.addItems(list(MEASURES))
        self.max_rows = QSpinBox()
        self.max_rows.setRange(0, 100_000_000)
        self.max_rows.setSingleStep(1000)
        self.max_rows.setSpecialValueText("all rows")
        self.compute = QPushButton("Compute")
        self.compute.clicked.connect(self.compute_matrix)
        box = QWidget()
        col = QVBoxLayout(box)
        col.addWidget(self.picker_a)
        col.addWidget(self.picker_b)
        for label, widget in (("measure", self.measure), ("rows", self.max_rows)):
            row = QHBoxLayout()
            row.addWidget(QLabel(label))
            row.addWidget(widget, 1)
            col.addLayout(row)
        col.addWidget(self.compute)
        col.addStretch(1)
        return box

    def _build_heatmap(self) -> QWidget:
        self.heatmap = HeatmapPlot()
        self.heatmap.setMinimumSize(240, 200)
        self.heatmap.cell_clicked.connect(self.select_cell)
        self.hint = QLabel("Choose two stores and press Compute")
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.progress, self.status = QProgressBar(), QLabel()
        self.status.setWordWrap(True)
        box = QWidget()
        col = QVBoxLayout(box)
        col.addWidget(self.hint)
        col.addWidget(self.heatmap, 1)
        col.addWidget(self.progress)
        col.addWidget(self.status)
        return box

    def _build_detail(self) -> QWidget:
        self.cell_title = QLabel()
        self.cell_title.setWordWrap(True)
        self.cell_table = QTableWidget(0, 2)
        self.cell_table.setHorizontalHeaderLabels(["measure", "value"])
        self.cell_table.verticalHeader().hide()
        self.cell_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.cell_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.cell_table.verticalHeader().setDefaultSectionSize(20)
        self.match_plot = pg.PlotWidget(background="w")
        self.match_plot.setMinimumHeight(150)
        style_plot(self.match_plot)
        set_label(self.match_plot.getAxis("bottom"), "matched pair (rank)")
        set_label(self.match_plot.getAxis("left"), "correlation")
        self.match_plot.getAxis("left").enableAutoSIPrefix(False)
        self.match_plot.setMouseEnabled(x=False, y=False)
        set_title(self.match_plot, "matched neurons")
        self.stitch_button = QPushButton("Stitch A \u2192 B")
        self.stitch_button.setToolTip("Fit an affine map from A's hook to B's and score B on it")
        self.stitch_button.clicked.connect(self.run_stitch)
        self.stitch_label = QLabel()
        self.stitch_label.setWordWrap(True)
        self.cell_progress, self.cell_status = QProgressBar(), QLabel()
        self.cell_status.setWordWrap(True)
        box = QWidget()
        col = QVBoxLayout(box)
        for w, stretch in ((self.cell_title, 0), (self.cell_table, 2), (self.match_plot, 2),
                           (self.stitch_button, 0), (self.stitch_label, 0), (self.cell_progress, 0),
                           (self.cell_status, 0)):
            col.addWidget(w, stretch)
        return box

    # ------------------------------------------------------------ state
    def set_workspace(self, workspace: Path | None, active: Path | None) -> None:
        """List the workspace's stores in both pickers; A defaults to the active store."""
        self.picker_a.set_workspace(workspace, active)
        self.picker_b.set_workspace(workspace, active)

    def cancel_requests(self) -> None:
        """Cancel this tab's running jobs and drop their answers."""
        self.jobs.forget_all()
        self.cell_jobs.forget_all()

    def session_state(self) -> dict[str, Any]:
        side = [{"path": str(p.path()) if p.path() else None, "hooks": p.hooks()}
                for p in (self.picker_a, self.picker_b)]
        return {"a": side[0], "b": side[1], "measure": self.measure.currentText(),
                "max_rows": self.max_rows.value()}

    def restore_session(self, data: dict[str, Any]) -> None:
        for key, picker in (("a", self.picker_a), ("b", self.picker_b)):
            side = data.get(key) or {}
            if side.get("path") and Path(side["path"]).is_file():
                picker.set_path(Path(side["path"]), side.get("hooks"))
        i = self.measure.findText(str(data.get("measure", "")))
        if i >= 0:
            self.measure.setCurrentIndex(i)
        self.max_rows.setValue(int(data.get("max_rows", 0) or 0))

    # ------------------------------------------------------------ the matrix
    def compute_matrix(self) -> None:
        """Submit ``layer_matrix`` for the chosen stores, hook points and measure."""
        pa, pb = self.picker_a.path(), self.picker_b.path()
        ha, hb = self.picker_a.hooks(), self.picker_b.hooks()
        if pa is None or pb is None:
            self.jobs.show_error("Choose a store for A and for B first.")
            return
        if not ha or not hb:
            self.jobs.show_error(f"Check at least one hook point of {'A' if not ha else 'B'}.")
            return
        max_rows = self.max_rows.value() or None
        self.sources = Sources(pa, pb, max_rows, self.picker_a.model_id(), self.picker_b.model_id())
        self.jobs.submit("matrix", f"{self.measure.currentText()}: {len(ha)} x {len(hb)} layers",
                         layer_matrix, self.set_matrix, lambda _s: self._clear_matrix(),
                         store_a=pa, hooks_a=ha, store_b=pb, hooks_b=hb,
                         measure=self.measure.currentText(), max_rows=max_rows)

    def set_matrix(self, result: LayerMatrix) -> None:
        """Draw a layer matrix and forget the previous cell."""
        self.matrix, self.cell = result, None
        self.hint.hide()
        src = self.sources
        model_a, model_b = (src.model_a, src.model_b) if src is not None else (None, None)
        self.heatmap.set_matrix(result.values, list(result.hooks_a), list(result.hooks_b),
                                result.measure, f"A: {model_a or 'A'}", f"B: {model_b or 'B'}")
        n_nan = int(np.isnan(result.values).sum())
        self.status.setText(f"{result.measure} over {result.n_rows:,} rows"
                            + (f"; {n_nan} cells undefined (grey)" if n_nan else ""))
        self._show_cell()

    def _clear_matrix(self) -> None:
        self.matrix = None
        self.heatmap.clear_matrix()
        self.hint.setText("No matrix (see the message below)")
        self.hint.show()
        self._show_cell()

    # ------------------------------------------------------------ one cell
    def select_cell(self, i: int, j: int) -> None:
        """Show every measure, the neuron matching and stitching for cell (i, j)."""
        if self.matrix is None or self.sources is None:
            return
        n, m = self.matrix.values.shape
        if not (0 <= i < n and 0 <= j < m):
            return
        self.cell = (i, j)
        self.heatmap.mark(self.cell)
        self._show_cell()
        pa, pb, max_rows = self.sources[:3]
        a, b = f"{pa}:{self.matrix.hooks_a[i]}", f"{pb}:{self.matrix.hooks_b[j]}"
        self.cell_jobs.submit("cell", f"all measures: {a} vs {b}", compare, self._on_comparison,
                              a=a, b=b, measures=list(MEASURES), max_rows=max_rows)
        self.cell_jobs.submit("match", f"neuron matching: {a} vs {b}", match, self._on_match,
                              a=a, b=b, method=MATCH_METHOD, max_rows=max_rows or MATCH_ROWS)

    def _show_cell(self) -> None:
        """Reset the detail pane for the current cell (or its absence)."""
        self.comparison = self.match = self.stitched = None
        self.cell_table.setRowCount(0)
        self.match_plot.clear()
        self.stitch_label.setText("")
        if self.matrix is None or self.cell is None:
            self.cell = None
            self.heatmap.mark(None)
            self.cell_title.setText("Click a cell of the matrix for its details")
            for kind in ("cell", "match", "stitch"):
                self.cell_jobs.forget(kind)
            self.stitch_button.setEnabled(False)
            return
        i, j = self.cell
        value = self.matrix.values[i, j]
        self.cell_title.setText(f"<b>A</b> {self.matrix.hooks_a[i]} \u00d7 <b>B</b> "
                                f"{self.matrix.hooks_b[j]}<br>{self.matrix.measure} = {value:.4g}")
        self.stitch_button.setEnabled(None not in self.stitch_models())

    def _on_comparison(self, result: Comparison) -> None:
        self.comparison = result
        rows = list(result.values.items())
        self.cell_table.setRowCount(len(rows))
        for r, (name, value) in enumerate(rows):
            self.cell_table.setItem(r, 0, QTableWidgetItem(name))
            item = QTableWidgetItem("NaN" if not np.isfinite(value) else f"{value:.4f}")
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.cell_table.setItem(r, 1, item)
        notes = getattr(result, "notes", None)
        if notes:
            self.cell_table.setToolTip("\n".join(notes) if isinstance(notes, (list, tuple)) else str(notes))

    def _on_match(self, result: Any) -> None:
        """Matched pairs sorted by correlation: x = rank, y = correlation."""
        self.match = result
        self.match_plot.clear()
        corr = np.asarray(result.corr, dtype=np.float64)
        order = np.argsort(-np.nan_to_num(corr, nan=-np.inf), kind="stable")
        ranks = np.arange(1, len(corr) + 1, dtype=np.float64)
        a_units, b_units = np.asarray(result.a_units)[order], np.asarray(result.b_units)[order]
        spots = [{"pos": (x, y), "data": (int(ua), int(ub))}
                 for x, y, ua, ub in zip(ranks, corr[order], a_units, b_units, strict=True)]
        scatter = pg.ScatterPlotItem(spots=spots, size=6, pen=None, brush=pg.mkBrush(31, 119, 180, 200),
                                     hoverable=True, tip=lambda x, y, data: f"A {data[0]} \u2194 B {data[1]}: {y:.3f}")
        self.match_plot.addItem(scatter)
        self.match_plot.setXRange(0, len(corr) + 1, padding=0.02)
        self.match_plot.setYRange(min(0.0, float(np.nanmin(corr, initial=0.0))), 1.0, padding=0.02)
        finite = corr[np.isfinite(corr)]
        set_title(self.match_plot, f"{len(corr)} matched neurons; mean r = {finite.mean():.3f}"
                  if finite.size else "matched neurons")

    # ------------------------------------------------------------ stitching
    def stitch_models(self) -> tuple[Path | None, Path | None]:
        """The zoo folders of A's and B's models (None where a model is no zoo classifier)."""
        src = self.sources
        if src is None:
            return None, None
        return tuple(None if model is None else resolve_zoo_folder(model, store, self.state.workspace)
                     for model, store in ((src.model_a, src.store_a), (src.model_b, src.store_b)))

    def run_stitch(self) -> None:
        """Stitch A's hook of the current cell into B's and show B's accuracy both ways."""
        if self.matrix is None or self.cell is None:
            return
        folder_a, folder_b = self.stitch_models()
        if folder_a is None or folder_b is None:
            self.cell_jobs.show_error("Stitching needs both stores' models as digits-zoo folders.")
            return
        i, j = self.cell
        self.stitch_label.setText("stitching\u2026")
        self.cell_jobs.submit("stitch", f"stitch {folder_a.name} into {folder_b.name}", stitch,
                              self._on_stitch, lambda _s: self.stitch_label.setText(""),
                              model_a=str(folder_a), hook_a=self.matrix.hooks_a[i],
                              model_b=str(folder_b), hook_b=self.matrix.hooks_b[j])

    def _on_stitch(self, r: StitchResult) -> None:
        self.stitched = r
        self.stitch_label.setText(
            f"<b>stitched</b> accuracy {r.accuracy_stitched:.1%} (loss {r.loss_stitched:.3f}) vs "
            f"<b>B alone</b> {r.accuracy_b:.1%} (loss {r.loss_b:.3f}); A alone {r.accuracy_a:.1%}"
            f"<br>{r.hook_a} \u2192 {r.hook_b}, {r.n_train:,} training / {r.n_eval:,} test examples")

    # ------------------------------------------------------------ export
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        """The heatmap, and beside it the matched-neuron plot once a cell is inspected."""
        if self.matrix is None:
            paint_hint(painter, rect, self.hint.text())
            return
        if self.match is None:
            paint_plot(self.heatmap, painter, rect)
            return
        w, gap = rect.width() * 0.62, rect.width() * 0.02
        paint_plot(self.heatmap, painter, QRectF(rect.x(), rect.y(), w, rect.height()))
        paint_plot(self.match_plot, painter,
                   QRectF(rect.x() + w + gap, rect.y(), rect.width() - w - gap, rect.height()))
