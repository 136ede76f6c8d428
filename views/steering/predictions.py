"""The Generate tab's page for classifiers: the store's images classified without and with
the recipe, per class (images predicted as it, mean probability), with the accuracies and
how many images changed class."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from engine.api import PredictionShift

COLUMNS = ("class", "n before", "n after", "change", "p before", "p after")  # n: images, p: mean probability
GAIN, LOSS = QColor("#cfe8cf"), QColor("#f5d0d0")


def summary_text(r: PredictionShift) -> str:
    """One line: accuracies before and after, images that changed class."""
    acc = ("" if r.label is None else
           f"Accuracy on {r.label}: {r.accuracy_before:.1%} \u2192 {r.accuracy_after:.1%}. ")
    return (f"{acc}{r.changed} of {r.n} images change class under the recipe ({r.model_id}). "
            "n: images predicted as the class; p: its mean probability.")


class PredictionPanel(QWidget):
    """A class x (before, after, change) table and the summary line above it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result: PredictionShift | None = None
        self.summary = QLabel("Classifier: the store's images are classified without and with the recipe.")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        header.setMinimumSectionSize(header.fontMetrics().horizontalAdvance("n before") + 14)
        self.table.setToolTip("Images predicted as each class without and with the recipe, and the "
                              "class's mean softmax probability")
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        v = QVBoxLayout(self)
        v.setContentsMargins(0, 0, 0, 0)
        v.addWidget(self.summary)
        v.addWidget(self.table, 1)

    def show_result(self, r: PredictionShift) -> None:
        self.result = r
        self.summary.setText(summary_text(r))
        self.table.setRowCount(len(r.classes))
        for k, name in enumerate(r.classes):
            change = int(r.after[k]) - int(r.before[k])
            cells = (name, str(int(r.before[k])), str(int(r.after[k])), f"{change:+d}",
                     f"{r.prob_before[k]:.3f}", f"{r.prob_after[k]:.3f}")
            for c, text in enumerate(cells):
                cell = QTableWidgetItem(text)
                cell.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                if change:
                    cell.setBackground(GAIN if change > 0 else LOSS)
                self.table.setItem(k, c, cell)

    def html(self) -> str:
        """The table as HTML, for the exported figure."""
        r = self.result
        if r is None:
            return "<p>No predictions yet.</p>"
        head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
        rows = []
        for k in range(self.table.rowCount()):
            cells = "".join(f"<td align='center'>{html.escape(self.table.item(k, c).text())}</td>"
                            for c in range(len(COLUMNS)))
            rows.append(f"<tr>{cells}</tr>")
        return (f"<p>{html.escape(summary_text(r))}</p><table border='1' cellspacing='0' cellpadding='3'>"
                f"<tr>{head}</tr>{''.join(rows)}</table>")
