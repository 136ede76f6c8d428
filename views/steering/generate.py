"""The steering view's Generate tab: the list of interventions (the focused SAE latent, which
a "focused latent" row follows; the selected latents in one action; a concept from two
prompt sets; a delta vector from two groups of store rows), a strength slider and a layer
slider for the chosen one, and the baseline and steered continuations side by side with
their divergence marked (for a classifier: its predictions per class before and after).
Moving a slider replaces the running steered generation (the engine cancels the stale one
between tokens) and streams the new text in token by token."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QPointF, QRectF, QSignalBlocker, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter, QTextDocument
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSlider,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)
from shiboken6 import isValid

from desktop_app.state import AppState
from engine.api import (
    LATENT_MODES,
    NEUTRAL_PROMPTS,
    OCEAN_TEXTS,
    OTHER_TEXTS,
    Generation,
    PredictionShift,
    classifier_spec,
    first_divergence,
    generate_stream,
    latent_item,
    load_concept_sets,
    shift_text,
    steer_predictions,
    steerable_hooks,
)
from engine.errors import LatentLabError
from views.common.requests import Requests
from views.steering.common import item_label, printable, status_row
from views.steering.linked import LatentLinks
from views.steering.predictions import PredictionPanel
from views.steering.rows import DeltaBox

SLIDER_TICKS = 400  # slider positions across an item's strength range
STEERED_BG, BASELINE_BG = "#ffd59e", "#dfe6ee"  # tokens from the first divergence on
RENDER_EVERY = 0.1  # seconds between redraws of a streaming text (first and last token: at once)


def resid_hooks(hooks: list[str]) -> list[str]:
    """The residual-stream hook points in layer order (what the layer slider walks)."""
    found = [(int(m.group(1)), h) for h in hooks if (m := re.match(r"^blocks\.(\d+)\.hook_resid_post$", h))]
    return [h for _, h in sorted(found)] or list(hooks)


def default_layer(hooks: list[str]) -> str | None:
    """A middle-early residual layer (30% of the depth): concept vectors there steer text
    without swamping it (see the SmolLM2 tests)."""
    return hooks[(len(hooks) * 3) // 10] if hooks else None


def tokens_html(texts: list[str], start: int, colour: str) -> str:
    """Token texts as HTML, the ones from ``start`` on (start >= 0) on a coloured ground."""
    out = []
    for i, text in enumerate(texts):
        piece = html.escape(printable(text)).replace("\n", "\u23ce<br>")
        if 0 <= start <= i:
            piece = f'<span style="background:{colour}">{piece}</span>'
        out.append(piece)
    return "".join(out)


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
        self.html = {"baseline": "", "steered": ""}  # what the text boxes show
        self._asked: str | None = None
        self._shown_divergence = -2
        self._pending = False  # the model changed while the tab was hidden
        self._drawn_at: dict[str, float] = {}  # when each text was last drawn
        self._pending_draw: set[str] = set()  # texts with a redraw scheduled  # the divergence the texts were drawn with  # what the running or shown steered text was made from
        self._build()
        self.jobs = Requests(state, self.progress, self.status, self, prefix="steering")
        self.delta = DeltaBox(state, self.jobs, self.add_item)
        self.sources.addTab(self.delta, "Delta from rows")
        state.steering_changed.connect(self._on_recipe_changed)
        state.model_changed.connect(self._on_model_changed)
        self._on_recipe_changed(state.steering)
        self._on_model_changed(state.model)

    # ------------------------------------------------------------ layout
    def _build(self) -> None:
        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        self.items = QListWidget()
        self.items.currentRowChanged.connect(self._show_item)
        self.items.itemChanged.connect(self._on_item_checked)
        lv.addWidget(QLabel("Interventions"))
        lv.addWidget(self.items, 1)
        row = QHBoxLayout()
        self.add_latent = QPushButton("Add focused latent")
        self.add_latent.clicked.connect(self.add_focused_latent)
        self.remove = QPushButton("Remove")
        self.remove.clicked.connect(self.remove_current)
        row.addWidget(self.add_latent)
        row.addWidget(self.remove)
        lv.addLayout(row)
        self.links = LatentLinks(self)
        lv.addLayout(self.links.row())
        lv.addWidget(self._build_editor())
        self.sources = QTabWidget()
        self.sources.addTab(self._build_concept(), "Concept from prompts")
        lv.addWidget(self.sources)
        self.predictions = PredictionPanel()
        self.pages = QStackedWidget()
        self.pages.addWidget(self._build_texts())
        self.pages.addWidget(self.predictions)
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(self.pages, 1)
        rv.addLayout(status_row(self))
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(1, 1)
        split.setSizes([360, 700])
        layout = QVBoxLayout(self)
        layout.addWidget(split)

    def _build_texts(self) -> QWidget:
        """The prompt bar, the baseline and steered texts, and their comparison."""
        page = QWidget()
        rv = QVBoxLayout(page)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addLayout(self._build_prompt_bar())
        texts = QSplitter(Qt.Orientation.Horizontal)
        self.baseline_text, self.steered_text = QTextBrowser(), QTextBrowser()
        for title, box in (("Baseline", self.baseline_text), ("Steered", self.steered_text)):
            w = QWidget()
            v = QVBoxLayout(w)
            v.setContentsMargins(0, 0, 0, 0)
            v.addWidget(QLabel(f"<b>{title}</b>"))
            box.setOpenLinks(False)
            v.addWidget(box)
            texts.addWidget(w)
        rv.addWidget(texts, 1)
        self.comparison = QLabel("")
        self.comparison.setWordWrap(True)
        self.comparison.setTextFormat(Qt.TextFormat.PlainText)
        rv.addWidget(self.comparison)
        return page

    def _build_editor(self) -> QGroupBox:
        box = QGroupBox("Chosen intervention")
        form = QFormLayout(box)
        self.mode = QComboBox()
        self.mode.addItems(LATENT_MODES)
        self.mode.currentTextChanged.connect(self._on_mode)
        self.strength_slider = QSlider(Qt.Orientation.Horizontal)
        self.strength_slider.setRange(0, SLIDER_TICKS)
        self.strength_slider.valueChanged.connect(self._on_slider)
        self.strength = QDoubleSpinBox()
        self.strength.setRange(-1e6, 1e6)
        self.strength.setDecimals(2)
        self.strength.setKeyboardTracking(False)
        self.strength.valueChanged.connect(self._on_strength_spin)
        self.range = QDoubleSpinBox()
        self.range.setRange(0.01, 1e6)
        self.range.setKeyboardTracking(False)
        self.range.valueChanged.connect(self._on_range)
        self.layer_slider = QSlider(Qt.Orientation.Horizontal)
        self.layer_slider.valueChanged.connect(self._on_layer_slider)
        self.layer_label = QLabel("")
        strength_row = QHBoxLayout()
        strength_row.addWidget(self.strength_slider, 1)
        strength_row.addWidget(self.strength)
        layer_row = QHBoxLayout()
        layer_row.addWidget(self.layer_slider, 1)
        layer_row.addWidget(self.layer_label)
        form.addRow("Mode", self.mode)
        form.addRow("Strength", strength_row)
        form.addRow("Slider range \u00b1", self.range)
        form.addRow("Layer", layer_row)
        self.editor = box
        return box

    def _build_concept(self) -> QWidget:
        box = QWidget()
        box.setToolTip("A concept vector: the mean activation of the first prompt set minus the "
                       "second's (one text per line)")
        v = QVBoxLayout(box)
        self.concept_name = QLineEdit("ocean")
        self.positive = QPlainTextEdit("\n".join(OCEAN_TEXTS))
        self.negative = QPlainTextEdit("\n".join(OTHER_TEXTS))
        for w in (self.positive, self.negative):
            w.setMaximumHeight(90)
        form = QFormLayout()
        form.addRow("Name", self.concept_name)
        form.addRow("About it", self.positive)
        form.addRow("Contrast", self.negative)
        v.addLayout(form)
        self.add_concept_button = QPushButton("Add concept vector")
        self.add_concept_button.clicked.connect(self.add_concept)
        self.load_concept_button = QPushButton("Load sets\u2026")
        self.load_concept_button.setToolTip('A JSON file: {"positive": [texts], "negative": [texts]}')
        self.load_concept_button.clicked.connect(self._ask_load_concept)
        row = QHBoxLayout()
        row.addWidget(self.load_concept_button)
        row.addWidget(self.add_concept_button, 1)
        v.addLayout(row)
        return box

    def load_concept(self, path: str | Path) -> None:
        """Fill the concept editor from a prompt-set file (the CLI's SETS.json)."""
        sets = load_concept_sets(path)
        self.concept_name.setText(Path(path).stem)
        self.positive.setPlainText("\n".join(sets["positive"]))
        self.negative.setPlainText("\n".join(sets["negative"]))

    def _ask_load_concept(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load concept prompt sets", "", "JSON (*.json)")
        if path:
            try:
                self.load_concept(path)
            except LatentLabError as exc:
                self.jobs.show_error(str(exc))

    def _build_prompt_bar(self) -> QVBoxLayout:
        """The prompt on its own row, the generation settings below it."""
        self.prompt = QLineEdit(NEUTRAL_PROMPTS[0])
        self.prompt.editingFinished.connect(self.regenerate)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 512)
        self.max_tokens.setValue(20)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.sample = QCheckBox("Sample")
        for w in (self.max_tokens, self.seed):
            w.setKeyboardTracking(False)
            w.valueChanged.connect(self.regenerate)
        self.sample.toggled.connect(self.regenerate)
        self.go = QPushButton("Generate")
        self.go.clicked.connect(self.regenerate)
        top = QHBoxLayout()
        top.addWidget(QLabel("Prompt"))
        top.addWidget(self.prompt, 1)
        settings = QHBoxLayout()
        for w in (QLabel("New tokens"), self.max_tokens, QLabel("Seed"), self.seed, self.sample):
            settings.addWidget(w)
        settings.addStretch(1)
        settings.addWidget(self.go)
        bar = QVBoxLayout()
        bar.addLayout(top)
        bar.addLayout(settings)
        return bar

    # ------------------------------------------------------------ recipe editing
    def recipe(self) -> list[dict[str, Any]]:
        return [dict(item) for item in self.state.steering]

    def current_index(self) -> int:
        row = self.items.currentRow()
        return row if 0 <= row < len(self.state.steering) else -1

    def _write(self, index: int, **changes: Any) -> None:
        """Change item ``index`` of AppState's recipe (every view sees the new recipe)."""
        recipe = self.recipe()
        recipe[index].update(changes)
        self.state.set_steering(recipe)

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
        """Add a concept vector (mean of the first set minus the second) at the default layer."""
        pos = [t for t in self.positive.toPlainText().splitlines() if t.strip()]
        neg = [t for t in self.negative.toPlainText().splitlines() if t.strip()]
        if not pos or not neg:
            self.jobs.show_error("A concept needs at least one text in each set.")
            return
        hook = default_layer(resid_hooks(self.hooks)) or self.state.hook
        if hook is None:
            self.jobs.show_error("No model to steer: open a workspace or a store first.")
            return
        self.add_item({"kind": "concept", "name": self.concept_name.text().strip() or "concept",
                       "hook": hook, "strength": 2.0, "range": 8.0, "positive": pos, "negative": neg,
                       "enabled": True})

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
                self._write(index, enabled=enabled)

    # ------------------------------------------------------------ the chosen item's controls
    def _show_item(self, index: int) -> None:
        """Load the chosen item into the mode, strength, range and layer controls."""
        has = 0 <= index < len(self.state.steering)
        self.editor.setEnabled(has)
        if not has:
            return
        item = self.state.steering[index]
        latent = item.get("kind") == "latent"
        blockers = [QSignalBlocker(w) for w in (self.mode, self.strength, self.range,
                                                self.strength_slider, self.layer_slider)]
        self.mode.setEnabled(latent)
        self.mode.setCurrentText(str(item.get("mode", "add")) if latent else "add")
        self.range.setValue(float(item.get("range", 8.0)))
        self.strength.setValue(float(item.get("strength", 0.0)))
        self.strength_slider.setEnabled(item.get("mode") not in ("ablate", "mean-ablate"))
        self.strength_slider.setValue(self._tick(float(item.get("strength", 0.0))))
        layers = resid_hooks(self.hooks)
        hook = str(item.get("hook"))
        self.layer_slider.setEnabled(item.get("kind") == "concept" and hook in layers)
        self.layer_slider.setRange(0, max(len(layers) - 1, 0))
        if hook in layers:
            self.layer_slider.setValue(layers.index(hook))
        self.layer_label.setText(hook)
        del blockers

    def _low(self) -> float:
        index = self.current_index()
        clamp = index >= 0 and self.state.steering[index].get("mode") == "clamp"
        return 0.0 if clamp else -self.range.value()

    def _tick(self, strength: float) -> int:
        low, high = self._low(), self.range.value()
        return round((min(max(strength, low), high) - low) / (high - low) * SLIDER_TICKS)

    def _on_slider(self, tick: int) -> None:
        low, high = self._low(), self.range.value()
        self.set_strength(round(low + (high - low) * tick / SLIDER_TICKS, 3))

    def _on_strength_spin(self, value: float) -> None:
        self.set_strength(value)

    def set_strength(self, value: float) -> None:
        """Set the chosen item's strength (what the slider and the spin box do)."""
        index = self.current_index()
        if index < 0 or float(self.state.steering[index].get("strength", 0.0)) == value:
            return
        self._write(index, strength=float(value))

    def _on_range(self, value: float) -> None:
        index = self.current_index()
        if index >= 0:
            self._write(index, range=float(value))

    def _on_mode(self, mode: str) -> None:
        index = self.current_index()
        if index >= 0 and self.state.steering[index].get("kind") == "latent":
            self._write(index, mode=mode)

    def _on_layer_slider(self, position: int) -> None:
        layers = resid_hooks(self.hooks)
        index = self.current_index()
        if index >= 0 and 0 <= position < len(layers):
            self._write(index, hook=layers[position])

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
                         **self.settings())
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
                         which="steered", **self.settings())

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

    def _on_steered(self, gen: Generation) -> None:
        self.steered = gen
        self._show_soon("steered", gen)

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
        if self.baseline is None or self.steered is None:
            return -1
        a, b = self.baseline.tokens, self.steered.tokens
        if not (self.baseline.done and self.steered.done):
            n = min(len(a), len(b))
            a, b = a[:n], b[:n]
        return first_divergence(a, b)

    def _render(self, changed: str) -> None:
        """Redraw the text that changed (both when the divergence point moved): a streamed
        token costs one text box, not two."""
        start = self.divergence()
        redraw = {"baseline", "steered"} if start != self._shown_divergence else {changed}
        self._shown_divergence = start
        prompt = html.escape(printable(self.prompt.text()))
        for which in redraw:
            gen, box, colour = ((self.baseline, self.baseline_text, BASELINE_BG) if which == "baseline"
                                else (self.steered, self.steered_text, STEERED_BG))
            body = "" if gen is None else tokens_html(gen.texts, start, colour)
            more = "" if gen is None or gen.done else " \u2026"
            self.html[which] = f'<p><span style="color:#777">{prompt}</span>{body}{more}</p>'
            box.setHtml(self.html[which])
        self.comparison.setText(self._comparison_text(start))

    def _comparison_text(self, start: int) -> str:
        s = self.steered
        if s is None or not s.done or self.baseline is None or not self.baseline.done:
            return ""
        where = "identical to the baseline" if start < 0 else f"diverges at new token {start}"
        text = f"Steered text {where}; next-token KL(steered \u2016 baseline) {s.kl:.4f}."
        if s.gained or s.lost:
            text += "\nGained: " + shift_text(s.gained[:5]) + "\nLost: " + shift_text(s.lost[:5])
        return text

    # ------------------------------------------------------------ export
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        """The recipe, then the baseline and steered texts side by side (divergence shaded),
        then the next-token comparison."""
        painter.fillRect(rect, QColor("white"))
        pad, width = 16.0, rect.width() - 32.0
        recipe = "; ".join(item_label(i) for i in self.state.steering if i.get("enabled", True)) or "no interventions"
        y = self._paint_html(painter, QPointF(rect.left() + pad, rect.top() + pad), width,
                             f"<b>Steering:</b> {html.escape(recipe)}")
        if self.classifier:
            self._paint_html(painter, QPointF(rect.left() + pad, y + 8), width, self.predictions.html())
            return
        half = (width - pad) / 2
        heights = [self._paint_html(painter, QPointF(rect.left() + pad + k * (half + pad), y + 8), half,
                                    f"<h3>{title}</h3>{self.html[which]}")
                   for k, (title, which) in enumerate((("Baseline", "baseline"), ("Steered", "steered")))]
        self._paint_html(painter, QPointF(rect.left() + pad, max(heights) + 8), width,
                         html.escape(self.comparison.text()).replace("\n", "<br>"))

    @staticmethod
    def _paint_html(painter: QPainter, at: QPointF, width: float, text: str) -> float:
        """Draw rich text at ``at`` wrapped to ``width``; the y just below it."""
        doc = QTextDocument()
        font = doc.defaultFont()
        font.setPixelSize(14)
        doc.setDefaultFont(font)
        doc.setHtml(text)
        doc.setTextWidth(width)
        painter.save()
        painter.translate(at)
        doc.drawContents(painter)
        painter.restore()
        return at.y() + doc.size().height()

    # ------------------------------------------------------------ session
    def cancel_requests(self) -> None:
        """Cancel this tab's running jobs and drop their answers."""
        self.jobs.forget_all()

    def session_state(self) -> dict[str, Any]:
        return {**self.settings(), "follow_focus": self.links.follow.isChecked(),
                "delta": self.delta.session_state(), "concept": {"name": self.concept_name.text(),
                                               "positive": self.positive.toPlainText(),
                                               "negative": self.negative.toPlainText()}}

    def restore_session(self, data: dict[str, Any]) -> None:
        if isinstance(data.get("follow_focus"), bool):
            with QSignalBlocker(self.links.follow):
                self.links.follow.setChecked(data["follow_focus"])
        if isinstance(data.get("delta"), dict):
            self.delta.restore_session(data["delta"])
        concept = data.get("concept")
        if isinstance(concept, dict):
            self.concept_name.setText(str(concept.get("name", "")))
            self.positive.setPlainText(str(concept.get("positive", "")))
            self.negative.setPlainText(str(concept.get("negative", "")))
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
