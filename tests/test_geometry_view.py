"""The geometry view with the real engine bridge on real stores and digits-zoo models: a
3 x 3 layer matrix drawn from the engine's values (one cell checked against a Gram-matrix
CKA written here), a real mouse click on a cell filling every measure, the matched
neurons and stitching, the pruning tab's accuracy table, histograms and flips written to
and highlighted from AppState's selection, NaN cells in grey, a one-hook store, no
workspace, a failing job's sentence, figure export and the session round trip."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtTest import QTest

from desktop_app.bridge import EngineBridge
from desktop_app.export import export_figure
from desktop_app.state import LATENTS, ROWS, AppState, Selection
from engine.capture import capture
from engine.geometry import MEASURES, LayerMatrix, compare, layer_matrix
from engine.geometry.pruning import compare_pruned, save_comparison
from engine.jobs import JobContext
from engine.models.digits_zoo import ZooConfig, prune, save, train
from engine.store.activations import ActivationStore, StoreMeta
from views.geometry import GeometryView

CPU = torch.device("cpu")
HOOKS = ["blocks.0.hook_post", "blocks.1.hook_post", "logits"]
DENSE = ZooConfig(arch="mlp", width=16, depth=2, seed=0, epochs=4)
OTHER = ZooConfig(arch="mlp", width=12, depth=2, seed=1, epochs=4)
CORRUPTIONS = [("none", 0.0), ("noise", 0.5)]


# ---------------------------------------------------------------- fixtures
def write_store(path: Path, acts: dict[str, np.ndarray], model_id: str = "synthetic") -> Path:
    """A float32 store of the given rows per hook, one row per sample."""
    n = len(next(iter(acts.values())))
    meta = StoreMeta(model_id=model_id, model_hash="0", source_id="synthetic", hooks=tuple(acts),
                     dims={h: a.shape[1] for h, a in acts.items()}, dtype="float32")
    with ActivationStore.create(path, meta) as store:
        r = np.arange(n, dtype=np.int32)
        store.append({h: a.astype(np.float32) for h, a in acts.items()}, r, r, np.zeros(n, np.int32))
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace folder: two trained zoo MLPs, two magnitude-pruned variants of the first,
    captures of both dense models over digits:test in stores/, and a one-hook store."""
    root = tmp_path_factory.mktemp("geometry_ws")
    ctx = JobContext(device=CPU)
    models = {}
    for cfg in (DENSE, OTHER):
        module, metrics = train(cfg)
        models[cfg.name] = save(module, cfg, metrics, root / "models" / cfg.name)
    from engine.models.digits_zoo import DigitsZooModel
    dense = DigitsZooModel.load(models[DENSE.name])
    for sparsity in (0.5, 0.9):
        p = prune(dense, "magnitude", sparsity)
        p.save(root / "models" / p.cfg.name)
    capture(ctx, str(models[DENSE.name]), "digits:test", HOOKS, root / "stores" / "a_dense.h5", dtype="float32")
    capture(ctx, str(models[OTHER.name]), "digits:test", HOOKS, root / "stores" / "b_other.h5", dtype="float32")
    rng = np.random.default_rng(0)
    write_store(root / "stores" / "c_one_hook.h5", {"only": rng.normal(size=(60, 5))})
    return root


def open_view(qtbot, bridge, workspace: Path | None) -> tuple[AppState, GeometryView]:
    state = AppState(bridge)
    if workspace is not None:
        state.set_workspace(workspace)
    view = GeometryView(state)
    qtbot.addWidget(view)
    view.resize(1300, 800)
    view.show()
    qtbot.waitExposed(view)
    assert bridge.wait_idle(60)  # the matrix Compare computes when first shown
    return state, view


def compute(view: GeometryView, bridge: EngineBridge, a: Path, b: Path, measure: str = "linear_cka",
            hooks_a: list[str] | None = None, hooks_b: list[str] | None = None) -> None:
    tab = view.compare
    tab.picker_a.set_path(a, hooks_a)
    tab.picker_b.set_path(b, hooks_b)
    tab.measure.setCurrentText(measure)
    QTest.mouseClick(tab.compute, Qt.MouseButton.LeftButton)
    assert bridge.wait_idle(60)


