"""Steering linked to the other views, in the real main window on the small demo workspace
(tiny llama, TopK SAE): latents lassoed in the latent scatter become interventions in one
action; a delta vector from two groups of rows (two selections, a selection against the
rest, two values of a label) equals numpy's mean difference of the store's rows and steers
the text (and a digits classifier's predictions); the "focused latent" row follows the
feature browser's focus; the recipe survives a session and `main.py steer --recipe`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PySide6.QtCore import Qt

import main
from desktop_app.state import LATENTS, ROWS
from engine.api import SteeringRecipe, generate_stream
from engine.features.stats import load_feature_stats
from engine.jobs import JobContext
from engine.models.digits_zoo import DigitsZooModel
from engine.store.activations import ActivationStore
from tests.conftest import wait_until

CPU = JobContext(device=torch.device("cpu"))


@pytest.fixture
def steering(open_window, qtbot, small_workspace):
    """The window on the small workspace, statistics and layouts loaded, the Steering dock
    raised and its first baseline generated."""
    window = open_window()
    assert window.open_workspace(small_workspace.root)
    wait_until(qtbot, lambda: window.state.stats and "latents/pca" in window.state.projections
               and not window.bridge.busy())
    window.docks["Steering"].raise_()
    gen = window.views["Steering"].generate
    gen.max_tokens.setValue(8)
    wait_until(qtbot, lambda: gen.isVisible() and gen.baseline is not None and gen.baseline.done
               and not window.bridge.busy())
    return window


def _lasso_box(window, name: str, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Lasso the box lo..hi in projection ``name``; the ids inside, by the layout's numbers."""
    scatter, layout = window.views["Scatter"], window.state.projections[name]
    scatter.set_projection_name(name)
    scatter.lasso(np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]]))
    xy = layout.xy
    inside = (xy[:, 0] > lo[0]) & (xy[:, 0] < hi[0]) & (xy[:, 1] > lo[1]) & (xy[:, 1] < hi[1])
    return np.sort(layout.ids[inside])


def _nearest_box(window, name: str, count: int, corner: int = 0) -> np.ndarray:
    """Lasso a box around the ``count`` points nearest to a corner of the layout (0: its
    lower left, 1: its upper right)."""
    xy = window.state.projections[name].xy
    ok = np.isfinite(xy).all(1)
    target = np.nanmin(xy, 0) if corner == 0 else np.nanmax(xy, 0)
    near = xy[ok][np.argsort(((xy[ok] - target) ** 2).sum(1))[:count]]
    pad = 1e-6 + 1e-3 * np.ptp(xy[ok], 0)
    return _lasso_box(window, name, near.min(0) - pad, near.max(0) + pad)


def _wait(window, qtbot) -> None:
    wait_until(qtbot, lambda: not window.bridge.busy(), 120)


def _store_rows(ws) -> np.ndarray:
    with ActivationStore.open(ws.store) as store:
        return store.acts(ws.hook).astype(np.float64)


def test_selection_steer_latents_become_interventions_in_one_action(steering, qtbot, small_workspace):
    window, state = steering, steering.state
    gen = window.views["Steering"].generate
    assert not gen.links.steer_selected.isEnabled()  # no latent selected yet
    before = list(state.steering)  # e.g. the focused-latent row: kept
    ids = _nearest_box(window, "latents/pca", 4)
    assert state.selection.kind == LATENTS and np.array_equal(state.selection.ids, ids) and 1 <= len(ids) <= 32
    button = gen.links.steer_selected
    assert button.isEnabled() and button.text() == f"Steer with {len(ids)} selected latent{'s' * (len(ids) > 1)}"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    _wait(window, qtbot)
    assert list(state.steering[:len(before)]) == before
    recipe = state.steering[len(before):]
    assert [item["latent"] for item in recipe] == ids.tolist()
    with ActivationStore.open(small_workspace.store) as store:  # the feature pass's own maxima
        top = load_feature_stats(store, small_workspace.sae_id).max
    for item in recipe:
        assert item["kind"] == "latent" and item["mode"] == "add" and item["hook"] == small_workspace.hook
        want = top[item["latent"]] if top[item["latent"]] > 0 else 10.0
        assert item["strength"] == pytest.approx(want, abs=0.02)
    assert gen.items.count() == len(state.steering) and gen.items.currentRow() == len(before)
    want = generate_stream(CPU, small_workspace.model, gen.prompt.text(), recipe=state.steering,
                           max_new_tokens=8).tokens
    assert gen.steered.done and gen.steered.tokens == want


