"""The feature browser on the small demo workspace (tiny llama, TopK SAE, real statistics)
with the real engine bridge: the table, numeric sorting, search, focus both ways, the
most-active list of a row selection, a latent selection, the detail pane's contexts and
quantile-interval examples, a dead latent, missing statistics, statistics without logits or
interval examples, a one-pass store without activation rows, figure export, and 16k
latents."""

from __future__ import annotations

import dataclasses
import shutil
import time

import numpy as np
import pytest
import torch
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QImage, QPainter

from desktop_app.state import LATENTS, ROWS, AppState, Selection
from engine.api import make_browser_data as browser_data
from engine.features.one_pass import feature_pass
from engine.features.stats import feature_stats
from engine.jobs import JobContext
from engine.models.tokens import load_vocab
from engine.sae.io import load_sae, save_sae
from engine.store.activations import ActivationStore
from tests.conftest import open_browser
from views.features.view import (
    COLUMNS,
    SORT_ROLE,
    FeatureBrowser,
    LatentFilterProxy,
    LatentTableModel,
    intervals_html,
    split_intervals,
)

DEAD = 3


@pytest.fixture(scope="module")
def ws(small_workspace):
    return small_workspace


@pytest.fixture(scope="module")
def variant(ws, tmp_path_factory):
    """A copy of the store with statistics "plain" (no logits) of the workspace SAE with
    latent DEAD switched off (its encoder column zero, its bias negative)."""
    root = tmp_path_factory.mktemp("browser")
    store = shutil.copy(ws.store, root / "copy.h5")
    sae = load_sae(ws.sae)
    with torch.no_grad():
        sae.W_enc[:, DEAD] = 0
        sae.b_enc[DEAD] = -1
    folder = save_sae(sae, root / "dead")
    feature_stats(JobContext(device=torch.device("cpu")), store, sae, ws.hook, "plain")
    return store, folder


@pytest.fixture
def opened(qtbot, bridge, ws):
    return open_browser(qtbot, bridge, ws)


def _column(browser: FeatureBrowser, col: int, role=SORT_ROLE) -> list:
    p = browser.proxy
    return [p.data(p.index(r, col), role) for r in range(p.rowCount())]


def test_table_has_every_latent_and_sorts_numerically(opened, small_stats):
    _, browser = opened
    d_sae = len(small_stats.count)
    assert browser.proxy.rowCount() == d_sae and browser.proxy.columnCount() == len(COLUMNS)
    assert browser.stack.currentIndex() == 1
    assert _column(browser, 0) == list(range(d_sae))
    browser.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
    density = _column(browser, 1)
    assert density == sorted(small_stats.density.tolist(), reverse=True)
    assert all(isinstance(v, float) for v in density)
    browser.table.sortByColumn(2, Qt.SortOrder.AscendingOrder)
    assert _column(browser, 2) == sorted(small_stats.max.tolist())
    text = _column(browser, 2, Qt.ItemDataRole.DisplayRole)  # shown as text, sorted as numbers
    assert text[0] == f"{small_stats.max.min():.4g}"


def test_search_filters_by_id_and_label_text(opened, small_stats):
    state, browser = opened
    labels = browser.data_.table.labels
    live = int(np.flatnonzero(small_stats.count > 0)[0])
    word = labels[live].split(", ")[0].removeprefix("\u2192 ")
    browser.search.setText("label:" + word.upper())  # case-insensitive
    shown = _column(browser, 0)
    assert live in shown and 0 < len(shown) <= len(labels)
    assert all(word.lower() in (labels[j] + browser.data_.table.association[j]).lower() for j in shown)
    browser.search.setText(word)  # a plain query looks for a token too: more, never fewer
    assert set(shown) <= set(_column(browser, 0))
    state.set_focus(5)
    browser.search.setText("17")
    assert 17 in _column(browser, 0)
    assert state.focus == (5,)  # hiding the focused row does not move the focus
    browser.search.setText("no such label \u00a7")
    assert browser.proxy.rowCount() == 0 and browser.empty_label.isVisible()
    browser.search.clear()
    assert browser.proxy.rowCount() == len(small_stats.count) and not browser.empty_label.isVisible()


def test_focus_follows_the_table_and_the_table_follows_focus(opened, qtbot):
    state, browser = opened
    browser.table.sortByColumn(1, Qt.SortOrder.DescendingOrder)
    browser.table.selectRow(5)
    want = browser.model.latent_at(browser.proxy.mapToSource(browser.proxy.index(5, 0)).row())
    assert state.focus == (want,)
    seen = []
    state.focus_changed.connect(seen.append)
    target = browser.model.latent_at(browser.proxy.mapToSource(browser.proxy.index(
        browser.proxy.rowCount() - 1, 0)).row())  # the last row: the table must scroll
    state.set_focus(target)
    assert seen == [(target,)]  # selecting the row did not echo back into AppState
    current = browser.table.currentIndex()
    assert browser.model.latent_at(browser.proxy.mapToSource(current).row()) == target
    assert browser.table.selectionModel().isRowSelected(current.row())
    qtbot.wait(10)
    assert browser.table.visualRect(current).intersects(browser.table.viewport().rect())


