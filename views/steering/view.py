"""The steering view: change a model's activations and watch what it says. The Generate tab
holds the interventions (focused SAE latents, concept vectors) with strength and layer
sliders and shows the baseline and steered continuations side by side; the Sweep tab maps
a concept's effect over strengths x layers as a heatmap; the Injection tab asks the model
about its own state while a concept is injected and tabulates whether it names it."""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

from desktop_app.state import AppState
from views.common.tabs import TabbedView
from views.steering.generate import GenerateTab
from views.steering.inject import InjectionTab
from views.steering.sweep import SweepTab


class SteeringView(TabbedView):
    """Generate, Sweep and Injection tabs over AppState's model and steering recipe (the
    recipe itself is AppState's and saved with it)."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        generate, sweep, injection = GenerateTab(state), SweepTab(state), InjectionTab(state)
        super().__init__("Steering", [("generate", "Generate", generate), ("sweep", "Sweep", sweep),
                                      ("injection", "Injection", injection)], parent)
        self.state, self.generate, self.sweep, self.injection = state, generate, sweep, injection
        self.generate.hooks_ready.connect(self.sweep.set_hooks)
