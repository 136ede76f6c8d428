"""The Generate tab's concept box: a name and two prompt sets (one text per line) whose mean
activations' difference becomes a steering direction at a middle-early residual layer; the
sets can be loaded from the CLI's SETS.json."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.api import OCEAN_TEXTS, OTHER_TEXTS, load_concept_sets
from engine.errors import LatentLabError
from views.common.requests import Requests


class ConceptBox(QWidget):
    """Name, "About it" and "Contrast" texts, "Load sets…" and "Add concept vector" (which
    hands the new item to ``add_item``, at the hook point ``layer()`` names)."""

    def __init__(self, jobs: Requests, add_item: Callable[[dict[str, Any]], None],
                 layer: Callable[[], str | None], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.jobs, self.add_item, self.layer = jobs, add_item, layer
        self.setToolTip("A concept vector: the mean activation of the first prompt set minus the "
                        "second's (one text per line)")
        self.concept_name = QLineEdit("ocean")
        self.positive = QPlainTextEdit("\n".join(OCEAN_TEXTS))
        self.negative = QPlainTextEdit("\n".join(OTHER_TEXTS))
        for w in (self.positive, self.negative):
            w.setMaximumHeight(90)
        form = QFormLayout()
        form.addRow("Name", self.concept_name)
        form.addRow("About it", self.positive)
        form.addRow("Contrast", self.negative)
        self.add_button = QPushButton("Add concept vector")
        self.add_button.clicked.connect(self.add_concept)
        self.load_button = QPushButton("Load sets\u2026")
        self.load_button.setToolTip('A JSON file: {"positive": [texts], "negative": [texts]}')
        self.load_button.clicked.connect(self._ask_load)
        row = QHBoxLayout()
        row.addWidget(self.load_button)
        row.addWidget(self.add_button, 1)
        v = QVBoxLayout(self)
        v.addLayout(form)
        v.addLayout(row)

    def add_concept(self) -> None:
        """Add a concept vector (mean of the first set minus the second) at the default layer."""
        pos = [t for t in self.positive.toPlainText().splitlines() if t.strip()]
        neg = [t for t in self.negative.toPlainText().splitlines() if t.strip()]
        if not pos or not neg:
            self.jobs.show_error("A concept needs at least one text in each set.")
            return
        hook = self.layer()
        if hook is None:
            self.jobs.show_error("No model to steer: open a workspace or a store first.")
            return
        self.add_item({"kind": "concept", "name": self.concept_name.text().strip() or "concept",
                       "hook": hook, "strength": 2.0, "range": 8.0, "positive": pos, "negative": neg,
                       "enabled": True})

    def load_concept(self, path: str | Path) -> None:
        """Fill the box from a prompt-set file (the CLI's SETS.json)."""
        sets = load_concept_sets(path)
        self.concept_name.setText(Path(path).stem)
        self.positive.setPlainText("\n".join(sets["positive"]))
        self.negative.setPlainText("\n".join(sets["negative"]))

    def _ask_load(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load concept prompt sets", "", "JSON (*.json)")
        if path:
            try:
                self.load_concept(path)
            except LatentLabError as exc:
                self.jobs.show_error(str(exc))

    def session_state(self) -> dict[str, Any]:
        return {"name": self.concept_name.text(), "positive": self.positive.toPlainText(),
                "negative": self.negative.toPlainText()}

    def restore_session(self, data: dict[str, Any]) -> None:
        self.concept_name.setText(str(data.get("name", "")))
        self.positive.setPlainText(str(data.get("positive", "")))
        self.negative.setPlainText(str(data.get("negative", "")))
