"""The geometry view's Pruning tab: a dense digits-zoo model against its pruned variants
under input corruptions: accuracy per model and corruption, distributions of one geometric
quantity per sample (dense vs one pruned model), and the samples the pruning flipped from
right to wrong, linked to AppState's row selection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, QSignalBlocker, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop_app.state import ROWS, AppState, Selection
from engine import api
from engine.api import DEFAULT_CORRUPTIONS, PruningComparison, compare_pruned
from views.common.plots import (
    paint_hint,
    paint_plot,
    paint_table,
    set_label,
    set_title,
    step_histograms,
    style_plot,
)
from views.common.requests import Requests
from views.geometry.common import compact, is_pruned, workspace_models, zoo_info

QUANTITIES = {"norm": "norm", "angle to class weight (rad)": "angle_weight",
              "angle to centroid (rad)": "angle_centroid", "margin (logit)": "margin",
              "loss (nats)": "loss"}
DENSE_RGB, PRUNED_RGB = (31, 119, 180), (214, 39, 40)
SOURCES = ("digits:test", "digits:train", "digits")


class PruningTab(QWidget):
    """Choose a dense model, its pruned variants and corruptions; compare; inspect flips."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.result: PruningComparison | None = None
        self.flips = np.zeros(0, np.int64)  # sample ids listed now
        self._flips_text = ""
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._build_controls())
        split.addWidget(self._build_results())
        split.setSizes([300, 840])
        QVBoxLayout(self).addWidget(split)
        self.jobs = Requests(state, self.progress, self.status, self)
        self._show_result()

    # ------------------------------------------------------------ widgets
    def _build_controls(self) -> QWidget:
        self.dense = QComboBox()
        self.dense.currentIndexChanged.connect(self._check_variants)
        browse_dense = QPushButton("Browse\u2026")
        browse_dense.clicked.connect(self._browse_dense)
        self.pruned = QListWidget()
        add = QPushButton("Add a model folder\u2026")
        add.clicked.connect(self._browse_pruned)
        self.corruption_boxes: dict[str, tuple[QCheckBox, QDoubleSpinBox]] = {}
        for kind, severity in DEFAULT_CORRUPTIONS:
            box, spin = QCheckBox(kind), QDoubleSpinBox()
            box.setChecked(True)
            spin.setRange(0.0, 1.0 if kind == "dropout" else 10.0)
            spin.setSingleStep(0.1)
            spin.setValue(severity)
            spin.setEnabled(kind != "none")
            spin.setToolTip("severity: noise sd (pixel range), blur sigma (pixels), dropout probability")
            self.corruption_boxes[kind] = (box, spin)
        self.source = QComboBox()
        self.source.setEditable(True)
        self.source.addItems(SOURCES)
        self.compare = QPushButton("Compare")
        self.compare.clicked.connect(self.run_compare)
        self.open_saved = QPushButton("Open a saved comparison\u2026")
        self.open_saved.clicked.connect(self._browse_saved)
        self.progress, self.status = QProgressBar(), QLabel()
        self.status.setWordWrap(True)
        box = QWidget()
        col = QVBoxLayout(box)
        row = QHBoxLayout()
        row.addWidget(self.dense, 1)
        row.addWidget(browse_dense)
        col.addWidget(QLabel("<b>Dense model</b>"))
        col.addLayout(row)
        col.addWidget(QLabel("<b>Pruned variants</b>"))
        col.addWidget(self.pruned, 1)
        col.addWidget(add)
        col.addWidget(QLabel("<b>Corruptions</b>"))
        grid = QGridLayout()
        for k, (box_, spin) in enumerate(self.corruption_boxes.values()):
            grid.addWidget(box_, k, 0)
            grid.addWidget(spin, k, 1)
        col.addLayout(grid)
        col.addWidget(QLabel("<b>Inputs</b>"))
        col.addWidget(self.source)
        for w in (self.compare, self.open_saved, self.progress, self.status):
            col.addWidget(w)
        return box

    def _build_results(self) -> QWidget:
        self.hint = QLabel("Choose a dense model and its pruned variants, then Compare")
        self.hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hint.setWordWrap(True)
        self.accuracy = QTableWidget(0, 0)
        self.accuracy.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.accuracy.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.accuracy.setMaximumHeight(170)
        self.model_combo, self.corruption_combo = QComboBox(), QComboBox()
        self.quantity = QComboBox()
        self.quantity.addItems(list(QUANTITIES))
        for combo in (self.model_combo, self.corruption_combo, self.quantity):
            combo.currentIndexChanged.connect(self._show_pair)
            compact(combo, 5)
        self.hist = pg.PlotWidget(background="w")
        self.hist.setMinimumHeight(180)
        style_plot(self.hist)
        set_label(self.hist.getAxis("left"), "samples")
        self.flips_title = QLabel()
        self.flip_list = QListWidget()
        self.flip_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.flip_list.itemSelectionChanged.connect(self._on_flips_selected)
        self.select_all = QPushButton("Select all flips")
        self.select_all.clicked.connect(self.select_all_flips)
        pick = QHBoxLayout()
        for label, combo in (("pruned", self.model_combo), ("under", self.corruption_combo),
                             ("quantity", self.quantity)):
            pick.addWidget(QLabel(label))
            pick.addWidget(combo, 1)
        flips = QVBoxLayout()
        flips.addWidget(self.flips_title)
        flips.addWidget(self.flip_list, 1)
        flips.addWidget(self.select_all)
        lower = QHBoxLayout()
        lower.addWidget(self.hist, 3)
        lower.addLayout(flips, 2)
        box = QWidget()
        col = QVBoxLayout(box)
        col.addWidget(self.hint)
        col.addWidget(self.accuracy)
        col.addLayout(pick)
        col.addLayout(lower, 1)
        return box

    # ------------------------------------------------------------ models
    def set_workspace(self, workspace: Path | None) -> None:
        """List the workspace's dense zoo models and their pruned variants."""
        found = workspace_models(workspace)
        variants = [f for f in found if is_pruned(f)]
        dense = [f for f in found if f not in variants]
        with_variants = [f for f in dense if any(v.name.startswith(f.name + "-") for v in variants)]
        current = self.dense.currentData()
        if current not in [str(f) for f in dense]:  # a new workspace: a model with variants
            current = str((with_variants or dense or [""])[0]) or None
        with QSignalBlocker(self.dense):
            self.dense.clear()
            for folder in dense:
                self.dense.addItem(folder.name, str(folder))
            self.dense.setCurrentIndex(max(self.dense.findData(current), 0))
        self.pruned.clear()
        for folder in variants:
            self._add_variant(folder)
        self._check_variants()

    def _add_variant(self, folder: Path, checked: bool = False) -> None:
        if any(self.pruned.item(i).data(Qt.ItemDataRole.UserRole) == str(folder)
               for i in range(self.pruned.count())):
            return
        item = QListWidgetItem(folder.name)
        item.setData(Qt.ItemDataRole.UserRole, str(folder))
        item.setToolTip(str(folder))
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self.pruned.addItem(item)

    def _check_variants(self, *_: Any) -> None:
        """Check the variants pruned from the chosen dense model (by their name)."""
        dense = self.dense.currentData()
        if not dense:
            return
        prefix = Path(dense).name + "-"
        for i in range(self.pruned.count()):
            item = self.pruned.item(i)
            ours = item.text().startswith(prefix)
            item.setCheckState(Qt.CheckState.Checked if ours else Qt.CheckState.Unchecked)

    def _browse_dense(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Dense digits-zoo model folder")
        if folder:
            self.set_dense(Path(folder))

    def _browse_pruned(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Pruned digits-zoo model folder")
        if folder:
            self._add_variant(Path(folder), True)

    def set_dense(self, folder: Path) -> None:
        i = self.dense.findData(str(folder))
        if i < 0:
            self.dense.addItem(folder.name, str(folder))
            i = self.dense.count() - 1
        self.dense.setCurrentIndex(i)

    def pruned_folders(self) -> list[str]:
        return [self.pruned.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.pruned.count())
                if self.pruned.item(i).checkState() == Qt.CheckState.Checked]

    def set_pruned(self, folders: list[str]) -> None:
        wanted = set(folders)
        for f in folders:
            self._add_variant(Path(f))
        for i in range(self.pruned.count()):
            item = self.pruned.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.data(Qt.ItemDataRole.UserRole) in wanted
                               else Qt.CheckState.Unchecked)

    def corruptions(self) -> list[tuple[str, float]]:
        """The checked corruptions as (kind, severity)."""
        return [(kind, 0.0 if kind == "none" else round(spin.value(), 4))
                for kind, (box, spin) in self.corruption_boxes.items() if box.isChecked()]

    # ------------------------------------------------------------ session
    def cancel_requests(self) -> None:
        """Cancel this tab's running jobs and drop their answers."""
        self.jobs.forget_all()

    def session_state(self) -> dict[str, Any]:
        return {"dense": self.dense.currentData(), "pruned": self.pruned_folders(),
                "corruptions": self.corruptions(), "source": self.source.currentText(),
                "quantity": self.quantity.currentText()}

    def restore_session(self, data: dict[str, Any]) -> None:
        if data.get("dense") and zoo_info(Path(data["dense"])) is not None:
            self.set_dense(Path(data["dense"]))
        if isinstance(data.get("pruned"), list):
            self.set_pruned([f for f in data["pruned"] if zoo_info(Path(f)) is not None])
        if isinstance(data.get("corruptions"), list):
            chosen = {str(c[0]): float(c[1]) for c in data["corruptions"]
                      if isinstance(c, (list, tuple)) and len(c) == 2}
            for kind, (box, spin) in self.corruption_boxes.items():
                box.setChecked(kind in chosen)
                if kind in chosen:
                    spin.setValue(chosen[kind])
        if data.get("source"):
            self.source.setCurrentText(str(data["source"]))
        i = self.quantity.findText(str(data.get("quantity", "")))
        if i >= 0:
            self.quantity.setCurrentIndex(i)

    # ------------------------------------------------------------ the job
    def run_compare(self) -> None:
        """Submit ``compare_pruned`` for the chosen models, corruptions and inputs."""
        dense, pruned, corruptions = self.dense.currentData(), self.pruned_folders(), self.corruptions()
        if not dense:
            self.jobs.show_error("Choose a dense model folder first.")
            return
        if not pruned:
            self.jobs.show_error("Check at least one pruned variant.")
            return
        if not corruptions:
            self.jobs.show_error("Check at least one corruption.")
            return
        self.jobs.submit("pruning", f"pruning geometry of {Path(dense).name}", compare_pruned,
                         self.set_result, lambda _s: self.set_result(None), dense=dense,
                         pruned=pruned, corruptions=corruptions, source=self.source.currentText())

    def _browse_saved(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Open a pruning comparison", "",
                                              "Pruning comparisons (*.npz);;All files (*)")
        if name:
            self.open_comparison(Path(name))

    def open_comparison(self, path: Path) -> None:
        """Load a comparison saved by ``save_comparison`` (in a job) and show it."""
        self.jobs.submit("pruning", f"open {path.name}", api.open_comparison, self.set_result,
                         lambda _s: self.set_result(None), path=path)

    def set_result(self, result: PruningComparison | None) -> None:
        """Show a comparison (or nothing): accuracy table, combos, histograms, flips."""
        self.result = result
        self._show_result()

    # ------------------------------------------------------------ showing results
    def _show_result(self) -> None:
        r = self.result
        self.hint.setVisible(r is None)
        self._fill_accuracy()
        models = [] if r is None else list(r.models[1:])
        corruptions = [] if r is None else list(r.corruptions)
        for combo, items in ((self.model_combo, models), (self.corruption_combo, corruptions)):
            keep = combo.currentText()
            with QSignalBlocker(combo):
                combo.clear()
                combo.addItems(items)
                if keep in items:
                    combo.setCurrentText(keep)
        self._show_pair()

    def _fill_accuracy(self) -> None:
        r = self.result
        if r is None:
            self.accuracy.setRowCount(0)
            self.accuracy.setColumnCount(0)
            return
        self.accuracy.setColumnCount(len(r.corruptions))
        self.accuracy.setRowCount(len(r.models))
        self.accuracy.setHorizontalHeaderLabels(list(r.corruptions))
        self.accuracy.setVerticalHeaderLabels(list(r.models))
        for i, model in enumerate(r.models):
            for j, corruption in enumerate(r.corruptions):
                acc = r.accuracy.get((model, corruption), float("nan"))
                drop = r.accuracy.get((r.models[0], corruption), acc) - acc  # vs dense
                item = QTableWidgetItem(f"{acc:.1%}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if np.isfinite(drop) and drop > 0:  # redder the more accuracy pruning cost
                    fade = int(255 - 150 * min(1.0, drop / 0.5))
                    item.setBackground(QColor(255, fade, fade))
                    item.setToolTip(f"{drop:.1%} below dense under {corruption}")
                self.accuracy.setItem(i, j, item)

    def pair(self) -> tuple[str, str, str] | None:
        """(dense, pruned, corruption) shown now, or None."""
        if self.result is None or not self.model_combo.currentText() or not self.corruption_combo.currentText():
            return None
        return self.result.models[0], self.model_combo.currentText(), self.corruption_combo.currentText()

    def _show_pair(self, *_: Any) -> None:
        """Histograms of the quantity for dense and pruned, and the flipped samples."""
        pair = self.pair()
        self.hist.clear()
        set_label(self.hist.getAxis("bottom"), self.quantity.currentText())
        if pair is None:
            self._fill_flips(np.zeros(0, np.int64), None)
            return
        dense, pruned, corruption = pair
        attr = QUANTITIES[self.quantity.currentText()]
        step_histograms(self.hist, [
            (dense, np.asarray(getattr(self.result.geometry[(dense, corruption)], attr), float), DENSE_RGB),
            (pruned, np.asarray(getattr(self.result.geometry[(pruned, corruption)], attr), float), PRUNED_RGB)])
        set_title(self.hist, f"{self.quantity.currentText()} under {corruption}")
        self._fill_flips(np.asarray(self.result.flips[(pruned, corruption)], np.int64), pair)

    def _fill_flips(self, flips: np.ndarray, pair: tuple[str, str, str] | None) -> None:
        self.flips = np.sort(flips)
        with QSignalBlocker(self.flip_list):
            self.flip_list.clear()
            if pair is not None:
                dense, pruned, corruption = pair
                labels = np.asarray(self.result.labels)
                pp = np.asarray(self.result.geometry[(pruned, corruption)].predicted)
                for s in self.flips:
                    item = QListWidgetItem(f"sample {s}: digit {labels[s]}, {pruned} says {pp[s]}")
                    item.setData(Qt.ItemDataRole.UserRole, int(s))
                    self.flip_list.addItem(item)
        self.select_all.setEnabled(len(self.flips) > 0)
        self._flips_text = ("" if pair is None else
                            f"<b>{len(self.flips)} flips</b>: right dense, wrong {pair[1]} under {pair[2]}")
        self.update_selection(self.state.selection)

    # ------------------------------------------------------------ selection
    def _how(self) -> str:
        pair = self.pair()
        return "" if pair is None else f"flips of {pair[1]} under {pair[2]}"

    def select_all_flips(self) -> None:
        """Put every listed flip into AppState's row selection."""
        if len(self.flips):
            self.state.set_selection(Selection(ROWS, self.flips, how=self._how()))

    def _on_flips_selected(self) -> None:
        ids = [item.data(Qt.ItemDataRole.UserRole) for item in self.flip_list.selectedItems()]
        if ids:
            self.state.set_selection(Selection(ROWS, np.array(ids, np.int64), how=self._how()))

    def update_selection(self, selection: Selection) -> None:
        """Highlight the listed flips that are in a row selection (other ids are ignored)."""
        chosen = (np.isin(self.flips, selection.ids) if selection.kind == ROWS
                  else np.zeros(len(self.flips), bool))
        with QSignalBlocker(self.flip_list):
            for k in range(self.flip_list.count()):
                self.flip_list.item(k).setSelected(bool(chosen[k]))
        n = int(chosen.sum())
        self.flips_title.setText(self._flips_text + (f" \u00b7 {n} in the selection" if n else ""))
        self.flip_list.viewport().update()

    # ------------------------------------------------------------ export
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        """The histograms above the accuracy table."""
        r = self.result
        if r is None:
            paint_hint(painter, rect, self.hint.text())
            return
        table_h = min(rect.height() * 0.35, 24.0 * (len(r.models) + 1))
        paint_plot(self.hist, painter, QRectF(rect.x(), rect.y(), rect.width(), rect.height() - table_h))
        rows = [[m, *(f"{r.accuracy.get((m, c), float('nan')):.1%}" for c in r.corruptions)] for m in r.models]
        paint_table(painter, QRectF(rect.x(), rect.bottom() - table_h, rect.width(), table_h),
                    ["model", *r.corruptions], rows)
