"""Pieces the steering view's Sweep and Injection tabs share: a picker of the recipe's
interventions and parsing of the comma-separated numbers and words typed into them."""

from __future__ import annotations

import re
from typing import Any

from PySide6.QtCore import QSignalBlocker
from PySide6.QtWidgets import QComboBox, QFileDialog, QWidget

from desktop_app.state import AppState
from engine.tokens import Vocab


def printable(text: str) -> str:
    """Generated text with control characters shown as symbols (newlines and tabs kept):
    they would be invisible on screen and make an exported SVG invalid XML."""
    return "".join(Vocab.visible(ch) if (ch < " " and ch not in "\n\t") or ch == "\x7f" else ch for ch in text)


def item_label(item: dict[str, Any]) -> str:
    """How an intervention is listed: name, layer and what it does at which strength."""
    hook = re.sub(r"^blocks\.(\d+)\.hook_", r"L\1 ", str(item.get("hook", "")))
    if item.get("kind") == "latent" and item.get("mode") in ("ablate", "mean-ablate"):
        how = str(item["mode"])
    else:
        verb = "clamp to" if item.get("mode") == "clamp" else "\u00d7"
        how = f"{verb} {float(item.get('strength', 0.0)):+.2f}"
    return f"{item.get('name', item.get('kind'))} \u00b7 {hook} \u00b7 {how}"


def parse_numbers(text: str, field: str) -> list[float]:
    """Comma- or space-separated numbers; ValueError naming ``field`` and the bad entry."""
    out = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise ValueError(f"{field}: {part!r} is not a number") from None
    if not out:
        raise ValueError(f"{field}: type at least one number")
    return out


def parse_words(text: str, field: str) -> list[str]:
    """Comma-separated words or phrases; ValueError naming ``field`` when there are none."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise ValueError(f"{field}: type at least one word")
    return words


class ItemPicker(QComboBox):
    """The recipe's interventions by name, kept in step with AppState's recipe; the chosen
    one survives edits to the recipe where it still exists."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        state.steering_changed.connect(self._refill)
        self._refill(state.steering)

    def _refill(self, recipe: tuple[dict[str, Any], ...]) -> None:
        keep = self.currentIndex()
        with QSignalBlocker(self):
            self.clear()
            for item in recipe:
                self.addItem(item_label(item))
            if recipe:
                self.setCurrentIndex(min(max(keep, 0), len(recipe) - 1))
        self.setToolTip("" if recipe else "Add an intervention in the Generate tab first")

    def item(self) -> dict[str, Any] | None:
        """The chosen intervention (a copy), or None when the recipe is empty."""
        i = self.currentIndex()
        return dict(self.state.steering[i]) if 0 <= i < len(self.state.steering) else None


def ask_save(tab: Any, kind: str) -> None:
    """Ask where to save ``tab``'s finished results as JSON and save them there with its
    ``save_results``; a failure is shown in the tab's status line."""
    path, _ = QFileDialog.getSaveFileName(tab, f"Save {kind} results", f"{kind}.json", "JSON (*.json)")
    if path:
        try:
            tab.save_results(path)
        except (OSError, ValueError) as exc:
            tab.jobs.show_error(f"Could not save {path}: {exc}")
        else:
            tab.status.setText(f"Saved {path}")