def gram_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA through centred Gram matrices (HSIC form), the test's own oracle."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((kx * ky).sum() / np.sqrt((kx * kx).sum() * (ky * ky).sum()))


def pixels(image: QImage) -> np.ndarray:
    """(h, w, 3) uint8 copy of an image's colours."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB32)  # kept alive while read
    arr = np.frombuffer(rgb.constBits(), np.uint8).reshape(rgb.height(), rgb.bytesPerLine() // 4, 4)
    return arr[:, :rgb.width(), :3].copy()


def non_white(image: QImage) -> int:
    return int((pixels(image) < 245).any(-1).sum())


def paint(view: GeometryView, dpi: int, size: tuple[int, int] = (900, 600)) -> QImage:
    """``paint_figure`` into a white image of ``dpi`` dots per inch, as the exporter does."""
    image = QImage(*size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.white)
    image.setDotsPerMeterX(round(dpi / 0.0254))
    image.setDotsPerMeterY(round(dpi / 0.0254))
    painter = QPainter(image)
    view.paint_figure(painter, QRectF(0, 0, *size))
    painter.end()
    return image


# ---------------------------------------------------------------- the layer matrix
def test_layer_matrix_fills_the_heatmap(qtbot, bridge, ws) -> None:
    state, view = open_view(qtbot, bridge, ws)
    tab = view.compare
    assert tab.picker_a.combo.count() == 3 and tab.picker_a.hooks() == HOOKS
    assert "digits-zoo:mlp-w16-d2-s0" in tab.picker_a.info.text()
    a, b = ws / "stores" / "a_dense.h5", ws / "stores" / "b_other.h5"
    compute(view, bridge, a, b)
    expected = layer_matrix(JobContext(device=CPU), a, HOOKS, b, HOOKS, measure="linear_cka")
    image = tab.heatmap.image.image
    assert image.shape == (3, 3)
    np.testing.assert_array_equal(image, expected.values)
    with ActivationStore.open(a) as sa, ActivationStore.open(b) as sb:
        ref = gram_cka(sa.acts(HOOKS[1]).astype(np.float64), sb.acts(HOOKS[2]).astype(np.float64))
    assert image[1, 2] == pytest.approx(ref, abs=1e-6)
    assert [t.toPlainText() for t in tab.heatmap.texts][:3] == [f"{v:.2f}" for v in expected.values[0]]
    ticks = tab.heatmap.getAxis("bottom")._tickLevels[0]
    assert [label for _, label in ticks] == ["0.post", "1.post", "logits"]
    assert tab.heatmap.bar.levels() == (0.0, 1.0)


def test_clicking_a_cell_fills_every_measure_matching_and_stitching(qtbot, bridge, ws) -> None:
    state, view = open_view(qtbot, bridge, ws)
    tab = view.compare
    a, b = ws / "stores" / "a_dense.h5", ws / "stores" / "b_other.h5"
    compute(view, bridge, a, b)
    scene_pos = tab.heatmap.cell_scene_pos(1, 2)
    widget_pos = tab.heatmap.mapFromScene(scene_pos)
    QTest.mouseClick(tab.heatmap.viewport(), Qt.MouseButton.LeftButton, pos=widget_pos)
    assert tab.cell == (1, 2)
    assert bridge.wait_idle(60)
    want = compare(JobContext(device=CPU), f"{a}:{HOOKS[1]}", f"{b}:{HOOKS[2]}", list(MEASURES))
    table = {tab.cell_table.item(r, 0).text(): tab.cell_table.item(r, 1).text()
             for r in range(tab.cell_table.rowCount())}
    assert set(table) == set(want.values)
    for name, value in want.values.items():
        assert table[name] == ("NaN" if not np.isfinite(value) else f"{value:.4f}")
    assert float(table["linear_cka"]) == pytest.approx(tab.matrix.values[1, 2], abs=1e-4)
    spots = tab.match_plot.getPlotItem().listDataItems()[0]
    corr = np.sort(np.asarray(tab.match.corr))[::-1]
    np.testing.assert_allclose(spots.data["y"], corr)
    assert len(corr) == min(16, 10)
    # both stores come from zoo classifiers: stitch B's logits with A's block 1
    assert tab.stitch_button.isEnabled()
    QTest.mouseClick(tab.stitch_button, Qt.MouseButton.LeftButton)
    assert bridge.wait_idle(60)
    r = tab.stitched
    assert r is not None and (r.hook_a, r.hook_b) == (HOOKS[1], HOOKS[2])
    assert 0 <= r.accuracy_stitched <= 1 and r.accuracy_b > 0.5
    assert f"{r.accuracy_b:.1%}" in tab.stitch_label.text()
    tab.select_cell(0, 0)  # the public route gives the same
    assert tab.cell == (0, 0) and tab.stitched is None


def test_compare_computes_its_matrix_when_first_shown(qtbot, bridge, ws) -> None:
    """A store with several hook points in A and B: the layer matrix is there without a click."""
    _, view = open_view(qtbot, bridge, ws)
    tab = view.compare
    hooks = tab.picker_a.hooks()
    assert len(hooks) > 1 and tab.matrix is not None
    assert tab.matrix.hooks_a == hooks and tab.matrix.values.shape == (len(hooks), len(tab.picker_b.hooks()))
    assert tab.sources.store_a == tab.picker_a.path() and tab.sources.store_b == tab.picker_b.path()


def test_nan_cells_are_grey_and_a_one_hook_store_gives_one_cell(qtbot, bridge, ws) -> None:
    state, view = open_view(qtbot, bridge, ws)
    tab = view.compare
    values = np.array([[np.nan, 0.5], [0.25, np.nan]])
    tab.set_matrix(LayerMatrix(values, ["h0", "h1"], ["g0", "g1"], "linear_cka", 10))
    qtbot.wait(50)
    grab = tab.heatmap.grab().toImage()
    vb = tab.heatmap.getPlotItem().vb

    def pixel(x: float, y: float) -> QColor:  # away from the cell's centred text
        return grab.pixelColor(tab.heatmap.mapFromScene(vb.mapViewToScene(QPointF(x, y))))
    grey, coloured = pixel(-0.3, -0.3), pixel(0.7, -0.3)
    assert abs(grey.red() - 190) < 12 and abs(grey.green() - 190) < 12 and abs(grey.blue() - 190) < 12
    assert coloured != grey
    assert "2 cells undefined" in tab.status.text()
    tab.set_matrix(LayerMatrix(np.full((2, 2), np.nan), ["h0", "h1"], ["g0", "g1"], "rsa_pearson", 10))
    assert tab.heatmap.bar.levels() == (-1.0, 1.0)
    one = ws / "stores" / "c_one_hook.h5"
    compute(view, bridge, one, one)
    assert tab.heatmap.image.image.shape == (1, 1)
    assert tab.heatmap.image.image[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert not tab.stitch_button.isEnabled()


def test_failing_job_shows_its_sentence(qtbot, bridge, ws, tmp_path) -> None:
    state, view = open_view(qtbot, bridge, ws)
    tab = view.compare
    doomed = write_store(tmp_path / "doomed.h5", {"x": np.ones((20, 3))})
    tab.picker_a.set_path(doomed)
    tab.picker_b.set_path(doomed)
    doomed.unlink()
    QTest.mouseClick(tab.compute, Qt.MouseButton.LeftButton)
    assert bridge.wait_idle(30)
    assert "doomed.h5" in tab.status.text() and "b00020" in tab.status.styleSheet()
    assert tab.matrix is None and tab.heatmap.image.image is None
    assert tab.hint.isVisible()
    pruning = view.pruning  # a "variant" that is another dense model: the engine refuses it
    pruning.set_dense(ws / "models" / DENSE.name)
    pruning.set_pruned([str(ws / "models" / OTHER.name)])
    QTest.mouseClick(pruning.compare, Qt.MouseButton.LeftButton)
    assert bridge.wait_idle(30)
    assert "was not pruned from" in pruning.status.text() and pruning.result is None


def test_choices_survive_a_new_active_store_and_outside_cancelling(qtbot, bridge, ws) -> None:
    state, view = open_view(qtbot, bridge, ws)
    tab = view.compare
    shown, sources = tab.matrix, tab.sources  # computed when the tab was first shown
    tab.picker_a.set_path(ws / "stores" / "b_other.h5", HOOKS[:1])
    state.set_store(ws / "stores" / "c_one_hook.h5")
    assert tab.picker_a.path() == ws / "stores" / "b_other.h5" and tab.picker_a.hooks() == HOOKS[:1]
    gate = threading.Event()
    bridge.submit("hold the engine", lambda ctx: gate.wait(10))
    QTest.mouseClick(tab.compute, Qt.MouseButton.LeftButton)  # queued behind the holder
    assert tab.progress.isVisibleTo(view)
    bridge.cancel(tab.jobs.latest.job("matrix"))  # as the jobs panel's cancel button does
    gate.set()
    assert bridge.wait_idle(30)
    assert not tab.progress.isVisibleTo(view) and tab.status.text() == "Cancelled."
    assert tab.matrix is shown and tab.sources is sources  # the last matrix stays, with its own stores


def test_no_workspace(qtbot, bridge) -> None:
    state, view = open_view(qtbot, bridge, None)
    tab = view.compare
    assert tab.picker_a.path() is None and tab.picker_a.hooks() == []
    QTest.mouseClick(tab.compute, Qt.MouseButton.LeftButton)
    assert "Choose a store" in tab.status.text()
    QTest.mouseClick(view.pruning.compare, Qt.MouseButton.LeftButton)
    assert "dense model" in view.pruning.status.text()
    assert non_white(paint(view, 96, (400, 300))) > 0  # the hint text


# ---------------------------------------------------------------- pruning
@pytest.fixture(scope="module")
def pruning_result(ws):
    models = ws / "models"
    return compare_pruned(JobContext(device=CPU), models / DENSE.name,
                          [models / f"{DENSE.name}-magnitude50", models / f"{DENSE.name}-magnitude90"],
                          corruptions=CORRUPTIONS)


def run_pruning(qtbot, bridge, ws) -> tuple[AppState, GeometryView]:
    state, view = open_view(qtbot, bridge, ws)
    view.tabs.setCurrentWidget(view.pruning)
    tab = view.pruning
    assert tab.dense.currentText() == DENSE.name
    assert sorted(Path(f).name for f in tab.pruned_folders()) == [
        f"{DENSE.name}-magnitude50", f"{DENSE.name}-magnitude90"]
    for kind, (box, _spin) in tab.corruption_boxes.items():
        box.setChecked(kind in dict(CORRUPTIONS))
    tab.corruption_boxes["noise"][1].setValue(0.5)
    QTest.mouseClick(tab.compare, Qt.MouseButton.LeftButton)
    assert bridge.wait_idle(60)
    assert tab.result is not None, tab.status.text()
    return state, view


def test_pruning_tab_table_histograms_and_flips(qtbot, bridge, ws, pruning_result) -> None:
    state, view = run_pruning(qtbot, bridge, ws)
    tab, want = view.pruning, pruning_result
    assert tab.accuracy.rowCount() == 3 and tab.accuracy.columnCount() == 2
    assert [tab.accuracy.verticalHeaderItem(i).text() for i in range(3)] == want.models
    for i, m in enumerate(want.models):
        for j, c in enumerate(want.corruptions):
            assert tab.accuracy.item(i, j).text() == f"{want.accuracy[(m, c)]:.1%}"
    tab.model_combo.setCurrentText("magnitude90")
    tab.corruption_combo.setCurrentText("noise:0.5")
    tab.quantity.setCurrentText("margin (logit)")
    curves = tab.hist.getPlotItem().listDataItems()
    assert len(curves) == 2
    for curve, model in zip(curves, ("dense", "magnitude90"), strict=True):
        assert curve.yData.sum() == len(want.geometry[(model, "noise:0.5")].margin)
    flips = want.flips[("magnitude90", "noise:0.5")]
    assert len(flips) > 0 and tab.flip_list.count() == len(flips)
    QTest.mouseClick(tab.select_all, Qt.MouseButton.LeftButton)
    assert state.selection.kind == ROWS
    np.testing.assert_array_equal(state.selection.ids, flips)
    assert state.selection.how == "flips of magnitude90 under noise:0.5"
    assert len(tab.flip_list.selectedItems()) == len(flips)
    tab.flip_list.clearSelection()
    tab.flip_list.item(0).setSelected(True)  # picking one flip in the list
    np.testing.assert_array_equal(state.selection.ids, flips[:1])


def test_a_selection_made_elsewhere_highlights_flips(qtbot, bridge, ws, pruning_result) -> None:
    state, view = run_pruning(qtbot, bridge, ws)
    tab = view.pruning
    tab.model_combo.setCurrentText("magnitude90")
    tab.corruption_combo.setCurrentText("none")
    flips = pruning_result.flips[("magnitude90", "none")]
    assert len(flips) >= 2
    state.set_selection(Selection(ROWS, [flips[0], flips[-1], 10**9], how="lasso in scatter"))
    chosen = sorted(item.data(Qt.ItemDataRole.UserRole) for item in tab.flip_list.selectedItems())
    assert chosen == sorted({int(flips[0]), int(flips[-1])})
    assert state.selection.how == "lasso in scatter"  # highlighting writes nothing back
    assert "2 in the selection" in tab.flips_title.text()
    state.set_selection(Selection(LATENTS, [0, 1]))
    assert tab.flip_list.selectedItems() == []


def test_a_saved_comparison_opens(qtbot, bridge, ws, tmp_path, pruning_result) -> None:
    state, view = open_view(qtbot, bridge, ws)
    path = save_comparison(pruning_result, tmp_path / "pruning.npz")
    view.pruning.open_comparison(path)
    assert bridge.wait_idle(30)
    got = view.pruning.result
    assert got is not None and got.models == pruning_result.models
    assert view.pruning.accuracy.rowCount() == 3 and view.pruning.model_combo.count() == 2
    view.pruning.open_comparison(tmp_path / "missing.npz")
    assert bridge.wait_idle(30)
    assert "missing.npz" in view.pruning.status.text() and view.pruning.result is None


# ---------------------------------------------------------------- export and session
def test_paint_figure_and_export(qtbot, bridge, ws, tmp_path, pruning_result) -> None:
    state, view = open_view(qtbot, bridge, ws)
    compute(view, bridge, ws / "stores" / "a_dense.h5", ws / "stores" / "b_other.h5")
    view.compare.select_cell(2, 2)
    assert bridge.wait_idle(60)
    image = paint(view, 96)
    assert non_white(image) > 0.2 * 900 * 600
    # Qt replays pyqtgraph's cached axis pictures scaled by the device's dpi / 96: the
    # figure must not move when the exporter asks for 150 dpi
    diff = np.abs(pixels(paint(view, 150)).astype(int) - pixels(image).astype(int)).max(-1)
    assert (diff > 60).mean() < 0.002
    for suffix in ("png", "svg", "pdf"):
        out = export_figure(view, tmp_path / f"geometry.{suffix}", 800, 600)
        assert out.stat().st_size > 1000
    view.tabs.setCurrentWidget(view.pruning)
    view.pruning.set_result(pruning_result)
    image = paint(view, 150)
    assert non_white(image) > 0.02 * 900 * 600
    assert non_white(image.copy(0, 450, 900, 150)) > 100  # the accuracy table's text


def test_session_round_trip(qtbot, bridge, ws) -> None:
    state, view = open_view(qtbot, bridge, ws)
    view.compare.picker_a.set_path(ws / "stores" / "b_other.h5", HOOKS[:2])
    view.compare.picker_b.set_path(ws / "stores" / "a_dense.h5", HOOKS[1:])
    view.compare.measure.setCurrentText("rsa_spearman")
    view.pruning.corruption_boxes["blur"][0].setChecked(False)
    view.tabs.setCurrentWidget(view.pruning)
    saved = view.session_state()
    _, other = open_view(qtbot, bridge, ws)
    other.restore_session(saved)
    assert other.session_state() == saved
    assert other.compare.picker_a.hooks() == HOOKS[:2] and other.current() is other.pruning
    other.restore_session({"compare": {"a": {"path": str(ws / "gone.h5")}}, "tab": "nonsense"})
    assert other.compare.picker_a.path() == ws / "stores" / "b_other.h5"
