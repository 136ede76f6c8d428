"""The engine bridge: one QThread that owns the torch device and runs engine jobs one at a
time, turning their progress, partials, results and errors into Qt signals; a keyed job
replaces the queued or running one of its key (``desktop_app.view.LatestWins``). Why it wakes
the GUI through a socket pair and runs the garbage collector itself: docs/architecture.md."""

from __future__ import annotations

import gc
import itertools
import queue
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QSocketNotifier, Qt, QThread, QTimer, Signal, Slot
from PySide6.QtGui import QGuiApplication

from desktop_app.view import LatestWins
from engine.api import Cancelled, JobContext, is_quick_read, resolve_device
from engine.errors import LatentLabError

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


@dataclass
class Job:
    """One request: what to run, its callbacks (called on the GUI thread) and its state."""

    id: int
    title: str
    fn: Callable[..., Any]
    params: dict[str, Any]
    key: str | None = None
    serial: int = 0  # its number among the requests of its key (LatestWins)
    on_result: Callable[[Any], None] | None = None
    on_partial: Callable[[Any], None] | None = None
    on_error: Callable[[str, str], None] | None = None
    ctx: JobContext | None = None
    state: str = QUEUED
    started: float = 0.0
    seconds: float = 0.0
    cancel_event: threading.Event = field(default_factory=threading.Event)
    error: tuple[str, str] | None = None  # (sentence, details) once failed


def describe_error(exc: BaseException) -> tuple[str, str]:
    """One sentence for the user and the details on demand (the traceback)."""
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, LatentLabError):
        return str(exc), details
    if isinstance(exc, MemoryError):
        return "The job ran out of memory; try fewer rows or a smaller batch.", details
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return (f"The job failed with {name}: {text}" if text else f"The job failed with {name}."), details


class _Worker(QThread):
    """The engine thread: pops jobs off a queue and runs them in order."""

    def __init__(self, bridge: EngineBridge, device: str | None, name: str = "latentlab-engine") -> None:
        super().__init__()
        self.setObjectName(name)
        self.bridge = bridge
        self.device = resolve_device(device)
        self.jobs: queue.Queue[Job | None] = queue.Queue()

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.cancel_event.is_set():
                self.bridge._finish(job, CANCELLED, None)
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        last = [0.0, -1]

        def progress(done: int, total: int, message: str = "") -> None:
            now = time.perf_counter()  # at most ~20 updates a second, and each percent
            pct = int(100 * done / total) if total else -1
            if now - last[0] < 0.05 and pct == last[1] and done < total:
                return
            last[0], last[1] = now, pct
            self.bridge._post(("progress", job.id, (int(done), int(total), str(message))))

        job.ctx = JobContext(device=self.device, on_progress=progress,
                             on_partial=lambda obj: self.bridge._post(("partial", job.id, obj)),
                             cancel_event=job.cancel_event)
        job.state, job.started = RUNNING, time.perf_counter()
        self.bridge._post(("started", job.id, None))
        try:
            result = job.fn(job.ctx, **job.params)
        except Cancelled:
            self.bridge._finish(job, CANCELLED, None)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a message
            self.bridge._finish(job, FAILED, describe_error(exc))
        else:
            self.bridge._finish(job, CANCELLED if job.cancel_event.is_set() else DONE, result)


MAX_GC_DEFER = 30.0  # seconds a full collection may wait for the engine to go idle


