"""A view's job helper: submits each kind of request to the engine, keeps only the latest
answer of each kind (``desktop_app.view.LatestWins``), and shows progress and failures in
the view's status line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QLabel, QProgressBar
from shiboken6 import isValid

from desktop_app.state import AppState
from desktop_app.view import LatestWins

ERROR_STYLE = "color: #b00020;"


class Requests(QObject):
    """Submit a view's jobs (engine key ``<prefix>-<kind>``), drop stale answers, show the
    progress of running ones in ``bar`` and a failure's sentence in ``status``."""

    def __init__(self, state: AppState, bar: QProgressBar, status: QLabel,
                 parent: QObject | None = None, prefix: str = "geometry") -> None:
        super().__init__(parent)
        self.state, self.bar, self.status, self.prefix = state, bar, status, prefix
        self.latest = LatestWins(alive=lambda: isValid(self))
        for name, slot in (("progress", self._on_progress), ("finished", self._on_finished)):
            signal = getattr(state.engine, name, None)  # the bridge's signals, when it has them
            if signal is not None:
                signal.connect(slot)
        bar.hide()

    def submit(self, kind: str, title: str, fn: Callable[..., Any], on_result: Callable[[Any], None],
               on_error: Callable[[str], None] | None = None,
               on_partial: Callable[[Any], None] | None = None, **params: Any) -> bool:
        """Run ``fn(ctx, **params)``, replacing ``kind``'s running job; its partials go to
        ``on_partial`` while it is the latest; False (and a sentence) without an engine."""
        if self.state.engine is None:
            self.show_error("No engine to run jobs on.")
            return False

        def done(result: Any) -> None:
            self._end()
            on_result(result)

        def failed(sentence: str, details: str) -> None:
            self._end()
            self.show_error(sentence, details)
            if on_error is not None:
                on_error(sentence)

        self.status.setText(f"{title}\u2026")
        self.status.setStyleSheet("")
        self.status.setToolTip("")
        self.bar.setRange(0, 0)
        self.bar.show()
        self.latest.submit(self.state.engine, kind, title, fn, engine_key=f"{self.prefix}-{kind}",
                           on_result=done, on_error=failed, on_partial=on_partial, **params)
        return True

    def forget(self, kind: str) -> None:
        """Drop the answer of ``kind``'s running job and cancel it (its input was cleared)."""
        self.latest.forget(kind)
        self._end()

    def forget_all(self) -> None:
        self.latest.forget_all()
        self._end()

    def cancel(self, kind: str) -> None:
        """Cancel ``kind``'s running job (its answer, if any, is dropped)."""
        if self.latest.running(kind):
            self.forget(kind)
            self.status.setText("Cancelled.")

    def running(self, kind: str) -> bool:
        return self.latest.running(kind)

    def show_error(self, sentence: str, details: str = "") -> None:
        self.status.setText(sentence)
        self.status.setStyleSheet(ERROR_STYLE)
        self.status.setToolTip(details)

    def _end(self) -> None:
        """A job ended: with none left running, hide the bar and clear a progress message."""
        if not self.latest.running():
            self.bar.hide()
            if not self.status.styleSheet():
                self.status.setText("")

    def _on_finished(self, job_id: int, how: str) -> None:
        """A job cancelled from outside (the jobs panel) ends without an answer."""
        if not isValid(self) or how != "cancelled":
            return
        kind = self.latest.key_of(job_id)
        if kind is not None:
            self.forget(kind)
            self.status.setText("Cancelled.")

    def _on_progress(self, job_id: int, done: int, total: int, message: str) -> None:
        if not isValid(self) or self.latest.key_of(job_id) is None:
            return
        self.bar.setRange(0, max(total, 0))
        if total > 0:
            self.bar.setValue(min(done, total))
        if message:
            self.status.setText(message)
