"""The steering view's Sweep tab: one intervention's direction over a grid of strengths x
layers, as a cancellable job whose cells fill a heatmap as they finish. Per cell: the
concept score (log probability of the concept's words as the next token), coherence
(perplexity of the steered text under the unsteered model) or KL to the baseline.
Clicking a cell puts that layer and strength into the intervention (the Generate tab then
shows its text). The map gets one trail per strength (AppState's trails)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop_app.state import AppState
from engine.api import NEUTRAL_PROMPTS, OCEAN_WORDS, SweepResult, sweep_item, sweep_trails
from views.common.plots import HeatmapPlot, paint_hint, paint_plot
from views.common.requests import Requests
from views.steering.common import (
    ItemPicker,
    chosen_item,
    field_values,
    job_bar,
    parse_lines,
    parse_numbers,
    parse_words,
    restore_fields,
)

METRICS = {"concept score (log P of the words)": "concept",
           "coherence (perplexity, unsteered model)": "coherence",
           "KL to the baseline": "kl"}
N_LAYERS = 6


def spread_layers(hooks: list[str], n: int = N_LAYERS) -> list[int]:
    """``n`` layer numbers spread evenly over the residual hook points (all if fewer)."""
    layers = sorted(int(h.split(".")[1]) for h in hooks if h.startswith("blocks.") and h.endswith("hook_resid_post"))
    if len(layers) <= n:
        return layers
    return [layers[round(i)] for i in np.linspace(0, len(layers) - 1, n)]


class SweepTab(QWidget):
    """Settings, Run/Cancel, and the strength x layer heatmap of the chosen metric."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.hooks: list[str] = []
        self.result: SweepResult | None = None  # the last finished sweep
        self.partial: SweepResult | None = None  # the running sweep's cells so far
        self._item: dict[str, Any] | None = None  # the item the shown result swept
        self._trail_prompt = ""  # the prompt of the running sweep's trails (its first)
        self._build()
        self.jobs = Requests(state, self.progress, self.status, self, prefix="steering")

    def _build(self) -> None:
        self.picker = ItemPicker(self.state)
        self.layers = QLineEdit()
        self.layers.setPlaceholderText("layer numbers, e.g. 3, 9, 15")
        self.strengths = QLineEdit("-4, -2, 0, 2, 4")
        self.words = QLineEdit(", ".join(OCEAN_WORDS))
        self.prompts = QPlainTextEdit("\n".join(NEUTRAL_PROMPTS[:4]))
        self.tokens = QSpinBox()
        self.tokens.setRange(1, 256)
        self.tokens.setValue(8)
        self.metric = QComboBox()
        self.metric.addItems(list(METRICS))
        self.metric.currentIndexChanged.connect(self._draw)
        self.prompts.setMaximumHeight(64)
        self.prompts.setToolTip("one prompt per line; each cell averages over them")
        form = QGridLayout()  # two fields a row, over the heatmap: the sweep fits a narrow dock
        rows = [("Direction", self.picker, None, None), ("Layers", self.layers, "Strengths", self.strengths),
                ("Concept words", self.words, "New tokens", self.tokens), ("Prompts", self.prompts, None, None),
                ("Show", self.metric, None, None)]
        for r, (label, field, label2, field2) in enumerate(rows):
            form.addWidget(QLabel(label), r, 0)
            form.addWidget(field, r, 1, 1, 1 if field2 is not None else 3)
            if field2 is not None:
                form.addWidget(QLabel(label2), r, 2)
                form.addWidget(field2, r, 3)
        form.setColumnStretch(1, 2)
        form.setColumnStretch(3, 1)
        buttons = job_bar(self, "Run sweep", "sweep", "sweep")
        self.heatmap = HeatmapPlot()
        self.heatmap.cell_clicked.connect(self.use_cell)
        self.baseline = QLabel("")
        self.baseline.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.heatmap, 1)
        layout.addWidget(self.baseline)

    def set_hooks(self, hooks: list[str]) -> None:
        """The model's hook points; an empty layer field gets six spread over the depth."""
        self.hooks = list(hooks)
        if not self.layers.text().strip():
            self.layers.setText(", ".join(str(n) for n in spread_layers(self.hooks)))

    def chosen_hooks(self) -> list[str]:
        """The typed layers as hook points (numbers mean ``blocks.N.hook_resid_post``)."""
        out = []
        for part in self.layers.text().replace(",", " ").split():
            hook = f"blocks.{part}.hook_resid_post" if part.isdigit() else part
            if self.hooks and hook not in self.hooks:
                raise ValueError(f"Layers: the model has no hook point {hook}")
            out.append(hook)
        if not out:
            raise ValueError("Layers: type at least one layer number")
        return out

    def run(self) -> None:
        """Start the sweep (replacing a running one)."""
        item = chosen_item(self)
        if item is None:
            return
        try:
            hooks = self.chosen_hooks()
            strengths = parse_numbers(self.strengths.text(), "Strengths")
            words = parse_words(self.words.text(), "Concept words")
            prompts = parse_lines(self.prompts.toPlainText(), "Prompts", "prompt")
        except ValueError as exc:
            self.jobs.show_error(str(exc))
            return
        if item["kind"] == "latent" and hooks != [item["hook"]]:
            hooks = [item["hook"]]  # a latent's decoder row lives at its SAE's layer only
            self.layers.setText(item["hook"])
        self._item = item
        self.result = self.partial = None
        self.heatmap.clear_matrix()
        self.jobs.submit("sweep", f"steering sweep of {item.get('name')}", sweep_item, self._on_result,
                         on_partial=self._on_partial, model=self.state.model, item=item, hooks=hooks,
                         strengths=strengths, prompts=prompts, words=words,
                         max_new_tokens=self.tokens.value())
        self._trail_prompt = prompts[0]

    def request_trails(self, item: dict[str, Any], strengths: list[float], prompt: str) -> None:
        """One trail per strength (the item at its own layer, the first prompt), read at the
        map's hook point, for the scatter: asked once the sweep has finished."""
        hook = self.state.hook
        if hook is None or (self.hooks and hook not in self.hooks):
            return
        self.jobs.submit("sweep-trails", f"trails of {item.get('name')}", sweep_trails,
                         lambda trails: self.state.set_trails(tuple(trails)), model=self.state.model,
                         item=item, strengths=strengths, prompt=prompt, hook=hook,
                         max_new_tokens=self.tokens.value())

    def _on_result(self, result: SweepResult) -> None:
        self.result = result
        self._draw()
        if self._item is not None:
            self.request_trails(self._item, result.strengths, self._trail_prompt)

    def _on_partial(self, result: SweepResult) -> None:
        """A sweep still running: draw its cells so far (NaN ones grey); not yet savable."""
        self.partial = result
        self.result = None
        self._draw()

    def _draw(self, *_: Any) -> None:
        r = self.result if self.result is not None else self.partial
        if r is None:
            return
        key = METRICS[self.metric.currentText()]
        grid = np.asarray(getattr(r, key), dtype=np.float64)
        cols = [f"{s:g}" for s in r.strengths]
        self.heatmap.set_matrix(grid, r.hooks, cols, self.metric.currentText().split(" (")[0],
                                row_title="layer", col_title="strength")
        self.baseline.setText(f"Unsteered: concept score {r.baseline_concept:.3f}, perplexity "
                              f"{r.baseline_coherence:.2f} (KL 0). Click a cell to steer with it.")

    def use_cell(self, i: int, j: int) -> None:
        """Put cell (layer i, strength j) into the swept intervention, if it is still there."""
        r, item = self.result if self.result is not None else self.partial, self._item
        if r is None or item is None:
            return
        recipe = [dict(x) for x in self.state.steering]
        for entry in recipe:
            if all(entry.get(k) == item.get(k) for k in ("kind", "name", "sae", "latent", "positive", "negative")):
                entry.update(hook=r.hooks[i], strength=r.strengths[j])
                entry["range"] = max(float(entry.get("range", 0.0)), abs(r.strengths[j]))
                self.state.set_steering(recipe)
                self.heatmap.mark((i, j))
                return

    def save_results(self, path: str | Path) -> None:
        """Write the finished sweep as JSON (the CLI's ``--out`` format)."""
        if self.result is None:
            raise ValueError("No finished sweep to save yet.")
        self.result.save(path)

    # ------------------------------------------------------------ export and session
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        painter.fillRect(rect, QColor("white"))
        if self.result is None and self.partial is None:
            paint_hint(painter, rect, "No sweep yet")
            return
        title = QRectF(rect.left(), rect.top(), rect.width(), 28)
        painter.drawText(title, Qt.AlignmentFlag.AlignCenter,
                         f"{(self._item or {}).get('name', '')}: {self.metric.currentText()}")
        paint_plot(self.heatmap, painter, rect.adjusted(0, 30, 0, 0))

    def _fields(self) -> dict[str, QWidget]:
        return {"layers": self.layers, "strengths": self.strengths, "words": self.words,
                "prompts": self.prompts, "tokens": self.tokens, "metric": self.metric}

    def cancel_requests(self) -> None:
        """Cancel this tab's running jobs and drop their answers."""
        self.jobs.forget_all()

    def session_state(self) -> dict[str, Any]:
        return field_values(self._fields())

    def restore_session(self, data: dict[str, Any]) -> None:
        restore_fields(self._fields(), data)
