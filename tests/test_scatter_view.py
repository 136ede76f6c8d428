"""The embedding scatter with both drawing paths (pyqtgraph, vispy) and the real engine
bridge: lassos (the real mouse path and data-space polygons) against a brute-force
even-odd reference, Shift/Alt combining, outside selections recolouring, focus -> colour
job -> colours that follow an independent SAE encode, progressive layouts, degenerate
layouts, hover texts, the level-of-detail image, 300 repaints and figure export."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt
from PySide6.QtGui import QImage, QPainter
from PySide6.QtTest import QTest

from desktop_app.state import LATENTS, ROWS, AppState, Selection, and_not_mode, or_mode
from engine.features.stats import load_feature_stats
from engine.jobs import JobContext
from engine.projection.layouts import Layout, project
from engine.sae.io import load_sae
from engine.store.activations import ActivationStore
from views.scatter import ScatterView, choose_backend, colour, gl_renderer
from views.scatter.geom import CountImage, ids_mask, points_in_polygon

BACKENDS = ["pyqtgraph", "vispy"]
CPU = torch.device("cpu")


# ---------------------------------------------------------------- references
def reference_inside(x: float, y: float, poly: np.ndarray) -> bool:
    """Brute-force even-odd ray casting, one point at a time (the test's own oracle)."""
    inside = False
    n = len(poly)
    for i in range(n):
        (xi, yi), (xj, yj) = poly[i], poly[i - 1]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
    return inside


def reference_ids(xy: np.ndarray, ids: np.ndarray, poly: np.ndarray) -> np.ndarray:
    keep = [i for i, (x, y) in enumerate(xy) if np.isfinite(x) and np.isfinite(y)
            and reference_inside(float(x), float(y), poly)]
    return np.sort(ids[keep])


def star(cx: float, cy: float, r: float, n: int = 40, seed: int = 0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rr = r * (0.6 + 0.4 * np.random.default_rng(seed).random(n))
    return np.c_[cx + rr * np.cos(t), cy + rr * np.sin(t)]


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def state(bridge):
    return AppState(engine=bridge)


def open_view(qtbot, state, backend, size=(640, 480)) -> ScatterView:
    view = ScatterView(state, backend=backend)
    qtbot.addWidget(view)
    view.resize(*size)
    view.show()
    qtbot.waitExposed(view)
    return view


def random_layout(n: int = 2000, name: str = "rows/pca", seed: int = 0) -> Layout:
    xy = np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)
    return Layout(name, xy, np.arange(100, 100 + n, dtype=np.int64))


@pytest.fixture(scope="module")
def ws(small_workspace):
    return small_workspace


@pytest.fixture(scope="module")
def layouts(ws):
    ctx = JobContext(device=CPU)
    return {what: project(ctx, ws.store, ws.hook, "pca", what, sae_path=ws.sae,
                          cache_dir=ws.projections_dir) for what in ("rows", "latents")}


def load_workspace(state: AppState, ws, layouts, what: str = "rows") -> None:
    with state.batch():
        state.set_store(ws.store)
        state.set_hook(ws.hook)
        state.set_sae(ws.sae)
        state.set_stats(ws.sae_id)
    state.set_projection(layouts[what])


# ---------------------------------------------------------------- geometry
def test_points_in_polygon_matches_brute_force_even_odd():
    rng = np.random.default_rng(1)
    xy = rng.uniform(-2, 2, size=(30_000, 2)).astype(np.float32)  # above the exact-only size
    xy[:50] = np.nan
    polys = [star(0.2, -0.1, 1.6, n=120), rng.uniform(-2, 2, size=(25, 2)),  # self-crossing
             np.array([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.5]])]
    check = rng.choice(len(xy), 1500, replace=False)
    for poly in polys:
        mask = points_in_polygon(xy, poly)
        assert not mask[:50].any()
        expected = [reference_inside(float(x), float(y), poly) if np.isfinite(x) else False
                    for x, y in xy[check]]
        np.testing.assert_array_equal(mask[check], expected)
        assert 0 < mask.sum() < len(xy)
    assert not points_in_polygon(xy, np.array([[0, 0], [1, 1]])).any()  # not a polygon


