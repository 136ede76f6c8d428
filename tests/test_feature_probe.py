"""The feature browser's text probe, latent search, SAE metrics line and legibility, on the
small demo workspace (tiny llama, TopK SAE, real statistics) with the real engine bridge:
the probe's codes against the tiny llama's own hidden states encoded by the SAE, searches
against masks computed here from the statistics, and every table's columns unelided in
the real main window at 1366x768 and at the window size a 1600x1000 screen gets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PySide6.QtCore import Qt, QUrl

from desktop_app.state import AppState
from engine.api import sae_quality, text_latents
from engine.features.stats import label_association
from engine.jobs import JobContext
from engine.models.tokens import load_vocab
from engine.sae.io import load_sae
from tests.conftest import open_browser, wait_until
from views.features.view import FeatureBrowser

TEXT = "The for statement iterates over the items of any sequence, such as a list or a string."


@pytest.fixture(scope="module")
def ws(small_workspace):
    return small_workspace


@pytest.fixture(scope="module")
def reference(ws, tiny_llama):
    """The probe's answer computed without LatentLab's adapter: the tokenizer's ids (its
    BOS dropped), the Hugging Face model's hidden state after block 1, encoded by the SAE."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    ids = tok(TEXT, return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states[2][0, 1:]  # blocks.1.hook_resid_post
        codes = load_sae(ws.sae).encode(hidden).numpy()
    return ids[0, 1:].numpy(), codes


@pytest.fixture
def opened(qtbot, bridge, ws):
    state, browser = open_browser(qtbot, bridge, ws, model=ws.model, size=(700, 900))
    yield state, browser
    bridge.wait_idle(30)


def _dense(result) -> np.ndarray:
    out = np.zeros((len(result.tokens), result.d_sae), np.float32)
    for t in range(len(result.tokens)):
        latents, values = result.top(t)
        out[t, latents] = values
    return out


# ---------------------------------------------------------------- the text probe
def test_text_probe_codes_equal_an_independent_encode(ws, reference):
    ids, codes = reference
    result = text_latents(JobContext(device=torch.device("cpu")), model=ws.model, hook=ws.hook,
                          sae_path=ws.sae, text=TEXT)
    assert result.tokens.tolist() == ids.tolist() and not result.truncated
    np.testing.assert_allclose(_dense(result), codes, rtol=1e-4, atol=1e-5)
    for t in range(len(ids)):
        latents, values = result.top(t)
        assert (np.diff(values) <= 0).all() and len(latents) == (codes[t] != 0).sum()
    j = int(result.latent[0])
    np.testing.assert_allclose(result.of_latent(j), codes[:, j], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.strongest(), codes.max(1), rtol=1e-4, atol=1e-5)
    assert np.array_equal(result.strongest_latent(), np.where(codes.max(1) > 0, codes.argmax(1), -1))
    short = text_latents(JobContext(device=torch.device("cpu")), model=ws.model, hook=ws.hook,
                         sae_path=ws.sae, text=TEXT, max_tokens=5)
    assert len(short.tokens) == 5 and short.truncated
    from engine.errors import LatentLabError
    with pytest.raises(LatentLabError, match="empty"):
        text_latents(JobContext(), model=ws.model, hook=ws.hook, sae_path=ws.sae, text="  \n")


