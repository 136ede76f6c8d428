"""A view's job helper: submits each kind of request to the engine, keeps only the latest
answer of each kind, and shows progress and failures in the view's status line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QLabel, QProgressBar
from shiboken6 import isValid

from desktop_app.state import AppState

ERROR_STYLE = "color: #b00020;"


class Requests(QObject):
    """Submit a view's jobs (engine key ``<prefix>-<kind>``), drop stale answers, show the
    progress of running ones in ``bar`` and a failure's sentence in ``status``."""

    def __init__(self, state: AppState, bar: QProgressBar, status: QLabel,
                 parent: QObject | None = None, prefix: str = "geometry") -> None:
        super().__init__(parent)
        self.state, self.bar, self.status, self.prefix = state, bar, status, prefix
        self._serial: dict[str, int] = {}
        self._jobs: dict[str, int] = {}  # kind -> engine job id while it runs
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
        n = self._serial[kind] = self._serial.get(kind, 0) + 1

        def done(result: Any) -> None:
            if isValid(self) and self._serial.get(kind) == n:
                self._end(kind)
                on_result(result)

        def failed(sentence: str, details: str) -> None:
            if isValid(self) and self._serial.get(kind) == n:
                self._end(kind)
                self.show_error(sentence, details)
                if on_error is not None:
                    on_error(sentence)

        def partial(obj: Any) -> None:
            if on_partial is not None and isValid(self) and self._serial.get(kind) == n:
                on_partial(obj)

        self.status.setText(f"{title}\u2026")
        self.status.setStyleSheet("")
        self.status.setToolTip("")
        self._jobs[kind] = self.state.engine.submit(title, fn, key=f"{self.prefix}-{kind}",
                                                    on_result=done, on_error=failed,
                                                    on_partial=partial, **params)
        self.bar.setRange(0, 0)
        self.bar.show()
        return True

    def forget(self, kind: str) -> None:
        """Ignore the answer of ``kind``'s running job (its input was cleared)."""
        self._serial[kind] = self._serial.get(kind, 0) + 1
        self._end(kind)

    def running(self, kind: str) -> bool:
        return kind in self._jobs

    def show_error(self, sentence: str, details: str = "") -> None:
        self.status.setText(sentence)
        self.status.setStyleSheet(ERROR_STYLE)
        self.status.setToolTip(details)

    def _end(self, kind: str) -> None:
        self._jobs.pop(kind, None)
        if not self._jobs:
            self.bar.hide()
            if not self.status.styleSheet():
                self.status.setText("")

    def _on_finished(self, job_id: int, how: str) -> None:
        """A job cancelled from outside (the jobs panel) ends without an answer."""
        if not isValid(self) or how != "cancelled":
            return
        for kind, running in list(self._jobs.items()):
            if running == job_id:
                self._serial[kind] = self._serial.get(kind, 0) + 1
                self._end(kind)
                self.status.setText("Cancelled.")

    def _on_progress(self, job_id: int, done: int, total: int, message: str) -> None:
        if not isValid(self) or job_id not in self._jobs.values():
            return
        self.bar.setRange(0, max(total, 0))
        if total > 0:
            self.bar.setValue(min(done, total))
        if message:
            self.status.setText(message)


# ---------------------------------------------------------------- store picker

    def cancel(self, kind: str) -> None:
        """Cancel ``kind``'s running job (its answer, if any, is dropped)."""
        job = self._jobs.get(kind)
        if job is not None and self.state.engine is not None:
            self.state.engine.cancel(job)
            self.forget(kind)
            self.status.setText("Cancelled.")
