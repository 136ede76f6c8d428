"""The jobs panel: a one-line strip by default (the newest job's title, progress and a
cancel button, and how many are running) that expands on demand into one line per engine
job beside a log of what started, finished, failed or was cancelled. A job that trains an
SAE (any job sending TrainingPoints: Train SAE, the demo build) shows its latest figures on
its line and the strip, and its live curves (desktop_app.training_curves) in the details."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.bridge import CANCELLED, DONE, FAILED, EngineBridge
from desktop_app.state import AppState
from desktop_app.training_curves import TrainingCurves, figures, heldout_figures
from engine.api import TrainingPoint, load_training_curves
from engine.errors import LatentLabError

KEEP_FINISHED = 6  # finished rows kept visible above the log


class JobRow(QWidget):
    """Title, progress bar, message and a cancel button for one job."""

    def __init__(self, bridge: EngineBridge, job_id: int, title: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.title = QLabel(title if len(title) <= 48 else title[:22] + "\u2026" + title[-25:])
        self.title.setToolTip(title)
        self.title.setMinimumWidth(140)
        self.bar = QProgressBar()
        self.bar.setRange(0, 0)  # busy until the first progress report
        self.bar.setTextVisible(True)
        self.message = QLabel("queued")
        self.message.setMinimumWidth(160)
        self.point: TrainingPoint | None = None  # the latest training figures, if it trains an SAE
        self._progress = (0, 0, "queued")  # the latest progress report: done, total, message
        self._training = False  # the latest report was a training step's (or its point)
        self._finished: str | None = None
        self.cancel = QPushButton("Cancel")
        self.cancel.setObjectName(f"cancel-{job_id}")
        self.cancel.clicked.connect(lambda: bridge.cancel(job_id))
        row = QHBoxLayout(self)
        row.setContentsMargins(2, 1, 2, 1)
        row.addWidget(self.title)
        row.addWidget(self.bar, 1)
        row.addWidget(self.message, 1)
        row.addWidget(self.cancel)

    def set_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(1000 * min(done, total) / total))
            self.bar.setFormat(f"{done:,}/{total:,}")
        else:
            self.bar.setRange(0, 0)
        self._progress = (done, total, message)
        point = self.point
        self._training = point is not None and not point.final and total == point.total_steps
        self._show_status()

    def set_point(self, point: TrainingPoint) -> None:
        self.point, self._training = point, not point.final
        self._show_status()

    def _show_status(self) -> None:
        text = self.status()
        self.message.setText(text)
        self.message.setToolTip(text)  # the line may be cut at the panel's width

    def set_finished(self, state: str, seconds: float) -> None:
        self.bar.setRange(0, 1000)
        self.bar.setValue(1000 if state == DONE else self.bar.value())
        self.bar.setFormat(state)
        self._finished = f"{state} in {seconds:.1f} s"
        self._show_status()
        self.cancel.setEnabled(False)

    def status(self) -> str:
        """Its message: the training figures while it trains (their step from progress),
        what it reports otherwise, and at its end how long it took with the held-out figures."""
        point = self.point
        if self._finished is not None:
            return self._finished + (f" \u00b7 {heldout_figures(point.heldout)}" if point and point.final else "")
        done, total, message = self._progress
        if point is not None and self._training:
            return figures(point, step=max(done, point.step) if total == point.total_steps else None)
        return message


class JobsPanel(QWidget):
    """Lists the bridge's jobs live; cancel buttons call ``bridge.cancel``. Compact (the
    strip) until ``set_expanded(True)`` or its Details button shows every job and the log.
    With ``state``, the details show the current SAE's recorded curves and metrics while no
    training runs."""

    expanded_changed = Signal(bool)

    def __init__(self, bridge: EngineBridge, parent: QWidget | None = None, state: AppState | None = None) -> None:
        super().__init__(parent)
        self.bridge = bridge
        self.rows: dict[int, JobRow] = {}
        self.strip = self._build_strip()
        self._list = QWidget()
        self._list_layout = QVBoxLayout(self._list)
        self._list_layout.setContentsMargins(0, 0, 0, 0)
        self._list_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self._list)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.curves = TrainingCurves()
        self.curves.hide()  # until a job sends training figures
        self.details = QSplitter(Qt.Orientation.Horizontal)
        self.details.addWidget(scroll)
        self.details.addWidget(self.curves)
        self.details.addWidget(self.log)
        self.details.setSizes([450, 650, 300])
        self.details.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.strip)
        layout.addWidget(self.details, 1)
        bridge.submitted.connect(self._on_submitted)
        bridge.started.connect(self._on_started)
        bridge.progress.connect(self._on_progress)
        bridge.partial.connect(self._on_partial)
        bridge.finished.connect(self._on_finished)
        if state is not None:
            state.sae_changed.connect(self._on_sae_changed)

    def _build_strip(self) -> QWidget:
        strip = QWidget()
        self.toggle = QToolButton(text="Details", checkable=True)
        self.toggle.setToolTip("Show every job and the log")
        self.toggle.toggled.connect(self.set_expanded)
        self.summary = QLabel("no jobs yet")
        self.strip_bar = QProgressBar()
        self.strip_bar.setRange(0, 1000)
        self.strip_bar.setMaximumWidth(240)
        self.strip_bar.hide()
        self.strip_cancel = QPushButton("Cancel")
        self.strip_cancel.clicked.connect(self._cancel_newest)
        self.strip_cancel.hide()
        row = QHBoxLayout(strip)
        row.setContentsMargins(4, 1, 4, 1)
        row.addWidget(self.toggle)
        row.addWidget(self.summary, 1)
        row.addWidget(self.strip_bar)
        row.addWidget(self.strip_cancel)
        return strip

    def set_expanded(self, expanded: bool) -> None:
        """Show (or hide) the list of jobs and the log under the strip."""
        if expanded == self.details.isVisible():
            return
        self.details.setVisible(expanded)
        self.toggle.setChecked(expanded)
        self.updateGeometry()
        self.expanded_changed.emit(expanded)

    def expanded(self) -> bool:
        return self.details.isVisible()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name; a strip below the views
        return QSize(900, 180 if self.expanded() else self.strip.sizeHint().height() + 4)

    def _running(self) -> list[int]:
        return [i for i, r in self.rows.items() if r.cancel.isEnabled()]

    def _cancel_newest(self) -> None:
        running = self._running()
        if running:
            self.bridge.cancel(running[-1])

    def _update_strip(self) -> None:
        """The newest unfinished job (else the last finished one) on the strip."""
        running = self._running()
        newest = self.rows[running[-1]] if running else (self.rows[max(self.rows)] if self.rows else None)
        if newest is None:
            return
        more = f" (+{len(running) - 1} more)" if len(running) > 1 else ""
        self.summary.setText(f"{newest.title.text()}: {newest.status()}{more}")
        self.summary.setToolTip(newest.title.toolTip())
        self.strip_bar.setVisible(bool(running))
        self.strip_cancel.setVisible(bool(running))
        if running:
            self.strip_bar.setRange(newest.bar.minimum(), newest.bar.maximum())
            self.strip_bar.setValue(newest.bar.value())
            self.strip_bar.setFormat(newest.bar.format())

    def write(self, text: str) -> None:
        self.log.appendPlainText(f"{time.strftime('%H:%M:%S')}  {text}")

    @Slot(int)
    def _on_submitted(self, job_id: int) -> None:
        job = self.bridge.jobs[job_id]
        row = JobRow(self.bridge, job_id, job.title)
        self.rows[job_id] = row
        self._list_layout.insertWidget(0, row)
        self._update_strip()

    @Slot(int)
    def _on_started(self, job_id: int) -> None:
        if job_id in self.rows:
            self.rows[job_id].set_progress(0, 0, "running")
            self.write(f"started: {self.bridge.jobs[job_id].title}")
            self._update_strip()

    @Slot(int, int, int, str)
    def _on_progress(self, job_id: int, done: int, total: int, message: str) -> None:
        if job_id in self.rows:
            self.rows[job_id].set_progress(done, total, message)
            self._update_strip()

    @Slot(int, object)
    def _on_partial(self, job_id: int, obj: Any) -> None:
        """Training figures from any job: on its line, the strip and the curves."""
        row = self.rows.get(job_id)
        if not isinstance(obj, TrainingPoint) or row is None:
            return
        row.set_point(obj)
        self.curves.add(job_id, self.bridge.jobs[job_id].title, obj)
        self.curves.show()
        if obj.final:
            self.write(f"{self.bridge.jobs[job_id].title}: SAE trained, {heldout_figures(obj.heldout)}")
        self._update_strip()

    @Slot(object)
    def _on_sae_changed(self, path: Path | None) -> None:
        """The new current SAE's curves and held-out metrics, as its folder recorded them,
        unless a training run is being drawn or these are the run just drawn."""
        if path is None or self.curves.live():
            return
        try:
            points = load_training_curves(path)
        except LatentLabError as exc:
            self.write(f"note: {exc}")
            return
        if points and not (self.curves.final is not None and self.curves.final.heldout == points[-1].heldout):
            self.curves.show_run(f"SAE {Path(path).name}", points)
            self.curves.show()

    @Slot(int, str)
    def _on_finished(self, job_id: int, state: str) -> None:
        job = self.bridge.jobs[job_id]
        row = self.rows.get(job_id)
        if row is not None:
            row.set_finished(state, job.seconds)
        if state == FAILED and job.error is not None:
            self.write(f"failed: {job.title}: {job.error[0]}")
        elif state == CANCELLED:
            self.write(f"cancelled: {job.title}")
        else:
            self.write(f"{state}: {job.title} ({job.seconds:.1f} s)")
        self._prune()
        self._update_strip()

    def _prune(self) -> None:
        finished = [i for i, r in self.rows.items() if not r.cancel.isEnabled()]
        for job_id in finished[:-KEEP_FINISHED]:
            row = self.rows.pop(job_id)
            row.setParent(None)
            row.deleteLater()
