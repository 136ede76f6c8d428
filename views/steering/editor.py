"""The Generate tab's editor of the chosen intervention: its mode (for an SAE latent), its
strength on a slider across the item's range beside a spin box, that range, and, for a
concept vector, its layer on a slider over the residual stream's hook points. Every change
is written to AppState's recipe, which every view sees."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSignalBlocker, Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QWidget,
)

from desktop_app.state import AppState
from engine.api import LATENT_MODES
from views.steering.common import resid_hooks, short_hook

SLIDER_TICKS = 400  # slider positions across an item's strength range


def update_item(state: AppState, index: int, **changes: Any) -> None:
    """Change item ``index`` of AppState's recipe (one change every view sees)."""
    recipe = [dict(item) for item in state.steering]
    recipe[index].update(changes)
    state.set_steering(recipe)


class ItemEditor(QGroupBox):
    """Mode, strength, slider range and layer of the recipe item ``index`` (-1: none; the
    box is disabled then)."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__("Chosen intervention", parent)
        self.state = state
        self.index = -1
        self.hooks: list[str] = []
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
        self.strength.valueChanged.connect(self.set_strength)
        self.range = QDoubleSpinBox()
        self.range.setRange(0.01, 1e6)
        self.range.setKeyboardTracking(False)
        self.range.valueChanged.connect(self._on_range)
        self.layer_slider = QSlider(Qt.Orientation.Horizontal)
        self.layer_slider.valueChanged.connect(self._on_layer_slider)
        self.layer_label = QLabel("")  # as wide as a two-digit layer: the view's width is set at start
        self.layer_label.setMinimumWidth(self.layer_label.fontMetrics().horizontalAdvance("L00 resid_post"))
        form = QFormLayout(self)
        form.addRow("Mode", self.mode)
        form.addRow("Strength", _pair(self.strength_slider, self.strength))
        form.addRow("Range \u00b1", self.range)
        form.addRow("Layer", _pair(self.layer_slider, self.layer_label))
        self.range.setToolTip("The strength slider spans \u2212range to +range (0 to range when clamping)")

    def show_item(self, index: int, hooks: list[str]) -> None:
        """Load recipe item ``index`` into the controls (the layer slider walks ``hooks``'
        residual-stream points)."""
        self.index, self.hooks = index, hooks
        has = 0 <= index < len(self.state.steering)
        self.setEnabled(has)
        if not has:
            self.index = -1
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
        layers = resid_hooks(hooks)
        hook = str(item.get("hook"))
        self.layer_slider.setEnabled(item.get("kind") == "concept" and hook in layers)
        self.layer_slider.setRange(0, max(len(layers) - 1, 0))
        if hook in layers:
            self.layer_slider.setValue(layers.index(hook))
        self.layer_label.setText(short_hook(hook))  # the short form keeps the column narrow
        self.layer_label.setToolTip(hook)
        del blockers

    def set_strength(self, value: float) -> None:
        """Set the chosen item's strength (what the slider and the spin box do)."""
        if self.index < 0 or float(self.state.steering[self.index].get("strength", 0.0)) == value:
            return
        update_item(self.state, self.index, strength=float(value))

    def _low(self) -> float:
        clamp = self.index >= 0 and self.state.steering[self.index].get("mode") == "clamp"
        return 0.0 if clamp else -self.range.value()

    def _tick(self, strength: float) -> int:
        low, high = self._low(), self.range.value()
        return round((min(max(strength, low), high) - low) / (high - low) * SLIDER_TICKS)

    def _on_slider(self, tick: int) -> None:
        low, high = self._low(), self.range.value()
        self.set_strength(round(low + (high - low) * tick / SLIDER_TICKS, 3))

    def _on_range(self, value: float) -> None:
        if self.index >= 0:
            update_item(self.state, self.index, range=float(value))

    def _on_mode(self, mode: str) -> None:
        if self.index >= 0 and self.state.steering[self.index].get("kind") == "latent":
            update_item(self.state, self.index, mode=mode)

    def _on_layer_slider(self, position: int) -> None:
        layers = resid_hooks(self.hooks)
        if self.index >= 0 and 0 <= position < len(layers):
            update_item(self.state, self.index, hook=layers[position])


def _pair(slider: QSlider, beside: QWidget) -> QHBoxLayout:
    """A slider taking the row's spare width, ``beside`` it at its own width."""
    row = QHBoxLayout()
    row.addWidget(slider, 1)
    row.addWidget(beside)
    return row
