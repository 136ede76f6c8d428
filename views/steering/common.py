"""Pieces the steering view's tabs share: a picker of the recipe's interventions, the
Run/Cancel/Save bar with its status line, parsing of what is typed into the settings
(numbers, words, one text per line), and saving and restoring those settings."""

from __future__ import annotations

import re
from typing import Any

from PySide6.QtCore import QSignalBlocker
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from desktop_app.state import AppState
from engine.api import Vocab


def printable(text: str) -> str:
    """Generated text with control characters shown as symbols (newlines and tabs kept):
    they would be invisible on screen and make an exported SVG invalid XML."""
    return "".join(Vocab.visible(ch) if (ch < " " and ch not in "\n\t") or ch == "\x7f" else ch for ch in text)


def short_hook(hook: str) -> str:
    """A hook point as the lists show it: ``blocks.15.hook_resid_post`` as ``L15 resid_post``."""
    return re.sub(r"^blocks\.(\d+)\.hook_", r"L\1 ", hook)


def resid_hooks(hooks: list[str]) -> list[str]:
    """The residual-stream hook points in layer order (what the layer slider walks)."""
    found = [(int(m.group(1)), h) for h in hooks if (m := re.match(r"^blocks\.(\d+)\.hook_resid_post$", h))]
    return [h for _, h in sorted(found)] or list(hooks)


def default_layer(hooks: list[str]) -> str | None:
    """A middle-early residual layer (30% of the depth): concept vectors there steer text
    without swamping it (see the SmolLM2 tests)."""
    return hooks[(len(hooks) * 3) // 10] if hooks else None


def item_label(item: dict[str, Any]) -> str:
    """How an intervention is listed: name, layer and what it does at which strength."""
    hook = short_hook(str(item.get("hook", "")))
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


def parse_lines(text: str, field: str, noun: str) -> list[str]:
    """The non-blank lines of a text box; ValueError naming ``field`` when there are none."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{field}: type at least one {noun}")
    return lines


def status_row(tab: Any) -> QHBoxLayout:
    """``tab.status`` (a wrapping line) beside ``tab.progress``: where the tab's Requests
    shows its jobs' progress and failures."""
    tab.status = QLabel("")
    tab.status.setWordWrap(True)
    tab.progress = QProgressBar()
    tab.progress.setMaximumWidth(160)
    row = QHBoxLayout()
    row.addWidget(tab.status, 1)
    row.addWidget(tab.progress)
    return row


def job_bar(tab: Any, run_label: str, kind: str, results: str) -> QHBoxLayout:
    """``tab.run_button`` (calls ``tab.run``), ``tab.cancel_button`` (cancels the tab's job
    ``kind``) and ``tab.save_button`` (saves its ``results`` as JSON), then the status row."""
    tab.run_button = QPushButton(run_label)
    tab.run_button.clicked.connect(tab.run)
    tab.cancel_button = QPushButton("Cancel")
    tab.cancel_button.clicked.connect(lambda: tab.jobs.cancel(kind))
    tab.save_button = QPushButton("Save results\u2026")
    tab.save_button.clicked.connect(lambda: ask_save(tab, results))
    bar = QHBoxLayout()
    for button in (tab.run_button, tab.cancel_button, tab.save_button):
        bar.addWidget(button)
    bar.addLayout(status_row(tab), 1)
    return bar


def chosen_item(tab: Any) -> dict[str, Any] | None:
    """The intervention picked in ``tab.picker``; None, said in the tab's status line, when
    there is none or no model to run it on."""
    item = tab.picker.item()
    if item is None or tab.state.model is None:
        tab.jobs.show_error("Add an intervention in the Generate tab first (a model must be open).")
        return None
    return item


def field_values(fields: dict[str, QWidget]) -> dict[str, Any]:
    """The settings in ``fields`` (name -> line edit, text box, spin box or combo box) for a
    session file."""
    out: dict[str, Any] = {}
    for key, w in fields.items():
        if isinstance(w, QLineEdit):
            out[key] = w.text()
        elif isinstance(w, QPlainTextEdit):
            out[key] = w.toPlainText()
        elif isinstance(w, QSpinBox):
            out[key] = w.value()
        elif isinstance(w, QComboBox):
            out[key] = w.currentText()
    return out


def restore_fields(fields: dict[str, QWidget], data: dict[str, Any]) -> None:
    """Put what ``field_values`` saved back; values of the wrong type, combo texts that are
    not among the choices and missing keys are skipped."""
    for key, w in fields.items():
        value = data.get(key)
        if isinstance(w, QLineEdit) and isinstance(value, str):
            w.setText(value)
        elif isinstance(w, QPlainTextEdit) and isinstance(value, str):
            w.setPlainText(value)
        elif isinstance(w, QSpinBox) and isinstance(value, int):
            w.setValue(value)
        elif isinstance(w, QComboBox) and isinstance(value, str) and w.findText(value) >= 0:
            w.setCurrentText(value)


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
