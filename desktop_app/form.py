"""Small builders the job dialogs share: number boxes, a field with buttons beside it, and
the colour of a refusal."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QSpinBox, QWidget

ERROR_STYLE = "color: #b00020;"  # a refused field's message


def spin(lo: int, hi: int, value: int, step: int = 1) -> QSpinBox:
    """An integer box from ``lo`` to ``hi`` showing ``value`` with thousands separators."""
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    box.setSingleStep(step)
    box.setGroupSeparatorShown(True)
    return box


def field_row(*widgets: QWidget) -> QWidget:
    """``widgets`` side by side in one form row, the first taking the spare width (a path
    field and its Browse button)."""
    holder = QWidget()
    row = QHBoxLayout(holder)
    row.setContentsMargins(0, 0, 0, 0)
    for i, w in enumerate(widgets):
        row.addWidget(w, 1 if i == 0 else 0)
    return holder