def test_row_selection_lists_the_latent_that_fires_only_there(opened, qtbot, ws, small_stats):
    state, browser = opened
    latent = int(np.flatnonzero((small_stats.count >= 5) & (small_stats.count <= 200))[0])
    sae = load_sae(ws.sae)
    with ActivationStore.open(ws.store) as store, torch.no_grad():
        codes = sae.encode(torch.from_numpy(store.acts(ws.hook).astype(np.float32)))[:, latent]
    rows = np.flatnonzero(codes.numpy() > 0)  # exactly its firing rows: the highest lift x share
    state.set_selection(Selection(ROWS, rows, "test"))
    qtbot.waitUntil(lambda: browser.active_list.count() > 0, timeout=30000)
    assert browser.active_list.isVisible()
    assert f"({len(rows)} rows)" in browser.active_title.text()
    first = browser.active_list.item(0)
    assert first.data(Qt.ItemDataRole.UserRole) == latent
    browser.active_list.itemClicked.emit(first)
    assert state.focus == (latent,)
    state.clear_selection()
    assert not browser.active_list.isVisible() and not browser.active_title.isVisible()


def test_latent_selection_filters_the_table(opened):
    state, browser = opened
    state.set_selection(Selection(LATENTS, [9, 1, 5], "test"))
    assert _column(browser, 0) == [1, 5, 9] and not browser.active_list.isVisible()
    browser.search.setText("5")
    assert _column(browser, 0) == [5] or 5 in _column(browser, 0)
    state.set_selection(Selection(LATENTS))
    browser.search.clear()
    assert browser.proxy.rowCount() == browser.model.rowCount()


def test_detail_pane_shows_shaded_top_contexts(opened, qtbot, ws, small_stats):
    state, browser = opened
    latent = int(np.argmax(small_stats.count))
    state.set_focus(latent)
    qtbot.waitUntil(lambda: len(browser.contexts) > 0, timeout=30000)
    top = browser.contexts[0]
    assert top.row == small_stats.top_rows[latent, 0]
    assert top.values is not None and top.values[top.at] == pytest.approx(small_stats.top_values[latent, 0], rel=1e-4)
    assert top.values.max() <= small_stats.max[latent] * (1 + 1e-4)
    vocab = load_vocab(ws.model)
    token = vocab.token(int(top.tokens[top.at])).replace("\n", "\u21b5").replace("\t", "\u21e5")
    assert token.strip() in browser.detail.context_view.toPlainText()
    assert f"Latent {latent}" in browser.detail.title.text()
    assert browser.detail.logit_table.rowCount() == 10 and browser.detail.no_logits.isHidden()
    hist = browser.detail.hist.getPlotItem().listDataItems()
    assert len(hist) == 1 and hist[0].yData.sum() == small_stats.count[latent]
    neighbour = browser.detail.neighbours.item(0, 0)
    assert neighbour.data(Qt.ItemDataRole.UserRole) == small_stats.neighbours[latent, 0]
    browser.detail.neighbours.itemClicked.emit(browser.detail.neighbours.item(0, 2))
    assert state.focus == (int(small_stats.neighbours[latent, 0]),)


def _sections(text: str) -> list[str]:
    """The plain text of the interval view cut at each heading (text before the first dropped)."""
    return text.split(" of firing rows")[1:]


