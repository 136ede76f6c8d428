"""The feature browser's detail pane of the focused latent: a title line (label, density,
mean, max, label association), its activation histogram, and tabs with its top activating
contexts, the examples of each quantile interval, its logit effects and its nearest latents
by decoder cosine (tables whose columns are as wide as their contents)."""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QLabel,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from engine import api
from engine.api import Context, Vocab
from views.features.contexts import SHADE, Interval, context_html, intervals_html, split_intervals
from views.features.table import fill_table, small_table


class DetailPane(QWidget):
    """Title, histogram and tabs of one latent; ``latent_clicked`` when a neighbour is clicked."""

    latent_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAutoFillBackground(True)
        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setWordWrap(True)
        self.hist = pg.PlotWidget(background="w")
        self.hist.setMinimumHeight(90)
        self.hist.setLogMode(x=True, y=False)
        self.hist.setLabel("bottom", "activation")
        self.hist.setLabel("left", "rows")
        self.hist.setMouseEnabled(x=False, y=False)
        self.hist.getAxis("bottom").enableAutoSIPrefix(False)
        self.context_view = QTextBrowser()
        self.interval_view = QTextBrowser()
        self.logit_table = small_table(["promoted", "logit", "suppressed", "logit"])
        self.no_logits = QLabel("no logit effects (the model has no unembedding)")
        self.no_logits.setAlignment(Qt.AlignmentFlag.AlignTop)
        logits = QWidget()
        box = QVBoxLayout(logits)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.logit_table)
        box.addWidget(self.no_logits)
        self.neighbours = small_table(["latent", "cosine", "auto-label"])
        self.neighbours.itemClicked.connect(self._on_neighbour)
        self.tabs = QTabWidget()
        for widget, name in ((self.context_view, "Top contexts"), (self.interval_view, "Intervals"),
                             (logits, "Logit effects"), (self.neighbours, "Neighbours")):
            self.tabs.addTab(widget, name)
        self.tabs.setTabToolTip(1, "example contexts from each quantile interval of its activations")
        self.tabs.setTabToolTip(3, "nearest latents by decoder cosine")
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        col.addWidget(self.title)
        col.addWidget(self.hist, 1)
        col.addWidget(self.tabs, 3)

    def clear(self) -> None:
        self.title.setText("Select a latent")
        self.hist.clear()
        self.context_view.setHtml("")
        self.interval_view.setHtml("")
        self.logit_table.setRowCount(0)
        self.neighbours.setRowCount(0)

    def show_latent(self, d: api.BrowserData, latent: int) -> None:
        """Everything the statistics say of ``latent`` (contexts come later: ``show_contexts``)."""
        s = d.stats
        assoc = f" \u00b7 {html.escape(d.table.association[latent])}" if d.table.association[latent] else ""
        self.title.setText(f"<b>Latent {latent}</b> \u2014 {html.escape(d.table.labels[latent])}<br>"
                           f"density {s.density[latent]:.3%} \u00b7 mean {s.mean[latent]:.4g} \u00b7 "
                           f"max {s.max[latent]:.4g}{assoc}")
        self._draw_histogram(s, latent)
        self._fill_logits(s, d.vocab, latent)
        self._fill_neighbours(s, d.table.labels, latent)

    def show_no_contexts(self, d: api.BrowserData, loading: bool) -> None:
        """Contexts still loading, or none to load (a dead latent)."""
        if loading:
            self.context_view.setHtml("<p><i>loading contexts\u2026</i></p>")
            self.interval_view.setHtml("<p><i>loading contexts\u2026</i></p>")
            return
        self.context_view.setHtml(context_html([], d.vocab, 0.0))
        self.interval_view.setHtml(intervals_html(None if d.stats.interval_rows is None else [], d.vocab, 0.0))

    def show_contexts(self, d: api.BrowserData, latent: int,
                      contexts: list[Context]) -> tuple[list[Context], list[Interval]]:
        """Draw the top contexts and the intervals' examples; returns both."""
        s = d.stats
        top, intervals = split_intervals(s, latent, contexts)
        vmax = float(s.max[latent])
        self.context_view.setHtml(context_html(top, d.vocab, vmax))
        self.interval_view.setHtml(intervals_html(None if s.interval_rows is None else intervals, d.vocab, vmax))
        return top, intervals

    def _draw_histogram(self, s: api.FeatureStats, latent: int) -> None:
        """Counts of log10 activation bins as steps, the x axis in activation units."""
        self.hist.clear()
        counts = s.hist[latent]
        nz = np.flatnonzero(counts)
        if not nz.size:
            return
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        x = 10.0 ** s.hist_edges[lo:hi + 1]
        self.hist.addItem(pg.PlotDataItem(x, counts[lo:hi].astype(float), stepMode="center",
                                          fillLevel=0, brush=(*SHADE, 160), pen=pg.mkPen(SHADE)))

    def _fill_logits(self, s: api.FeatureStats, vocab: Vocab | None, latent: int) -> None:
        has = s.logit_top_ids is not None
        self.logit_table.setVisible(has)
        self.no_logits.setVisible(not has)
        if not has:
            self.logit_table.setRowCount(0)
            return
        rows = [(plain_token(vocab, ti), f"{tv:+.3f}", plain_token(vocab, bi), f"{bv:+.3f}")
                for ti, tv, bi, bv in zip(s.logit_top_ids[latent], s.logit_top_values[latent],
                                          s.logit_bottom_ids[latent], s.logit_bottom_values[latent], strict=True)]
        fill_table(self.logit_table, rows, numeric=(1, 3))

    def _fill_neighbours(self, s: api.FeatureStats, labels: np.ndarray, latent: int) -> None:
        rows = [(str(int(j)), f"{cos:.3f}", labels[j])
                for j, cos in zip(s.neighbours[latent], s.neighbour_cos[latent], strict=True)]
        fill_table(self.neighbours, rows, data=[int(j) for j in s.neighbours[latent]], numeric=(0, 1))

    def _on_neighbour(self, item: QTableWidgetItem) -> None:
        latent = self.neighbours.item(item.row(), 0).data(Qt.ItemDataRole.UserRole)
        if latent is not None:
            self.latent_clicked.emit(int(latent))


def plain_token(vocab: Vocab | None, token_id: int) -> str:
    return Vocab.visible(vocab.token(int(token_id))) if vocab is not None else f"#{int(token_id)}"
