"""The steering view's Generate tab: the list of interventions (the focused SAE latent, which
a "focused latent" row follows; the selected latents in one action; a concept from two
prompt sets; a delta vector from two groups of store rows), the chosen one's editor
(editor.py), and the baseline and steered continuations with their divergence marked
(texts.py; for a classifier: its predictions per class before and after). Moving a slider
replaces the running steered generation (the engine cancels the stale one between tokens)
and streams the new text in token by token. Each finished run is also read at the map's hook
point, and the two runs become AppState's trails, which the scatter draws."""

from __future__ import annotations

import html
import json
import time
from typing import Any

from PySide6.QtCore import QPointF, QRectF, QSignalBlocker, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)
from shiboken6 import isValid

from desktop_app.state import AppState
from engine.api import (
    NEUTRAL_PROMPTS,
    Generation,
    PredictionShift,
    classifier_spec,
    generate_stream,
    latent_item,
    steer_predictions,
    steerable_hooks,
)
from engine.errors import LatentLabError
from views.common.requests import Requests
from views.steering.common import default_layer, item_label, resid_hooks, status_row
from views.steering.concept import ConceptBox
from views.steering.editor import ItemEditor, update_item
from views.steering.linked import LatentLinks
from views.steering.predictions import PredictionPanel
from views.steering.rows import DeltaBox
from views.steering.texts import Continuations, divergence, paint_html

RENDER_EVERY = 0.1  # seconds between redraws of a streaming text (first and last token: at once)