def test_selection_steer_delta_of_a_selection_and_the_rest_equals_numpy_and_steers(steering, qtbot,
                                                                                  small_workspace):
    window, state = steering, steering.state
    gen = window.views["Steering"].generate
    delta = gen.delta
    rows = _store_rows(small_workspace)
    a = _nearest_box(window, "rows/pca", 200)
    assert state.selection.kind == ROWS and len(a) >= 100
    gen.sources.setCurrentWidget(delta)
    qtbot.mouseClick(delta.a.take, Qt.MouseButton.LeftButton)
    delta.b.kind.setCurrentText("the rest")
    qtbot.mouseClick(delta.add_button, Qt.MouseButton.LeftButton)
    _wait(window, qtbot)
    item = state.steering[-1]
    rest = np.setdiff1d(np.arange(len(rows)), a)
    want = rows[a].mean(0) - rows[rest].mean(0)
    assert item["kind"] == "direction" and item["hook"] == small_workspace.hook and item["strength"] == 1.0
    assert np.allclose(item["vector"], want, atol=1e-5)
    assert (item["groups"]["n_a"], item["groups"]["n_b"]) == (len(a), len(rest))
    assert item["groups"]["norm"] == pytest.approx(np.linalg.norm(want), rel=1e-4)
    assert f"({len(a)} rows)" in delta.info.text()

    b = _nearest_box(window, "rows/pca", 150, corner=1)  # B := a second selection
    qtbot.mouseClick(delta.b.take, Qt.MouseButton.LeftButton)
    assert delta.b.kind.currentText() == "a selection"
    qtbot.mouseClick(delta.add_button, Qt.MouseButton.LeftButton)
    _wait(window, qtbot)
    two = state.steering[-1]
    assert np.allclose(two["vector"], rows[a].mean(0) - rows[b].mean(0), atol=1e-5)
    assert (two["groups"]["n_a"], two["groups"]["n_b"]) == (len(a), len(b))

    gen.items.setCurrentRow(len(state.steering) - 1)
    gen.set_strength(3.0 * gen.range.value())  # a strong push: the steered text departs
    _wait(window, qtbot)
    assert gen.steered.done and gen.steered.kl > 0 and gen.steered.tokens != gen.baseline.tokens
    want_tokens = generate_stream(CPU, small_workspace.model, gen.prompt.text(), recipe=state.steering,
                                  max_new_tokens=8).tokens
    assert gen.steered.tokens == want_tokens


