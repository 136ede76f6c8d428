"""The view contract: the main window saves, restores, exports and closes views only through
the ``View`` protocol, and the one "latest request wins" helper (``LatestWins``) drops every
answer but the latest of each key, tested with a synchronous runner."""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock

import pytest
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QWidget

from desktop_app.state import AppState
from desktop_app.view import InlineRunner, LatestWins, View


class StepRunner:
    """A synchronous JobRunner: ``submit`` only records the job; the test answers it."""

    def __init__(self) -> None:
        self.jobs: dict[int, dict[str, Any]] = {}
        self.cancelled: list[int] = []

    def submit(self, title, fn, *, key=None, on_result=None, on_partial=None, on_error=None, **params):
        job_id = len(self.jobs) + 1
        self.jobs[job_id] = dict(title=title, key=key, on_result=on_result, on_partial=on_partial,
                                 on_error=on_error, params=params)
        return job_id

    def cancel(self, job_id: int) -> None:
        self.cancelled.append(job_id)

    def answer(self, job_id: int, result: Any) -> None:
        self.jobs[job_id]["on_result"](result)

    def fail(self, job_id: int, sentence: str) -> None:
        self.jobs[job_id]["on_error"](sentence, "details")

    def partial(self, job_id: int, obj: Any) -> None:
        self.jobs[job_id]["on_partial"](obj)


def _ask(latest: LatestWins, runner: StepRunner, key: str, got: list, **kw: Any) -> int:
    return latest.submit(runner, key, f"job {key}", lambda ctx: None, engine_key=f"e-{key}",
                         on_result=lambda r: got.append(("result", r)),
                         on_error=lambda s, d: got.append(("error", s)),
                         on_partial=lambda p: got.append(("partial", p)), **kw)


def test_only_the_latest_answer_of_a_key_is_delivered():
    latest, runner, got = LatestWins(), StepRunner(), []
    first = _ask(latest, runner, "colour", got)
    second = _ask(latest, runner, "colour", got)
    assert runner.cancelled == [first] and latest.job("colour") == second  # the stale job is cancelled
    assert runner.jobs[second]["key"] == "e-colour"
    runner.partial(first, 1)
    runner.answer(first, "stale")
    assert got == [] and latest.running("colour")
    runner.partial(second, 2)
    runner.answer(second, "fresh")
    assert got == [("partial", 2), ("result", "fresh")] and not latest.running("colour")
    runner.partial(second, 3)  # nothing after the answer
    runner.answer(second, "again")
    assert got == [("partial", 2), ("result", "fresh")]


def test_errors_of_stale_requests_are_dropped_and_the_latest_error_lands():
    latest, runner, got = LatestWins(), StepRunner(), []
    first, second = _ask(latest, runner, "k", got), _ask(latest, runner, "k", got)
    runner.fail(first, "stale failure")
    assert got == []
    runner.fail(second, "fresh failure")
    assert got == [("error", "fresh failure")] and not latest.running()


def test_keys_are_independent_and_forgetting_cancels_and_drops():
    latest, runner, got = LatestWins(), StepRunner(), []
    a, b = _ask(latest, runner, "a", got), _ask(latest, runner, "b", got)
    assert runner.cancelled == [] and latest.key_of(a) == "a" and latest.key_of(b) == "b"
    latest.forget("a")
    assert runner.cancelled == [a] and not latest.running("a") and latest.running("b")
    runner.answer(a, "forgotten")
    runner.answer(b, "kept")
    assert got == [("result", "kept")]
    c = _ask(latest, runner, "c", got)
    latest.forget_all()
    runner.answer(c, "after forget_all")
    assert runner.cancelled == [a, c] and got == [("result", "kept")]


def test_a_dead_owner_gets_no_answer():
    alive = [True]
    latest, runner, got = LatestWins(alive=lambda: alive[0]), StepRunner(), []
    job = _ask(latest, runner, "k", got)
    alive[0] = False
    runner.answer(job, "late")
    assert got == []


def test_numbering_by_hand_as_the_bridge_does():
    cancelled: list[str] = []
    latest = LatestWins(cancel=cancelled.append)
    n1 = latest.begin("k")
    latest.started("k", n1, "job1")
    n2 = latest.begin("k")
    latest.started("k", n2, "job2")
    latest.started("k", n1, "job1 again")  # a superseded request registers nothing
    assert cancelled == ["job1"] and latest.job("k") == "job2"
    assert not latest.end("k", n1) and latest.end("k", n2) and not latest.running("k")


def test_an_inline_runner_answers_before_submit_returns():
    latest, got = LatestWins(), []
    latest.submit(InlineRunner(), "k", "square", lambda ctx, x: x * x, on_result=got.append, x=3)

    def broken(ctx):
        raise ValueError("no such field")
    latest.submit(InlineRunner(), "e", "broken", broken, on_result=got.append,
                  on_error=lambda s, d: got.append(s))
    assert got == [9, "no such field"] and not latest.running()