class EngineBridge(QObject):
    """Submit engine jobs from the GUI thread; watch them through signals."""

    _running: weakref.WeakSet[EngineBridge] = weakref.WeakSet()  # live bridges (one in the app):
    # automatic garbage collection is off while any is

    submitted = Signal(int)  # job id
    started = Signal(int)
    progress = Signal(int, int, int, str)  # job id, done, total, message
    partial = Signal(int, object)
    finished = Signal(int, str)  # job id, final state (done / failed / cancelled)

    def __init__(self, device: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._ids = itertools.count(1)
        self.jobs: dict[int, Job] = {}
        self._latest = LatestWins(cancel=self.cancel)  # keyed jobs: the latest of each key wins
        self._inbox: queue.SimpleQueue[tuple[str, int, Any]] = queue.SimpleQueue()
        self._worker = _Worker(self, device)
        # jobs marked engine.api.quick_read (a label column, a vocabulary) run on a second
        # thread, so a view's colouring does not wait behind a capture or a training
        self._reads = _Worker(self, device, "latentlab-reads")
        self.partial.connect(self._on_partial)
        self._wake_in, self._wake_out = socket.socketpair()  # engine thread -> GUI thread
        for end in (self._wake_in, self._wake_out):
            end.setblocking(False)
        self._wake_pending = False  # a byte is on its way; cleared by the GUI thread first
        self._notifier = QSocketNotifier(self._wake_in.fileno(), QSocketNotifier.Type.Read, self)
        self._notifier.activated.connect(self._on_wake)
        if not EngineBridge._running:
            gc.disable()
        EngineBridge._running.add(self)
        self._gc_timer = QTimer(self)
        self._gc_timer.setInterval(500)
        self._gc_timer.timeout.connect(self._collect_garbage)
        self._full_gc_due: float | None = None  # when a deferred full collection fell due
        self._button_held = False  # a mouse button was down at the last timer tick
        self._gc_timer.start()
        self._worker.start()
        self._reads.start()

    @property
    def device(self) -> str:
        return str(self._worker.device)

    def submit(self, title: str, fn: Callable[..., Any], *, key: str | None = None,
               on_result: Callable[[Any], None] | None = None,
               on_partial: Callable[[Any], None] | None = None,
               on_error: Callable[[str, str], None] | None = None,
               **params: Any) -> int:
        """Queue ``fn(ctx, **params)`` on the engine thread (a ``quick_read`` job on the reads
        thread); returns the job id."""
        serial = self._latest.begin(key) if key is not None else 0  # cancels the stale one
        job = Job(next(self._ids), title, fn, params, key, serial, on_result, on_partial, on_error)
        self.jobs[job.id] = job
        if key is not None:
            self._latest.started(key, serial, job.id)
        self.submitted.emit(job.id)
        (self._reads if is_quick_read(fn) else self._worker).jobs.put(job)
        return job.id

    def cancel(self, job_id: int) -> None:
        """Ask a job to stop at its next check; a queued job never starts."""
        job = self.jobs.get(job_id)
        if job is not None and job.state in (QUEUED, RUNNING):
            job.cancel_event.set()

    def cancel_all(self) -> None:
        for job_id in list(self.jobs):
            self.cancel(job_id)

    def busy(self) -> bool:
        return any(j.state in (QUEUED, RUNNING) for j in self.jobs.values())

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Process events until no job is queued or running (for tests and shutdown)."""
        from PySide6.QtCore import QCoreApplication
        end = time.perf_counter() + timeout
        while self.busy() and time.perf_counter() < end:
            QCoreApplication.processEvents()
            time.sleep(0.005)
        QCoreApplication.processEvents()
        return not self.busy()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the engine thread."""
        self.cancel_all()
        for worker in (self._worker, self._reads):
            worker.jobs.put(None)
        for worker in (self._worker, self._reads):
            worker.wait(int(timeout * 1000))
        self._notifier.setEnabled(False)
        self._drain()  # deliver the last reports (cancellations) before the bridge goes
        self._wake_in.close()
        self._wake_out.close()
        if self._gc_timer.isActive():
            self._gc_timer.stop()
            EngineBridge._running.discard(self)
            if not EngineBridge._running:
                gc.enable()

    def _collect_garbage(self) -> None:
        """On the GUI thread: collect the generation whose allocation threshold was passed;
        a full collection only while no job runs and no drag goes on (or once it has waited
        MAX_GC_DEFER s)."""
        counts, thresholds = gc.get_count(), gc.get_threshold()
        generation = max((g for g in range(3) if counts[g] > thresholds[g]), default=None)
        held = QGuiApplication.mouseButtons() != Qt.MouseButton.NoButton
        dragging, self._button_held = held or self._button_held, held
        if generation == 2 and (dragging or any(b.busy() for b in list(EngineBridge._running))):  # any engine
            now = time.perf_counter()
            self._full_gc_due = self._full_gc_due or now
            if now - self._full_gc_due < MAX_GC_DEFER:
                generation = 1  # the young generations still go
        if generation is not None:
            self._full_gc_due = None if generation == 2 else self._full_gc_due
            gc.collect(generation)

    # ----------------------------------------------------------- engine thread -> GUI
    def _post(self, report: tuple[str, int, Any]) -> None:
        """On the engine thread: queue a report and wake the GUI thread unless a wake is pending."""
        self._inbox.put(report)
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._wake_out.send(b"\0")
            except OSError:  # the buffer is full (a wake is certainly pending) or the bridge shut down
                pass

    def _on_wake(self, *_: Any) -> None:
        """The socket has bytes: clear the pending mark, then drain (a report queued after
        the clear sends another byte, so none waits for a later wake)."""
        try:
            while self._wake_in.recv(4096):
                pass
        except OSError:  # nothing more to read
            pass
        self._wake_pending = False
        self._drain()
    def _finish(self, job: Job, state: str, payload: Any) -> None:
        job.seconds = time.perf_counter() - job.started if job.started else 0.0
        self._post(("done", job.id, (state, payload)))

    @Slot()
    def _drain(self) -> None:
        """Turn the engine thread's reports into signals, on the GUI thread, in order; of a
        run of progress reports only each job's latest is shown."""
        reports = []
        while True:
            try:
                reports.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        latest = {job_id: i for i, (kind, job_id, _) in enumerate(reports) if kind == "progress"}
        for i, (kind, job_id, data) in enumerate(reports):
            try:
                if kind == "progress":
                    if latest[job_id] == i:
                        self.progress.emit(job_id, *data)
                elif kind == "partial":
                    self.partial.emit(job_id, data)
                elif kind == "started":
                    self.started.emit(job_id)
                else:
                    self._on_done(job_id, *data)
            except Exception:  # noqa: BLE001 - a view's callback failed: the other reports still land
                traceback.print_exc()

    @Slot(int, object)
    def _on_partial(self, job_id: int, obj: Any) -> None:
        job = self.jobs.get(job_id)
        if (job is not None and job.on_partial is not None and not job.cancel_event.is_set()
                and (job.key is None or self._latest.is_latest(job.key, job.serial))):
            job.on_partial(obj)

    def _on_done(self, job_id: int, state: str, payload: Any) -> None:
        job = self.jobs[job_id]
        stale = job.key is not None and not self._latest.end(job.key, job.serial)
        if stale and state == FAILED:
            state = CANCELLED  # no one waits for a superseded request's failure
        job.state = state
        try:
            if stale:
                pass  # a superseded request's answer goes to no callback
            elif state == DONE and job.on_result is not None:
                job.on_result(payload)
            elif state == FAILED and job.on_error is not None:
                job.on_error(*payload)
        finally:
            job.error = payload if state == FAILED else None
            self.finished.emit(job_id, state)
