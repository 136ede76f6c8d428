"""The Compare tab's neuron-matching plot, one drawing per method (Li et al. 2016): one-to-one
(Hungarian on correlations: matched pairs by correlation), one-to-many (a Lasso from A's
units to each unit of B: held-out R^2 per unit of B) and many-to-many (spectral clusters
of both models' units: each cluster's units from A and from B)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg

from engine.api import NeuronMatch
from views.common.plots import set_label, set_title

# method key of engine.api.match -> what the picker says
METHODS = {"hungarian": "one-to-one (Hungarian)", "sparse": "one-to-many (Lasso)",
           "clusters": "many-to-many (clusters)"}
BLUE, ORANGE = (31, 119, 180, 200), (255, 127, 14, 200)


def draw_match(plot: pg.PlotWidget, method: str, result: Any) -> None:
    """Draw ``result`` of ``match(method=...)`` into ``plot`` (cleared first)."""
    plot.clear()
    pi = plot.getPlotItem()
    if pi.legend is not None:  # clear() keeps a legend; a new drawing makes its own
        pi.legend.scene().removeItem(pi.legend)
        pi.legend = None
    {"hungarian": _one_to_one, "sparse": _one_to_many, "clusters": _clusters}[method](plot, result)


def _ranked(plot: pg.PlotWidget, values: np.ndarray, tips: list[str], y_label: str) -> np.ndarray:
    """``values`` from highest to lowest against their rank, each point with its tooltip;
    returns the order."""
    values = np.asarray(values, np.float64)
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    spots = [{"pos": (r + 1, values[k]), "data": tips[k]} for r, k in enumerate(order)]
    plot.addItem(pg.ScatterPlotItem(spots=spots, size=6, pen=None, brush=pg.mkBrush(*BLUE),
                                    hoverable=True, tip=lambda x, y, data: data))
    set_label(plot.getAxis("bottom"), "rank")
    set_label(plot.getAxis("left"), y_label)
    plot.setXRange(0, len(values) + 1, padding=0.02)
    plot.setYRange(min(0.0, float(np.nanmin(values, initial=0.0))), 1.0, padding=0.02)
    return order


def _one_to_one(plot: pg.PlotWidget, r: NeuronMatch) -> None:
    corr = np.asarray(r.corr, np.float64)
    tips = [f"A {a} \u2194 B {b}: r = {c:.3f}" for a, b, c in zip(r.a_units, r.b_units, corr, strict=True)]
    _ranked(plot, corr, tips, "correlation of the matched pair")
    finite = corr[np.isfinite(corr)]
    set_title(plot, f"{len(corr)} pairs, mean r = {finite.mean():.2f}" if finite.size else "no matched units")


def _one_to_many(plot: pg.PlotWidget, r: Any) -> None:
    r2 = np.asarray(r.r2, np.float64)
    tips = [f"B {j}: held-out R\u00b2 {v:.3f} from {n} units of A"
            for j, (v, n) in enumerate(zip(r2, r.n_nonzero, strict=True))]
    _ranked(plot, r2, tips, "held-out R\u00b2 of B's unit")
    set_title(plot, f"mean R\u00b2 {np.nanmean(r2):.2f} from {np.mean(r.n_nonzero):.1f} units of A each")


def _clusters(plot: pg.PlotWidget, r: Any) -> None:
    k = len(r.mixing)
    from_a = np.bincount(r.labels_a, minlength=k)
    from_b = np.bincount(r.labels_b, minlength=k)
    order = np.argsort(-(from_a + from_b), kind="stable")
    x = np.arange(1, k + 1)
    plot.addItem(pg.BarGraphItem(x=x, height=from_a[order], width=0.8, brush=pg.mkBrush(*BLUE), name="A"))
    plot.addItem(pg.BarGraphItem(x=x, y0=from_a[order], height=from_b[order], width=0.8,
                                 brush=pg.mkBrush(*ORANGE), name="B"))
    legend = plot.addLegend(offset=(-10, 10))
    legend.addItem(pg.BarGraphItem(x=[0], height=[0], width=0, brush=pg.mkBrush(*BLUE)), "A")
    legend.addItem(pg.BarGraphItem(x=[0], height=[0], width=0, brush=pg.mkBrush(*ORANGE)), "B")
    set_label(plot.getAxis("bottom"), "cluster (largest first)")
    set_label(plot.getAxis("left"), "units")
    plot.setXRange(0.3, k + 0.7, padding=0)
    plot.setYRange(0, float((from_a + from_b).max(initial=1)) * 1.15, padding=0)
    mixed = int(((from_a > 0) & (from_b > 0)).sum())
    set_title(plot, f"{k} clusters, {mixed} with units of both")