def test_the_bridge_drops_a_stale_answer_that_arrived_before_it_was_superseded(qapp):
    """A keyed job that finished on the engine thread, but whose answer the GUI thread had
    not drained yet when a newer request of its key came, is stale: its result goes to no
    callback and its failure ends as a cancellation, not an error box."""
    import time

    from desktop_app.bridge import CANCELLED, DONE, EngineBridge
    bridge = EngineBridge("cpu")

    def quick(ctx, value, fail_stale):
        if fail_stale and value == "stale":
            raise ValueError("stale failure")
        return value
    got: list = []

    def failed(sentence: str, details: str) -> None:
        got.append(sentence)
    try:
        for fail_stale in (False, True):
            got.clear()
            stale = bridge.submit("stale", quick, key="k", value="stale", fail_stale=fail_stale,
                                  on_result=got.append, on_error=failed)
            time.sleep(0.3)  # it ends on the engine thread; no events run here to deliver it
            fresh = bridge.submit("fresh", quick, key="k", value="fresh", fail_stale=fail_stale,
                                  on_result=got.append, on_error=failed)
            assert bridge.wait_idle(10)
            assert got == ["fresh"]
            assert bridge.jobs[stale].state == (CANCELLED if fail_stale else DONE)
            assert bridge.jobs[stale].error is None and bridge.jobs[fresh].state == DONE
    finally:
        bridge.shutdown()


# ---------------------------------------------------------------- the main window
class FakeView(QWidget):
    """The smallest View: records what the window asks of it."""

    def __init__(self, state: AppState) -> None:
        super().__init__()
        self.saved: dict[str, Any] = {"n": 1}
        self.restored: list[dict[str, Any]] = []
        self.painted: list[QRectF] = []
        self.cancelled = 0

    def session_state(self) -> dict[str, Any]:
        return dict(self.saved)

    def restore_session(self, state: dict[str, Any], /) -> None:
        self.restored.append(state)

    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        self.painted.append(QRectF(rect))
        painter.fillRect(rect, QColor("red"))

    def cancel_requests(self) -> None:
        self.cancelled += 1


@pytest.fixture
def fake_window(open_window):
    return open_window([("A", FakeView), ("B", FakeView)], size=(800, 600))


def test_the_window_saves_and_restores_view_sessions_through_the_protocol(fake_window, tmp_path):
    window = fake_window
    assert set(window.views) == {"A", "B"} and "Jobs" in window.docks  # the jobs panel is no view
    assert all(isinstance(v, View) for v in window.views.values())
    window.views["B"].saved = {"zoom": 2}
    mock = MagicMock(spec=View)
    mock.session_state.return_value = {"colour": "density"}
    real_a, window.views["A"] = window.views["A"], mock
    path = window.save_session(tmp_path / "session.json")
    assert path is not None and mock.session_state.call_count == 1
    window.views["A"], other = real_a, MagicMock(spec=View)
    other.session_state.return_value = {}
    window.views["C"] = other  # a view the file knows nothing of is left alone
    assert window.restore_session(path)
    assert real_a.restored == [{"colour": "density"}] and window.views["B"].restored == [{"zoom": 2}]
    other.restore_session.assert_not_called()


def test_the_window_exports_a_view_by_its_paint_figure(fake_window, tmp_path):
    window = fake_window
    out = window.export_view("A", tmp_path / "a.png", 200, 100, 100)
    assert out is not None and window.views["A"].painted == [QRectF(0, 0, 200, 100)]
    assert QImage(str(out)).pixelColor(100, 50) == QColor("red")
    mock = MagicMock(spec=View)
    window.views["M"] = mock
    assert window.export_view("M", tmp_path / "m.png", 64, 64, 100) is not None
    mock.paint_figure.assert_called_once()


def test_closing_the_window_cancels_every_views_requests(fake_window):
    views = list(fake_window.views.values())
    fake_window.close()
    assert [v.cancelled for v in views] == [1, 1]


def test_every_real_view_implements_the_protocol(qtbot):
    from main import gui_views
    state = AppState()
    for name, factory in gui_views():
        view = factory(state)
        qtbot.addWidget(view)
        assert isinstance(view, View), name
        saved = view.session_state()
        assert isinstance(saved, dict), name
        view.restore_session(saved)
        view.restore_session({"unknown": 1})
        view.cancel_requests()


def test_the_feature_browser_session_round_trips(qtbot):
    from views.features import FeatureBrowser
    view, other = FeatureBrowser(AppState()), FeatureBrowser(AppState())
    for w in (view, other):
        qtbot.addWidget(w)
    view.search.setText("comma")
    view.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
    other.restore_session(view.session_state())
    assert other.session_state() == view.session_state() == {"search": "comma", "sort": [1, 1]}
    other.restore_session({"sort": [99, 0], "search": 3})  # out of range, wrong type: skipped
    assert other.session_state() == {"search": "comma", "sort": [1, 1]}