def test_quantile_intervals_show_their_example_rows(opened, qtbot, ws, small_stats):
    state, browser = opened
    latent = int(np.argmax(small_stats.count))
    state.set_focus(latent)
    qtbot.waitUntil(lambda: len(browser.intervals) > 0, timeout=30000)
    assert browser.detail.tabs.tabText(1) == "Intervals"
    rows, values, q = small_stats.interval_rows[latent], small_stats.interval_values[latent], small_stats.quantiles[latent]
    filled = [i for i in range(len(rows)) if (rows[i] >= 0).any()]
    assert len(filled) >= 5
    assert [iv.index for iv in browser.intervals] == filled[::-1]  # the highest interval first
    assert [c.row for c in browser.contexts] == [r for r in small_stats.top_rows[latent, :12] if r >= 0]
    vocab = load_vocab(ws.model)
    sections = _sections(browser.detail.interval_view.toPlainText())
    assert len(sections) == len(filled)
    for iv, text in zip(browser.intervals, sections, strict=True):
        i = iv.index
        picked = rows[i][rows[i] >= 0]
        assert [c.row for c in iv.contexts] == picked.tolist()
        assert (iv.lo, iv.hi) == (pytest.approx(q[i]), pytest.approx(q[i + 1]))
        assert f"activation {iv.lo:.3g}\u2013{iv.hi:.3g}" in text and f"{len(picked)} examples" in text
        for c, want in zip(iv.contexts, values[i], strict=False):
            assert c.value == pytest.approx(want) and iv.lo <= c.value and (c.value < iv.hi or i == filled[-1])
            assert c.values is not None and c.values[c.at] == pytest.approx(want, rel=1e-4)
            token = vocab.token(int(c.tokens[c.at])).replace("\n", "\u21b5").replace("\t", "\u21e5")
            assert token.strip() in text
    top_level = f"{small_stats.quantile_levels[filled[-1]]:.0%}\u2013{small_stats.quantile_levels[filled[-1] + 1]:.0%}"
    assert browser.detail.interval_view.toPlainText().lstrip().startswith(top_level)


def test_empty_intervals_get_no_heading_and_stats_without_intervals(small_stats):
    latent = int(np.argmax(small_stats.count))
    cells = small_stats.interval_rows.copy()
    cells[latent, 2:5] = -1  # as a latent firing on few rows has empty intervals
    sparse = dataclasses.replace(small_stats, interval_rows=cells)
    from engine.features.encode import Context
    kept = cells[latent][cells[latent] >= 0]
    top = [Context(int(r), np.array([1]), 0, None, 1.0) for r in small_stats.top_rows[latent, :12] if r >= 0]
    examples = [Context(int(r), np.array([1, 2]), 0, None, 1.0) for r in kept]
    got_top, intervals = split_intervals(sparse, latent, top + examples)
    assert got_top == top and [c.row for iv in intervals for c in iv.contexts] == [
        r for i in range(cells.shape[1] - 1, -1, -1) for r in cells[latent, i] if r >= 0]
    assert {iv.index for iv in intervals} == set(range(cells.shape[1])) - {2, 3, 4}
    text = intervals_html(intervals, None, 1.0).replace("<p", "\n<p")
    assert len(_sections(text)) == len(intervals)
    bare = dataclasses.replace(small_stats, interval_rows=None, interval_values=None)
    assert split_intervals(bare, latent, top) == (top, [])
    assert "no quantile-interval examples" in intervals_html(None, None, 1.0)


def test_a_store_without_activation_rows_shades_from_its_codes(qtbot, bridge, ws, tmp_path):
    """A one-pass store made with --no-acts: contexts, intervals and a row selection's
    latents come from its stored codes."""
    out = tmp_path / "codes.h5"
    feature_pass(JobContext(device=torch.device("cpu")), ws.model, "demo", load_sae(ws.sae), ws.hook,
                 ws.sae_id, out, max_tokens=1200, ctx_len=64, write_acts=False)
    state, browser = open_browser(qtbot, bridge, ws, store=out)
    s = browser.data_.stats
    latent = int(np.argmax(s.count))
    state.set_focus(latent)
    qtbot.waitUntil(lambda: len(browser.intervals) > 0, timeout=30000)
    assert browser.contexts and all(c.values is not None for c in browser.contexts)
    assert browser.contexts[0].values[browser.contexts[0].at] == pytest.approx(s.top_values[latent, 0], rel=1e-5)
    assert all(c.values is not None for iv in browser.intervals for c in iv.contexts)
    state.set_selection(Selection(ROWS, s.top_rows[latent][s.top_rows[latent] >= 0], "test"))
    qtbot.waitUntil(lambda: browser.active_list.count() > 0, timeout=30000)
    assert browser.status.text() == ""
    assert latent in [browser.active_list.item(i).data(Qt.ItemDataRole.UserRole)
                      for i in range(browser.active_list.count())]
    bridge.wait_idle(30)


def test_dead_latent_and_stats_without_logits(qtbot, bridge, ws, variant):
    store, folder = variant
    state, browser = open_browser(qtbot, bridge, ws, store=store, sae=folder, stats_id="plain")
    assert browser.data_.stats.count[DEAD] == 0 and browser.data_.table.labels[DEAD] == "dead"
    state.set_focus(DEAD)
    assert "never fires" in browser.detail.context_view.toPlainText()
    assert "never fires" in browser.detail.interval_view.toPlainText()
    assert browser.detail.hist.getPlotItem().listDataItems() == []
    assert not browser.detail.no_logits.isHidden() and browser.detail.logit_table.isHidden()
    live = int(np.argmax(browser.data_.stats.count))
    state.set_focus(live)
    qtbot.waitUntil(lambda: len(browser.contexts) > 0, timeout=30000)
    assert browser.data_.table.labels[live].startswith("on ")  # from the top rows' tokens
    bridge.wait_idle(30)


