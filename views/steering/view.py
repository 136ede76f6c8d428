"""The steering view: change a model's activations and watch what it says. The Generate tab
holds the interventions (focused SAE latents, concept vectors) with strength and layer
sliders and shows the baseline and steered continuations side by side; the Sweep tab maps
a concept's effect over strengths x layers as a heatmap; the Injection tab asks the model
about its own state while a concept is injected and tabulates whether it names it."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QRectF
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from desktop_app.state import AppState
from views.steering.generate import GenerateTab
from views.steering.inject import InjectionTab
from views.steering.sweep import SweepTab

TABS = ("generate", "sweep", "injection")


class SteeringView(QWidget):
    """Generate, Sweep and Injection tabs over AppState's model and steering recipe."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Steering")
        self.state = state
        self.generate = GenerateTab(state)
        self.sweep = SweepTab(state)
        self.injection = InjectionTab(state)
        self.generate.hooks_ready.connect(self.sweep.set_hooks)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.generate, "Generate")
        self.tabs.addTab(self.sweep, "Sweep")
        self.tabs.addTab(self.injection, "Injection")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)

    # ------------------------------------------------------------ session
    def session_state(self) -> dict[str, Any]:
        """Prompt and generation settings, the concept editor, sweep and injection settings
        and the open tab (the recipe itself is AppState's and saved with it)."""
        return {"tab": TABS[self.tabs.currentIndex()], "generate": self.generate.session_state(),
                "sweep": self.sweep.session_state(), "injection": self.injection.session_state()}

    def restore_session(self, data: dict[str, Any]) -> None:
        """Restore what ``session_state`` saved; unknown or missing keys are skipped."""
        if not isinstance(data, dict):
            return
        for name, tab in (("generate", self.generate), ("sweep", self.sweep), ("injection", self.injection)):
            if isinstance(data.get(name), dict):
                tab.restore_session(data[name])
        if data.get("tab") in TABS:
            self.tabs.setCurrentIndex(TABS.index(data["tab"]))

    def cancel_requests(self) -> None:
        for tab in (self.generate, self.sweep, self.injection):
            tab.jobs.forget_all()

    # ------------------------------------------------------------ export
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        """Paint the open tab: the two texts, the sweep heatmap or the injection table."""
        tab = (self.generate, self.sweep, self.injection)[self.tabs.currentIndex()]
        painter.save()
        try:
            tab.paint_figure(painter, rect)
        finally:
            painter.restore()
