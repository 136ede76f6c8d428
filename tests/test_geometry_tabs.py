"""The geometry view's Kernel and Dictionaries tabs and Compare on a row selection, on
real stores of the tiny llama: the kernel curves drawn are the engine's; SAE dictionary
matching through the real window recovers a permuted copy of an SAE, and choosing a pair
makes SAE A active and focuses its latent in the feature browser; a row selection of the
active store restricts Compare to those rows (and says so) until it is cleared."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from desktop_app.state import ROWS, AppState, Selection
from engine.capture import capture
from engine.geometry import kernel_curves, layer_matrix
from engine.jobs import JobContext
from engine.sae.io import load_sae, save_sae
from tests.conftest import wait_until
from tests.test_geometry_view import write_store
from views.geometry import GeometryView

CPU = torch.device("cpu")
HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(3)]


@pytest.fixture(scope="module")
def llama_ws(tiny_llama, tmp_path_factory) -> Path:
    """A workspace whose one store holds the tiny llama's three layers over 1,200 demo
    tokens (label 'topic'), and a store without labels."""
    root = tmp_path_factory.mktemp("geometry_tabs")
    capture(JobContext(device=CPU), str(tiny_llama), "demo", HOOKS, root / "stores" / "llama.h5",
            max_tokens=1200, ctx_len=64, dtype="float32")
    write_store(root / "stores" / "unlabelled.h5", {"x": np.random.default_rng(0).normal(size=(40, 4))})
    return root


def test_kernel_view_draws_the_engines_curve_per_hook(qtbot, bridge, llama_ws) -> None:
    state = AppState(bridge)
    state.set_workspace(llama_ws)
    view = GeometryView(state)
    qtbot.addWidget(view)
    view.tabs.setCurrentWidget(view.kernel)
    tab, store = view.kernel, llama_ws / "stores" / "llama.h5"
    tab.picker.set_path(store)
    assert tab.picker.hooks() == HOOKS and [tab.label.itemText(i) for i in range(tab.label.count())] == ["topic"]
    tab.max_rows.setValue(300)
    QTest.mouseClick(tab.compute, Qt.MouseButton.LeftButton)
    assert bridge.wait_idle(60)
    expected = kernel_curves(JobContext(device=CPU), store, HOOKS, "topic", max_rows=300)
    curves = [item for item in tab.plot.getPlotItem().listDataItems()]
    assert len(curves) == 3 and tab.result.n_rows == 300
    for item, hook in zip(curves, HOOKS, strict=True):
        np.testing.assert_array_equal(item.xData, expected.curves[hook].components)
        np.testing.assert_allclose(item.yData, expected.curves[hook].errors)
    assert expected.curves[HOOKS[0]].errors[0] <= 1 and "300 rows of llama.h5" in tab.status.text()
    tab.picker.set_path(llama_ws / "stores" / "unlabelled.h5")  # no labels: a sentence, no job
    QTest.mouseClick(tab.compute, Qt.MouseButton.LeftButton)
    assert "has no per-row labels" in tab.status.text() and not bridge.busy()


def test_selection_compare_restricts_to_the_selected_rows(open_window, qtbot, llama_ws) -> None:
    window = open_window()
    store = llama_ws / "stores" / "llama.h5"
    assert window.open_store(store)
    window.docks["Geometry"].raise_()
    geometry, state = window.views["Geometry"], window.state
    wait_until(qtbot, lambda: geometry.isVisible())
    tab = geometry.compare
    tab.picker_a.set_path(store, HOOKS)
    tab.picker_b.set_path(store, HOOKS)
    QTest.mouseClick(tab.compute, Qt.MouseButton.LeftButton)
    wait_until(qtbot, lambda: tab.matrix is not None and not window.bridge.busy())
    every = tab.matrix.values.copy()
    assert tab.status.text().startswith("linear_cka over 1,200 rows")
    ids = np.arange(0, 1200, 4)
    state.set_selection(Selection(ROWS, ids, "test"))
    wait_until(qtbot, lambda: tab.sources.rows is not None and tab.matrix is not None
               and tab.matrix.n_rows == 300 and not window.bridge.busy())
    ctx = JobContext(device=CPU)
    np.testing.assert_array_equal(tab.matrix.values, layer_matrix(ctx, store, HOOKS, store, HOOKS, rows=ids).values)
    assert not np.allclose(tab.matrix.values, every)
    assert "on 300 selected rows of llama.h5" in tab.status.text()
    tab.select_cell(0, 2)
    wait_until(qtbot, lambda: tab.comparison is not None and tab.match is not None and not window.bridge.busy())
    assert tab.comparison.n_rows == 300
    assert tab.comparison.values["linear_cka"] == pytest.approx(tab.matrix.values[0, 2], abs=1e-9)
    state.clear_selection()
    wait_until(qtbot, lambda: tab.sources.rows is None and tab.matrix is not None and not window.bridge.busy())
    np.testing.assert_array_equal(tab.matrix.values, every)
    assert "selected" not in tab.status.text()


def _permuted_copy(sae_dir: Path, out: Path, seed: int = 0) -> np.ndarray:
    """Save ``sae_dir``'s SAE with its latents shuffled: latent k of the copy is latent
    perm[k] of the original. Returns perm."""
    sae = load_sae(sae_dir)
    d_sae = sae.cfg.d_sae
    perm = np.random.default_rng(seed).permutation(d_sae)
    index = torch.from_numpy(perm)
    with torch.no_grad():
        for t in sae.state_dict(keep_vars=True).values():
            for dim, size in enumerate(t.shape):
                if size == d_sae:
                    t.copy_(t.index_select(dim, index))
    save_sae(sae, out)
    return perm


def test_dictionary_match_of_a_permuted_copy_focuses_latent_a(open_window, qtbot, small_workspace, tmp_path) -> None:
    """A = a shuffled copy of the workspace's SAE (not active, no statistics), B = the SAE:
    every latent k of A matches latent perm[k] at cosine 1; choosing a pair makes A the
    active SAE (its statistics computed), focuses latent k in the feature browser, and
    both latents' top contexts are the same rows."""
    root = Path(shutil.copytree(small_workspace.root, tmp_path / "ws"))
    original = root / "saes" / small_workspace.sae.name
    shuffled = root / "saes" / "shuffled"
    perm = _permuted_copy(original, shuffled)
    window = open_window()
    assert window.open_workspace(root)
    state = window.state
    wait_until(qtbot, lambda: state.stats and not window.bridge.busy())
    window.docks["Geometry"].raise_()
    geometry = window.views["Geometry"]
    geometry.tabs.setCurrentWidget(geometry.dictionary)
    tab = geometry.dictionary
    assert tab.picker_a.path() == original and tab.picker_b.path() == shuffled  # active SAE first
    tab.picker_a.set_path(shuffled)
    tab.picker_b.set_path(original)
    QTest.mouseClick(tab.run_button, Qt.MouseButton.LeftButton)
    wait_until(qtbot, lambda: tab.result is not None and not window.bridge.busy())
    r = tab.result
    np.testing.assert_array_equal(r.hungarian_b, perm[r.hungarian_a])
    assert r.hungarian_cos.min() > 0.9999 and r.share_matched == 1.0
    assert tab.table.rowCount() == len(perm)
    cos = [tab.table.item(i, 2).value for i in range(tab.table.rowCount())]
    assert cos == sorted(cos, reverse=True)
    browser = window.views["Features"]
    latent = int(np.argmax(browser.data_.stats.density[perm]))  # the copy's latent of a busy original one
    row = next(i for i in range(tab.table.rowCount()) if tab.table.item(i, 0).value == latent)
    tab.table.setCurrentCell(row, 2)
    wait_until(qtbot, lambda: state.focus == (latent,) and state.stats == "shuffled"
               and browser.data_ is not None and not window.bridge.busy(), 90)
    assert state.sae == shuffled and browser.data_.stats.sae_id == "shuffled"
    text_a, text_b = tab.view_a.toPlainText(), tab.view_b.toPlainText()
    assert f"latent {latent} of shuffled" in text_a and f"latent {perm[latent]} of {original.name}" in text_b
    assert text_a.split("\n", 1)[1] == text_b.split("\n", 1)[1]  # the same contexts, the same values
