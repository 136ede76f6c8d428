"""The geometry view's Compare tab: two stores (hook points of each; the same store twice
gives its own layer x layer matrix), a measure, the layer x layer similarity heatmap, and
for a clicked cell every measure, neuron matching by the chosen method and a stitching
test (two digits-zoo classifiers: their models run on digits; any other row-aligned
stores: a map fitted on the stored rows, scored by R^2 and, for a language model B, by
B's next-token loss). A row selection of the active store restricts every number to
those rows, and the status line says so."""

from __future__ import annotations

import re
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

from desktop_app.state import ROWS, AppState, Selection
from engine.api import (
    MEASURES,
    Comparison,
    LayerMatrix,
    StitchResult,
    StoreStitchResult,
    compare,
    layer_matrix,
    match,
    stitch,
    stitch_stores,
)
from views.common.plots import (
    HeatmapPlot,
    paint_hint,
    paint_plot,
    set_title,
    style_plot,
)
from views.common.requests import Requests
from views.geometry.common import StorePicker, compact, resolve_zoo_folder
from views.geometry.matching import METHODS, draw_match


class Sources(NamedTuple):
    """What the shown matrix was computed from (the pickers may have moved on since)."""

    store_a: Path
    store_b: Path
    max_rows: int | None
    model_a: str | None  # the stores' meta.model_id
    model_b: str | None
    rows: np.ndarray | None = None  # the selected rows it was restricted to (None: all)


