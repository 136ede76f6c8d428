"""The steering view's Generate tab in the real main window at the sizes the README shows
(a 1366x768 laptop, a 1600x1000 screen): its content fits the dock it gets there without a
sideways scroll bar, even with the widest texts it shows (a two-digit layer, 32 selected
latents); the two texts sit side by side only where both have room."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QScrollArea

from desktop_app.state import LATENTS, Selection
from tests.conftest import wait_until
from views.steering.texts import SIDE_BY_SIDE, Continuations

CONCEPT = {"kind": "concept", "name": "ocean", "hook": "blocks.15.hook_resid_post", "strength": 2.0,
           "range": 8.0, "positive": ["the sea"], "negative": ["the city"], "enabled": True}


def _generate_tab(open_window, qtbot, size: tuple[int, int]):
    """The window at ``size`` (no workspace), the Steering dock raised on its Generate tab
    showing a concept at layer 15 and 32 selected latents; (window, tab, its scroll area)."""
    win = open_window(size=size)
    win.docks["Steering"].raise_()
    view = win.views["Steering"]
    view.tabs.setCurrentWidget(view.generate)
    win.state.set_steering([CONCEPT])
    win.state.set_selection(Selection(LATENTS, np.arange(32), "lasso in the latent scatter"))
    view.generate.delta.hook.addItems(["blocks.15.hook_resid_post"])  # a store's names, come later
    view.generate.delta.label.addItems(["topic_of_the_document"])
    scroll = view.findChild(QScrollArea)
    wait_until(qtbot, lambda: view.generate.isVisible() and scroll.viewport().width() > 0)
    qtbot.wait(100)  # the docks are sized once the window is shown
    return win, view.generate, scroll


@pytest.mark.parametrize("size", [(1366, 768), (1500, 950)])  # 1500x950: the window a 1600x1000 screen gets
def test_steering_generate_fits_without_scrolling(open_window, qtbot, size):
    _, gen, scroll = _generate_tab(open_window, qtbot, size)
    assert gen.links.steer_selected.text() == "Steer with 32 selected latents"
    needs = scroll.widget().minimumSizeHint().width()
    assert needs <= scroll.viewport().width() and needs <= scroll.minimumWidth()  # the dock's least width
    assert not scroll.horizontalScrollBar().isVisible()
    assert gen.texts.pair.orientation() == Qt.Orientation.Vertical  # too narrow for two texts side by side


def test_steering_texts_side_by_side_only_where_both_fit(qtbot):
    texts = Continuations()
    qtbot.addWidget(texts)
    texts.show()
    for width, want in ((SIDE_BY_SIDE + 200, Qt.Orientation.Horizontal), (SIDE_BY_SIDE - 200, Qt.Orientation.Vertical)):
        texts.resize(width, 500)
        wait_until(qtbot, lambda want=want: texts.pair.orientation() == want, 5)


def test_steering_sweep_fits_1366_with_room_for_its_heatmap(open_window, qtbot):
    """The sweep's fields sit above its heatmap, two a row, so a narrow dock keeps both."""
    win, gen, scroll = _generate_tab(open_window, qtbot, (1366, 768))
    view = win.views["Steering"]
    view.tabs.setCurrentWidget(view.sweep)
    wait_until(qtbot, lambda: view.sweep.isVisible())
    qtbot.wait(100)
    assert not scroll.horizontalScrollBar().isVisible()
    assert scroll.widget().minimumSizeHint().width() <= scroll.viewport().width()
    assert view.sweep.heatmap.width() >= 0.8 * view.sweep.width()  # not squeezed beside the form