def test_lasso_over_a_million_points_matches_brute_force():
    _lasso_a_million()


@pytest.mark.perf
def test_lasso_over_a_million_points_is_fast():
    times = _lasso_a_million()
    assert min(times) < 0.5, times  # ~0.06 s here; a per-edge pass over every point is ~3 s


def _lasso_a_million() -> list[float]:
    """A star lasso over a million points, three times: checks 300 points against the
    brute-force test and returns the seconds each took."""
    xy = np.random.default_rng(2).normal(size=(1_000_000, 2)).astype(np.float32)
    poly = star(0.0, 0.0, 2.0, n=400)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        mask = points_in_polygon(xy, poly)
        times.append(time.perf_counter() - t0)
    sample = np.random.default_rng(3).choice(len(xy), 300, replace=False)
    assert [reference_inside(float(x), float(y), poly) for x, y in xy[sample]] == mask[sample].tolist()
    return times


def test_ids_mask_dense_sparse_and_full_mask():
    ids = np.array([5, 3, 9, 1_000_000_000], np.int64)
    sel = np.array([3, 1_000_000_000], np.int64)
    assert ids_mask(ids, sel).tolist() == [False, True, False, True]
    dense = np.arange(10, dtype=np.int64)
    assert ids_mask(dense, np.array([2, 7])).nonzero()[0].tolist() == [2, 7]
    full = np.zeros(10, bool)
    full[4] = True
    assert ids_mask(dense[::-1], np.array([4]), full).nonzero()[0].tolist() == [5]


def test_count_image_bins_visible_points_with_mean_colour():
    xy = np.array([[0.25, 0.25], [0.25, 0.25], [0.75, 0.75], [5.0, 5.0]], np.float32)
    img = CountImage(xy)
    palette = np.array([[255, 0, 0, 255], [0, 0, 255, 255], [0, 255, 0, 128], [9, 9, 9, 255]], np.uint8)
    img.set_colors(np.array([0, 1, 2, 3]), palette)
    out = img.render((0.0, 1.0, 0.0, 1.0), (2, 2))
    assert out.shape == (2, 2, 4)
    assert tuple(out[0, 0, :3]) == (127, 0, 127) and out[0, 0, 3] == 255  # mean of red, blue
    assert tuple(out[1, 1, :3]) == (0, 255, 0) and 0 < out[1, 1, 3] < 255
    assert out[0, 1, 3] == 0 and out[1, 0, 3] == 0  # empty bins; the far point is outside
    assert img.count_visible((0.0, 1.0, 0.0, 1.0)) == 3


def test_backend_choice_follows_renderer_and_environment(qapp, monkeypatch):
    monkeypatch.delenv("LATENTLAB_SCATTER", raising=False)
    renderer = gl_renderer().lower()
    software = not renderer or any(s in renderer for s in ("llvmpipe", "softpipe", "swrast", "software"))
    assert choose_backend() == ("pyqtgraph" if software else "vispy")
    monkeypatch.setenv("LATENTLAB_SCATTER", "vispy")
    assert choose_backend() == "vispy"
    assert choose_backend("pyqtgraph") == "pyqtgraph"  # an explicit choice wins
    monkeypatch.setenv("LATENTLAB_SCATTER", "matplotlib")
    with pytest.raises(ValueError, match="vispy"):
        choose_backend()


# ---------------------------------------------------------------- brushing
def _affine_inverse(view: ScatterView):
    """Widget pixel -> data, from two points of the backend's data -> widget map."""
    p0, p1 = view.plot.data_to_widget(0.0, 0.0), view.plot.data_to_widget(1.0, 1.0)
    sx, sy = p1.x() - p0.x(), p1.y() - p0.y()
    return lambda px, py: ((px - p0.x()) / sx, (py - p0.y()) / sy)


