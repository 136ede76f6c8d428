"""The geometry view's Kernel tab: kernel analysis (Montavon et al. 2011) of a store's hook
points against one of its labels. For each hook point, the error of a linear read-out of
the label from the leading d components of the rows' RBF kernel, against d: a curve that
falls early means the label lies in the representation's main directions of variation,
in a simple form. A row selection of the store restricts the rows, as in Compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from desktop_app.state import ROWS, AppState, Selection
from engine.api import KernelCurves, LatentLabError, kernel_curves, store_summary
from views.common.plots import paint_hint, paint_plot, set_label, set_title, style_plot, tick_label
from views.common.requests import Requests
from views.geometry.common import StorePicker

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class KernelTab(QWidget):
    """Pick a store, its hook points and a label; draw one error curve per hook point."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.result: KernelCurves | None = None
        self.selection = Selection()
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._build_controls())
        split.addWidget(self._build_plot())
        split.setSizes([280, 860])
        QVBoxLayout(self).addWidget(split)
        self.jobs = Requests(state, self.progress, self.status, self)

    # ------------------------------------------------------------ widgets
    def _build_controls(self) -> QWidget:
        self.picker = StorePicker("store")
        self.picker.changed.connect(self._on_store)
        self.label = QComboBox()
        self.label.setToolTip("The per-row label the read-out predicts")
        self.max_rows = QSpinBox()
        self.max_rows.setRange(50, 10_000)
        self.max_rows.setSingleStep(500)
        self.max_rows.setValue(2000)
        self.max_rows.setToolTip("Rows drawn at random (the kernel is an n x n matrix)")
        self.compute = QPushButton("Compute")
        self.compute.clicked.connect(self.compute_curves)
        box = QWidget()
        col = QVBoxLayout(box)
        col.addWidget(self.picker)
        for text, widget in (("label", self.label), ("rows", self.max_rows)):
            row = QHBoxLayout()
            row.addWidget(QLabel(text))
            row.addWidget(widget, 1)
            col.addLayout(row)
        col.addWidget(self.compute)
        col.addStretch(1)
        return box

    def _build_plot(self) -> QWidget:
        self.plot = pg.PlotWidget(background="w")
        style_plot(self.plot)
        self.plot.setLogMode(x=True, y=False)
        self.plot.setMouseEnabled(x=False, y=False)
        for side in ("bottom", "left"):
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        set_label(self.plot.getAxis("bottom"), "kernel PCA components used (d)")
        set_label(self.plot.getAxis("left"), "read-out error (share of rows wrong)")
        set_title(self.plot, "kernel analysis")
        self.hint = QLabel("Choose a store and a label and press Compute")
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.explain = QLabel("Error of a linear read-out of the label from the d leading components of "
                              "the rows' RBF kernel. A curve that drops with few components: the label "
                              "is carried in the representation's main directions, simply; the dashed "
                              "line is the error of always guessing the most common class.")
        self.explain.setWordWrap(True)
        self.explain.setStyleSheet("color: #555;")
        self.progress, self.status = QProgressBar(), QLabel()
        self.status.setWordWrap(True)
        box = QWidget()
        col = QVBoxLayout(box)
        col.addWidget(self.hint)
        col.addWidget(self.plot, 1)
        col.addWidget(self.explain)
        col.addWidget(self.progress)
        col.addWidget(self.status)
        return box

    # ------------------------------------------------------------ state
    def set_workspace(self, workspace: Path | None, active: Path | None) -> None:
        self.picker.set_workspace(workspace, active)

    def update_selection(self, selection: Selection) -> None:
        if not selection.live:
            self.selection = selection

    def _on_store(self) -> None:
        """List the chosen store's labels (its first one chosen, or the one chosen before)."""
        path, keep = self.picker.path(), self.label.currentText()
        self.label.clear()
        if path is None:
            return
        try:
            names = store_summary(path).label_names
        except (LatentLabError, OSError):
            names = ()
        self.label.addItems(list(names))
        if keep in names:
            self.label.setCurrentText(keep)
        self.label.setEnabled(bool(names))
        if not names:
            self.label.addItem("(the store has no labels)")

    def cancel_requests(self) -> None:
        self.jobs.forget_all()

    def session_state(self) -> dict[str, Any]:
        path = self.picker.path()
        return {"path": str(path) if path else None, "hooks": self.picker.hooks(),
                "label": self.label.currentText(), "max_rows": self.max_rows.value()}

    def restore_session(self, data: dict[str, Any]) -> None:
        if data.get("path") and Path(data["path"]).is_file():
            self.picker.set_path(Path(data["path"]), data.get("hooks"))
        if data.get("label"):
            self.label.setCurrentText(str(data["label"]))
        self.max_rows.setValue(int(data.get("max_rows", 2000) or 2000))

    # ------------------------------------------------------------ the job
    def selected_rows(self, path: Path) -> np.ndarray | None:
        sel = self.selection
        if sel.kind != ROWS or not len(sel) or self.state.store != path:
            return None
        return sel.ids

    def compute_curves(self) -> None:
        """Submit ``kernel_curves`` for the chosen store, hook points and label."""
        path, hooks = self.picker.path(), self.picker.hooks()
        if path is None or not hooks:
            self.jobs.show_error("Choose a store and check at least one hook point first.")
            return
        if not self.label.isEnabled() or not self.label.currentText():
            self.jobs.show_error(f"{path.name} has no per-row labels to read out.")
            return
        rows = self.selected_rows(path)
        where = f"{len(rows):,} selected rows of {path.name}" if rows is not None else path.name
        self.jobs.submit("kernel", f"kernel analysis of {self.label.currentText()} on {where}", kernel_curves,
                         lambda r: self.set_curves(r, where), store=path, hooks=hooks,
                         label=self.label.currentText(), max_rows=self.max_rows.value(), rows=rows)

    def set_curves(self, result: KernelCurves, where: str = "") -> None:
        """One curve per hook point and the majority-class error as a dashed line."""
        self.result = result
        self.hint.hide()
        plot = self.plot
        plot.clear()
        if plot.getPlotItem().legend is None:
            plot.addLegend(offset=(10, -10), labelTextSize="11px")  # bottom left: the curves fall to the right
        plot.getPlotItem().legend.clear()
        top = 1
        for k, (hook, curve) in enumerate(result.curves.items()):
            colour = COLOURS[k % len(COLOURS)]
            plot.plot(curve.components, curve.errors, pen=pg.mkPen(colour, width=2), symbol="o",
                      symbolSize=5, symbolBrush=colour, symbolPen=None, name=tick_label(hook))
            top = max(top, max(curve.components))
        doublings = [2 ** i for i in range(int(np.log2(top)) + 1)]  # log axis: ticks at log10 positions
        plot.getAxis("bottom").setTicks([[(float(np.log10(d)), str(d)) for d in doublings], []])
        chance = pg.InfiniteLine(result.chance_error, angle=0, pen=pg.mkPen((120, 120, 120), style=Qt.PenStyle.DashLine))
        plot.addItem(chance)
        plot.setYRange(0, max(result.chance_error, *(float(np.max(c.errors)) for c in result.curves.values())) * 1.05)
        set_title(plot, f"read-out of {result.label!r} ({result.n_classes} classes)")
        self.status.setText(f"{result.n_rows:,} rows of {where or 'the store'}; chance error "
                            f"{result.chance_error:.2f}")

    # ------------------------------------------------------------ export
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        if self.result is None:
            paint_hint(painter, rect, self.hint.text())
            return
        paint_plot(self.plot, painter, rect)
