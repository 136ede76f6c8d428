"""The geometry view's Dictionaries tab: SAE dictionary matching. Two SAE folders (the
workspace's ``saes/`` or any browsed one) are matched by the cosine of their decoder rows
(a one-to-one matching maximising the total cosine); the matched pairs are listed in a
sortable table. Choosing a pair makes SAE A the active SAE (its statistics over the active
store computed first if needed) and focuses latent a, so the feature browser shows it, and
shows both latents' top contexts here, side by side."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, QSignalBlocker, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from desktop_app.state import AppState
from engine.api import LatentContexts, SAEMatch, Vocab, latent_contexts, match
from views.common.plots import paint_hint, paint_plot, set_label, set_title, style_plot
from views.common.requests import Requests
from views.geometry.common import fill_paths

SHADE = (255, 140, 0)
N_CONTEXTS = 8


def workspace_saes(workspace: Path | None) -> list[Path]:
    """SAE folders (with a ``cfg.json``) directly under ``workspace/saes``, sorted."""
    folder = None if workspace is None else Path(workspace) / "saes"
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "cfg.json").is_file())


class SAEPicker(QWidget):
    """A combo of SAE folders and a Browse button."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.setMinimumContentsLength(12)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        browse = QPushButton("Browse\u2026")
        browse.clicked.connect(self._on_browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel(f"<b>{title}</b>"))
        row.addWidget(self.combo, 1)
        row.addWidget(browse)

    def set_folders(self, folders: list[Path], preferred: Path | None = None) -> None:
        """List ``folders`` (and the current choice, kept); choose ``preferred`` if nothing was chosen."""
        current = self.path() or preferred
        paths = list(folders)
        if current is not None and current not in paths:
            paths.insert(0, current)
        with QSignalBlocker(self.combo):
            fill_paths(self.combo, paths)
            if current is not None:
                self.combo.setCurrentIndex(max(0, self.combo.findData(str(current))))

    def set_path(self, path: Path) -> None:
        if self.combo.findData(str(path)) < 0:
            self.combo.addItem(path.name, str(path))
        self.combo.setCurrentIndex(self.combo.findData(str(path)))

    def path(self) -> Path | None:
        data = self.combo.currentData()
        return Path(data) if data else None

    def _on_browse(self) -> None:
        start = str(self.path().parent) if self.path() else str(Path.home())
        name = QFileDialog.getExistingDirectory(self, "Open an SAE folder", start)
        if name:
            self.set_path(Path(name))


def contexts_html(found: LatentContexts, title: str) -> str:
    """A heading (latent, density) and each top context with its tokens shaded by the
    latent's activation, the top token bold."""
    r, g, b = SHADE
    head = (f"<p><b>{html.escape(title)}</b> \u00b7 latent {found.latent} of {html.escape(found.sae_id)} "
            f"\u00b7 fires on {found.density:.2%} of rows \u00b7 max {found.max_value:.3g}</p>")
    if not found.contexts:
        return head + "<p><i>never fires on this store</i></p>"
    parts = [head]
    for c in found.contexts:
        values = c.values if c.values is not None else np.where(np.arange(len(c.tokens)) == c.at, c.value, 0)
        spans = []
        for i, (tok, v) in enumerate(zip(c.tokens, values, strict=True)):
            alpha = float(np.clip(v / found.max_value, 0, 1)) if found.max_value > 0 else 0.0
            bold = " font-weight: bold;" if i == c.at else ""
            spans.append(f'<span style="background-color: rgba({r},{g},{b},{alpha:.2f});{bold}">'
                         f"{_token(found.vocab, int(tok))}</span>")
        parts.append(f'<p style="white-space: pre-wrap; margin: 2px 0;"><span style="color: gray;">'
                     f'{c.value:7.3g} </span>{"".join(spans)}</p>')
    return "".join(parts)


def _token(vocab: Vocab | None, token_id: int) -> str:
    if token_id < 0:
        return "\u25a3"  # an image row
    text = vocab.token(token_id) if vocab is not None else f" #{token_id}"
    return html.escape(Vocab.visible(text.replace(" ", "\u00a0")).replace("\u00a0", " ")) or "\u2205"


class NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number, not its text."""

    def __init__(self, value: float, text: str) -> None:
        super().__init__(text)
        self.value = value
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return self.value < getattr(other, "value", 0.0)


class DictionaryTab(QWidget):
    """Match two SAEs' latents; list the pairs; a chosen pair focuses latent a and shows
    both latents' contexts."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.result: SAEMatch | None = None
        self.saes: tuple[Path, Path] | None = None  # what the shown result matched
        self.pair: tuple[int, int] | None = None
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._build_controls())
        split.addWidget(self._build_table())
        split.addWidget(self._build_contexts())
        split.setSizes([300, 330, 520])
        QVBoxLayout(self).addWidget(split)
        self.jobs = Requests(state, self.progress, self.status, self)
        self.pair_jobs = Requests(state, self.pair_progress, self.pair_status, self)

    # ------------------------------------------------------------ widgets
    def _build_controls(self) -> QWidget:
        self.picker_a, self.picker_b = SAEPicker("A"), SAEPicker("B")
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.7)
        self.threshold.setToolTip("A pair counts as matched at this decoder cosine or above")
        self.run_button = QPushButton("Match")
        self.run_button.clicked.connect(self.run_match)
        self.hist = pg.PlotWidget(background="w")
        style_plot(self.hist)
        self.hist.setMouseEnabled(x=False, y=False)
        set_label(self.hist.getAxis("bottom"), "decoder cosine")
        set_label(self.hist.getAxis("left"), "pairs")
        set_title(self.hist, "matched pairs")
        self.summary = QLabel("Choose two SAEs of the same activation space and press Match")
        self.summary.setWordWrap(True)
        self.progress, self.status = QProgressBar(), QLabel()
        self.status.setWordWrap(True)
        box = QWidget()
        col = QVBoxLayout(box)
        col.addWidget(self.picker_a)
        col.addWidget(self.picker_b)
        row = QHBoxLayout()
        row.addWidget(QLabel("matched at cosine \u2265"))
        row.addWidget(self.threshold)
        col.addLayout(row)
        col.addWidget(self.run_button)
        col.addWidget(self.summary)
        col.addWidget(self.hist, 1)
        col.addWidget(self.progress)
        col.addWidget(self.status)
        return box

    def _build_table(self) -> QWidget:
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["A", "B", "cosine"])
        self.table.setToolTip("Matched latents of SAE A and SAE B and the cosine of their decoder rows")
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(20)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setSortingEnabled(True)
        self.table.currentCellChanged.connect(lambda row, *_: self.choose_row(row))
        return self.table

    def _build_contexts(self) -> QWidget:
        self.view_a, self.view_b = QTextBrowser(), QTextBrowser()
        for view, which in ((self.view_a, "A"), (self.view_b, "B")):
            view.setHtml(f"<p style='color: gray;'>Choose a pair: latent {which}'s top contexts on the "
                         "active store appear here</p>")
        self.pair_progress, self.pair_status = QProgressBar(), QLabel()
        self.pair_status.setWordWrap(True)
        box = QWidget()
        col = QVBoxLayout(box)
        col.addWidget(self.view_a, 1)
        col.addWidget(self.view_b, 1)
        col.addWidget(self.pair_progress)
        col.addWidget(self.pair_status)
        return box

    # ------------------------------------------------------------ state
    def set_workspace(self, workspace: Path | None, active_sae: Path | None) -> None:
        """List the workspace's SAEs; A defaults to the active SAE, B to another one."""
        folders = workspace_saes(workspace)
        self.picker_a.set_folders(folders, active_sae or (folders[0] if folders else None))
        others = [f for f in folders if f != self.picker_a.path()]
        self.picker_b.set_folders(folders, others[0] if others else self.picker_a.path())

    def cancel_requests(self) -> None:
        self.jobs.forget_all()
        self.pair_jobs.forget_all()

    def session_state(self) -> dict[str, Any]:
        a, b = self.picker_a.path(), self.picker_b.path()
        return {"a": str(a) if a else None, "b": str(b) if b else None, "threshold": self.threshold.value()}

    def restore_session(self, data: dict[str, Any]) -> None:
        for key, picker in (("a", self.picker_a), ("b", self.picker_b)):
            if data.get(key) and Path(data[key]).is_dir():
                picker.set_path(Path(data[key]))
        self.threshold.setValue(float(data.get("threshold", 0.7) or 0.7))

    # ------------------------------------------------------------ matching
    def run_match(self) -> None:
        """Submit SAE dictionary matching of the two chosen folders."""
        a, b = self.picker_a.path(), self.picker_b.path()
        if a is None or b is None:
            self.jobs.show_error("Choose an SAE folder for A and for B first.")
            return
        self.saes = (a, b)
        self.jobs.submit("saes", f"match SAE latents: {a.name} vs {b.name}", match, self.set_result,
                         a=str(a), b=str(b), method="sae", threshold=self.threshold.value())

    def set_result(self, result: SAEMatch) -> None:
        """Fill the table (highest cosine first) and the histogram of matched cosines."""
        self.result, self.pair = result, None
        cos = np.asarray(result.hungarian_cos, np.float64)
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(cos))
        for r, (i, j, c) in enumerate(zip(result.hungarian_a, result.hungarian_b, cos, strict=True)):
            self.table.setItem(r, 0, NumberItem(float(i), str(int(i))))
            self.table.setItem(r, 1, NumberItem(float(j), str(int(j))))
            self.table.setItem(r, 2, NumberItem(float(c), f"{c:.3f}"))
        self.table.setSortingEnabled(True)
        self.table.sortItems(2, Qt.SortOrder.DescendingOrder)
        self.hist.clear()
        counts, edges = np.histogram(cos, bins=40, range=(min(0.0, float(cos.min(initial=0))), 1.0))
        self.hist.plot(edges, counts, stepMode="center", fillLevel=0, brush=(31, 119, 180, 150),
                       pen=pg.mkPen((31, 119, 180), width=1))
        self.hist.addItem(pg.InfiniteLine(self.threshold.value(), angle=90,
                                          pen=pg.mkPen((200, 0, 0), style=Qt.PenStyle.DashLine)))
        a, b = self.saes if self.saes else (Path("A"), Path("B"))
        self.summary.setText(
            f"<b>{len(cos):,}</b> pairs of <b>{a.name}</b> and <b>{b.name}</b> latents; "
            f"{result.share_matched:.0%} of A's latents matched at cosine \u2265 {self.threshold.value():.2f} "
            f"(best partner: {result.share_best:.0%})" + ("" if result.exact else " (sparsified matching)"))

    # ------------------------------------------------------------ one pair
    def choose_row(self, row: int) -> None:
        """The pair in table row ``row``: focus latent a (SAE A made active) and show both."""
        if self.result is None or row < 0 or self.saes is None or self.table.item(row, 0) is None:
            return
        pair = (int(self.table.item(row, 0).value), int(self.table.item(row, 1).value))
        if pair == self.pair:
            return
        self.pair = pair
        store = self.state.store
        if store is None:
            self.pair_jobs.show_error("Open a store to see the latents' contexts on.")
            return
        (sae_a, sae_b), (la, lb) = self.saes, pair
        if self.state.sae == sae_a and self.state.stats is not None:
            self.state.set_focus(la)  # the browser has A's statistics already
        self.pair_jobs.submit("a", f"contexts of {sae_a.name} latent {la}", latent_contexts,
                              lambda r: self._on_contexts(r, sae_a, "A"), store=store, sae=sae_a,
                              latent=la, n=N_CONTEXTS)
        self.pair_jobs.submit("b", f"contexts of {sae_b.name} latent {lb}", latent_contexts,
                              lambda r: self._on_contexts(r, sae_b, "B"), store=store, sae=sae_b,
                              latent=lb, n=N_CONTEXTS)

    def _on_contexts(self, found: LatentContexts, sae: Path, which: str) -> None:
        (self.view_a if which == "A" else self.view_b).setHtml(contexts_html(found, f"SAE {which}"))
        if which == "A":
            with self.state.batch():
                if self.state.sae != sae:
                    self.state.set_sae(sae)
                self.state.set_hook(found.hook)
                self.state.set_stats(found.sae_id)
                self.state.set_focus(found.latent)

    # ------------------------------------------------------------ export
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        if self.result is None:
            paint_hint(painter, rect, self.summary.text())
            return
        paint_plot(self.hist, painter, rect)