def mouse_lasso(qtbot, view: ScatterView, poly: np.ndarray,
                modifier=Qt.KeyboardModifier.NoModifier) -> np.ndarray:
    """Drag the real mouse along ``poly`` (data space) on the plot's viewport; return the
    polygon the pixels stand for in data space."""
    qtbot.wait(30)  # let the layout settle (the legend shows or hides after a recolour)
    widget = view.plot.viewport()
    pixels = [view.plot.data_to_widget(float(x), float(y)) for x, y in poly]
    pixels = [QPoint(round(p.x()), round(p.y())) for p in pixels]
    QTest.mousePress(widget, Qt.MouseButton.LeftButton, modifier, pixels[0])
    for p in pixels[1:]:
        qtbot.wait(12)  # both toolkits drop mouse moves closer than 10 ms apart
        QTest.mouseEvent(QTest.MouseAction.MouseMove, widget, Qt.MouseButton.NoButton, modifier, p)
    QTest.mouseRelease(widget, Qt.MouseButton.LeftButton, modifier, pixels[-1])
    qtbot.wait(20)
    inverse = _affine_inverse(view)
    return np.array([inverse(p.x(), p.y()) for p in pixels])


@pytest.mark.parametrize("backend", BACKENDS)
def test_mouse_lasso_selects_exactly_the_points_inside(qtbot, state, backend):
    view = open_view(qtbot, state, backend)
    layout = random_layout()
    state.set_projection(layout)
    view.set_brush_mode("lasso")
    poly = star(0.3, 0.2, 1.4, n=24)
    drawn = mouse_lasso(qtbot, view, poly)
    sel = state.selection
    assert sel.kind == ROWS and sel.how == "lasso in scatter (rows/pca)"
    expected = reference_ids(layout.xy, layout.ids, drawn)
    assert 100 < len(expected) < len(layout.ids)
    np.testing.assert_array_equal(sel.ids, expected)

    more = star(-1.2, -1.0, 0.6, n=12, seed=4)
    drawn2 = mouse_lasso(qtbot, view, more, Qt.KeyboardModifier.ShiftModifier)
    union = np.union1d(expected, reference_ids(layout.xy, layout.ids, drawn2))
    np.testing.assert_array_equal(state.selection.ids, union)
    assert len(union) > len(expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_selection_follows_the_brush_while_it_moves(qtbot, state, backend):
    """Live brushing: AppState's selection changes while the lasso is dragged (marked live,
    combined with the selection from before the drag by the modifier), and the release
    leaves the exact final selection, no longer live."""
    view = open_view(qtbot, state, backend)
    layout = random_layout()
    state.set_projection(layout)
    view.set_brush_mode("lasso")
    base_poly = star(-1.2, -1.0, 0.6, n=12, seed=4)
    base = reference_ids(layout.xy, layout.ids, mouse_lasso(qtbot, view, base_poly))
    seen = []
    state.selection_changed.connect(seen.append)
    drawn = mouse_lasso(qtbot, view, star(0.4, 0.3, 1.3, n=30), Qt.KeyboardModifier.ShiftModifier)
    live = [s for s in seen if s.live]
    assert len(live) >= 3 and not seen[-1].live
    assert all(np.isin(base, s.ids).all() for s in live)  # Shift: the old selection stays in
    assert len({len(s) for s in live}) > 1  # it grew as the lasso did
    want = np.union1d(base, reference_ids(layout.xy, layout.ids, drawn))
    np.testing.assert_array_equal(state.selection.ids, want)
    assert view._sel.sum() == len(want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_mode_and_pan_mode(qtbot, state, backend):
    view = open_view(qtbot, state, backend)
    layout = random_layout(800)
    state.set_projection(layout)
    view.set_brush_mode("box")
    drawn = mouse_lasso(qtbot, view, np.array([[-1.0, -1.0], [0.0, -0.5], [1.0, 1.0]]))
    (x0, y0), (x1, y1) = drawn[0], drawn[-1]
    xy = layout.xy
    inside = (xy[:, 0] >= min(x0, x1)) & (xy[:, 0] <= max(x0, x1)) & \
             (xy[:, 1] >= min(y0, y1)) & (xy[:, 1] <= max(y0, y1))
    np.testing.assert_array_equal(state.selection.ids, layout.ids[inside])
    assert state.selection.how.startswith("box in scatter")
    view.set_brush_mode("pan")
    before, chosen = view.plot.view_range(), state.selection
    mouse_lasso(qtbot, view, np.array([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]]))
    assert state.selection is chosen  # a pan drag selects nothing
    assert view.plot.view_range()[0] < before[0] - 0.3  # the view moved left by the drag


@pytest.mark.parametrize("backend", BACKENDS)
def test_lasso_modes_escape_and_nan_points(qtbot, state, backend):
    view = open_view(qtbot, state, backend)
    layout = random_layout(1500)
    layout.xy[:40] = np.nan
    state.set_projection(layout)
    a, b = star(0, 0, 1.0, seed=1), star(0.8, 0.0, 1.0, seed=2)
    view.lasso(a)
    ids_a = reference_ids(layout.xy, layout.ids, a)
    np.testing.assert_array_equal(state.selection.ids, ids_a)
    view.lasso(b, or_mode)
    ids_b = reference_ids(layout.xy, layout.ids, b)
    np.testing.assert_array_equal(state.selection.ids, np.union1d(ids_a, ids_b))
    view.lasso(b, and_not_mode)
    np.testing.assert_array_equal(state.selection.ids, np.setdiff1d(ids_a, ids_b))
    view.lasso(np.array([[-1e9, -1e9], [1e9, -1e9], [1e9, 1e9], [-1e9, 1e9]]))
    assert len(state.selection) == len(layout.ids) - 40  # NaN points are never selected
    assert not np.isin(layout.ids[:40], state.selection.ids).any()
    view.plot.viewport().setFocus()
    QTest.keyClick(view.plot.viewport(), Qt.Key.Key_Escape)
    assert len(state.selection) == 0


# ---------------------------------------------------------------- selection drawing
def _drawn_rgba(view: ScatterView, i: int) -> np.ndarray:
    """The colour the backend itself holds for drawn point ``i`` (all points finite)."""
    if view.backend == "vispy":
        return np.round(view.plot.rgba[i] * 255)
    c = view.plot.scatter.data["brush"][i].color()
    return np.array([c.red(), c.green(), c.blue(), c.alpha()], float)


@pytest.mark.parametrize("backend", BACKENDS)
def test_outside_selection_recolours_without_new_coordinates(qtbot, state, backend):
    view = open_view(qtbot, state, backend)
    layout = random_layout(3000)
    state.set_projection(layout)
    uploads = []
    real = view.plot.set_points
    view.plot.set_points = lambda *a, **k: (uploads.append(1), real(*a, **k))
    before = view.colours().copy()
    chosen = layout.ids[[5, 17, 2500]]
    state.set_selection(Selection(ROWS, chosen, "rows from another view"))
    after = view.colours()
    picked = np.isin(layout.ids, chosen)
    np.testing.assert_array_equal(after[picked], before[picked])
    assert (after[~picked, 3] < 0.5).all() and (before[~picked, 3] == 1).all()
    assert _drawn_rgba(view, 5)[3] == 255 and _drawn_rgba(view, 6)[3] < 128
    state.set_selection(Selection(LATENTS, [1, 2, 3], "latents"))  # the other kind: ignored
    np.testing.assert_array_equal(view.colours(), before)
    assert uploads == []


# ---------------------------------------------------------------- colours from the store
def _viridis_position(rgba: np.ndarray) -> np.ndarray:
    lut = colour.viridis().astype(float)[:, :3]
    d = ((rgba[:, None, :3] * 255 - lut[None]) ** 2).sum(-1)
    return d.argmin(1)


def test_focus_runs_the_colour_job_and_colours_follow_activations(qtbot, bridge, state, ws, layouts):
    view = open_view(qtbot, state, "pyqtgraph")
    load_workspace(state, ws, layouts)
    bridge.wait_idle(60)
    assert view.colour_mode() == "label:topic"
    with ActivationStore.open(ws.store) as store:
        topics = store.index("topic")[layouts["rows"].ids]
        stats = load_feature_stats(store, ws.sae_id)
        acts = store.acts(ws.hook).astype(np.float32)
    rgba = view.colours()
    for t in np.unique(topics):  # one colour per topic, different topics apart
        assert len(np.unique(rgba[topics == t], axis=0)) == 1
    assert len(np.unique(rgba, axis=0)) == len(np.unique(topics))

    latent = int(np.argsort(stats.count)[len(stats.count) // 2])
    state.set_focus(latent)
    assert view.colour_mode() == "focused"  # the default mode was not pinned by the user
    bridge.wait_idle(60)
    with torch.no_grad():  # the oracle: the SAE's own encode of the stored rows
        codes = load_sae(ws.sae).encode(torch.from_numpy(acts[layouts["rows"].ids]))[:, latent].numpy()
    fires = codes > 0
    assert 5 < fires.sum() < len(codes)
    rgba = view.colours()
    assert (np.round(rgba[~fires] * 255) == colour.PALE).all()  # not firing: pale grey
    expected = colour.continuous(codes, "x").codes[fires]
    assert np.abs(_viridis_position(rgba[fires]) - expected).max() <= 1
    assert view.legend.legend.title == f"latent {latent}" and view.legend.legend.bar is not None


def test_a_user_chosen_label_mode_stays_when_a_latent_is_focused(qtbot, bridge, state, ws, layouts):
    view = open_view(qtbot, state, "vispy")
    load_workspace(state, ws, layouts)
    view.set_colour_mode("position")
    bridge.wait_idle(60)
    with ActivationStore.open(ws.store) as store:
        position = store.index("position")[layouts["rows"].ids]
    got = _viridis_position(view.colours())
    assert np.abs(got - colour.continuous(position, "p").codes).max() <= 1
    view.set_colour_mode("label:topic")
    bridge.wait_idle(60)
    labelled = view.colours().copy()
    state.set_focus(2)
    bridge.wait_idle(60)
    assert view.colour_mode() == "label:topic"
    np.testing.assert_array_equal(view.colours(), labelled)
    view.set_colour_mode("token")
    bridge.wait_idle(60)
    names = [text for _, text in view.legend.legend.entries]
    assert names[-1] == "other tokens" and len(names) >= 5
    assert not any(n.startswith("#") for n in names[:-1])  # the vocabulary job named them
    with pytest.raises(ValueError, match="density"):
        view.set_colour_mode("density")


def test_latents_coloured_by_density_with_focus_highlight(qtbot, bridge, state, ws, layouts):
    view = open_view(qtbot, state, "pyqtgraph")
    load_workspace(state, ws, layouts, "latents")
    bridge.wait_idle(60)
    assert view.colour_mode() == "density" and view._kind() == LATENTS
    with ActivationStore.open(ws.store) as store:
        density = load_feature_stats(store, ws.sae_id).density[layouts["latents"].ids]
    rgba = view.colours()
    alive = density > 0
    order = np.argsort(density[alive])
    pos = _viridis_position(rgba[alive])[order]
    assert pos[0] < pos[-1] and (np.diff(pos) >= -1).all()  # more density, further along
    state.set_focus((4, 9))
    hot = view.colours()[np.isin(layouts["latents"].ids, [4, 9])]
    assert (np.round(hot * 255) == colour.HIGHLIGHT).all()
    view.lasso(np.array([[-1e6, -1e6], [1e6, -1e6], [0, 1e6]]))
    assert state.selection.kind == LATENTS and len(state.selection) == len(density)
    text, image = view.hover_info(int(np.flatnonzero(layouts["latents"].ids == 4)[0]))
    assert "latent 4" in text and "density" in text and "promotes" in text and image is None


def test_hover_names_the_row_token_in_context(qtbot, bridge, state, ws, layouts):
    view = open_view(qtbot, state, "pyqtgraph")
    load_workspace(state, ws, layouts)
    bridge.wait_idle(60)
    layout = layouts["rows"]
    i = int(np.argsort(np.linalg.norm(layout.xy - np.median(layout.xy, 0), axis=1))[0])
    text, image = view.hover_info(i)
    assert "<b>[" in text and "]</b>" in text and "topic: " in text and image is None
    view.reset_view()
    qtbot.wait(20)
    x, y = (float(v) for v in layout.xy[i])
    p = view.plot.data_to_widget(x, y)
    QTest.mouseMove(view.plot.viewport(), QPoint(round(p.x()), round(p.y())))
    qtbot.waitUntil(view.tip.isVisible, timeout=3000)
    assert "<b>[" in view.tip.text.text()
    assert view.nearest(x + 1e6, y) == -1


def test_image_store_hover_shows_the_digit_and_its_label(qtbot, bridge, state, tmp_path):
    from engine.capture import capture
    from engine.models.digits_zoo import ZooConfig, save, train
    cfg = ZooConfig(arch="mlp", width=16, depth=1, seed=0, epochs=1)
    module, metrics = train(cfg)
    folder = save(module, cfg, metrics, tmp_path / "zoo")
    out = tmp_path / "digits.h5"
    capture(JobContext(device=CPU), model=str(folder), source="digits:test",
            hooks=["blocks.0.hook_post"], out=out, max_tokens=200, batch_size=64)
    view = open_view(qtbot, state, "pyqtgraph")
    state.set_store(out)
    state.set_projection(random_layout(200)._replace(ids=np.arange(200, dtype=np.int64)))
    bridge.wait_idle(30)
    assert view._modes() == ["label:digit", "position", "focused"]  # no token mode for images
    with ActivationStore.open(out) as store:
        digit, image = int(store.index("digit", 7, 8)[0]), store.image(7)
    text, shown = view.hover_info(7)
    assert f"digit: {digit}" in text and "[" not in text
    np.testing.assert_array_equal(shown, image)
    view.tip.show_at(QPoint(10, 10), text, shown)
    assert view.tip.image.pixmap().width() == 72 and view.tip.image.isVisible()


# ---------------------------------------------------------------- layouts over time
@pytest.mark.parametrize("backend", BACKENDS)
def test_progressive_layout_moves_points_keeps_selection_and_zoom(qtbot, state, backend):
    view = open_view(qtbot, state, backend)
    first = random_layout(1000)
    state.set_projection(first._replace(final=False))
    fitted = view.plot.view_range()
    assert fitted[0] <= first.xy[:, 0].min() and fitted[1] >= first.xy[:, 0].max()
    view.lasso(star(0, 0, 1.0))
    chosen = state.selection
    view.plot.set_view_range(-0.5, 0.5, -0.4, 0.4)
    zoom = view.plot.view_range()
    moved = first._replace(xy=first.xy * 0.5 + 3.0, final=True)
    state.set_projection(moved)
    assert state.selection is chosen
    np.testing.assert_allclose(view.plot.view_range(), zoom, atol=1e-6)
    np.testing.assert_array_equal(view.plot.xy, moved.xy)
    assert (view.colours()[np.isin(first.ids, chosen.ids), 3] == 1).all()
    assert "1,000 points" in view.status.text()
    state.set_projection(Layout("rows/umap", first.xy[:10], first.ids[:10]))
    assert view.projection_box.count() == 2  # listed, not switched to
    view.set_projection_name("rows/umap")
    assert len(view.plot.xy) == 10 and view.projection_box.currentText() == "rows/umap"


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_layouts_do_not_crash(qtbot, state, backend):
    view = open_view(qtbot, state, backend)
    assert view.hint.isVisible() and view.hint.text() == "waiting for a projection"
    _paint(view, 200, 150)
    view.lasso(star(0, 0, 1))
    assert len(state.selection) == 0
    for xy in (np.array([[0.5, 0.5]], np.float32), np.full((5, 2), np.nan, np.float32),
               np.empty((0, 2), np.float32), np.zeros((50, 2), np.float32)):
        state.set_projection(Layout("rows/pca", xy, np.arange(len(xy), dtype=np.int64)))
        qtbot.wait(10)
        assert view.colours().shape == (len(xy), 4)
        view.lasso(star(0.5, 0.5, 0.3))
        view.nearest(0.5, 0.5)
        _paint(view, 200, 150)
    assert view.hint.isVisible() is False  # 50 points at one spot
    view.lasso(star(0.0, 0.0, 0.3))
    assert len(state.selection) == 50
    flat = colour.continuous(np.full(7, 3.0), "same")  # all-equal values: one middle colour
    assert len(np.unique(flat.codes)) == 1 and flat.legend.lo == flat.legend.hi == 3.0
    state.set_projection(Layout("rows/pca", np.full((3, 2), np.nan, np.float32), np.arange(3)))
    assert view.hint.text() == "no points to draw" and view.hint.isVisible()


# ---------------------------------------------------------------- painting
def _paint(view: ScatterView, w: int, h: int) -> QImage:
    img = QImage(w, h, QImage.Format.Format_ARGB32)
    img.fill(0)
    painter = QPainter(img)
    view.paint_figure(painter, QRectF(0, 0, w, h))
    painter.end()
    return img


def _dark(img: QImage, p: QPointF) -> bool:
    c = img.pixelColor(round(p.x()), round(p.y()))
    return c.red() + c.green() + c.blue() < 600 and c.alpha() == 255


@pytest.mark.parametrize("backend", BACKENDS)
def test_paint_figure_draws_points_where_they_are(qtbot, state, backend):
    view = open_view(qtbot, state, backend)
    xy = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]], np.float32)
    state.set_projection(Layout("rows/pca", xy, np.arange(5, dtype=np.int64)))
    qtbot.wait(20)
    port = view.plot.viewport()
    img = _paint(view, port.width(), port.height())  # no legend: the plot fills the figure
    for x, y in xy:
        assert _dark(img, view.plot.data_to_widget(float(x), float(y))), (x, y)
    assert not _dark(img, view.plot.data_to_widget(0.25, 0.75))
    state.set_selection(Selection(ROWS, [4]))
    img = _paint(view, port.width(), port.height())
    centre, corner = (img.pixelColor(view.plot.data_to_widget(*p).toPoint())
                      for p in ((0.5, 0.5), (0.0, 0.0)))
    assert centre.red() + centre.green() < corner.red() + corner.green()  # others dimmed
    big = _paint(view, 900, 500)  # with no legend the figure is the plot, scaled
    assert big.pixelColor(450, 250).blue() > big.pixelColor(450, 250).red()


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_hundred_repaints(qtbot, state, backend):
    view = open_view(qtbot, state, backend, size=(400, 300))
    state.set_projection(random_layout(5000))
    port = view.plot.viewport()
    x0, x1, y0, y1 = view.plot.view_range()
    for i in range(300):
        shift = 0.01 * (i % 20)
        view.plot.set_view_range(x0 + shift, x1 + shift, y0, y1)
        port.repaint()
        if i % 50 == 0:
            state.set_selection(Selection(ROWS, np.arange(100 + i, 200 + i)))
        qtbot.wait(0)
    assert view.isVisible()


def test_level_of_detail_image_above_100k_visible_points(qtbot, state):
    view = open_view(qtbot, state, "pyqtgraph", size=(500, 400))
    state.set_projection(random_layout(150_000))
    plot = view.plot
    assert plot.lod and plot.image.isVisible() and not plot.scatter.isVisible()
    img = plot.image.image
    assert img.shape[2] == 4 and img[..., 3].max() == 255
    state.set_selection(Selection(ROWS, np.arange(100, 200)))  # recoloured: dimmed mostly
    assert plot.image.image[..., 3].max() < 255 or plot.image.image[..., 3].mean() < img[..., 3].mean()
    plot.set_view_range(2.0, 2.5, 2.0, 2.5)  # zoomed into a sparse corner: markers again
    assert not plot.lod and plot.scatter.isVisible() and len(plot.scatter.data) == 150_000
    assert _drawn_rgba(view, 0)[3] == 255 and _drawn_rgba(view, 500)[3] < 128
    port = plot.viewport()
    fig = _paint(view, port.width(), port.height())
    assert fig.width() == port.width()
