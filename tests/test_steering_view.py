"""The steering view on the small demo workspace (tiny llama, TopK SAE) with the real engine
bridge: baseline and steered text from the focused latent, sliders that replace the stale
generation (only the last value's text is ever shown), concept vectors and the layer
slider, the sweep heatmap (cancellable, clickable), the injection table, typed input
errors, session round trip and figure export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter

from desktop_app.bridge import EngineBridge
from desktop_app.state import AppState
from engine.errors import LatentLabError
from engine.features.stats import load_feature_stats
from engine.jobs import JobContext
from engine.steering.injection import InjectionResult
from engine.steering.recipe import generate_stream
from engine.steering.sweep import SweepResult
from engine.store.activations import ActivationStore
from views.steering import SteeringView
from views.steering.common import printable


@pytest.fixture(scope="module")
def bridge():
    b = EngineBridge(device="cpu")
    yield b
    b.shutdown()


@pytest.fixture(scope="module")
def top_latent(small_workspace) -> int:
    with ActivationStore.open(small_workspace.store) as store:
        return int(load_feature_stats(store, small_workspace.sae_id).max.argmax())


def _open(qtbot, bridge, ws, focus: int | None = None, follow: bool = False) -> tuple[AppState, SteeringView]:
    state = AppState(bridge)
    view = SteeringView(state)
    view.generate.links.follow.setChecked(follow)
    qtbot.addWidget(view)
    view.resize(1200, 700)
    view.show()
    with state.batch():
        state.set_workspace(ws.root)
        state.set_store(ws.store)
        state.set_hook(ws.hook)
        state.set_sae(ws.sae)
        state.set_stats(ws.sae_id)
        if focus is not None:
            state.set_focus(focus)
        state.set_model(ws.model)
    view.generate.max_tokens.setValue(10)
    assert bridge.wait_idle(60)
    return state, view


def _expected(ws, recipe, tokens: int = 10) -> list[int]:
    return generate_stream(JobContext(device=torch.device("cpu")), ws.model, "I went outside and saw the",
                           recipe=recipe, max_new_tokens=tokens).tokens


def test_focused_latent_steers_next_to_the_baseline(qtbot, bridge, small_workspace, top_latent):
    state, view = _open(qtbot, bridge, small_workspace, focus=top_latent)
    gen = view.generate
    assert gen.baseline is not None and gen.baseline.done and len(gen.baseline.tokens) == 10
    assert gen.hooks and small_workspace.hook in gen.hooks
    gen.add_latent.click()
    assert bridge.wait_idle(60)
    (item,) = state.steering
    assert item["kind"] == "latent" and item["latent"] == top_latent and item["strength"] > 0
    assert gen.items.count() == 1 and gen.items.currentRow() == 0
    gen.set_strength(40.0)
    assert bridge.wait_idle(60)
    s = gen.steered
    assert s is not None and s.done and s.tokens == _expected(small_workspace, state.steering)
    d = gen.divergence()
    assert d == next((i for i, (a, b) in enumerate(zip(gen.baseline.tokens, s.tokens, strict=False)) if a != b), -1)
    assert d >= 0 and "background:#ffd59e" in gen.html["steered"]
    assert "diverges at new token" in gen.comparison.text() and s.kl > 0
    gen.mode.setCurrentText("mean-ablate")  # the latent held at its mean over the store
    assert bridge.wait_idle(60)
    assert state.steering[0]["mode"] == "mean-ablate" and not gen.strength_slider.isEnabled()
    assert gen.steered.tokens == _expected(small_workspace, state.steering)
    gen.items.item(0).setCheckState(Qt.CheckState.Unchecked)  # switched off: the baseline again
    assert bridge.wait_idle(60)
    assert state.steering[0]["enabled"] is False and gen.steered.tokens == gen.baseline.tokens


def test_slider_moves_replace_the_stale_generation(qtbot, bridge, small_workspace, top_latent):
    state, view = _open(qtbot, bridge, small_workspace, focus=top_latent)
    gen = view.generate
    gen.add_latent.click()
    assert bridge.wait_idle(60)
    gen.max_tokens.setValue(30)
    assert bridge.wait_idle(60)
    shown: list[tuple[int, list[int]]] = []
    gen.text_shown.connect(lambda which, n, done: which == "steered" and shown.append((n, list(gen.steered.tokens))))
    for tick in (100, 150, 220, 300, 390):
        gen.strength_slider.setValue(tick)
        after_last_move = len(shown)
        qtbot.wait(5)
    final = state.steering[0]["strength"]
    assert final == pytest.approx(item_range(state) * (390 / 400 * 2 - 1), abs=1e-3)
    assert bridge.wait_idle(60)
    want = _expected(small_workspace, state.steering, 30)
    assert gen.steered.done and gen.steered.tokens == want
    last = [tokens for n, tokens in shown[after_last_move:]]
    assert last and all(want[:len(t)] == t for t in last)  # after the last move: only its own text, growing
    stale = [job for job in bridge.jobs.values() if job.title == "steered continuation"][-5:]
    assert sum(1 for job in stale if job.state == "cancelled") >= 1  # a stale generation was cut short


def item_range(state: AppState) -> float:
    return float(state.steering[0]["range"])


def test_concept_vector_layer_slider_and_sweep(qtbot, bridge, small_workspace, tmp_path):
    state, view = _open(qtbot, bridge, small_workspace)
    gen = view.generate
    gen.positive.setPlainText("the ocean and the sea\nwaves on the water")
    gen.negative.setPlainText("the office and the desk\nthe city traffic")
    gen.add_concept_button.click()
    (item,) = state.steering
    assert item["kind"] == "concept" and item["hook"] in gen.hooks and item["strength"] == 2.0
    layers = [h for h in gen.hooks if h.endswith("hook_resid_post")]
    gen.layer_slider.setValue(0)
    gen.layer_slider.setValue(len(layers) - 1)
    assert state.steering[0]["hook"] == layers[-1]
    assert bridge.wait_idle(60)
    assert gen.steered.tokens == _expected(small_workspace, state.steering)

    sweep = view.sweep
    view.tabs.setCurrentWidget(sweep)
    assert sweep.layers.text()  # filled in from the model's layers
    sweep.layers.setText(", ".join(h.split(".")[1] for h in layers[:2]))
    sweep.strengths.setText("-4, 0, 4")
    sweep.prompts.setPlainText("I went outside and saw the\nThe best place to relax is the")
    sweep.tokens.setValue(3)
    partials: list = []
    sweep.heatmap.image.sigImageChanged.connect(lambda: partials.append(1))
    sweep.run_button.click()
    assert bridge.wait_idle(120)
    r = sweep.result
    assert r is not None and r.hooks == layers[:2] and r.strengths == [-4.0, 0.0, 4.0]
    assert torch.isfinite(torch.as_tensor(r.concept)).all() and r.kl[:, 1] == pytest.approx([0, 0], abs=1e-6)
    assert len(partials) >= 2  # the heatmap filled in as cells finished
    assert sweep.heatmap.values.shape == (2, 3)
    sweep.save_results(tmp_path / "sweep.json")
    back = SweepResult.load(tmp_path / "sweep.json")
    assert back.hooks == r.hooks and np.allclose(back.concept, r.concept) and np.allclose(back.kl, r.kl)
    sweep.use_cell(1, 2)
    assert state.steering[0]["hook"] == layers[1] and state.steering[0]["strength"] == 4.0

    sweep.run_button.click()  # a second run, cancelled: no result, a message
    qtbot.waitUntil(lambda: any(j.title.startswith("steering sweep") and j.state == "running"
                                for j in bridge.jobs.values()), timeout=20000)
    sweep.cancel_button.click()
    assert bridge.wait_idle(60)
    assert sweep.result is None and sweep.status.text() == "Cancelled."


def test_injection_table(qtbot, bridge, small_workspace, tmp_path):
    state, view = _open(qtbot, bridge, small_workspace)
    view.generate.add_concept_button.click()
    inj = view.injection
    inj.strengths.setText("0, 8")
    inj.questions.setPlainText("What is on your mind?")
    inj.words.setText("the, ocean")
    inj.tokens.setValue(4)
    inj.run_button.click()
    assert bridge.wait_idle(120)
    assert inj.table.rowCount() == 2 and [t.strength for t in inj.trials] == [0.0, 8.0]
    assert inj.table.item(0, 4).text() == printable(inj.trials[0].answer).replace("\n", " ")
    assert inj.rates.text().startswith("Answers naming the concept")
    assert "strength 8:" in inj.rates.text()
    inj.save_results(tmp_path / "inject.json")
    assert InjectionResult.load(tmp_path / "inject.json").trials == inj.trials


def test_typed_errors_are_named(qtbot, bridge, small_workspace, tmp_path):
    state, view = _open(qtbot, bridge, small_workspace)
    view.sweep.run_button.click()
    assert "Add an intervention" in view.sweep.status.text()
    view.generate.add_concept_button.click()
    view.sweep.strengths.setText("1, lots")
    view.sweep.run_button.click()
    assert view.sweep.status.text() == "Strengths: 'lots' is not a number"
    view.sweep.strengths.setText("1")
    view.sweep.layers.setText("77")
    view.sweep.run_button.click()
    assert view.sweep.status.text() == "Layers: the model has no hook point blocks.77.hook_resid_post"
    view.injection.words.setText(" , ")
    view.injection.run_button.click()
    assert view.injection.status.text() == "Concept words: type at least one word"
    bad = tmp_path / "sets.json"
    bad.write_text('{"positive": ["the sea"]}')
    with pytest.raises(LatentLabError, match="'negative'"):
        view.generate.load_concept(bad)
    bad.write_text('{"positive": ["the sea"], "negative": ["the desk"]}')
    view.generate.load_concept(bad)
    assert view.generate.concept_name.text() == "sets" and view.generate.negative.toPlainText() == "the desk"
    view.generate.positive.setPlainText("")
    view.generate.add_concept_button.click()
    assert view.generate.status.text() == "A concept needs at least one text in each set."
    assert bridge.wait_idle(60)


def test_session_and_export(qtbot, bridge, small_workspace, tmp_path):
    state, view = _open(qtbot, bridge, small_workspace)
    view.generate.add_concept_button.click()
    view.generate.prompt.setText("Yesterday we talked about the")
    view.sweep.strengths.setText("-1, 1")
    view.tabs.setCurrentIndex(2)
    saved = view.session_state()
    assert bridge.wait_idle(60)
    state2, other = _open(qtbot, bridge, small_workspace)
    other.restore_session(saved)
    assert other.generate.prompt.text() == "Yesterday we talked about the"
    assert other.sweep.strengths.text() == "-1, 1" and other.tabs.currentIndex() == 2
    assert bridge.wait_idle(60)
    for tab in range(3):
        view.tabs.setCurrentIndex(tab)
        image = QImage(900, 600, QImage.Format.Format_ARGB32)
        image.fill(QColor("black"))
        painter = QPainter(image)
        view.paint_figure(painter, QRectF(0, 0, 900, 600))
        painter.end()
        assert image.pixelColor(5, 5) == QColor("white")
        image.save(str(tmp_path / f"tab{tab}.png"))
        pixels = np.frombuffer(image.constBits(), np.uint8).reshape(600, 900, 4)[..., :3]
        assert (pixels.min(-1) < 200).sum() > 100, tab  # text (or a hint) was drawn
