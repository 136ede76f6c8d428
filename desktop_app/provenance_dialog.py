"""View > Provenance: the record of what the current view draws (its inputs with content
hashes, model, SAE, parameters, version, time, and the records of the layouts it shows), as
readable text, with the JSON an export would write beside the figure one click away."""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from desktop_app.figure import figure_record
from desktop_app.view import figure_projections
from engine.api import describe_record


def current_view(views: dict[str, Any]) -> tuple[str, Any] | None:
    """The view holding the keyboard focus, else the first one on screen, else the first."""
    focus = QApplication.focusWidget()
    for name, view in views.items():
        if focus is not None and (view is focus or view.isAncestorOf(focus)):
            return name, view
    shown = [(n, v) for n, v in views.items() if v.isVisible()]
    return (shown or list(views.items()) or [None])[0]


def provenance_text(name: str, view: Any, state: Any) -> tuple[str, dict[str, Any]]:
    """The readable text and the figure record of ``view`` as it draws now."""
    record = figure_record(view, state, 1200, 900, 150)
    shown = {**record["provenance"], "kind": "view", "params": record["view_state"]}  # no export size yet
    parts = [f"{name} view as drawn now\n" + describe_record(shown)]
    for layout in figure_projections(view):
        drawn = None if state is None else state.projections.get(layout)
        if drawn is not None:
            parts.append(f"layout {layout}\n" + describe_record(drawn.provenance))
    return "\n\n".join(parts), record


class ProvenanceDialog(QDialog):
    """The current view's record as text; Copy JSON puts the whole record on the clipboard."""

    def __init__(self, name: str, view: Any, state: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Provenance: {name}")
        text, self.record = provenance_text(name, view, state)
        self.text = QPlainTextEdit(text)
        self.text.setReadOnly(True)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.text.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        copy = buttons.addButton("Copy JSON", QDialogButtonBox.ButtonRole.ActionRole)
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(json.dumps(self.record, indent=2)))
        buttons.rejected.connect(self.reject)
        col = QVBoxLayout(self)
        col.addWidget(QLabel("Where this view's figure comes from (an export writes it beside the image "
                             "as F.json; <tt>main.py render F.json --out F.png</tt> draws it again):"))
        col.addWidget(self.text, 1)
        col.addWidget(buttons)
        self.resize(760, 420)


def show_provenance(window: Any) -> ProvenanceDialog | None:
    """Open the dialog for the window's current view (non-modal); None without views."""
    found = current_view(window.views)
    if found is None:
        return None
    dialog = ProvenanceDialog(found[0], found[1], window.state, window)
    dialog.show()
    return dialog
