"""The feature browser's "changed by steering" list (private to views/features/view.py): the
SAE latents whose mean activation moved most between the steering view's baseline run and
its steered run (``state.trails``, ranked by the engine's ``rank_latent_changes``); a click
focuses the latent."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from engine.api import LatentChanges, Trail

SHOWN = 12  # latents listed


def compared_runs(trails: Sequence[Trail]) -> tuple[Trail, Trail] | None:
    """The baseline and the steered run to compare: the one steered run, or a sweep's
    strongest; None without both."""
    base = next((t for t in trails if t.which == "baseline"), None)
    steered = [t for t in trails if t.which != "baseline"]
    if base is None or not steered:
        return None
    return base, max(steered, key=lambda t: abs(t.strength) if t.strength is not None else 0.0)


class ChangedLatents(QWidget):
    """Title and list of the latents steering changed most; hidden when there is none."""

    latent_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.list = QListWidget()
        self.list.setMaximumHeight(120)
        self.list.setWordWrap(True)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.itemClicked.connect(self._on_clicked)
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        col.addWidget(self.title)
        col.addWidget(self.list)
        self.hide()

    def computing(self, label: str) -> None:
        self.title.setText(f"Changed by steering ({label}): computing\u2026")
        self.list.clear()
        self.show()

    def set_changes(self, changes: LatentChanges | None, label: str = "", labels: Sequence[str] = ()) -> None:
        """List ``changes`` (``labels[j]`` beside latent j); None hides the list."""
        self.list.clear()
        if changes is None:
            self.hide()
            return
        self.title.setText(f"<b>Changed most by steering</b> (baseline \u2192 {label}, mean over the run's tokens)")
        for j, d, a, b in list(zip(changes.latents, changes.change, changes.baseline, changes.steered,
                                   strict=True))[:SHOWN]:
            text = labels[j] if j < len(labels) else ""
            item = QListWidgetItem(f"{j}  {d:+.3f}  ({a:.3f} \u2192 {b:.3f})  {text}")
            item.setData(Qt.ItemDataRole.UserRole, int(j))
            self.list.addItem(item)
        if not self.list.count():
            self.list.addItem(QListWidgetItem("no latent changed"))
        self.show()

    def _on_clicked(self, item: QListWidgetItem) -> None:
        latent = item.data(Qt.ItemDataRole.UserRole)
        if latent is not None:
            self.latent_clicked.emit(int(latent))