def test_text_probe_through_the_view_focuses_a_latent(opened, qtbot, reference, small_stats):
    state, browser = opened
    ids, codes = reference
    probe = browser.probe
    browser.top_tabs.setCurrentWidget(probe)
    probe.set_text(TEXT)
    qtbot.mouseClick(probe.run_button, Qt.MouseButton.LeftButton)
    wait_until(qtbot, lambda: probe.result is not None, 60)
    shown = probe.tokens_view.toPlainText()
    assert all(text.strip() in shown for text in probe.result.texts)
    t = 3
    probe.tokens_view.anchorClicked.emit(QUrl(f"token:{t}"))
    assert probe.token == t
    order = np.argsort(-codes[t], kind="stable")
    want = order[codes[t][order] != 0][:probe.latents.rowCount()]
    listed = [probe.latents.item(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(probe.latents.rowCount())]
    assert listed == want.tolist()
    values = [float(probe.latents.item(r, 1).text()) for r in range(len(listed))]
    np.testing.assert_allclose(values, codes[t, want], rtol=1e-3)
    rect = probe.latents.visualRect(probe.latents.model().index(1, 2))
    qtbot.mouseClick(probe.latents.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert state.focus == ()  # a click only selects
    qtbot.mouseDClick(probe.latents.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    latent = listed[1]
    assert state.focus == (latent,) and f"Latent {latent}" in browser.detail.title.text()
    shades = probe.shades()  # shaded by the focused latent, relative to its maximum over the store
    np.testing.assert_allclose(shades, np.clip(codes[:, latent] / small_stats.max[latent], 0, 1), rtol=1e-3, atol=1e-4)
    probe.by_focus.setChecked(False)
    strongest = codes.argmax(1)
    want_shades = np.where(codes.max(1) > 0, codes.max(1) / small_stats.max[strongest], 0)
    np.testing.assert_allclose(probe.shades(), np.clip(want_shades, 0, 1), rtol=1e-3, atol=1e-4)


def test_text_probe_without_a_model_says_so(qtbot, bridge, ws):
    state = AppState(bridge)
    browser = FeatureBrowser(state)
    qtbot.addWidget(browser)
    browser.probe.set_text("hello")
    browser.probe.submit()
    assert "No active model" in browser.probe.note.text() and browser.probe.result is None


# ---------------------------------------------------------------- search
def _shown(browser: FeatureBrowser) -> list[int]:
    p = browser.proxy
    return sorted(int(p.data(p.index(r, 0))) for r in range(p.rowCount()))


def test_search_by_token_finds_top_rows_and_logit_effects(opened, ws, small_stats):
    _, browser = opened
    vocab = load_vocab(ws.model)
    tokens, counts = np.unique(small_stats.top_tokens[small_stats.top_tokens >= 0], return_counts=True)
    word = next(vocab.token(int(t)).strip() for t in tokens[np.argsort(-counts)]
                if vocab.token(int(t)).strip().isalpha())
    forms = {f"{s}{w}" for w in (word, word.lower(), word.capitalize()) for s in ("", " ")}
    ids = [i for i in range(len(vocab.tokenizer.get_vocab())) if vocab.token(i) in forms]
    want = [j for j in range(len(small_stats.count))
            if set(small_stats.top_tokens[j]) & set(ids) or set(small_stats.logit_top_ids[j]) & set(ids)
            or set(small_stats.logit_bottom_ids[j]) & set(ids)]
    browser.search.setText(f"token:{word}")
    assert _shown(browser) == want and want
    fires = sum(bool(set(small_stats.top_tokens[j]) & set(ids)) for j in range(len(small_stats.count)))
    assert f"fire on it {fires}" in browser.matched.text() and browser.matched.isVisible()
    browser.search.setText(word)  # plain: label text or token
    assert set(want) <= set(_shown(browser))
    browser.search.setText("token:no such words")
    assert _shown(browser) == [] and "not one token" in browser.matched.text()


def test_search_by_label_association_and_label_text(opened, small_stats):
    _, browser = opened
    fired = small_stats.label_counts.sum(1)
    best = np.where(fired > 0, small_stats.label_counts.argmax(1), -1)
    assert np.array_equal(best, label_association(small_stats)[0])
    cls = int(np.bincount(best[best >= 0]).argmax())
    name = small_stats.label_classes[cls]
    want = np.flatnonzero(best == cls).tolist()
    for query in (f"{small_stats.label_name}={name.upper()}", f"={name}"):
        browser.search.setText(query)
        assert _shown(browser) == want
        assert f"{small_stats.label_name}={name} {len(want)}" in browser.matched.text()
    browser.search.setText(f"colour={name}")
    assert _shown(browser) == [] and "no label field" in browser.matched.text()
    browser.search.setText(f"{small_stats.label_name}=no-such-class")
    assert _shown(browser) == [] and "has no class" in browser.matched.text()
    browser.search.setText(f"label:{name}")  # label text: the association column names the class
    labels = browser.data_.table
    assert _shown(browser) == [j for j in range(len(best))
                               if name.lower() in (labels.association[j] + "\t" + labels.labels[j]).lower()]
    assert browser.matched.text().startswith("Matched: ") and "label text" in browser.matched.text()
    browser.search.clear()
    assert browser.proxy.rowCount() == len(small_stats.count) and not browser.matched.isVisible()


# ---------------------------------------------------------------- the SAE's metrics
def test_browser_header_shows_the_sae_metrics(qtbot, ws, tmp_path):
    state = AppState()
    browser = FeatureBrowser(state)
    qtbot.addWidget(browser)
    metrics = json.loads((ws.sae / "metrics.json").read_text())
    state.set_sae(ws.sae)
    line = browser.quality.text()
    assert f"FVU {metrics['fvu']:.3g}" in line and f"L0 {metrics['l0']:.1f}" in line
    assert f"dead {metrics['dead_frac']:.1%}" in line and "loss recovered" not in line
    measured = shutil.copytree(ws.sae, tmp_path / "measured")
    (measured / "metrics.json").write_text(json.dumps({**metrics, "loss_recovered": 0.875}))
    state.set_sae(measured)
    assert "loss recovered 87.5%" in browser.quality.text()
    (measured / "metrics.json").write_text("{not json")
    assert sae_quality(measured) is None
    (measured / "metrics.json").unlink()
    state.set_sae(ws.sae)
    state.set_sae(measured)
    assert "no held-out metrics" in browser.quality.text()


# ---------------------------------------------------------------- legibility
def _elided(table) -> list[str]:
    """The visible columns narrower than their header or contents, and a sideways scrollbar."""
    header = table.horizontalHeader()
    bad = [f"column {c} ({table.model().headerData(c, Qt.Orientation.Horizontal)}): "
           f"{table.columnWidth(c)} < {max(table.sizeHintForColumn(c), header.sectionSizeHint(c))}"
           for c in range(table.model().columnCount()) if not table.isColumnHidden(c)
           and table.columnWidth(c) < max(table.sizeHintForColumn(c), header.sectionSizeHint(c))]
    if table.horizontalScrollBar().maximum() > 0:
        bad.append("a horizontal scrollbar")
    return bad


@pytest.mark.parametrize("size", [(1366, 768), (1500, 950)])  # 1500x950: the window a 1600x1000 screen gets
def test_browser_legible_in_the_main_window(open_window, qtbot, small_workspace, small_stats, size):
    window = open_window(size=size)
    assert window.open_workspace(small_workspace.root)
    wait_until(qtbot, lambda: window.state.stats and not window.bridge.busy(), 60)
    browser = window.views["Features"]
    window.docks["Features"].raise_()
    latent = int(np.argmax(small_stats.count))
    window.state.set_focus(latent)
    browser.probe.set_text(TEXT)
    browser.run_probe()
    wait_until(qtbot, lambda: browser.probe.result is not None and not window.bridge.busy(), 60)
    qtbot.wait(50)
    assert browser.isVisible() and browser.width() >= 540
    visible = [c for c in range(browser.model.columnCount()) if not browser.table.isColumnHidden(c)]
    assert {0, 1, 5} <= set(visible), visible  # latent, density, auto-label at least
    problems = {"latent table": _elided(browser.table)}
    for i, name in ((2, "logit effects"), (3, "neighbours")):
        browser.detail.tabs.setCurrentIndex(i)
        qtbot.wait(20)
        table = browser.detail.logit_table if i == 2 else browser.detail.neighbours
        assert table.isVisible() and table.rowCount() == 10
        problems[name] = _elided(table)
    browser.top_tabs.setCurrentWidget(browser.probe)
    qtbot.wait(20)
    assert browser.probe.latents.rowCount() > 0
    problems["probe latents"] = _elided(browser.probe.latents)
    assert not any(problems.values()), problems
