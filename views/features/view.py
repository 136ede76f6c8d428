"""The feature browser: a sortable, searchable table of an SAE's latents (density, maximum,
mean, label association, auto-label) and a detail pane for the focused latent (top
activating contexts shaded by its activation, example contexts from each quantile interval
of its activations, activation histogram, logit effects, nearest latents by decoder
cosine), under a header line with the SAE's held-out metrics. A text probe tab runs typed
text through the model and SAE and shows each token's latents. The search finds latents
by id, label text, token or label association (``engine.features.search``) and says what
it matched. It follows AppState's stats, focus and selection: a row selection lists the
latents most active on it; a latent selection filters the table. The tables live in
``views.features.table``, the detail pane in ``views.features.detail``, the probe in
``views.features.probe``, the contexts' HTML in ``views.features.contexts``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import QItemSelectionModel, QModelIndex, QPoint, QRectF, QSignalBlocker, Qt
from PySide6.QtGui import QPainter, QRegion
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QSplitter,
    QStackedWidget,
    QTabWidget,
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
    SAEQuality,
    TextLatents,
    latents_on_rows,
    rank_latent_changes,
    sae_quality,
    search_latents,
    shaded_contexts,
    text_latents,
)
from views.features.changed import ChangedLatents, compared_runs
from views.features.contexts import (  # noqa: F401  (context_html, N_TOP: part of this view's API)
    N_TOP,
    Interval,
    context_html,
    detail_rows,
    intervals_html,
    split_intervals,
)
from views.features.detail import DetailPane
from views.features.probe import TextProbe
from views.features.table import (  # noqa: F401  (re-exported for the view's users)
    COLUMNS,
    ROW_HEIGHT,
    SORT_ROLE,
    LatentFilterProxy,
    LatentTableModel,
    LatentTableView,
)

MIN_WIDTH = 600  # the browser's narrowest: its dock is given at least this much


def quality_line(name: str, q: SAEQuality | None) -> tuple[str, str]:
    """The header's line (and its tooltip): the SAE's held-out FVU, L0, dead fraction and,
    when it was measured, the loss recovered."""
    if q is None:
        return (f"<b>SAE {html.escape(name)}</b>: no held-out metrics",
                "its folder holds no metrics.json (trained elsewhere, or its training did not finish)")
    fields = (("FVU", q.fvu, "{:.3g}"), ("L0", q.l0, "{:.1f}"), ("dead", q.dead_frac, "{:.1%}"),
              ("loss recovered", q.loss_recovered, "{:.1%}"))
    parts = [f"{label} {fmt.format(value)}" for label, value, fmt in fields if value is not None]
    rows = f"{q.n_rows:,} held-out rows" if q.n_rows else "held-out rows"
    tip = (f"measured by its training on {rows}: fraction of variance unexplained, mean latents "
           "firing per row, share of latents that never fired"
           + (", and the share of the next-token loss recovered against zero-ablation"
              if q.loss_recovered is not None else "; loss recovered was not measured (train with an eval model)"))
    return f"<b>SAE {html.escape(name)}</b> held out: " + " \u00b7 ".join(parts), tip


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
        self.setMinimumWidth(MIN_WIDTH)
        self._build()
        state.store_changed.connect(self._on_stats_changed)
        state.stats_changed.connect(self._on_stats_changed)
        state.sae_changed.connect(self._on_sae_changed)
        for changed in (state.model_changed, state.hook_changed, state.sae_changed):
            changed.connect(self._forget_probe)
        state.focus_changed.connect(self._on_focus_changed)
        state.selection_changed.connect(self._on_selection_changed)
        state.trails_changed.connect(self._on_trails_changed)
        state.sae_changed.connect(self._on_trails_changed)
        self._on_sae_changed()
        self._on_stats_changed()

    # ------------------------------------------------------------ widgets
    def _build(self) -> None:
        self.placeholder = QLabel("No feature statistics yet")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(self._build_browser())
        self.quality = QLabel()
        self.quality.setWordWrap(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.quality)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.status)

    def _build_browser(self) -> QWidget:
        """Tabs of the latent table and the text probe above the focused latent's detail."""
        self.search = QLineEdit(placeholderText="search: latent id, label text, token:for, topic=compound")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._apply_filter)
        self.matched = QLabel()
        self.matched.setWordWrap(True)
        self.active_title = QLabel()
        self.active_list = QListWidget()
        self.active_list.setMaximumHeight(120)
        self.active_list.setWordWrap(True)  # a long label wraps instead of scrolling sideways
        self.active_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.active_list.itemClicked.connect(self._on_item_clicked)
        self.changed = ChangedLatents()
        self.changed.latent_clicked.connect(self.state.set_focus)
        self.empty_label = QLabel()
        self.model = LatentTableModel(self)
        self.proxy = LatentFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self.table = self._build_table()
        latents = QWidget()
        col = QVBoxLayout(latents)
        col.setContentsMargins(0, 0, 0, 0)
        for w in (self.search, self.matched, self.active_title, self.active_list, self.changed, self.table,
                  self.empty_label):
            col.addWidget(w)
        self._show_active(None)
        self.matched.hide()
        self.empty_label.hide()
        self.probe = TextProbe()
        self.probe.submitted.connect(self.run_probe)
        self.probe.latent_activated.connect(self.state.set_focus)
        self.top_tabs = QTabWidget()
        self.top_tabs.addTab(latents, "Latents")
        self.top_tabs.addTab(self.probe, "Text probe")
        self.detail = DetailPane()
        self.detail.latent_clicked.connect(self.state.set_focus)
        self.split = QSplitter(Qt.Orientation.Vertical)
        self.split.addWidget(self.top_tabs)
        self.split.addWidget(self.detail)
        self.split.setChildrenCollapsible(False)
        self.split.setSizes([5000, 5000])  # half each, whatever height the dock gets (kept in proportion)
        return self.split

    def _build_table(self) -> LatentTableView:
        table = LatentTableView(self.proxy)
        table.setSortingEnabled(True)
        table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.verticalHeader().hide()
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        table.verticalHeader().setDefaultSectionSize(ROW_HEIGHT)
        table.selectionModel().currentRowChanged.connect(self._on_table_current)
        return table

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

    def _on_sae_changed(self, *_: Any) -> None:
        """The header's line of the active SAE's held-out metrics (its metrics.json)."""
        sae = self.state.sae
        self.quality.setVisible(sae is not None)
        if sae is not None:
            text, tip = quality_line(Path(sae).name, sae_quality(sae))
            self.quality.setText(text)
            self.quality.setToolTip(tip)

    def _forget_probe(self, *_: Any) -> None:
        """A new model, hook point or SAE: the probe's answer (or one on its way) is stale."""
        self.requests.forget("probe")
        self.probe.set_result(None, "The latents that fire on each token of a text, from the active "
                                    "model and SAE.")

    def _on_focus_changed(self, focus: tuple[int, ...]) -> None:
        latent = focus[0] if focus else None
        self._select_row(latent)
        self._show_detail(latent)
        self.probe.set_focus(latent)

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

    def _on_trails_changed(self, *_: Any) -> None:
        """The steering view's runs changed: rank the latents they changed most (the active
        SAE must read the hook point the runs were read at)."""
        runs = compared_runs(self.state.trails)
        sae = self.state.sae
        hook = self.data_.stats.hook if self.data_ is not None else self.state.hook
        if runs is None or sae is None or self.state.engine is None or runs[0].hook != hook:
            self.requests.forget("changed")
            self.changed.set_changes(None)
            return
        base, steered = runs
        self.changed.computing(steered.label)
        self._submit("changed", "latents changed by steering", rank_latent_changes,
                     lambda found: self._show_changed(found, steered.label),
                     sae_path=sae, baseline=base, steered_trail=steered)

    def _show_changed(self, found: Any, label: str) -> None:
        labels = self.data_.table.labels if self.data_ is not None else ()
        self.changed.set_changes(found, label, labels)

    # ------------------------------------------------------------ widget handlers
    def _on_table_current(self, current: QModelIndex, _previous: QModelIndex) -> None:
        if current.isValid() and not self._quiet:
            self.state.set_focus(self.model.latent_at(self.proxy.mapToSource(current).row()))

    def _on_item_clicked(self, item: QListWidgetItem) -> None:
        latent = item.data(Qt.ItemDataRole.UserRole)
        if latent is not None:
            self.state.set_focus(int(latent))

    def _apply_filter(self, *_: Any) -> None:
        """Filter by the search (``search_latents``: id, label text, token, label
        association) and a latent selection; say what the search matched."""
        if self.data_ is None:
            return
        d = self.data_
        found = search_latents(d.stats, d.table, d.search_text, d.vocab, self.search.text())
        text = self.search.text().strip()
        mask = found.mask
        self.matched.setText(f"Matched: {found.note}")
        self.matched.setVisible(bool(text))
        sel = self.state.selection
        if sel.kind == LATENTS and len(sel):
            mask &= sel.as_mask(len(mask))
        self.model.set_filter(None if mask.all() else mask)
        self._quiet = True
        try:
            self.proxy.refilter()
        finally:
            self._quiet = False
        shown = self.proxy.rowCount()
        self.empty_label.setText(f"No latent matches \u201c{text}\u201d" if text
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
            if kind == "probe":
                self.probe.set_result(None, f"The probe failed: {sentence}")
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
        self.probe.set_data(data)
        self.stack.setCurrentIndex(0 if data is None else 1)
        if data is not None:
            header = self.table.horizontalHeader()
            self.model.sort(header.sortIndicatorSection(), header.sortIndicatorOrder())
            self.table.measure()
            self._apply_filter()

    # ------------------------------------------------------------ the text probe
    def run_probe(self, text: str | None = None) -> None:
        """Run the probe's text through the active model, hook and SAE (a job)."""
        text = self.probe.text.toPlainText() if text is None else text
        hook = self.data_.stats.hook if self.data_ is not None else self.state.hook
        missing = [name for name, value in (("model", self.state.model), ("hook point", hook),
                                            ("SAE", self.state.sae)) if value is None]
        if missing or self.state.engine is None:
            self.probe.set_result(None, f"No active {' or '.join(missing) or 'engine'}: open a workspace "
                                        "with a model and an SAE to probe text.")
            return
        self._submit("probe", "text probe", text_latents, self._on_probe, model=self.state.model,
                     hook=hook, sae_path=self.state.sae, text=text)

    def _on_probe(self, result: TextLatents) -> None:
        self.probe.set_result(result)

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
            self.detail.clear()
            return
        s = d.stats
        self.detail.show_latent(d, latent)
        if s.count[latent] == 0 or self.state.store is None:
            self.detail.show_no_contexts(d, loading=False)
            return
        self.detail.show_no_contexts(d, loading=True)
        rows, values, _ = detail_rows(s, latent)
        self._submit("detail", f"contexts of latent {latent}", shaded_contexts, self._on_contexts,
                     store_path=self.state.store, hook=s.hook, sae_path=self.state.sae,
                     latent=latent, top_rows=rows, top_values=values, n=len(rows),
                     stats_id=self.state.stats)

    def _on_contexts(self, result: tuple[int, list[Context]]) -> None:
        latent, contexts = result
        if self.data_ is None or (self.state.focus[:1] != (latent,)):
            return
        self.contexts, self.intervals = self.detail.show_contexts(self.data_, latent, contexts)

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