def layer_names(hooks: list[str]) -> tuple[list[str], str]:
    """Axis labels for a side's hook points: the block numbers alone when every hook is
    ``blocks.N.<the same point>`` (the point then goes into the axis title), else the hooks."""
    found = [re.fullmatch(r"(?:model\.)?(?:blocks|layers|h)\.(\d+)\.(?:hook_)?(.+)", h) for h in hooks]
    if len(hooks) < 2 or not all(found) or len({m.group(2) for m in found}) != 1:
        return list(hooks), ""
    return [m.group(1) for m in found], f" \u00b7 layer ({found[0].group(2)})"


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
        self.match: Any = None  # NeuronMatch, SparsePrediction or UnitClusters
        self.stitched: StitchResult | StoreStitchResult | None = None
        self.selection = Selection()
        self._shown = False  # the matrix is computed by itself the first time the tab is seen
        split = QSplitter(Qt.Orientation.Horizontal)
        main = QWidget()  # the pickers side by side above the heatmap: the matrix gets the width
        col = QVBoxLayout(main)
        col.setContentsMargins(0, 0, 0, 0)
        col.addWidget(self._build_controls())
        col.addWidget(self._build_heatmap(), 1)
        split.addWidget(main)
        split.addWidget(self._build_detail())
        split.setStretchFactor(0, 1)
        split.setSizes([2000, 330])
        QVBoxLayout(self).addWidget(split)  # below its minimum width the view scrolls (TabbedView)
        self.jobs = Requests(state, self.progress, self.status, self)
        self.cell_jobs = Requests(state, self.cell_progress, self.cell_status, self)
        self._show_cell()

    # ------------------------------------------------------------ widgets
    def _build_controls(self) -> QWidget:
        self.picker_a, self.picker_b = StorePicker("A"), StorePicker("B")
        self.measure = QComboBox()
        self.measure.addItems(list(MEASURES))
        compact(self.measure, 9)
        self.max_rows = QSpinBox()
        self.max_rows.setRange(0, 100_000_000)
        self.max_rows.setSingleStep(1000)
        self.max_rows.setSpecialValueText("all rows")
        self.compute = QPushButton("Compute")
        self.compute.clicked.connect(self.compute_matrix)
        for picker in (self.picker_a, self.picker_b):  # side by side: compact
            picker.hook_list.setMaximumHeight(84)
            picker.combo.setMinimumContentsLength(6)
        box = QWidget()
        col = QVBoxLayout(box)
        col.setContentsMargins(0, 0, 0, 0)
        sides = QHBoxLayout()
        sides.addWidget(self.picker_a, 1)
        sides.addWidget(self.picker_b, 1)
        col.addLayout(sides)
        row = QHBoxLayout()
        for label, widget in (("measure", self.measure), ("rows", self.max_rows)):
            row.addWidget(QLabel(label))
            row.addWidget(widget, 1)
        row.addWidget(self.compute)
        col.addLayout(row)
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
        self.match_plot.getAxis("left").enableAutoSIPrefix(False)
        self.match_plot.setMouseEnabled(x=False, y=False)
        set_title(self.match_plot, "neuron matching")
        self.method = QComboBox()
        for key, text in METHODS.items():
            self.method.addItem(text, key)
        self.method.setToolTip("How units of A are matched to units of B on the cell's rows")
        compact(self.method, 11)
        self.method.currentIndexChanged.connect(lambda _i: self.run_match())
        self.n_clusters = QSpinBox()
        self.n_clusters.setRange(2, 64)
        self.n_clusters.setValue(8)
        self.n_clusters.setPrefix("clusters: ")
        self.n_clusters.valueChanged.connect(lambda _v: self.run_match())
        self.stitch_button = QPushButton("Stitch A \u2192 B")
        self.stitch_button.setToolTip("Fit an affine map from A's hook to B's and score B on it")
        self.stitch_button.clicked.connect(self.run_stitch)
        self.stitch_label = QLabel()
        self.stitch_label.setWordWrap(True)
        self.cell_progress, self.cell_status = QProgressBar(), QLabel()
        self.cell_status.setWordWrap(True)
        box = QWidget()
        col = QVBoxLayout(box)
        methods = QHBoxLayout()
        methods.addWidget(QLabel("matching"))
        methods.addWidget(self.method, 1)
        methods.addWidget(self.n_clusters)
        col.addWidget(self.cell_title)
        col.addWidget(self.cell_table, 2)
        col.addLayout(methods)
        for w, stretch in ((self.match_plot, 2), (self.stitch_button, 0), (self.stitch_label, 0),
                           (self.cell_progress, 0), (self.cell_status, 0)):
            col.addWidget(w, stretch)
        self.n_clusters.setVisible(False)
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
                "max_rows": self.max_rows.value(), "method": self.method.currentData(),
                "n_clusters": self.n_clusters.value()}

    def restore_session(self, data: dict[str, Any]) -> None:
        for key, picker in (("a", self.picker_a), ("b", self.picker_b)):
            side = data.get(key) or {}
            if side.get("path") and Path(side["path"]).is_file():
                picker.set_path(Path(side["path"]), side.get("hooks"))
        i = self.measure.findText(str(data.get("measure", "")))
        if i >= 0:
            self.measure.setCurrentIndex(i)
        self.max_rows.setValue(int(data.get("max_rows", 0) or 0))
        i = self.method.findData(data.get("method"))
        if i >= 0:
            self.method.setCurrentIndex(i)
        self.n_clusters.setValue(int(data.get("n_clusters", 8) or 8))

    def figure_state(self) -> dict[str, Any]:
        """The session state with the shown matrix's sources, and its clicked cell."""
        state = self.session_state()
        src, m = self.sources, self.matrix
        if src is not None and m is not None:
            state.update(a={"path": str(src.store_a), "hooks": list(m.hooks_a)}, measure=m.measure,
                         b={"path": str(src.store_b), "hooks": list(m.hooks_b)},
                         max_rows=src.max_rows or 0, matrix=True, cell=None if self.cell is None else list(self.cell))
        return state

    def restore_figure(self, data: dict[str, Any]) -> None:
        """Restore the settings, compute the matrix and click the cell the figure showed."""
        self.restore_session(data)
        if data.get("matrix"):
            self._shown = True
            self.compute_matrix()
        if data.get("cell") and self.matrix is not None:
            self.select_cell(*data["cell"])

    def figure_inputs(self) -> list[tuple[str, str]]:
        src = self.sources
        return [] if src is None else [("store A", str(src.store_a)), ("store B", str(src.store_b))]

    # ------------------------------------------------------------ the matrix
    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """The first time the tab comes into view with a store of several hook points in A
        and B (the active one by default), its matrix is computed: the demo's four layers
        show their CKA matrix without a click."""
        super().showEvent(event)
        if not self._shown and self.matrix is None and self.picker_a.path() and self.picker_b.path():
            self._shown = True
            if len(self.picker_a.hooks()) > 1 or len(self.picker_b.hooks()) > 1:
                self.compute_matrix()

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
        self._submit_matrix(Sources(pa, pb, self.max_rows.value() or None, self.picker_a.model_id(),
                                    self.picker_b.model_id()), ha, hb, self.measure.currentText())

    def _submit_matrix(self, src: Sources, ha: list[str], hb: list[str], measure: str) -> None:
        """``layer_matrix`` of ``src``'s stores, on the selected rows when they apply."""
        src = src._replace(rows=self.selected_rows(src.store_a, src.store_b))

        def drawn(result: LayerMatrix) -> None:  # the shown matrix and its sources change together
            self.sources = src  # (a cancelled request leaves the last matrix with its own)
            self.set_matrix(result)
        self.jobs.submit("matrix", f"{measure}: {len(ha)} x {len(hb)} layers", layer_matrix, drawn,
                         lambda _s: self._clear_matrix(), store_a=src.store_a, hooks_a=ha,
                         store_b=src.store_b, hooks_b=hb, measure=measure, max_rows=src.max_rows,
                         rows=src.rows)

    # ------------------------------------------------------------ the selection
    def selected_rows(self, pa: Path, pb: Path) -> np.ndarray | None:
        """The row selection's ids when it holds rows of the active store and that store is
        A or B (row-aligned stores share row ids); None (all rows) otherwise."""
        sel, active = self.selection, self.state.store
        if sel.kind != ROWS or not len(sel) or active is None or active not in (pa, pb):
            return None
        return sel.ids

    def update_selection(self, selection: Selection) -> None:
        """A finished row selection (or its clearing) recomputes a shown matrix on the
        selected rows (or on all rows again)."""
        if selection.live:
            return
        self.selection = selection
        src = self.sources
        if src is None or self.matrix is None:
            return
        rows = self.selected_rows(src.store_a, src.store_b)
        if rows is None and src.rows is None:
            return
        m = self.matrix
        self._submit_matrix(src, list(m.hooks_a), list(m.hooks_b), m.measure)

    def rows_text(self) -> str:
        """"on 1,234 selected rows of demo.h5" when the shown numbers are restricted."""
        src = self.sources
        if src is None or src.rows is None:
            return ""
        store = self.state.store if self.state.store in (src.store_a, src.store_b) else src.store_a
        return f"on {len(src.rows):,} selected rows of {store.name}"

    def set_matrix(self, result: LayerMatrix) -> None:
        """Draw a layer matrix and forget the previous cell."""
        self.matrix, self.cell = result, None
        self.hint.hide()
        src = self.sources
        model_a, model_b = (src.model_a, src.model_b) if src is not None else (None, None)
        (rows, note_a), (cols, note_b) = layer_names(result.hooks_a), layer_names(result.hooks_b)
        self.heatmap.set_matrix(result.values, rows, cols, result.measure, f"A: {model_a or 'A'}{note_a}",
                                f"B: {model_b or 'B'}{note_b}")
        n_nan = int(np.isnan(result.values).sum())
        rows = self.rows_text() or f"over {result.n_rows:,} rows"
        if src is not None and src.rows is not None and result.n_rows < len(src.rows):
            rows += f" ({result.n_rows:,} drawn at random)"
        self.status.setText(f"{result.measure} {rows}"
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
        a, b = self.cell_specs()
        self.cell_jobs.submit("cell", f"all measures: {a} vs {b}", compare, self._on_comparison,
                              a=a, b=b, measures=list(MEASURES), max_rows=self.sources.max_rows,
                              rows=self.sources.rows)
        self.run_match()

    def cell_specs(self) -> tuple[str, str]:
        """"STORE.h5:HOOK" of A and B at the chosen cell."""
        i, j = self.cell
        src = self.sources
        return f"{src.store_a}:{self.matrix.hooks_a[i]}", f"{src.store_b}:{self.matrix.hooks_b[j]}"

    def run_match(self) -> None:
        """Match the chosen cell's units by the picked method."""
        method = self.method.currentData()
        self.n_clusters.setVisible(method == "clusters")
        if self.matrix is None or self.cell is None or self.sources is None:
            return
        a, b = self.cell_specs()
        self.match = None
        self.match_plot.clear()
        set_title(self.match_plot, f"{METHODS[method]}: computing\u2026")
        self.cell_jobs.submit("match", f"neuron matching ({method}): {a} vs {b}", match,
                              lambda r: self._on_match(method, r), a=a, b=b, method=method,
                              max_rows=self.sources.max_rows or MATCH_ROWS, rows=self.sources.rows,
                              n_clusters=self.n_clusters.value())

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
        self.stitch_button.setEnabled(True)

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

    def _on_match(self, method: str, result: Any) -> None:
        """The matching drawn by its method (see ``views.geometry.matching``)."""
        self.match = result
        draw_match(self.match_plot, method, result)

    # ------------------------------------------------------------ stitching
    def stitch_models(self) -> tuple[Path | None, Path | None]:
        """The zoo folders of A's and B's models (None where a model is no zoo classifier)."""
        src = self.sources
        if src is None:
            return None, None
        return tuple(None if model is None else resolve_zoo_folder(model, store, self.state.workspace)
                     for model, store in ((src.model_a, src.store_a), (src.model_b, src.store_b)))

    def run_stitch(self) -> None:
        """Stitch A's hook of the current cell into B's: two digits-zoo classifiers run on
        digits; any other row-aligned stores are stitched from their stored rows."""
        if self.matrix is None or self.cell is None:
            return
        folder_a, folder_b = self.stitch_models()
        self.stitch_label.setText("stitching\u2026")
        if folder_a is None or folder_b is None:
            a, b = self.cell_specs()
            self.cell_jobs.submit("stitch", f"stitch {Path(a).name} into {Path(b).name}", stitch_stores,
                                  self._on_store_stitch, lambda _s: self.stitch_label.setText(""), a=a, b=b)
            return
        i, j = self.cell
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

    def _on_store_stitch(self, r: StoreStitchResult) -> None:
        self.stitched = r
        text = (f"<b>map A \u2192 B from stored rows</b>: explains {r.r2_eval:.1%} of the variance of "
                f"B's rows on held-out documents ({r.n_train:,} training / {r.n_eval:,} held-out rows; "
                f"100% = B's rows exactly, 0% = B's mean row)")
        if r.n_tokens:
            text += (f"<br><b>B's next-token loss</b> with the mapped rows {r.loss_stitched:.3f} nats vs "
                     f"its own {r.loss_b:.3f} and {r.loss_mean:.3f} with its mean row: "
                     f"<b>{r.loss_recovered:.0%} of the loss recovered</b> "
                     f"(top-1 {r.accuracy_stitched:.1%} vs {r.accuracy_b:.1%}; {r.n_tokens:,} tokens)")
        elif r.note:
            text += f"<br>{r.note}"
        self.stitch_label.setText(text)

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
