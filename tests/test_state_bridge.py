"""AppState's one-signal-per-field contract, selections and modes, and the engine bridge:
jobs run in order on one thread, keyed jobs replace stale ones, cancellation and errors."""

from __future__ import annotations

import threading
import time

import numpy as np

from desktop_app.bridge import CANCELLED, DONE, FAILED, EngineBridge
from desktop_app.state import LATENTS, ROWS, AppState, Selection, and_not_mode, or_mode
from engine.errors import StoreError
from engine.jobs import quick_read
from engine.projection.layouts import Layout


def test_setters_emit_once_and_only_on_change(qapp):
    state = AppState()
    seen = []
    state.focus_changed.connect(seen.append)
    state.selection_changed.connect(seen.append)
    state.set_focus(3)
    state.set_focus((3,))
    state.set_selection(Selection(ROWS, [5, 1, 5]))
    state.set_selection(Selection(ROWS, [1, 5], "another way, same ids"))
    assert seen[0] == (3,) and len(seen) == 2
    assert seen[1].ids.tolist() == [1, 5]


def test_batch_emits_each_changed_field_once_at_the_end(qapp):
    state = AppState()
    seen = []
    state.focus_changed.connect(lambda v: seen.append(("focus", v)))
    state.hook_changed.connect(lambda v: seen.append(("hook", v)))
    with state.batch():
        state.set_focus(1)
        state.set_focus(2)
        state.set_hook("h")
        assert seen == []
    assert sorted(seen) == [("focus", (2,)), ("hook", "h")]


def test_new_store_or_sae_clears_what_belonged_to_the_old_one(qapp, tmp_path):
    state = AppState()
    state.set_store(tmp_path / "a.h5")
    state.set_projection(Layout("rows/pca", np.zeros((2, 2), np.float32), np.arange(2)))
    state.set_selection(Selection(ROWS, [1]))
    state.set_store(tmp_path / "b.h5")
    assert state.projections == {} and len(state.selection) == 0
    state.set_sae(tmp_path / "sae")
    state.set_focus(4)
    state.set_selection(Selection(LATENTS, [4]))
    state.set_sae(tmp_path / "sae2")
    assert state.focus == () and len(state.selection) == 0 and state.selection.kind == LATENTS


def test_selection_modes():
    a, b = Selection(ROWS, [1, 2, 3]), Selection(ROWS, [3, 4])
    assert or_mode(a, b).ids.tolist() == [1, 2, 3, 4]
    assert and_not_mode(a, b).ids.tolist() == [1, 2]
    assert a.as_mask(5).tolist() == [False, True, True, True, False]
    ma = Selection(ROWS, [1, 2, 3], mask=np.isin(np.arange(6), [1, 2, 3]))
    mb = Selection(ROWS, [3, 4], mask=np.isin(np.arange(6), [3, 4]), live=True)
    both, rest = or_mode(ma, mb), and_not_mode(ma, mb)  # the masks combined, not the ids sorted
    assert both.ids.tolist() == [1, 2, 3, 4] and both.mask.tolist() == [False, True, True, True, True, False]
    assert rest.ids.tolist() == [1, 2] and rest.mask.sum() == 2 and both.live and rest.live
    assert mb != Selection(ROWS, [3, 4])  # a brush still moving is not its final selection
    unsorted = Selection(ROWS, [5, 1, 5, 3])
    assert unsorted.ids.tolist() == [1, 3, 5]


def _count(ctx, n, delay=0.01):
    for i in range(n):
        ctx.check_cancelled()
        ctx.progress(i + 1, n, "counting")
        ctx.partial(i)
        time.sleep(delay)
    return threading.get_ident()


def test_jobs_run_in_order_on_the_engine_thread(bridge):
    results, partials = [], []
    bridge.submit("a", _count, n=3, on_result=results.append, on_partial=partials.append)
    bridge.submit("b", _count, n=2, on_result=results.append)
    assert bridge.wait_idle(10)
    assert results[0] == results[1] != threading.get_ident()  # one thread, not the GUI's
    assert partials == [0, 1, 2]


def _wait_for(ctx, event: threading.Event) -> int:
    while not event.wait(0.01):
        ctx.check_cancelled()
    return threading.get_ident()


@quick_read
def _read(ctx) -> int:
    return threading.get_ident()


def test_a_quick_read_runs_beside_a_long_job_not_behind_it(bridge, qtbot):
    release, results = threading.Event(), {}
    long_job = bridge.submit("long", _wait_for, event=release, on_result=lambda r: results.update(long=r))
    bridge.submit("read", _read, on_result=lambda r: results.update(read=r))
    qtbot.waitUntil(lambda: "read" in results, timeout=10_000)
    assert bridge.jobs[long_job].state == "running" and "long" not in results
    release.set()
    assert bridge.wait_idle(10)
    assert results["long"] != results["read"]  # two engine threads, neither the GUI's
    assert threading.get_ident() not in results.values()


def test_a_keyed_job_replaces_the_stale_one(bridge):
    results = []
    first = bridge.submit("slow", _count, key="k", n=500, on_result=results.append)
    second = bridge.submit("fresh", _count, key="k", n=1, on_result=results.append)
    assert bridge.wait_idle(10)
    assert bridge.jobs[first].state == CANCELLED and bridge.jobs[second].state == DONE
    assert len(results) == 1