class GenerateTab(QWidget):
    """Interventions, their sliders, and the baseline beside the steered text."""

    text_shown = Signal(str, int, bool)  # which ("baseline"/"steered"), tokens shown, done
    hooks_ready = Signal(list)  # the model's hook points, once known

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.hooks: list[str] = []
        self.classifier: str | None = None  # the model spec when the model is a classifier
        self.baseline: Generation | None = None
        self.steered: Generation | None = None
        self.requested_at = 0.0  # perf_counter of the latest steered request
        self._asked: str | None = None  # what the running or shown steered text was made from
        self._pending = False  # the model changed while the tab was hidden
        self._drawn_at: dict[str, float] = {}  # when each text was last drawn
        self._pending_draw: set[str] = set()  # texts with a redraw scheduled
        status = status_row(self)  # self.status and self.progress, where the jobs report
        self.jobs = Requests(state, self.progress, self.status, self, prefix="steering")
        self._build(status)  # whole before the view reads its minimum width (views/common/tabs.py)
        state.steering_changed.connect(self._on_recipe_changed)
        state.model_changed.connect(self._on_model_changed)
        state.hook_changed.connect(self._on_map_hook_changed)
        self._on_recipe_changed(state.steering)
        self._on_model_changed(state.model)

    # ------------------------------------------------------------ layout
    def _build(self, status: QHBoxLayout) -> None:
        """The interventions column (list, its buttons, the chosen one's editor, the sources
        of new ones) beside the texts, which take the spare width; ``status`` below them."""
        self.items = QListWidget()  # a long label is elided in the middle, whole in its tooltip
        self.items.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.items.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.items.currentRowChanged.connect(self._show_item)
        self.items.itemChanged.connect(self._on_item_checked)
        self.links = LatentLinks(self)
        self.add_latent = QPushButton("Add focused latent")
        self.add_latent.setToolTip("The latent focused in the feature browser or the scatter, as an intervention")
        self.add_latent.clicked.connect(self.add_focused_latent)
        self.remove = QPushButton("Remove")
        self.remove.clicked.connect(self.remove_current)
        self.editor = ItemEditor(self.state)
        self.mode, self.strength, self.range = self.editor.mode, self.editor.strength, self.editor.range
        self.strength_slider, self.layer_slider = self.editor.strength_slider, self.editor.layer_slider
        self.layer_label = self.editor.layer_label
        self.concept = ConceptBox(self.jobs, self.add_item, self._concept_layer)
        self.concept_name, self.positive, self.negative = (self.concept.concept_name, self.concept.positive,
                                                           self.concept.negative)
        self.add_concept_button, self.load_concept = self.concept.add_button, self.concept.load_concept
        self.delta = DeltaBox(self.state, self.jobs, self.add_item)
        self.sources = QTabWidget()
        self.sources.addTab(self.concept, "Concept from prompts")
        self.sources.addTab(self.delta, "Delta from rows")
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addLayout(_row((QLabel("Interventions"), 1), (self.links.follow, 0)))
        lv.addWidget(self.items, 1)
        lv.addLayout(_row((self.add_latent, 1), (self.remove, 0)))
        lv.addWidget(self.links.steer_selected)
        lv.addWidget(self.editor)
        lv.addWidget(self.sources)
        self.predictions = PredictionPanel()
        self.pages = QStackedWidget()
        self.pages.addWidget(self._build_texts())
        self.pages.addWidget(self.predictions)
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(self.pages, 1)
        rv.addLayout(status)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([360, 700])
        split.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.addWidget(split)

    def _build_texts(self) -> QWidget:
        """The prompt bar above the baseline and steered texts and their comparison."""
        page = QWidget()
        rv = QVBoxLayout(page)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addLayout(self._build_prompt_bar())
        self.texts = Continuations()
        self.baseline_text, self.steered_text = self.texts.baseline_text, self.texts.steered_text
        self.comparison, self.html = self.texts.comparison, self.texts.html
        rv.addWidget(self.texts, 1)
        return page

    def _build_prompt_bar(self) -> QVBoxLayout:
        """The prompt and Generate on one row, the generation settings below them."""
        self.prompt = QLineEdit(NEUTRAL_PROMPTS[0])
        self.prompt.editingFinished.connect(self.regenerate)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 512)
        self.max_tokens.setValue(20)
        self.max_tokens.setToolTip("How many new tokens each continuation has")
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setMinimumWidth(self.max_tokens.minimumSizeHint().width() * 3 // 2)  # not 10 digits' room
        self.seed.setToolTip("The sampling seed (both continuations use it)")
        self.sample = QCheckBox("Sample")
        self.sample.setToolTip("Sample the next token instead of taking the likeliest")
        for w in (self.max_tokens, self.seed):
            w.setKeyboardTracking(False)
            w.valueChanged.connect(self.regenerate)
        self.sample.toggled.connect(self.regenerate)
        self.go = QPushButton("Generate")
        self.go.clicked.connect(self.regenerate)
        settings = _row((QLabel("New tokens"), 0), (self.max_tokens, 0), (QLabel("Seed"), 0), (self.seed, 1),
                        (self.sample, 0))
        settings.addStretch(1)
        bar = QVBoxLayout()
        bar.addLayout(_row((QLabel("Prompt"), 0), (self.prompt, 1), (self.go, 0)))
        bar.addLayout(settings)
        return bar

    # ------------------------------------------------------------ recipe editing
    def recipe(self) -> list[dict[str, Any]]:
        return [dict(item) for item in self.state.steering]

    def current_index(self) -> int:
        row = self.items.currentRow()
        return row if 0 <= row < len(self.state.steering) else -1

    def add_item(self, item: dict[str, Any]) -> None:
        """Append an intervention to the recipe and choose it."""
        self.add_items([item])

    def add_items(self, items: list[dict[str, Any]]) -> None:
        """Append interventions to the recipe (one change) and choose the first of them."""
        first = len(self.state.steering)
        self.state.set_steering([*self.recipe(), *items])
        if items:
            self.items.setCurrentRow(first)

    def add_concept(self) -> None:
        """Add the concept box's vector (mean of the first set minus the second)."""
        self.concept.add_concept()

    def _concept_layer(self) -> str | None:
        """Where a new concept vector goes: the default residual layer, else the store's hook."""
        return default_layer(resid_hooks(self.hooks)) or self.state.hook

    def add_focused_latent(self) -> None:
        """Add the focused SAE latent's decoder row at the SAE's hook point."""
        if not self.state.focus or self.state.sae is None or self.state.hook is None:
            self.jobs.show_error("Focus a latent in the feature browser first (an SAE must be open).")
            return
        self.jobs.submit("latent", f"latent {self.state.focus[0]} as a direction", latent_item,
                         self.add_item, sae=str(self.state.sae), latent=int(self.state.focus[0]),
                         hook=self.state.hook, store=str(self.state.store) if self.state.store else None,
                         stats_id=self.state.stats)

    def remove_current(self) -> None:
        index = self.current_index()
        if index >= 0:
            recipe = self.recipe()
            del recipe[index]
            self.state.set_steering(recipe)

    def _on_item_checked(self, item: QListWidgetItem) -> None:
        index = self.items.row(item)
        if 0 <= index < len(self.state.steering):
            enabled = item.checkState() == Qt.CheckState.Checked
            if enabled != bool(self.state.steering[index].get("enabled", True)):
                update_item(self.state, index, enabled=enabled)

    def _show_item(self, index: int) -> None:
        """Load the chosen item into the editor's controls."""
        self.editor.show_item(index, self.hooks)

    def set_strength(self, value: float) -> None:
        """Set the chosen item's strength (what the slider and the spin box do)."""
        self.editor.set_strength(value)

    # ------------------------------------------------------------ AppState handlers
    def _on_recipe_changed(self, recipe: tuple[dict[str, Any], ...]) -> None:
        """Relist the interventions (keeping the chosen row) and regenerate the steered text."""
        row = self.items.currentRow()
        with QSignalBlocker(self.items):
            if self.items.count() != len(recipe):
                self.items.clear()
                for _ in recipe:
                    item = QListWidgetItem()
                    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                    self.items.addItem(item)
            for i, entry in enumerate(recipe):
                item = self.items.item(i)
                item.setText(item_label(entry))
                item.setToolTip(item.text())
                checked = bool(entry.get("enabled", True))
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            row = min(max(row, 0), len(recipe) - 1)
            self.items.setCurrentRow(row)
        self._show_item(row)
        self.generate_steered()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """The first time the tab comes into view, load the model and generate: a hidden
        steering tab does not hold up the jobs other views need at start-up."""
        super().showEvent(event)
        if self._pending:
            self._pending = False
            self._on_model_changed(self.state.model)

    def _on_model_changed(self, model: str | None) -> None:
        self.hooks = []
        self.classifier = None
        if model is None:
            return
        try:
            self.classifier = classifier_spec(model, self.state.workspace, self.state.store)
        except LatentLabError as exc:
            self.jobs.show_error(str(exc))
            return
        self.pages.setCurrentIndex(1 if self.classifier else 0)
        if not self.isVisible():
            self._pending = True
            return
        self.jobs.submit("hooks", "hook points of the model", steerable_hooks, self._on_hooks,
                         model=self.classifier or model)
        self.regenerate()

    def _on_hooks(self, hooks: list[str]) -> None:
        self.hooks = list(hooks)
        self._show_item(self.current_index())
        self.hooks_ready.emit(self.hooks)
        if self._trail_missing():
            self.regenerate()  # the runs asked before the hook points were known carry no trail

    def _on_map_hook_changed(self, *_: Any) -> None:
        """The map shows another hook point: read the runs there again."""
        if self._trail_missing() and self.isVisible():
            self.regenerate()

    def _trail_missing(self) -> bool:
        """Whether the map's hook point is the model's but the baseline has no trail there."""
        hook = self.trail_hook()
        trail = self.baseline.trail if self.baseline is not None else None
        return hook is not None and not self.classifier and (trail is None or trail.hook != hook)

    def trail_hook(self) -> str | None:
        """The map's hook point, where each run's activations are read for its trail (once
        the model is known to have it)."""
        hook = self.state.hook
        return hook if hook is not None and hook in self.hooks else None

    def _publish_trails(self) -> None:
        """Both runs done at the map's hook point: they become AppState's trails."""
        base, steer = self.baseline, self.steered
        if base is None or steer is None or not (base.done and steer.done):
            return
        if base.trail is not None and steer.trail is not None and base.trail.hook == steer.trail.hook:
            self.state.set_trails((base.trail, steer.trail))

    # ------------------------------------------------------------ generation
    def settings(self) -> dict[str, Any]:
        return {"prompt": self.prompt.text(), "max_new_tokens": self.max_tokens.value(),
                "seed": self.seed.value(), "sample": self.sample.isChecked()}

    def regenerate(self, *_: Any) -> None:
        """Baseline and steered continuations again (the prompt or the settings changed)."""
        if self.classifier:
            self.generate_steered(force=True)
            return
        if self.state.model is None or not self.prompt.text().strip() or self._pending:
            return
        self.baseline = None
        self.jobs.submit("baseline", "baseline continuation", generate_stream, self._on_baseline,
                         on_partial=self._on_baseline, model=self.state.model, which="baseline",
                         trail_hook=self.trail_hook(), **self.settings())
        self.generate_steered(force=True)

    def generate_steered(self, force: bool = False) -> None:
        """Replace the running steered generation with one under the current recipe (not when
        only a label or a slider range changed)."""
        if self.state.model is None or self._pending or not (self.classifier or self.prompt.text().strip()):
            return
        effective = [{k: v for k, v in item.items() if k not in ("name", "range")} for item in self.recipe()]
        asked = json.dumps([self.state.model, str(self.state.store), effective, self.settings()], sort_keys=True,
                           default=str)
        if asked == self._asked and not force:
            return
        self._asked = asked
        self.requested_at = time.perf_counter()
        self.steered = None
        if self.classifier:
            self.predict()
            return
        self.jobs.submit("steered", "steered continuation", generate_stream, self._on_steered,
                         on_partial=self._on_steered, model=self.state.model, recipe=self.recipe(),
                         which="steered", trail_hook=self.trail_hook(), **self.settings())

    def predict(self) -> None:
        """A classifier's predictions on the store's images without and with the recipe."""
        if self.state.store is None:
            self.jobs.show_error("Open the classifier's store: its images are what is classified.")
            return
        self.jobs.submit("steered", "steered predictions", steer_predictions, self._on_predictions,
                         model=self.classifier, recipe=self.recipe(), store=str(self.state.store))

    def _on_predictions(self, result: PredictionShift) -> None:
        self.predictions.show_result(result)
        self.status.setText("")

    def _on_baseline(self, gen: Generation) -> None:
        self.baseline = gen
        self._show_soon("baseline", gen)
        self._publish_trails()

    def _on_steered(self, gen: Generation) -> None:
        self.steered = gen
        self._show_soon("steered", gen)
        self._publish_trails()

    def _show_soon(self, which: str, gen: Generation) -> None:
        """Draw a streamed text now when it matters (its first token, its last, the end)
        and otherwise at most every RENDER_EVERY seconds: each redraw takes CPU from the
        generation running beside it, on a machine with few cores."""
        last = len(gen.tokens) <= 1 or gen.done or len(gen.tokens) >= self.max_tokens.value()
        if last or time.perf_counter() - self._drawn_at.get(which, 0.0) >= RENDER_EVERY:
            self._draw(which)
        elif which not in self._pending_draw:
            self._pending_draw.add(which)
            QTimer.singleShot(int(RENDER_EVERY * 1000), lambda: self._draw(which))

    def _draw(self, which: str) -> None:
        self._pending_draw.discard(which)
        gen = self.baseline if which == "baseline" else self.steered
        if gen is None or not isValid(self):
            return
        self._drawn_at[which] = time.perf_counter()
        self._render(which)
        self.text_shown.emit(which, len(gen.tokens), gen.done)

    def divergence(self) -> int:
        """First new token where the two texts differ so far (-1: none yet)."""
        return divergence(self.baseline, self.steered)

    def _render(self, changed: str) -> None:
        self.texts.render(changed, self.prompt.text(), self.baseline, self.steered)

    # ------------------------------------------------------------ export
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        """The recipe, then the baseline and steered texts side by side (divergence shaded),
        then the next-token comparison."""
        painter.fillRect(rect, QColor("white"))
        pad, width = 16.0, rect.width() - 32.0
        recipe = "; ".join(item_label(i) for i in self.state.steering if i.get("enabled", True)) or "no interventions"
        y = paint_html(painter, QPointF(rect.left() + pad, rect.top() + pad), width,
                       f"<b>Steering:</b> {html.escape(recipe)}")
        if self.classifier:
            paint_html(painter, QPointF(rect.left() + pad, y + 8), width, self.predictions.html())
            return
        self.texts.paint(painter, rect, y)

    # ------------------------------------------------------------ session
    def cancel_requests(self) -> None:
        """Cancel this tab's running jobs and drop their answers."""
        self.jobs.forget_all()

    def session_state(self) -> dict[str, Any]:
        return {**self.settings(), "follow_focus": self.links.follow.isChecked(),
                "delta": self.delta.session_state(), "concept": self.concept.session_state()}

    def restore_session(self, data: dict[str, Any]) -> None:
        if isinstance(data.get("follow_focus"), bool):
            with QSignalBlocker(self.links.follow):
                self.links.follow.setChecked(data["follow_focus"])
        if isinstance(data.get("delta"), dict):
            self.delta.restore_session(data["delta"])
        if isinstance(data.get("concept"), dict):
            self.concept.restore_session(data["concept"])
        blockers = [QSignalBlocker(w) for w in (self.max_tokens, self.seed, self.sample)]
        if isinstance(data.get("prompt"), str):
            self.prompt.setText(data["prompt"])
        if isinstance(data.get("max_new_tokens"), int):
            self.max_tokens.setValue(data["max_new_tokens"])
        if isinstance(data.get("seed"), int):
            self.seed.setValue(data["seed"])
        self.sample.setChecked(bool(data.get("sample", False)))
        del blockers
        self.regenerate()


def _row(*widgets: tuple[QWidget, int]) -> QHBoxLayout:
    """A row of (widget, stretch)."""
    row = QHBoxLayout()
    for w, stretch in widgets:
        row.addWidget(w, stretch)
    return row
