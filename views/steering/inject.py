"""The steering view's Injection tab: inject an intervention's direction at its layer while
the model answers questions about its own state, at several strengths (0 is the control),
and tabulate, answer by answer as they arrive, whether the answer names the concept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop_app.state import AppState
from engine.api import (
    DEFAULT_QUESTIONS,
    OCEAN_WORDS,
    InjectionResult,
    InjectionTrial,
    inject_item,
    naming_rates,
)
from views.common.plots import paint_hint, paint_table
from views.common.requests import Requests
from views.steering.common import (
    ItemPicker,
    chosen_item,
    field_values,
    job_bar,
    parse_lines,
    parse_numbers,
    parse_words,
    printable,
    restore_fields,
)

COLUMNS = ("strength", "question", "names concept", "words", "answer")
YES_BG, NO_BG = QColor(200, 235, 200), QColor(245, 245, 245)


class InjectionTab(QWidget):
    """Settings, Run/Cancel, the table of answers and the naming rate per strength."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.trials: list[InjectionTrial] = []
        self.strength_list: list[float] = []
        self.result: InjectionResult | None = None  # the last finished run
        self._build()
        self.jobs = Requests(state, self.progress, self.status, self, prefix="steering")

    def _build(self) -> None:
        self.picker = ItemPicker(self.state)
        self.strengths = QLineEdit("0, 1.5, 2, 2.5, 3")
        self.words = QLineEdit(", ".join(OCEAN_WORDS))
        self.questions = QPlainTextEdit("\n".join(DEFAULT_QUESTIONS))
        self.questions.setMaximumHeight(90)
        self.tokens = QSpinBox()
        self.tokens.setRange(1, 512)
        self.tokens.setValue(20)
        form = QFormLayout()
        form.addRow("Direction (at its layer)", self.picker)
        form.addRow("Strengths", self.strengths)
        form.addRow("Concept words", self.words)
        form.addRow("Questions (one per line)", self.questions)
        form.addRow("Answer tokens", self.tokens)
        buttons = job_bar(self, "Run injection", "inject", "injection")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setWordWrap(True)
        header = self.table.horizontalHeader()
        for c in range(len(COLUMNS) - 1):
            header.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(len(COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        self.rates = QLabel("")
        self.rates.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.rates)

    def run(self) -> None:
        """Start the injection trials (replacing a running run)."""
        item = chosen_item(self)
        if item is None:
            return
        try:
            strengths = parse_numbers(self.strengths.text(), "Strengths")
            words = parse_words(self.words.text(), "Concept words")
            questions = parse_lines(self.questions.toPlainText(), "Questions", "question")
        except ValueError as exc:
            self.jobs.show_error(str(exc))
            return
        self.trials, self.strength_list, self.result = [], strengths, None
        self.table.setRowCount(0)
        self.rates.setText("")
        self.jobs.submit("inject", f"concept injection of {item.get('name')}", inject_item, self._on_result,
                         on_partial=self._add_trial, model=self.state.model, item=item, strengths=strengths,
                         words=words, questions=questions, max_new_tokens=self.tokens.value())

    def _add_trial(self, trial: InjectionTrial) -> None:
        self.trials.append(trial)
        r = self.table.rowCount()
        self.table.insertRow(r)
        cells = self.row_texts(trial)
        for c, text in enumerate(cells):
            cell = QTableWidgetItem(text)
            cell.setBackground(YES_BG if trial.names_concept else NO_BG)
            if c < len(COLUMNS) - 1:
                cell.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            self.table.setItem(r, c, cell)
        self._show_rates()

    @staticmethod
    def row_texts(trial: InjectionTrial) -> list[str]:
        return [f"{trial.strength:g}", str(trial.question + 1), "yes" if trial.names_concept else "no",
                ", ".join(trial.matched), printable(trial.answer).replace("\n", " ")]

    def _on_result(self, result: InjectionResult) -> None:
        if len(self.trials) != len(result.trials):  # partials dropped or none: show them all
            self.trials = []
            self.table.setRowCount(0)
            for trial in result.trials:
                self._add_trial(trial)
        self.strength_list = list(result.strengths)
        self.result = result
        self._show_rates()

    def _show_rates(self) -> None:
        rates = naming_rates(self.trials, self.strength_list)
        parts = []
        for s, rate in zip(self.strength_list, rates, strict=True):
            n = sum(1 for t in self.trials if t.strength == s)
            parts.append(f"strength {s:g}: {rate:.0%} of {n}" if n else f"strength {s:g}: \u2014")
        self.rates.setText("Answers naming the concept \u2014 " + "; ".join(parts))

    def save_results(self, path: str | Path) -> None:
        """Write the finished injection as JSON (the CLI's ``--out`` format)."""
        if self.result is None:
            raise ValueError("No finished injection to save yet.")
        self.result.save(path)

    # ------------------------------------------------------------ export and session
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        painter.fillRect(rect, QColor("white"))
        if not self.trials:
            paint_hint(painter, rect, "No injection trials yet")
            return
        painter.drawText(QRectF(rect.left(), rect.top(), rect.width(), 28), Qt.AlignmentFlag.AlignCenter,
                         self.rates.text())
        rows = [[*self.row_texts(t)[:4], self.row_texts(t)[4][:70]] for t in self.trials]
        paint_table(painter, rect.adjusted(8, 32, -8, -8), list(COLUMNS), rows)

    def _fields(self) -> dict[str, QWidget]:
        return {"strengths": self.strengths, "words": self.words, "questions": self.questions,
                "tokens": self.tokens}

    def cancel_requests(self) -> None:
        """Cancel this tab's running jobs and drop their answers."""
        self.jobs.forget_all()

    def session_state(self) -> dict[str, Any]:
        return field_values(self._fields())

    def restore_session(self, data: dict[str, Any]) -> None:
        restore_fields(self._fields(), data)
