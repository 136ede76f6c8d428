"""The job protocol: a job is ``run(ctx, **params)``; ``ctx`` reports progress and partials,
checks cancellation and names the torch device. The CLI runner lives here; the GUI bridge
(desktop_app) runs the same jobs on its engine thread."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.errors import LatentLabError


class Cancelled(Exception):
    """Raised by ``ctx.check_cancelled()`` once cancellation was requested."""


def resolve_device(name: str | None = None) -> torch.device:
    """'auto' (or None) picks CUDA when available, else CPU; anything else is taken literally."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise LatentLabError(f"--device {name!r} is not a torch device name ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LatentLabError(f"--device {name!r} asked for CUDA but no GPU is available here")
    return device


@dataclass
class JobContext:
    """What a running job may use: progress, partial results, cancellation and its device."""

    device: torch.device = field(default_factory=resolve_device)
    on_progress: Callable[[int, int, str], None] | None = None
    on_partial: Callable[[Any], None] | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def progress(self, done: int, total: int, message: str = "") -> None:
        if self.on_progress is not None:
            self.on_progress(done, total, message)

    def partial(self, obj: Any) -> None:
        if self.on_partial is not None:
            self.on_partial(obj)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()


class TerminalProgress:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self._last = 0.0
        self._start = time.perf_counter()
        self._drawn = False

    def __call__(self, done: int, total: int, message: str = "") -> None:
        now = time.perf_counter()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        frac = min(1.0, done / total) if total else 0.0
        bar = "#" * int(frac * self.width)
        rate = done / max(now - self._start, 1e-9)
        line = f"\r[{bar:<{self.width}}] {frac:6.1%} {done}/{total} {rate:,.0f}/s {message}"
        self.stream.write(line[:160].ljust(80))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def quick_read(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a job that only reads small parts of finished files and returns within a second
    or so: the app may run it beside a long job (a capture, a training) instead of behind
    it, so a view's colouring or vocabulary does not wait minutes."""
    fn.quick_read = True  # type: ignore[attr-defined]
    return fn


def is_quick_read(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` was marked with ``quick_read``."""
    return bool(getattr(fn, "quick_read", False))


def _print_note(obj: Any) -> None:
    """A job's text partials are notes for the user (``note: ...``); other partials are for views."""
    if isinstance(obj, str):
        print(obj, file=sys.stderr)


def run_cli(job: Callable[..., Any], device: str | None = None, quiet: bool = False,
            **params: Any) -> Any:
    """Run a job in the foreground with a terminal progress bar; Ctrl-C cancels it cleanly.

    A first Ctrl-C asks the job to stop at its next check (it commits what it has); a
    second one interrupts at once."""
    bar = TerminalProgress()
    ctx = JobContext(device=resolve_device(device), on_progress=None if quiet else bar,
                     on_partial=_print_note)

    def on_sigint(signum, frame):
        if ctx.cancelled:
            raise KeyboardInterrupt
        ctx.cancel()
        sys.stderr.write("\ncancelling: finishing the current batch (Ctrl-C again to abort)\n")

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        return job(ctx, **params)
    finally:
        bar.close()
        if in_main:
            signal.signal(signal.SIGINT, previous)
