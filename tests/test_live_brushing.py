"""Live brushing at a million points: a real mouse lasso dragged across a 1M-row scatter
updates AppState's selection while it moves (one mask computed per brush and shared), the
feature browser's most-active list follows, and after release every view shows the final
selection. The perf test (``-m perf``) prints both figures (the rate while dragging, the time
after release) and holds them to the issue's targets: >= 10 Hz and <= 0.1 s (glue: nothing
while dragging, about 0.15 s after release; see ../shared/BENCHMARKS.md)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from desktop_app.bridge import EngineBridge
from desktop_app.state import ROWS, AppState
from engine.features.stats import feature_stats
from engine.jobs import JobContext
from engine.projection.layouts import Layout
from engine.sae.base import SAEConfig, build_sae
from engine.sae.io import save_sae
from engine.store.activations import ActivationStore, StoreMeta
from views.features import FeatureBrowser
from views.scatter import ScatterView

N, D, D_SAE, HOOK = 1_000_000, 16, 64, "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def million(tmp_path_factory):
    """A 1M-row store of clustered 16-d rows, a TopK SAE over it with its statistics (and
    stored codes), and the rows' first two coordinates as the layout."""
    root = tmp_path_factory.mktemp("million")
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(8, D)).astype(np.float32)
    acts = (centres[rng.integers(0, 8, N)] + rng.normal(size=(N, D)).astype(np.float32)).astype(np.float16)
    meta = StoreMeta(model_id="synthetic", model_hash="h", source_id="synthetic", hooks=(HOOK,),
                     dims={HOOK: D}, dtype="float16")
    path = root / "million.h5"
    r = np.arange(N)
    with ActivationStore.create(path, meta) as store:
        store.append({HOOK: acts}, tokens=(r % 97).astype(np.int32), sample=(r // 64).astype(np.int32),
                     position=(r % 64).astype(np.int32))
    torch.manual_seed(0)
    sae = build_sae(SAEConfig("topk", D, D_SAE, k=4))
    folder = save_sae(sae, root / "sae")
    feature_stats(JobContext(device=torch.device("cpu")), path, sae, HOOK, "topk", batch_size=65536)
    xy = acts[:, :2].astype(np.float32)
    return path, folder, Layout("rows/pca", xy, r.astype(np.int64))


def test_a_lasso_over_a_million_points_updates_every_view_live(qtbot, million):
    live, _dragged, _after = _lasso(qtbot, million)
    assert live  # the selection followed the lasso while it moved


@pytest.mark.perf
def test_live_brushing_rate_and_time_to_final_selection(qtbot, million):
    live, dragged, after = _lasso(qtbot, million)
    rate = len(live) / dragged
    print(f"\nlive brushing over {N:,} points: {len(live)} selections in {dragged:.2f} s of dragging "
          f"({rate:.1f} Hz); every view on the final selection {after * 1000:.0f} ms after release")
    assert rate >= 10.0
    assert after <= 0.1


def _lasso(qtbot, million) -> tuple[list[tuple[float, int]], float, float]:
    """Drag a real mouse lasso over the million rows and check what every view shows; returns
    the live selections (when, size), the seconds of dragging and the seconds from the
    release until the feature browser showed the final selection."""
    path, folder, layout = million
    bridge = EngineBridge(device="cpu")
    try:
        state = AppState(bridge)
        scatter = ScatterView(state, backend="pyqtgraph")
        browser = FeatureBrowser(state)
        for w, size in ((scatter, (900, 700)), (browser, (700, 700))):
            qtbot.addWidget(w)
            w.resize(*size)
            w.show()
        with state.batch():
            state.set_store(path)
            state.set_hook(HOOK)
            state.set_sae(folder)
            state.set_stats("topk")
        state.set_projection(layout)
        assert bridge.wait_idle(120)
        assert scatter.plot.lod  # a million points: the density image
        scatter.set_brush_mode("lasso")
        live: list[tuple[float, int]] = []
        state.selection_changed.connect(lambda sel: sel.live and live.append((time.perf_counter(), len(sel))))

        lo, hi = np.percentile(layout.xy, [10, 90], axis=0)
        t = np.linspace(0, 2 * np.pi, 61)
        poly = np.c_[(lo[0] + hi[0]) / 2 + (hi[0] - lo[0]) / 2 * np.cos(t),
                     (lo[1] + hi[1]) / 2 + (hi[1] - lo[1]) / 2 * np.sin(t)]
        widget = scatter.plot.viewport()
        pixels = [scatter.plot.data_to_widget(float(x), float(y)) for x, y in poly]
        pixels = [QPoint(round(p.x()), round(p.y())) for p in pixels]
        QTest.mousePress(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pixels[0])
        start = time.perf_counter()
        for p in pixels[1:]:
            QTest.mouseMove(widget, p)
            qtbot.wait(10)  # a mouse reports about 100 moves a second
        dragged = time.perf_counter() - start
        QTest.mouseRelease(widget, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pixels[-1])
        released = time.perf_counter()
        final = state.selection
        assert not final.live and final.kind == ROWS and 0.3 * N < len(final) < N
        assert final.mask is not None and final.mask.sum() == len(final)  # one mask, shared

        def browser_shows_final() -> bool:
            title = browser.active_title.text()
            return f"({len(final)} rows)" in title and "computing" not in title and browser.active_list.count() > 0
        qtbot.waitUntil(browser_shows_final, timeout=30_000)  # the perf test holds it to 0.1 s
        after = time.perf_counter() - released
        assert scatter._sel.sum() == len(final)  # the scatter draws exactly the final selection
        return live, dragged, after
    finally:
        bridge.shutdown()
