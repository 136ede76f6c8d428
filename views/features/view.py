"""The feature browser: a sortable, searchable table of an SAE's latents (density, maximum,
mean, label association, auto-label) and a detail pane for the focused latent (top
activating contexts shaded by its activation, example contexts from each quantile interval
of its activations, activation histogram, logit effects, nearest latents by decoder
cosine). It follows AppState's stats, focus and selection: a row selection lists the
latents most active on it; a latent selection filters the table. The table's model lives
in ``views.features.table``, the contexts' HTML in ``views.features.contexts``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QItemSelectionModel, QModelIndex, QPoint, QRectF, QSignalBlocker, Qt
from PySide6.QtGui import QPainter, QRegion
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSplitter,
    QStackedWidget,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)
from shiboken6 import isValid

from desktop_app.state import LATENTS, ROWS, AppState, Selection
from desktop_app.view import LatestWins
from engine import api
from engine.api import (
    Context,
    RowLatents,
    Vocab,
    latents_on_rows,
    shaded_contexts,
)
from views.features.contexts import (  # noqa: F401  (context_html, N_TOP: part of this view's API)
    N_TOP,
    SHADE,
    Interval,
    context_html,
    detail_rows,
    intervals_html,
    split_intervals,
)
from views.features.table import (  # noqa: F401  (re-exported for the view's users)
    COLUMNS,
    SORT_ROLE,
    LatentFilterProxy,
    LatentTableModel,
)


# ---------------------------------------------------------------- the view
class FeatureBrowser(QWidget):
    """Table of latents + detail pane of the focused latent, linked through AppState."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.data_: api.BrowserData | None = None
        self.contexts: list[Context] = []
        self.intervals: list[Interval] = []  # the focused latent's, highest first
        self.requests = LatestWins(alive=lambda: isValid(self))  # the latest answer of each kind wins
        self._latent_filter = False  # the table is filtered by a latent selection
        self._loaded: tuple[Path | None, str | None] = (None, None)
        self._quiet = False  # True while filtering: the view moving its current row is no choice
        self._build()
        state.store_changed.connect(self._on_stats_changed)
        state.stats_changed.connect(self._on_stats_changed)
        state.focus_changed.connect(self._on_focus_changed)
        state.selection_changed.connect(self._on_selection_changed)
        self._on_stats_changed()

    # ------------------------------------------------------------ widgets
    def _build(self) -> None:
        self.placeholder = QLabel("No feature statistics yet")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(self._build_browser())
        self.status = QLabel()
        layout = QVBoxLayout(self)
        layout.addWidget(self.stack)
        layout.addWidget(self.status)

    def _build_browser(self) -> QWidget:
        self.search = QLineEdit(placeholderText="search: latent id or label text")
        self.search.textChanged.connect(self._apply_filter)
        self.active_title = QLabel()
        self.active_list = QListWidget()
        self.active_list.setMaximumHeight(140)
        self.active_list.itemClicked.connect(self._on_item_clicked)
        self.empty_label = QLabel()
        self.model = LatentTableModel(self)
        self.proxy = LatentFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self.table = self._build_table()
        left = QWidget()
        col = QVBoxLayout(left)
        col.setContentsMargins(0, 0, 0, 0)
        for w in (self.search, self.active_title, self.active_list, self.table, self.empty_label):
            col.addWidget(w)
        self._show_active(None)
        self.empty_label.hide()
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self._build_detail())
        split.setSizes([500, 500])
        return split

    def _build_table(self) -> QTableView:
        table = QTableView()
        table.setModel(self.proxy)
        table.setSortingEnabled(True)
        table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.verticalHeader().hide()
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        table.verticalHeader().setDefaultSectionSize(20)
        table.horizontalHeader().setStretchLastSection(True)
        for col, width in enumerate((60, 80, 70, 70, 160)):
            table.setColumnWidth(col, width)
        table.selectionModel().currentRowChanged.connect(self._on_table_current)
        return table

    def _build_detail(self) -> QWidget:
        self.detail = QWidget()
        self.detail.setAutoFillBackground(True)
        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setWordWrap(True)
        self.hist = pg.PlotWidget(background="w")
        self.hist.setMinimumHeight(140)
        self.hist.setLogMode(x=True, y=False)
        self.hist.setLabel("bottom", "activation")
        self.hist.setLabel("left", "rows")
        self.hist.setMouseEnabled(x=False, y=False)
        self.hist.getAxis("bottom").enableAutoSIPrefix(False)
        self.context_view = QTextBrowser()
        self.interval_view = QTextBrowser()
        self.context_tabs = QTabWidget()
        self.context_tabs.addTab(self.context_view, "Top activations")
        self.context_tabs.addTab(self.interval_view, "Quantile intervals")
        self.logit_table = QTableWidget(0, 4)
        self.logit_table.setHorizontalHeaderLabels(["promoted", "logit", "suppressed", "logit"])
        self.logit_table.verticalHeader().hide()
        self.logit_table.verticalHeader().setDefaultSectionSize(18)
        self.logit_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.logit_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.no_logits = QLabel("no logit effects (the model has no unembedding)")
        self.neighbours = QListWidget()
        self.neighbours.itemClicked.connect(self._on_item_clicked)
        lists = QHBoxLayout()
        for title, widgets in (("Logit effects", (self.logit_table, self.no_logits)),
                               ("Nearest latents (decoder cosine)", (self.neighbours,))):
            box = QVBoxLayout()
            box.addWidget(QLabel(f"<b>{title}</b>"))
            for w in widgets:
                box.addWidget(w)
            lists.addLayout(box)
        col = QVBoxLayout(self.detail)
        col.addWidget(self.title)
        col.addWidget(self.hist, 2)
        col.addWidget(self.context_tabs, 3)
        col.addLayout(lists, 2)
        return self.detail

    # ------------------------------------------------------------ AppState handlers
    def _on_stats_changed(self, *_: Any) -> None:
        """Load the statistics (and vocabulary) in a job when the store or stats change."""
        key = (self.state.store, self.state.stats)
        if key == self._loaded and self.data_ is not None:
            return
        self._loaded = key
        self._set_data(None)
        if None in key or self.state.engine is None:
            self.requests.forget("load")  # the old store's statistics are not wanted any more
            self.placeholder.setText("No feature statistics yet")
            return
        self.placeholder.setText(f"Loading feature statistics {self.state.stats}\u2026")
        self._submit("load", "load feature statistics", api.load_browser, self._on_loaded,
                     store_path=self.state.store, stats_id=self.state.stats)

    def _on_focus_changed(self, focus: tuple[int, ...]) -> None:
        latent = focus[0] if focus else None
        self._select_row(latent)
        self._show_detail(latent)

    def _on_selection_changed(self, selection: Selection) -> None:
        filtered = selection.kind == LATENTS and len(selection) > 0
        if filtered or self._latent_filter:  # a row selection (a brush moving) leaves the table be
            self._apply_filter()
        self._latent_filter = filtered
        hook = self.data_.stats.hook if self.data_ is not None else self.state.hook
        if (selection.kind != ROWS or not len(selection) or self.state.engine is None
                or None in (self.state.store, self.state.sae, hook)):
            self.requests.forget("selection")  # a late answer would show a stale list
            self._show_active(None)
            return
        self.active_title.setText(f"Most active on selection ({len(selection)} rows): computing\u2026")
        self.active_title.show()
        self._submit("selection", "latents on the selection", latents_on_rows, self._show_active,
                     store_path=self.state.store, hook=hook, sae_path=self.state.sae,
                     rows=selection.ids, stats_id=self.state.stats if self.data_ else None)

    # ------------------------------------------------------------ widget handlers
    def _on_table_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid() and not self._quiet:
            self.state.set_focus(self.model.latent_at(self.proxy.mapToSource(current).row()))

    def _on_item_clicked(self, item: QListWidgetItem) -> None:
        latent = item.data(Qt.ItemDataRole.UserRole)
        if latent is not None:
            self.state.set_focus(int(latent))

    def _apply_filter(self, *_: Any) -> None:
        """Filter by the search text (latent id or label text) and a latent selection."""
        if self.data_ is None:
            return
        text = self.search.text().strip().lower()
        d_sae = len(self.data_.stats.count)
        mask = np.ones(d_sae, bool)
        if text:
            mask = np.char.find(self.data_.search_text, text) >= 0
            if text.isdigit() and int(text) < d_sae:
                mask[int(text)] = True
        sel = self.state.selection
        if sel.kind == LATENTS and len(sel):
            mask &= sel.as_mask(d_sae)
        self.model.set_filter(None if mask.all() else mask)
        self._quiet = True
        try:
            self.proxy.refilter()
        finally:
            self._quiet = False
        shown = self.proxy.rowCount()
        self.empty_label.setText(f"No latent matches \u201c{self.search.text()}\u201d" if text
                                 else "No latent in the selection")
        self.empty_label.setVisible(shown == 0)
        self._select_row(self.state.focus[0] if self.state.focus else None)

    def _select_row(self, latent: int | None) -> None:
        """Select and scroll to ``latent``'s row without telling AppState again."""
        sm = self.table.selectionModel()
        row = -1 if latent is None else self.model.row_of(latent)
        index = self.proxy.mapFromSource(self.model.index(row, 0)) if row >= 0 else QModelIndex()
        with QSignalBlocker(sm):
            if index.isValid():
                flags = (QItemSelectionModel.SelectionFlag.ClearAndSelect
                         | QItemSelectionModel.SelectionFlag.Rows)
                sm.setCurrentIndex(index, flags)
                self.table.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)
            else:
                sm.clearSelection()
        self.table.viewport().update()

    # ------------------------------------------------------------ jobs
    def _submit(self, kind: str, title: str, fn: Any, handler: Any, **params: Any) -> None:
        """Submit a job keyed by ``kind``; only the answer to the latest request is used."""
        def failed(sentence: str, details: str) -> None:
            self.status.setText(sentence)
            self.status.setToolTip(details)
            if kind == "load":
                self.placeholder.setText(f"No feature statistics: {sentence}")
        self.status.setText("")
        self.requests.submit(self.state.engine, kind, title, fn, engine_key=f"browser-{kind}",
                             on_result=handler, on_error=failed, **params)

    def _on_loaded(self, data: api.BrowserData) -> None:
        self._set_data(data)
        self._on_selection_changed(self.state.selection)
        self._on_focus_changed(self.state.focus)

    def _set_data(self, data: api.BrowserData | None) -> None:
        self.data_ = data
        self.model.set_data(data)
        self.stack.setCurrentIndex(0 if data is None else 1)
        if data is not None:
            header = self.table.horizontalHeader()
            self.model.sort(header.sortIndicatorSection(), header.sortIndicatorOrder())
            self._apply_filter()

    def _show_active(self, found: RowLatents | None) -> None:
        """The "most active on selection" list; hidden when there is no row selection."""
        self.active_list.clear()
        visible = found is not None and self.state.selection.kind == ROWS and len(self.state.selection) > 0
        self.active_title.setVisible(visible)
        self.active_list.setVisible(visible)
        if not visible:
            return
        self.active_title.setText(f"<b>Most active on selection ({len(self.state.selection)} rows)</b>")
        for j, lift, frac in zip(found.latents, found.lift, found.frac_on_rows, strict=True):
            if frac <= 0:
                continue
            label = self.data_.table.labels[j] if self.data_ is not None and j < len(self.data_.table.labels) else ""
            item = QListWidgetItem(f"{j}  \u00d7{lift:.1f}  on {frac:.0%} of rows  {label}")
            item.setData(Qt.ItemDataRole.UserRole, int(j))
            self.active_list.addItem(item)

    # ------------------------------------------------------------ the detail pane
    def _show_detail(self, latent: int | None) -> None:
        d = self.data_
        self.contexts, self.intervals = [], []
        if d is None or latent is None or not 0 <= latent < len(d.stats.count):
            self.title.setText("Select a latent")
            self.hist.clear()
            self.context_view.setHtml("")
            self.interval_view.setHtml("")
            self.logit_table.setRowCount(0)
            self.neighbours.clear()
            return
        s = d.stats
        assoc = f" \u00b7 {html.escape(d.table.association[latent])}" if d.table.association[latent] else ""
        self.title.setText(f"<b>Latent {latent}</b> \u2014 {html.escape(d.table.labels[latent])}<br>"
                           f"density {s.density[latent]:.3%} \u00b7 mean {s.mean[latent]:.4g} \u00b7 "
                           f"max {s.max[latent]:.4g}{assoc}")
        self._draw_histogram(latent)
        self._fill_logits(latent)
        self._fill_neighbours(latent)
        if s.count[latent] == 0 or self.state.store is None:
            self.context_view.setHtml(context_html([], d.vocab, 0.0))
            self.interval_view.setHtml(intervals_html(None if s.interval_rows is None else [], d.vocab, 0.0))
            return
        self.context_view.setHtml("<p><i>loading contexts\u2026</i></p>")
        self.interval_view.setHtml("<p><i>loading contexts\u2026</i></p>")
        rows, values, _ = detail_rows(s, latent)
        self._submit("detail", f"contexts of latent {latent}", shaded_contexts, self._on_contexts,
                     store_path=self.state.store, hook=s.hook, sae_path=self.state.sae,
                     latent=latent, top_rows=rows, top_values=values, n=len(rows),
                     stats_id=self.state.stats)

    def _on_contexts(self, result: tuple[int, list[Context]]) -> None:
        latent, contexts = result
        if self.data_ is None or (self.state.focus[:1] != (latent,)):
            return
        s, vocab = self.data_.stats, self.data_.vocab
        self.contexts, self.intervals = split_intervals(s, latent, contexts)
        vmax = float(s.max[latent])
        self.context_view.setHtml(context_html(self.contexts, vocab, vmax))
        self.interval_view.setHtml(intervals_html(None if s.interval_rows is None else self.intervals,
                                                  vocab, vmax))

    def _draw_histogram(self, latent: int) -> None:
        """Counts of log10 activation bins as steps, the x axis in activation units."""
        self.hist.clear()
        s = self.data_.stats
        counts = s.hist[latent]
        nz = np.flatnonzero(counts)
        if not nz.size:
            return
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        x = 10.0 ** s.hist_edges[lo:hi + 1]
        self.hist.addItem(pg.PlotDataItem(x, counts[lo:hi].astype(float), stepMode="center",
                                          fillLevel=0, brush=(*SHADE, 160), pen=pg.mkPen(SHADE)))

    def _fill_logits(self, latent: int) -> None:
        s, vocab = self.data_.stats, self.data_.vocab
        has = s.logit_top_ids is not None
        self.logit_table.setVisible(has)
        self.no_logits.setVisible(not has)
        self.logit_table.setRowCount(0)
        if not has:
            return
        rows = list(zip(s.logit_top_ids[latent], s.logit_top_values[latent],
                        s.logit_bottom_ids[latent], s.logit_bottom_values[latent], strict=True))
        self.logit_table.setRowCount(len(rows))
        for r, (ti, tv, bi, bv) in enumerate(rows):
            for c, text in enumerate((_plain_token(vocab, ti), f"{tv:+.3f}",
                                      _plain_token(vocab, bi), f"{bv:+.3f}")):
                self.logit_table.setItem(r, c, QTableWidgetItem(text))

    def _fill_neighbours(self, latent: int) -> None:
        self.neighbours.clear()
        s, labels = self.data_.stats, self.data_.table.labels
        for j, cos in zip(s.neighbours[latent], s.neighbour_cos[latent], strict=True):
            item = QListWidgetItem(f"{j}  cos {cos:.3f}  {labels[j]}")
            item.setData(Qt.ItemDataRole.UserRole, int(j))
            self.neighbours.addItem(item)

    # ------------------------------------------------------------ session
    def session_state(self) -> dict[str, Any]:
        """The search text and the table's sort (the focused latent is AppState's)."""
        header = self.table.horizontalHeader()
        return {"search": self.search.text(), "sort": [header.sortIndicatorSection(),
                                                       header.sortIndicatorOrder().value]}

    def restore_session(self, data: dict[str, Any]) -> None:
        """Restore what ``session_state`` saved; unknown or missing keys are skipped."""
        if not isinstance(data, dict):
            return
        if isinstance(data.get("search"), str):
            self.search.setText(data["search"])
        sort = data.get("sort")
        if (isinstance(sort, list) and len(sort) == 2 and all(isinstance(v, int) for v in sort)
                and 0 <= sort[0] < len(COLUMNS) and sort[1] in (0, 1)):
            self.table.sortByColumn(sort[0], Qt.SortOrder(sort[1]))

    def cancel_requests(self) -> None:
        self.requests.forget_all()

    # ------------------------------------------------------------ figure export
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        """Paint the detail pane (or the placeholder) scaled into ``rect``, keeping its aspect."""
        pane = self.detail if self.data_ is not None else self.placeholder
        if not pane.isVisible() or pane.width() < 50:
            pane.resize(max(pane.sizeHint().width(), 640), max(pane.sizeHint().height(), 720))
            if pane.layout() is not None:
                pane.layout().activate()
        scale = min(rect.width() / max(pane.width(), 1), rect.height() / max(pane.height(), 1))
        painter.save()
        painter.translate(rect.topLeft())
        painter.scale(scale, scale)
        pane.render(painter, QPoint(0, 0), QRegion(), QWidget.RenderFlag.DrawChildren)
        painter.restore()


def _plain_token(vocab: Vocab | None, token_id: int) -> str:
    return Vocab.visible(vocab.token(int(token_id))) if vocab is not None else f"#{int(token_id)}"