def test_a_failing_callback_does_not_lose_the_other_reports(bridge, capsys):
    """A view's result handler that raises (a bug) is reported, and the reports drained
    with it (other jobs' results) still land."""
    results = []

    def broken(result):
        raise RuntimeError("a view's bug")
    bridge.submit("a", _count, n=1, delay=0, on_result=broken)
    bridge.submit("b", _count, n=1, delay=0, on_result=results.append)
    assert bridge.wait_idle(10)
    assert len(results) == 1 and not bridge.busy()
    assert "a view's bug" in capsys.readouterr().err


def test_errors_become_one_sentence_with_details(bridge):
    errors = []

    def broken(ctx):
        raise StoreError("store.h5: no hook point 'x'")

    def crash(ctx):
        return {}["missing"]

    bridge.submit("broken", broken, on_error=lambda s, d: errors.append((s, d)))
    job = bridge.submit("crash", crash)
    assert bridge.wait_idle(10)
    assert errors[0][0] == "store.h5: no hook point 'x'" and "Traceback" in errors[0][1]
    assert bridge.jobs[job].state == FAILED
    assert bridge.jobs[job].error[0] == "The job failed with KeyError: 'missing'"


class _Cycle:
    """Cyclic garbage that records the thread it was collected on."""

    collected_on: list[int] = []

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        _Cycle.collected_on.append(threading.get_ident())


def _allocate(ctx, n):
    junk = [[i] for i in range(n)]  # enough allocations to trigger an automatic collection
    return len(junk)


def test_garbage_is_collected_on_the_gui_thread_only(qapp, qtbot):
    """Collecting Qt wrappers on the engine thread deadlocks PySide6: while a bridge lives,
    automatic collection is off and the GUI thread collects on a timer."""
    import gc

    from PySide6.QtCore import QCoreApplication, QEvent
    # an earlier test's windows, freed while this one runs, would lower the allocation count
    # the collector's trigger reads (deallocations count down): free them first
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()
    bridge = EngineBridge("cpu")
    try:
        assert not gc.isenabled()
        _Cycle.collected_on.clear()
        for _ in range(2000):  # past the first generation's threshold (700)
            _Cycle()
        bridge.submit("allocate", _allocate, n=200_000)
        assert bridge.wait_idle(30)
        qtbot.waitUntil(lambda: len(_Cycle.collected_on) == 2000, timeout=10_000)
        assert set(_Cycle.collected_on) == {threading.get_ident()}
    finally:
        bridge.shutdown()
    assert gc.isenabled()


def _wait_for(ctx, event):
    while not event.wait(0.01):
        ctx.check_cancelled()


def test_full_collections_wait_until_the_engine_is_idle(qapp, qtbot):
    """A full collection pauses every thread for as long as it walks all objects, so while a
    job runs the GUI thread collects only the young generations; the full one follows at idle."""
    import gc
    thresholds = gc.get_threshold()
    bridge = EngineBridge("cpu")
    seen: list[tuple[int, bool]] = []  # (generation, engine busy) of each collection

    def watch(phase, info):
        if phase == "start":
            seen.append((info["generation"], bridge.busy()))
    gc.callbacks.append(watch)
    try:
        gc.set_threshold(100, 2, 2)  # a full collection falls due after a few hundred allocations
        release = threading.Event()
        bridge.submit("wait", _wait_for, event=release)
        junk = []

        def full_collection_due() -> bool:
            junk.extend([i] for i in range(200))
            return gc.get_count()[2] > gc.get_threshold()[2]
        qtbot.waitUntil(full_collection_due, timeout=30_000)  # the timer's young collections make it due
        qtbot.wait(1200)  # two or more timer ticks with a full collection due while the engine is busy
        assert any(g < 2 for g, busy in seen if busy)  # young generations were collected meanwhile
        assert not [g for g, busy in seen if busy and g == 2]
        release.set()
        assert bridge.wait_idle(10)
        qtbot.waitUntil(lambda: any(g == 2 for g, busy in seen if not busy), timeout=5000)
    finally:
        gc.callbacks.remove(watch)
        gc.set_threshold(*thresholds)
        bridge.shutdown()


def test_full_collections_wait_while_a_mouse_button_is_held(qapp, qtbot):
    """A lasso drag allocates a lot; a full collection in the middle of it would stall the
    brush for 100+ ms, so it waits until the button has been up for a timer tick."""
    import gc

    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QWidget
    thresholds = gc.get_threshold()
    bridge = EngineBridge("cpu")
    widget = QWidget()
    qtbot.addWidget(widget)
    widget.resize(200, 200)
    widget.show()
    qtbot.waitExposed(widget)
    seen: list[tuple[int, float]] = []  # (generation, when) of each collection

    def watch(phase, info):
        if phase == "start":
            seen.append((info["generation"], time.perf_counter()))
    gc.callbacks.append(watch)
    try:
        gc.set_threshold(100, 2, 2)
        QTest.mousePress(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(50, 50))
        junk = []

        def full_collection_due() -> bool:
            junk.extend([i] for i in range(200))
            return gc.get_count()[2] > gc.get_threshold()[2]
        qtbot.waitUntil(full_collection_due, timeout=30_000)
        qtbot.wait(1200)  # timer ticks with a full collection due while the button is held
        assert any(g < 2 for g, _ in seen) and not [g for g, _ in seen if g == 2]
        QTest.mouseRelease(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(50, 50))
        released = time.perf_counter()
        qtbot.waitUntil(lambda: any(g == 2 for g, _ in seen), timeout=5000)
        assert min(t for g, t in seen if g == 2) - released >= 0.4  # a tick's grace after the release
    finally:
        gc.callbacks.remove(watch)
        gc.set_threshold(*thresholds)
        bridge.shutdown()
