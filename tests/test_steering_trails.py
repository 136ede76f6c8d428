"""Steering in the map (issue 19, item 1): a steered run's activations placed in the scatter's
layout as trails, and the latents whose activation steering changed most."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

from engine.api import (
    OCEAN_TEXTS,
    OTHER_TEXTS,
    JobContext,
    Layout,
    generate_stream,
    latent_changes,
    layout_placer,
    place_in_layout,
    place_rows,
    project,
    rank_latent_changes,
    sweep_trails,
)
from engine.errors import LatentLabError
from engine.projection.placement import make_placer, umap_place
from engine.projection.umap_kernels import transform_graph, transform_init, umap_transform

CPU = JobContext(device=torch.device("cpu"))
PROMPT = "The weather today is"


def _concept(hook: str, strength: float = 4.0) -> dict:
    return {"kind": "concept", "hook": hook, "strength": strength, "name": "ocean",
            "positive": OCEAN_TEXTS[:2], "negative": OTHER_TEXTS[:2]}


@pytest.fixture(scope="module")
def rows_pca(small_workspace):
    """The small workspace's row PCA layout and its rows, read back in the layout's order."""
    from engine.store.activations import ActivationStore
    ws = small_workspace
    layout = project(CPU, ws.store, ws.hook, "pca", "rows", cache_dir=ws.projections_dir)
    with ActivationStore.open(ws.store) as store:
        rows = store.rows(ws.hook, layout.ids).astype(np.float32)
    return layout, rows


# ---------------------------------------------------------------- placement
def test_trail_pca_placement_of_layout_rows_is_their_coordinates(small_workspace, rows_pca):
    """A PCA placement of rows already in the layout returns their layout coordinates (the
    basis is recomputed from the same rows in the same order), for a scattered subset."""
    layout, rows = rows_pca
    placer = layout_placer(CPU, small_workspace.store, small_workspace.hook, layout)
    pick = np.random.default_rng(0).choice(len(rows), 50, replace=False)
    np.testing.assert_allclose(place_in_layout(placer, rows[pick]), layout.xy[pick], rtol=0, atol=1e-5)
    again = layout_placer(CPU, small_workspace.store, small_workspace.hook, layout)
    assert again is placer  # kept: a slider move reads no rows


def test_trail_pca_placement_of_new_rows_matches_scikit_learn(rows_pca):
    """New rows land where scikit-learn's PCA of the layout's rows puts them (each axis's
    sign matched on the layout's points)."""
    from sklearn.decomposition import PCA
    layout, rows = rows_pca
    placer = make_placer(layout, rows)
    new = rows[:20] + np.random.default_rng(1).normal(0, 1, rows[:20].shape).astype(np.float32)
    ref = PCA(2, svd_solver="full").fit(rows.astype(np.float64))
    sign = np.sign((ref.transform(rows[:200].astype(np.float64)) * layout.xy[:200]).sum(0))
    np.testing.assert_allclose(place_in_layout(placer, new), ref.transform(new.astype(np.float64)) * sign,
                               rtol=1e-4, atol=1e-3)


@pytest.fixture(scope="module")
def digits_umap():
    """umap-learn's own UMAP (seeded, 200 epochs) of 600 digits, and 150 held-out digits."""
    import umap
    from sklearn.datasets import load_digits
    x = load_digits().data.astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(x))
    train, held = x[perm[:600]], x[perm[600:750]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # n_jobs overridden by random_state
        fit = umap.UMAP(random_state=0, n_epochs=200).fit(train)
    return train, held, fit


def _nearest_overlap(a: np.ndarray, b: np.ndarray, emb: np.ndarray, k: int = 10) -> float:
    """Mean share of the k nearest layout points (in 2-D) that placements a and b have in common."""
    near = [np.argsort(((p[:, None, :] - emb[None]) ** 2).sum(-1), axis=1)[:, :k] for p in (a, b)]
    return float(np.mean([len(set(u) & set(v)) / k for u, v in zip(*near, strict=True)]))


def test_trail_umap_placement_agrees_with_umap_learns_transform(digits_umap):
    """Held-out rows placed in umap-learn's layout land where umap-learn's ``transform`` puts
    them: their 10 nearest layout points overlap its by >= 0.7 (the k-NN start alone, the
    placement before the epochs, reaches 0.59-0.66, a random one 0.03), 66 epochs (a third of the fit's) and the SGD
    equals umap-learn's ``optimize_layout_euclidean`` for the new points, bit for bit."""
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import INT32_MAX, INT32_MIN
    train, held, fit = digits_umap
    emb = fit.embedding_.astype(np.float32)
    theirs = fit.transform(held)
    ours = umap_place(train, emb, held, n_epochs=200)
    rand = np.random.default_rng(3).uniform(emb.min(0), emb.max(0), size=theirs.shape)
    assert _nearest_overlap(ours, theirs, emb) >= 0.7
    assert _nearest_overlap(rand, theirs, emb) < 0.2
    sq = ((held[:, None, :].astype(np.float64) - train[None].astype(np.float64)) ** 2).sum(-1)
    idx = np.argsort(sq, axis=1)[:, :15]
    dist = np.sqrt(np.take_along_axis(sq, idx, 1))
    graph, strength = transform_graph(idx, dist, 0.1, 200)
    assert graph.n_epochs == 66 and (graph.a, graph.b) == pytest.approx((fit._a, fit._b))
    init = transform_init(idx, strength, emb)
    rng_state = np.random.RandomState(42).randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    ref = optimize_layout_euclidean(init.copy(), emb.copy(), graph.head, graph.tail, 66, len(emb),
                                    graph.epochs_per_sample, graph.a, graph.b, rng_state, 1.0, 0.25, 5.0)
    np.testing.assert_array_equal(umap_transform(idx, dist, emb, 0.1, 200), ref)


def test_trail_umap_placement_of_layout_rows_stays_on_their_points(digits_umap):
    """A layout row starts exactly on its point (umap's init) and the SGD, which umap-learn's
    transform runs for it too, moves it only slightly (within 5% of the layout's extent);
    the layout's own points never move, and a placement is repeatable."""
    train, _, fit = digits_umap
    emb = fit.embedding_.astype(np.float32)
    layout = Layout("rows/umap", emb.copy(), np.arange(len(emb)))
    placer = make_placer(layout, train)
    pick = np.arange(0, 600, 7)
    dist = np.sqrt(((train[pick, None, :] - train[None]) ** 2).sum(-1))
    idx = np.argsort(dist, axis=1, kind="stable")[:, :15]
    _, strength = transform_graph(idx, np.take_along_axis(dist, idx, 1), 0.1, None)
    np.testing.assert_array_equal(transform_init(idx, strength, emb), emb[pick])
    placed = place_in_layout(placer, train[pick])
    drift = np.linalg.norm(placed - emb[pick], axis=1)
    assert drift.max() <= 0.05 * np.ptp(emb, axis=0).max()
    np.testing.assert_array_equal(place_in_layout(placer, train[pick]), placed)
    np.testing.assert_array_equal(layout.xy, emb)
    np.testing.assert_array_equal(placer.xy, emb)
    bad = train[:3].copy()
    bad[1, 0] = np.nan
    assert np.isnan(place_in_layout(placer, bad)[1]).all() and np.isfinite(place_in_layout(placer, bad)[[0, 2]]).all()


def test_trail_place_rows_job_places_runs_in_a_row_umap_layout(small_workspace, rows_pca):
    """The job places each run in a ``rows/umap`` layout of the store as ``place_in_layout``
    does with the layout's rows, each run as one batch."""
    layout, rows = rows_pca
    umap_like = Layout("rows/umap", layout.xy, layout.ids)
    runs = [rows[:6] + 0.5, rows[10:13]]
    placed = place_rows(CPU, small_workspace.store, small_workspace.hook, umap_like, runs)
    placer = make_placer(umap_like, rows)
    for run, xy in zip(runs, placed, strict=True):
        assert xy.shape == (len(run), 2) and np.isfinite(xy).all()
        np.testing.assert_array_equal(xy, place_in_layout(placer, run))


def test_trail_placement_refuses_latent_layouts_and_other_widths(small_workspace, rows_pca):
    layout, rows = rows_pca
    with pytest.raises(LatentLabError, match="latents"):
        layout_placer(CPU, small_workspace.store, small_workspace.hook, layout._replace(name="latents/pca"))
    with pytest.raises(LatentLabError, match="width"):
        place_in_layout(make_placer(layout, rows), np.zeros((2, rows.shape[1] + 1), np.float32))


# ---------------------------------------------------------------- runs and strengths
def test_trail_generation_returns_the_runs_activations(tiny_llama, small_workspace):
    """A generation asked for its trail returns one row per prompt and generated token; the
    plain run's rows are the model's own; steered at the read hook point, the prompt's rows
    move by exactly strength x the concept vector."""
    from engine.models.registry import cached_model
    from engine.steering.recipe import cached_concept
    hook = small_workspace.hook
    base = generate_stream(CPU, str(tiny_llama), PROMPT, max_new_tokens=4, which="baseline", trail_hook=hook)
    item = _concept(hook, 3.0)
    steer = generate_stream(CPU, str(tiny_llama), PROMPT, [item], max_new_tokens=4, trail_hook=hook)
    adapter = cached_model(str(tiny_llama))
    doc = adapter.tokenize(PROMPT)
    t = base.trail
    assert (t.which, t.hook, t.n_prompt, len(t.texts)) == ("baseline", hook, len(doc), len(doc) + 4)
    own = adapter.forward(adapter.make_batch([doc + base.tokens]), [hook])[hook].float().numpy()
    np.testing.assert_allclose(t.acts, own, atol=1e-5)
    vec = cached_concept(adapter, hook, item["positive"], item["negative"]).float().numpy()
    n = t.n_prompt
    np.testing.assert_allclose(steer.trail.acts[:n] - t.acts[:n], np.broadcast_to(3.0 * vec, (n, len(vec))),
                               atol=1e-4)


def test_trail_moves_monotonically_away_with_the_concept_strength(tiny_llama, small_workspace, rows_pca):
    """Five strengths of a concept vector: each steered trail, placed in the row PCA, lies
    further from the baseline trail than the one before (mean distance over the tokens both
    runs share), and strength 0 lies on it."""
    layout, _ = rows_pca
    ws = small_workspace
    strengths = [0.0, 1.0, 2.0, 4.0, 8.0]
    trails = sweep_trails(CPU, str(tiny_llama), _concept(ws.hook), strengths, PROMPT, ws.hook, max_new_tokens=4)
    assert [t.label for t in trails] == ["baseline", *(f"strength {s:g}" for s in strengths)]
    placed = place_rows(CPU, ws.store, ws.hook, layout, [t.acts for t in trails])
    base = placed[0]
    gaps = []
    for xy in placed[1:]:
        n = min(len(xy), len(base))
        gaps.append(float(np.linalg.norm(xy[:n] - base[:n], axis=1).mean()))
    assert gaps[0] == pytest.approx(0.0, abs=1e-6)
    assert all(b > a for a, b in zip(gaps, gaps[1:], strict=False)), gaps


# ---------------------------------------------------------------- changed latents
def test_trail_latent_changes_match_numpy(small_workspace, rows_pca):
    """The ranking equals a direct computation: the SAE's codes of both runs, their means,
    ordered by |steered - baseline| (ties by id), unchanged latents left out."""
    from engine.sae.io import load_sae
    _, rows = rows_pca
    sae = load_sae(small_workspace.sae).eval()
    base, steer = rows[:40], rows[100:160] * 1.5
    got = latent_changes(sae, base, steer, top=12)
    with torch.no_grad():
        mb = sae.encode(torch.as_tensor(base)).double().numpy().mean(0)
        ms = sae.encode(torch.as_tensor(steer)).double().numpy().mean(0)
    d = ms - mb
    want = sorted(range(len(d)), key=lambda j: (-abs(d[j]), j))[:12]
    want = [j for j in want if d[j] != 0]
    assert got.latents.tolist() == want
    np.testing.assert_allclose(got.change, d[want], atol=1e-9)
    np.testing.assert_allclose(got.baseline, mb[want], atol=1e-9)
    assert latent_changes(sae, base, base).latents.size == 0


def test_trail_rank_job_leaves_the_baselines_sink_positions_out(small_workspace, rows_pca):
    """A baseline row 50x the run's median norm (an attention sink) is left out of both runs'
    means, by position; the rest are ranked as ``latent_changes`` ranks them."""
    from engine.api import Trail, sink_positions
    from engine.sae.io import load_sae
    _, rows = rows_pca
    base_rows, steer_rows = rows[:8].copy(), rows[300:310].copy()
    base_rows[0] *= 50.0
    assert sink_positions(base_rows).tolist() == [True] + [False] * 7
    base = Trail("baseline", "baseline", small_workspace.hook, [], 2, base_rows)
    got = rank_latent_changes(CPU, small_workspace.sae, base, base._replace(which="steered", acts=steer_rows))
    want = latent_changes(load_sae(small_workspace.sae).eval(), base_rows[1:], steer_rows[1:])
    assert got.latents.tolist() == want.latents.tolist()
    np.testing.assert_allclose(got.change, want.change, atol=1e-9)


def test_trail_rank_job_refuses_runs_at_two_hooks(small_workspace, rows_pca):
    from engine.api import Trail
    _, rows = rows_pca
    a = Trail("baseline", "baseline", "blocks.0.hook_resid_post", [], 0, rows[:3])
    b = a._replace(which="steered", hook=small_workspace.hook)
    with pytest.raises(LatentLabError, match="two hook points"):
        rank_latent_changes(CPU, small_workspace.sae, a, b)


# ---------------------------------------------------------------- the views
def _trails(rows: np.ndarray, hook: str):
    from engine.api import Trail
    base = Trail("baseline", "baseline", hook, [f"t{i}" for i in range(6)], 3, rows[:6])
    return base, Trail("steered", "steered", hook, [f"s{i}" for i in range(6)], 3, rows[200:206])


def _plot_image(view):
    """The plot area as drawn on screen: (h, w, 3) uint8."""
    if view.backend == "vispy":
        return np.asarray(view.plot.canvas.render(alpha=False))[:, :, :3]
    img = view.plot.widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    return np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[:, :3 * img.width()] \
        .reshape(img.height(), img.width(), 3).copy()


@pytest.mark.parametrize("backend", ["pyqtgraph", "vispy"])
def test_trail_scatter_draws_placed_trails_with_a_legend(qtbot, bridge, small_workspace, rows_pca, backend):
    """AppState's trails are placed in the shown row layout and drawn over the cloud on either
    path: the steered run's points are red where the placement puts them; the legend names
    both runs; trails read at another hook point are not drawn (the legend says why); clearing
    them clears the plot."""
    from desktop_app.state import AppState
    from views.scatter.view import ScatterView
    layout, rows = rows_pca
    ws = small_workspace
    state = AppState(engine=bridge)
    view = ScatterView(state, backend=backend)
    qtbot.addWidget(view)
    view.resize(700, 500)
    view.show()
    qtbot.waitExposed(view)
    with state.batch():
        state.set_store(ws.store)
        state.set_hook(ws.hook)
    state.set_projection(layout)
    base, steer = _trails(rows, ws.hook)
    state.set_trails((base, steer))
    qtbot.waitUntil(lambda: len(view.trails.drawn) == 2, timeout=30000)
    placer = make_placer(layout, rows)
    np.testing.assert_allclose(view.trails.drawn[1].xy, place_in_layout(placer, steer.acts), atol=1e-6)
    assert view.trail_legend.isVisible() and [t.label for t in view.trail_legend.drawn] == ["baseline", "steered"]
    qtbot.wait(50)
    img = _plot_image(view)
    scale = img.shape[1] / view.plot.viewport().width()
    p = view.plot.data_to_widget(*map(float, view.trails.drawn[1].xy[-1]))
    r, g, b = (int(v) for v in img[round(p.y() * scale), round(p.x() * scale)])
    assert r > 150 and g < 80 and b < 80, (r, g, b)
    with_trails = _figure(view)
    assert _red_pixels(with_trails) > 50  # the exported figure carries the trails and their legend
    state.set_trails((base._replace(hook="blocks.0.hook_resid_post"), steer._replace(hook="blocks.0.hook_resid_post")))
    assert view.trails.drawn == [] and "blocks.0" in view.trail_legend.note and view.trail_legend.isVisible()
    assert _red_pixels(_figure(view)) < _red_pixels(with_trails) // 10
    state.set_trails(())
    assert not view.trail_legend.isVisible()


def _figure(view) -> np.ndarray:
    from PySide6.QtCore import QRectF
    from PySide6.QtGui import QPainter
    img = QImage(700, 500, QImage.Format.Format_RGB888)
    img.fill(0xFFFFFF)
    painter = QPainter(img)
    view.paint_figure(painter, QRectF(0, 0, 700, 500))
    painter.end()
    rows = np.frombuffer(img.constBits(), np.uint8).reshape(500, img.bytesPerLine())
    return rows[:, :2100].reshape(500, 700, 3).copy()


def _red_pixels(img: np.ndarray) -> int:
    r, g, b = (img[:, :, i].astype(int) for i in range(3))
    return int(((r > 150) & (g < 80) & (b < 80)).sum())


def test_trail_feature_browser_lists_the_latents_steering_changed(qtbot, bridge, small_workspace, rows_pca):
    """The browser ranks the latents by their change between the runs (the engine's ranking)
    and a click focuses one."""
    from engine.sae.io import load_sae
    from tests.conftest import open_browser
    _, rows = rows_pca
    state, browser = open_browser(qtbot, bridge, small_workspace)
    base, steer = _trails(rows, small_workspace.hook)
    state.set_trails((base, steer))
    want = latent_changes(load_sae(small_workspace.sae).eval(), base.acts, steer.acts)
    lst = browser.changed.list
    qtbot.waitUntil(lambda: lst.count() > 0 and lst.item(0).data(Qt.ItemDataRole.UserRole) is not None,
                    timeout=30000)
    shown = [lst.item(i).data(Qt.ItemDataRole.UserRole) for i in range(lst.count())]
    assert shown == want.latents[:len(shown)].tolist()
    lst.itemClicked.emit(lst.item(1))
    assert state.focus == (shown[1],)
    state.set_trails(())
    assert not browser.changed.isVisible()


def test_trail_steering_view_publishes_trails_that_follow_the_strength(qtbot, bridge, small_workspace):
    """The Generate tab asks each run for its activations at the map's hook point and puts
    the baseline and steered trails into AppState; moving the strength replaces the steered
    trail; a sweep publishes one trail per strength after the baseline."""
    from desktop_app.state import AppState
    from views.steering import SteeringView
    ws = small_workspace
    state = AppState(bridge)
    view = SteeringView(state)
    qtbot.addWidget(view)
    view.resize(1200, 700)
    view.show()
    with state.batch():
        state.set_workspace(ws.root)
        state.set_store(ws.store)
        state.set_hook(ws.hook)
        state.set_model(ws.model)
    gen = view.generate
    gen.max_tokens.setValue(4)
    state.set_steering([_concept(ws.hook, 2.0)])
    assert bridge.wait_idle(120)
    base, steer = state.trails
    assert (base.which, steer.which, base.hook) == ("baseline", "steered", ws.hook)
    want = generate_stream(CPU, ws.model, gen.prompt.text(), state.steering, max_new_tokens=4, trail_hook=ws.hook)
    np.testing.assert_allclose(steer.acts, want.trail.acts, atol=1e-5)
    gen.set_strength(6.0)
    assert bridge.wait_idle(120)
    assert state.trails[0] is base and state.trails[1] is not steer
    n = base.n_prompt
    np.testing.assert_allclose(state.trails[1].acts[:n] - base.acts[:n], 3 * (steer.acts[:n] - base.acts[:n]),
                               atol=1e-4)  # the concept added at the read hook: 6 = 3 x 2
    sweep = view.sweep
    view.tabs.setCurrentWidget(sweep)
    sweep.layers.setText(ws.hook.split(".")[1])
    sweep.strengths.setText("0, 4")
    sweep.prompts.setPlainText(PROMPT)
    sweep.tokens.setValue(2)
    sweep.run_button.click()
    assert bridge.wait_idle(120)
    assert [t.label for t in state.trails] == ["baseline", "strength 0", "strength 4"]
