"""The view contract: what the main window asks of every view (``View``), and the one way a
view, a dialog or the engine bridge keeps only the answer to its latest request of each
kind (``LatestWins``), with ``InlineRunner`` to run jobs at once where there is no engine
thread (a view's demo, tests). Views may import this module; it imports no other shell
module but AppState's."""

from __future__ import annotations

import itertools
import traceback
from collections.abc import Callable, Hashable
from typing import Any, Protocol, runtime_checkable

from PySide6.QtCore import QRectF
from PySide6.QtGui import QPainter

from desktop_app.state import JobRunner
from engine.api import JobContext


@runtime_checkable
class View(Protocol):
    """A dockable view (a QWidget) as the main window sees it: its own session settings,
    its figure, and its requests to the engine."""

    def session_state(self) -> dict[str, Any]:
        """The view's own settings as JSON-able values ({} when it has none); what AppState
        holds (selection, focus, recipe) is saved with AppState, not here."""
        ...

    def restore_session(self, state: dict[str, Any], /) -> None:
        """Apply what ``session_state`` returned; unknown or missing keys are skipped."""
        ...

    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        """Paint the view's figure into ``rect`` of any painter (image, SVG, PDF)."""
        ...

    def cancel_requests(self) -> None:
        """Cancel the view's running jobs and drop their answers (the window is closing)."""
        ...


class FigureView(Protocol):
    """What a view may add so that its exported figure can be drawn again headless
    (``main.py render``); each method is optional (see the functions below for the defaults)."""

    def figure_state(self) -> dict[str, Any]:
        """The session state plus what the figure shows beyond it (a view range, a clicked
        cell, whether a matrix was computed), as JSON-able values."""
        ...

    def restore_figure(self, state: dict[str, Any], /) -> None:
        """Apply ``figure_state`` and start what draws the figure (its jobs)."""
        ...

    def figure_inputs(self) -> list[tuple[str, str]]:
        """``(role, path)`` of the files the figure reads beyond AppState's store and SAE."""
        ...

    def figure_projections(self) -> list[str]:
        """Names of the ``state.projections`` the figure draws."""
        ...


def figure_state(view: Any) -> dict[str, Any]:
    """``view.figure_state()``, else its session state."""
    fn = getattr(view, "figure_state", None)
    return dict(fn() if fn is not None else view.session_state())


def restore_figure(view: Any, state: dict[str, Any]) -> None:
    """``view.restore_figure(state)``, else its ``restore_session``."""
    fn = getattr(view, "restore_figure", None)
    (fn or view.restore_session)(state)


def figure_inputs(view: Any) -> list[tuple[str, str]]:
    """``view.figure_inputs()``, else none."""
    fn = getattr(view, "figure_inputs", None)
    return [] if fn is None else [(str(role), str(path)) for role, path in fn()]


def figure_projections(view: Any) -> list[str]:
    """``view.figure_projections()``, else none."""
    fn = getattr(view, "figure_projections", None)
    return [] if fn is None else [str(n) for n in fn() if n]


_numbers = itertools.count(1)  # request numbers, unique across helpers (a reopened view's too)