def test_selection_steer_delta_of_two_label_values_round_trips(steering, qtbot, small_workspace, tmp_path,
                                                               capsys):
    window, state = steering, steering.state
    gen = window.views["Steering"].generate
    delta = gen.delta
    assert delta.label.currentText() == "topic"
    delta.a.kind.setCurrentText("a label value")
    delta.b.kind.setCurrentText("a label value")
    va, vb = delta.a.value.currentData(), delta.b.value.currentData()
    assert va != vb
    qtbot.mouseClick(delta.add_button, Qt.MouseButton.LeftButton)
    _wait(window, qtbot)
    item = state.steering[-1]
    with ActivationStore.open(small_workspace.store) as store:
        topic = store.index("topic")
    rows = _store_rows(small_workspace)
    assert np.allclose(item["vector"], rows[topic == va].mean(0) - rows[topic == vb].mean(0), atol=1e-5)
    assert item["groups"]["n_a"] == int((topic == va).sum()) and item["name"].startswith("topic=")

    # the recipe with its direction: saved in the session, read back, and run by the CLI
    saved = window.save_session(tmp_path / "session.json")
    recipe = SteeringRecipe.load(saved).dicts()
    assert recipe[-1]["vector"] == pytest.approx(item["vector"]) and recipe[-1]["kind"] == "direction"
    assert main.main(["steer", "--model", small_workspace.model, "--recipe", str(saved), "--prompt", "The",
                      "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert "steered:  " in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    wrong = {"kind": "direction", "hook": small_workspace.hook, "strength": 1, "vector": [1, 2]}
    bad.write_text(json.dumps({"format": 2, "items": [wrong]}))
    assert main.main(["steer", "--model", small_workspace.model, "--recipe", str(bad), "--prompt", "The",
                      "--max-new-tokens", "2", "--device", "cpu"]) == 2
    assert "has 2 values but" in capsys.readouterr().err


def test_selection_steer_delta_changes_a_classifier_s_predictions(open_window, qtbot, digits_workspace):
    folder, store = digits_workspace
    window = open_window()
    window.docks["Steering"].raise_()
    assert window.open_store(store)
    gen = window.views["Steering"].generate
    wait_until(qtbot, lambda: gen.classifier == str(folder) and gen.predictions.result is not None
               and not window.bridge.busy(), 120)
    assert gen.pages.currentWidget() is gen.predictions
    unsteered = gen.predictions.result
    assert unsteered.changed == 0 and np.array_equal(unsteered.before, unsteered.after)
    delta = gen.delta
    wait_until(qtbot, lambda: delta.label.currentText() == "digit")
    delta.a.kind.setCurrentText("a label value")
    delta.b.kind.setCurrentText("a label value")
    delta.a.value.setCurrentIndex(delta.a.value.findData(3))
    delta.b.value.setCurrentIndex(delta.b.value.findData(5))
    qtbot.mouseClick(delta.add_button, Qt.MouseButton.LeftButton)
    wait_until(qtbot, lambda: bool(window.state.steering) and gen.predictions.result is not unsteered
               and not window.bridge.busy(), 60)
    item = window.state.steering[-1]
    with ActivationStore.open(store) as s:
        rows, digit, images = s.acts("blocks.1.hook_post").astype(np.float64), s.index("digit"), \
            s.dataset("images")[:]
    vector = rows[digit == 3].mean(0) - rows[digit == 5].mean(0)
    assert np.allclose(item["vector"], vector, atol=1e-5)
    gen.set_strength(3.0)
    wait_until(qtbot, lambda: not window.bridge.busy(), 60)
    r = gen.predictions.result
    # an independent oracle: the bare torch module with the direction added after block 1
    net = DigitsZooModel.load(folder).module
    x = torch.from_numpy(images).float().unsqueeze(1)
    step = torch.tensor(3.0 * vector, dtype=torch.float32).reshape(4, 8, 8)
    handle = net.blocks[1].register_forward_hook(lambda m, i, out: out + step)
    with torch.inference_mode():
        steered = net(x).argmax(1).numpy()
    handle.remove()
    with torch.inference_mode():
        plain = net(x).argmax(1).numpy()
    assert np.array_equal(r.before, np.bincount(plain, minlength=10))
    assert np.array_equal(r.after, np.bincount(steered, minlength=10))
    assert r.changed == int((plain != steered).sum()) > 0 and r.after[3] > r.before[3]
    assert r.accuracy_before == pytest.approx(float((plain == digit).mean()))
    assert gen.predictions.table.item(3, 3).text() == f"{int(r.after[3] - r.before[3]):+d}"


def test_selection_steer_follows_focus_keeping_other_interventions(steering, qtbot, open_window,
                                                                   small_workspace):
    window, state = steering, steering.state
    gen = window.views["Steering"].generate
    assert gen.links.follow.isChecked()  # on by default
    table = window.views["Features"].table
    first, second = (int(table.model().data(table.model().index(r, 0))) for r in (2, 5))
    state.set_focus(first)
    _wait(window, qtbot)
    (row,) = state.steering  # the focused-latent row, at strength 0 (it changes nothing yet)
    assert row["follows_focus"] and row["latent"] == first and row["strength"] == 0.0
    assert gen.steered.tokens == gen.baseline.tokens
    qtbot.mouseClick(gen.add_concept_button, Qt.MouseButton.LeftButton)  # the user's own intervention
    concept = dict(state.steering[1])
    gen.items.setCurrentRow(0)
    gen.set_strength(0.5 * row["range"])  # the slider at three quarters of its track
    _wait(window, qtbot)
    tick = gen.strength_slider.value()
    assert gen.steered.tokens == generate_stream(CPU, small_workspace.model, gen.prompt.text(),
                                                 recipe=state.steering, max_new_tokens=8).tokens
    gen.items.setCurrentRow(1)  # the concept chosen: a new focus brings the focused row back
    index = table.model().index(5, 0)  # clicking another latent in the browser
    table.scrollTo(index)
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualRect(index).center())
    assert state.focus == (second,)
    _wait(window, qtbot)
    assert len(state.steering) == 2 and state.steering[1] == concept
    moved = state.steering[0]
    assert moved["latent"] == second and moved["follows_focus"] and moved["name"] == f"focused latent {second}"
    assert moved["strength"] == pytest.approx(0.5 * moved["range"], abs=1e-3)
    assert gen.items.currentRow() == 0 and abs(gen.strength_slider.value() - tick) <= 1

    saved = window.save_session()  # the workspace's session file, restored as at launch
    try:
        other = open_window()
        assert other.open_workspace(small_workspace.root, restore=True)
        wait_until(qtbot, lambda: bool(other.state.steering) and not other.bridge.busy(), 60)
        assert other.state.steering == state.steering and other.state.focus == (second,)
        assert other.views["Steering"].generate.links.follow.isChecked()
    finally:
        saved.unlink()
