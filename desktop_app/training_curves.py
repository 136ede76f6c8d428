"""A training run's live curves for the jobs panel: loss, FVU, L0 and the dead share against
step as small multiples, drawn from the TrainingPoints any job sends (Train SAE, the demo
build), with the held-out metrics beside them once the run ends; and the one-line figures
the jobs strip shows."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QFont
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from engine.api import TrainingPoint

CURVES = (("loss", "loss"), ("fvu", "FVU (batch)"), ("l0", "L0"), ("dead_frac", "dead %"))
LOG_Y = ("loss", "fvu")  # they fall by orders of magnitude: a log axis keeps the late steps legible
PEN = pg.mkPen("#1f77b4", width=1.5)
FONT_PX = 10


def _number(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _percent(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def figures(point: TrainingPoint, step: int | None = None) -> str:
    """The strip's line for a run in progress, e.g. ``SAE 120/400 steps · FVU 0.081 · L0 32 ·
    dead 1.2%`` (``step``: a fresher step count than the point's, from progress)."""
    return (f"SAE {point.step if step is None else step:,}/{point.total_steps:,} steps \u00b7 "
            f"FVU {_number(point.fvu)} \u00b7 L0 {_number(point.l0)} \u00b7 dead {_percent(point.dead_frac)}")


def heldout_figures(metrics: Mapping[str, float]) -> str:
    """A finished SAE's held-out metrics (metrics.json) in one line: FVU, L0, dead share and,
    when a model was spliced, the loss recovered."""
    text = (f"held-out FVU {_number(metrics.get('fvu', math.nan))} \u00b7 L0 {_number(metrics.get('l0', math.nan))}"
            f" \u00b7 dead {_percent(metrics.get('dead_frac', math.nan))}")
    recovered = metrics.get("loss_recovered")
    if recovered is not None and math.isfinite(recovered):
        text += f" \u00b7 loss recovered {_percent(recovered)}"
    return text


def _plot(title: str) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, size=f"{FONT_PX + 1}px", color="#444")
    font = QFont()
    font.setPixelSize(FONT_PX)
    for side in ("left", "bottom"):  # few tick labels: the plots are a strip's height
        plot.getAxis(side).setStyle(tickFont=font, maxTextLevel=0, textFillLimits=[(0, 0.6), (2, 0.3)])
    plot.setMenuEnabled(False)
    plot.setMouseEnabled(x=False, y=False)
    plot.hideButtons()
    plot.setMinimumSize(120, 90)
    return plot


class TrainingCurves(QWidget):
    """The curves of the newest training run (one job's TrainingPoints, in step order) and,
    once it ends, its held-out metrics."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job_id: int | None = None
        self.points: list[TrainingPoint] = []
        self.final: TrainingPoint | None = None
        self.title = QLabel("no training yet")
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.metrics = QLabel("")
        self.metrics.setObjectName("training-metrics")
        self.metrics.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plots: dict[str, pg.PlotWidget] = {}
        self.lines: dict[str, pg.PlotDataItem] = {}
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        for i, (key, title) in enumerate(CURVES):
            self.plots[key] = _plot(title)
            self.lines[key] = self.plots[key].plot([], [], pen=PEN)
            self.plots[key].setLogMode(y=key in LOG_Y)
            grid.addWidget(self.plots[key], 0, i)
        head = QHBoxLayout()
        head.setSpacing(12)
        head.addWidget(self.title)
        head.addStretch(1)
        head.addWidget(self.metrics)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 0, 2, 0)
        layout.setSpacing(1)
        layout.addLayout(head)
        layout.addLayout(grid, 1)

    def add(self, job_id: int | None, title: str, point: TrainingPoint) -> None:
        """Take a job's next point; a point of another job starts a new run's curves."""
        if job_id != self.job_id or (self.points and point.step <= self.points[-1].step):
            self.job_id, self.points, self.final = job_id, [], None  # a new run (or a demo's next SAE)
            self.metrics.setText("")
        self.points.append(point)
        self.title.setText(f"{title}: {point.step:,} steps" if point.final else f"{title}: {figures(point)}")
        self.title.setToolTip(f"{title}\n{point.tokens:,} training rows, {point.tokens_per_s:,.0f} rows/s, "
                              f"lr {point.lr:.3g}")
        if point.final:
            self.final = point
            self.metrics.setText(heldout_figures(point.heldout))
        self._redraw()

    def show_run(self, title: str, points: list[TrainingPoint]) -> None:
        """Draw a recorded run (no job: e.g. the current SAE's training_log.json)."""
        self.job_id, self.points, self.final = None, list(points[:-1]), None
        self.metrics.setText("")
        if points:
            self.add(None, title, points[-1])  # the title, the metrics, one redraw

    def live(self) -> bool:
        """Whether a job's run is being drawn and has not ended."""
        return self.job_id is not None and self.final is None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values of one curve (``dead_frac`` in percent), as drawn."""
        steps = np.array([p.step for p in self.points], dtype=float)
        values = np.array([getattr(p, key) for p in self.points], dtype=float)
        return steps, values * 100 if key == "dead_frac" else values

    def _redraw(self) -> None:
        for key, _ in CURVES:
            steps, values = self.series(key)
            finite = np.isfinite(values) & ((values > 0) if key in LOG_Y else True)
            title = dict(CURVES)[key] if finite.any() or not len(values) else f"{key.upper()} not logged"
            self.plots[key].setTitle(title, size=f"{FONT_PX + 1}px", color="#444")
            self.lines[key].setData(steps[finite], values[finite], symbol="o" if finite.sum() < 3 else None,
                                    symbolSize=4, symbolBrush=PEN.color(), symbolPen=None)
            if key == "dead_frac":  # a share from 0: a flat 0% sits on the axis, not mid-plot
                top = float(values[finite].max()) if finite.any() else 0.0
                self.plots[key].setYRange(0, max(1.0, 1.1 * top), padding=0)