def test_missing_stats_show_a_placeholder(qtbot, bridge, ws):
    state = AppState(bridge)
    browser = FeatureBrowser(state)
    qtbot.addWidget(browser)
    assert browser.stack.currentIndex() == 0 and "No feature statistics" in browser.placeholder.text()
    state.set_store(ws.store)
    state.set_focus(4)
    state.set_selection(Selection(ROWS, [1, 2, 3]))
    assert browser.stack.currentIndex() == 0 and browser.data_ is None
    state.set_stats("no-such-small_stats")
    qtbot.waitUntil(lambda: browser.status.text() != "", timeout=30000)
    assert "no statistics named" in browser.status.text() and browser.stack.currentIndex() == 0
    assert "no statistics named" in browser.placeholder.text()
    image = QImage(400, 300, QImage.Format.Format_RGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    browser.paint_figure(painter, QRectF(0, 0, 400, 300))
    painter.end()


def test_paint_figure_paints_the_detail_pane(opened, qtbot, small_stats):
    state, browser = opened
    state.set_focus(int(np.argmax(small_stats.count)))
    qtbot.waitUntil(lambda: len(browser.contexts) > 0, timeout=30000)
    image = QImage(900, 700, QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    browser.paint_figure(painter, QRectF(50, 50, 800, 600))
    painter.end()
    arr = np.frombuffer(image.constBits(), np.uint8).reshape(700, 900, 4)
    inside = (arr[50:650, 50:850, :3] != 255).any(-1)
    assert inside.mean() > 0.02  # text, table lines, the histogram
    assert not (arr[:45, :, :3] != 255).any()  # nothing outside the target rectangle
    shade = (np.abs(arr[..., 2].astype(int) - 0) < 120) & (arr[..., 1] > 100) & (arr[..., 0] < 200)
    assert shade.any()  # orange-ish pixels: the histogram fill or the context shading


def test_model_sorts_and_filters_16k_latents(qtbot):
    _sort_and_filter_16k()


@pytest.mark.perf
def test_model_stays_fast_for_16k_latents(qtbot):
    seconds = _sort_and_filter_16k()
    assert seconds < 3.0, seconds


def _sort_and_filter_16k() -> float:
    """Sort 16k synthetic latents by density and filter them by text; checks the rows the
    proxy shows and returns the seconds it took."""
    d_sae, rng = 16384, np.random.default_rng(0)
    count = rng.integers(0, 1000, d_sae)
    stats = _synthetic_stats(d_sae, count, rng)
    t0 = time.perf_counter()
    data = browser_data(stats, None)
    model, proxy = LatentTableModel(), LatentFilterProxy()
    proxy.setSourceModel(model)
    model.set_data(data)
    model.sort(1, Qt.SortOrder.DescendingOrder)
    mask = np.char.find(data.search_text, "class 1") >= 0
    model.set_filter(mask)
    proxy.refilter()
    seconds = time.perf_counter() - t0
    assert proxy.rowCount() == mask.sum() > 0
    densities = [proxy.data(proxy.index(r, 1), SORT_ROLE) for r in range(proxy.rowCount())]
    assert densities == sorted(densities, reverse=True)
    return seconds


def _synthetic_stats(d_sae: int, count: np.ndarray, rng: np.random.Generator):
    from engine.features.stats import FeatureStats
    n, classes = 1000, 4
    counts = rng.multinomial(1, [0.25] * classes, size=d_sae) * count[:, None]
    return FeatureStats(
        sae_id="synthetic", hook="h", n_rows=n, count=count, density=(count / n).astype(np.float32),
        mean=rng.random(d_sae, dtype=np.float32), max=rng.random(d_sae, dtype=np.float32),
        hist=np.zeros((d_sae, 100), np.int64), hist_edges=np.linspace(-5, 5, 101),
        quantile_levels=np.linspace(0, 1, 11), quantiles=np.zeros((d_sae, 11), np.float32),
        top_values=np.zeros((d_sae, 4), np.float32), top_rows=np.full((d_sae, 4), -1),
        neighbours=np.zeros((d_sae, 2), np.int64), neighbour_cos=np.zeros((d_sae, 2), np.float32),
        label_name="topic", label_classes=[f"class {i}" for i in range(classes)],
        label_counts=counts, label_totals=np.full(classes, n // classes))


def test_no_label_fields_and_images_do_not_break_labels(small_stats):
    bare = dataclasses.replace(small_stats, label_counts=None, label_totals=None, logit_top_ids=None)
    data = browser_data(bare, None)
    assert (data.table.best == -1).all() and all(a == "" for a in data.table.association)
    assert all(label for label in data.table.labels)