class LatestWins:
    """Latest request wins, per key: each request gets a number; results, partials and
    errors of any request but its key's latest are dropped, and the job of a superseded (or
    forgotten) request is cancelled. ``alive()`` false (the owner was deleted) drops every
    answer. ``submit`` does it all for one job on a runner; the engine bridge, which is the
    runner, numbers its keyed jobs with ``begin``/``started``/``end`` itself."""

    def __init__(self, cancel: Callable[[Any], None] | None = None,
                 alive: Callable[[], bool] | None = None) -> None:
        self._cancel = cancel
        self._alive = alive
        self._latest: dict[Hashable, int] = {}  # key -> number of its latest request
        self._open: dict[Hashable, tuple[int, Any, Callable[[Any], None] | None]] = {}
        # key -> (number, job, how to cancel it) of the latest request while unanswered

    # ------------------------------------------------------------ numbering
    def begin(self, key: Hashable) -> int:
        """Number a new request of ``key``; the one it supersedes is cancelled."""
        self.forget(key)
        n = self._latest[key] = next(_numbers)
        self._open[key] = (n, None, self._cancel)
        return n

    def started(self, key: Hashable, n: int, job: Any,
                cancel: Callable[[Any], None] | None = None) -> None:
        """Request ``n`` of ``key`` runs as ``job`` (``cancel(job)`` stops it); nothing
        when it was already answered (a synchronous runner) or superseded."""
        if self._open.get(key, (None,))[0] == n:
            self._open[key] = (n, job, cancel or self._cancel)

    def is_latest(self, key: Hashable, n: int) -> bool:
        """Whether request ``n`` is ``key``'s latest (and its owner still lives)."""
        return self._latest.get(key) == n and (self._alive is None or self._alive())

    def end(self, key: Hashable, n: int) -> bool:
        """Request ``n`` of ``key`` was answered (a result or an error): True when that
        answer is to be used: it is the latest and was not answered before."""
        if not self.is_latest(key, n) or key not in self._open:
            return False
        self._open.pop(key, None)
        return True

    def forget(self, key: Hashable) -> None:
        """Drop the answers of ``key``'s request and cancel its job if it still runs."""
        self._latest.pop(key, None)
        _, job, cancel = self._open.pop(key, (None, None, None))
        if job is not None and cancel is not None:
            cancel(job)

    def forget_all(self) -> None:
        for key in list(self._latest):
            self.forget(key)

    # ------------------------------------------------------------ what runs
    def running(self, key: Hashable | None = None) -> bool:
        """Whether ``key``'s latest request (any request, without a key) awaits its answer."""
        return bool(self._open) if key is None else key in self._open

    def job(self, key: Hashable) -> Any:
        """The job of ``key``'s unanswered latest request, or None."""
        return self._open.get(key, (None, None, None))[1]

    def jobs(self) -> dict[Hashable, Any]:
        """Key -> job of every unanswered latest request that has one."""
        return {key: job for key, (_, job, _) in self._open.items() if job is not None}

    def key_of(self, job: Any) -> Hashable | None:
        """The key whose unanswered latest request runs as ``job``, or None."""
        return next((key for key, (_, j, _) in self._open.items() if j is not None and j == job), None)

    # ------------------------------------------------------------ one job
    def submit(self, runner: JobRunner, key: Hashable, title: str, fn: Callable[..., Any], *,
               on_result: Callable[[Any], None],
               on_error: Callable[[str, str], None] | None = None,
               on_partial: Callable[[Any], None] | None = None,
               engine_key: str | None = None, **params: Any) -> Any:
        """Run ``fn(ctx, **params)`` on ``runner`` as ``key``'s latest request (``engine_key``
        is the runner's own key); returns the runner's job id. Without ``on_error`` the
        runner reports a failure its own way (the main window shows it)."""
        n = self.begin(key)

        def result(value: Any) -> None:
            if self.end(key, n):
                on_result(value)

        def error(sentence: str, details: str = "") -> None:
            if self.end(key, n):
                on_error(sentence, details)

        def partial(obj: Any) -> None:
            if self.is_latest(key, n) and key in self._open:
                on_partial(obj)

        try:
            job = runner.submit(title, fn, key=engine_key, on_result=result,
                                on_error=error if on_error is not None else None,
                                on_partial=partial if on_partial is not None else None, **params)
        except BaseException:
            if self._open.get(key, (None,))[0] == n:
                del self._open[key]  # never submitted: nothing awaits an answer
            raise
        self.started(key, n, job, runner.cancel)
        return job


class InlineRunner:
    """A JobRunner that runs each job at once on the calling thread (no engine thread):
    a view's ``__main__`` demo, tests. Its job ids are never running, so cancel does nothing."""

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self._ids = itertools.count(1)

    def submit(self, title: str, fn: Callable[..., Any], *, key: str | None = None,
               on_result: Callable[[Any], None] | None = None,
               on_partial: Callable[[Any], None] | None = None,
               on_error: Callable[[str, str], None] | None = None,
               **params: Any) -> int:
        job_id = next(self._ids)
        device = {} if self.device is None else {"device": self.device}
        ctx = JobContext(on_partial=on_partial, **device)
        try:
            result = fn(ctx, **params)
        except Exception as exc:  # noqa: BLE001 - reported as the bridge reports it
            if on_error is None:
                raise
            on_error(str(exc) or type(exc).__name__, traceback.format_exc())
        else:
            if on_result is not None:
                on_result(result)
        return job_id

    def cancel(self, job_id: int) -> None:
        """Nothing to stop: a job has ended before ``submit`` returns."""
