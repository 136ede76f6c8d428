"""The Generate tab's delta-vector box: group A and group B of the active store's rows (a
selection taken from AppState, the rows of one label value, or, for B, the rest), and the
job that turns mean(A) - mean(B) at a hook point into a steering direction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PySide6.QtCore import QSignalBlocker
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.state import ROWS, AppState, Selection
from engine.api import (
    REST,
    DeltaVector,
    LabelValue,
    StoreGroups,
    delta_item,
    delta_vector,
    store_groups,
)
from views.common.requests import Requests

SELECTION, LABEL = "a selection", "a label value"
A_KINDS, B_KINDS = (SELECTION, LABEL), ("the rest", SELECTION, LABEL)


class _Group:
    """One group's widgets: what it is (kind), the label value, the taken selection."""

    def __init__(self, name: str, kinds: tuple[str, ...], state: AppState) -> None:
        self.name, self.state = name, state
        self.kind = QComboBox()
        self.kind.addItems(kinds)
        self.value = QComboBox()
        self.value.setMinimumContentsLength(8)
        self.value.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.take = QPushButton(f"{name} := selection")
        self.take.setToolTip(f"Group {name} becomes the rows selected now (in the scatter, the browser\u2026)")
        self.take.clicked.connect(self.take_selection)
        self.taken: Selection | None = None
        self.kind.currentTextChanged.connect(self._on_kind)
        self._on_kind(self.kind.currentText())

    def row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        for w, stretch in ((self.kind, 0), (self.value, 1), (self.take, 0)):
            row.addWidget(w, stretch)
        return row

    def _on_kind(self, kind: str) -> None:
        self.value.setVisible(kind == LABEL)
        self.take.setVisible(kind == SELECTION)

    def take_selection(self) -> None:
        """Keep AppState's row selection (as it is now) as this group; switch the kind to it."""
        sel = self.state.selection
        self.taken = sel if sel.kind == ROWS and len(sel) else None
        self.kind.setCurrentText(SELECTION)

    def group(self, label: str) -> tuple[Any, str] | str:
        """The group for the engine and how it is named; a sentence when it is not complete."""
        kind = self.kind.currentText()
        if kind == SELECTION:
            if self.taken is None:
                return f"Group {self.name}: select rows (a lasso in the scatter), then press {self.take.text()}."
            return self.taken.ids, f"{len(self.taken)} selected rows"
        if kind == LABEL:
            value = self.value.currentData()
            if not label or value is None:
                return f"Group {self.name}: the store has no label values to choose from."
            return LabelValue(label, int(value)), f"{label}={self.value.currentText().split(' (')[0]}"
        return REST, "the rest"

    def summary(self) -> str:
        kind = self.kind.currentText()
        if kind == SELECTION:
            return f"{len(self.taken)} rows" if self.taken is not None else "not taken yet"
        return self.value.currentText() if kind == LABEL else "every other row"


class DeltaBox(QWidget):
    """Group A, group B, the hook point and label, and "Add delta vector" (a job)."""

    def __init__(self, state: AppState, jobs: Requests, add_item: Callable[[dict[str, Any]], None],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state, self.jobs, self.add_item = state, jobs, add_item
        self.groups_info: StoreGroups | None = None
        self.last: DeltaVector | None = None
        self.a, self.b = _Group("A", A_KINDS, state), _Group("B", B_KINDS, state)
        self.hook, self.label = QComboBox(), QComboBox()
        for combo in (self.hook, self.label):  # their names come later: they must not widen the view
            combo.setMinimumContentsLength(12)
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.label.currentTextChanged.connect(self._fill_values)
        self.add_button = QPushButton("Add delta vector")
        self.add_button.setToolTip("mean(A) \u2212 mean(B) at the hook point, as an intervention")
        self.add_button.clicked.connect(self.add_delta)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Hook", self.hook)
        form.addRow("Label", self.label)
        form.addRow("Group A", self.a.row())
        form.addRow("Group B", self.b.row())
        v = QVBoxLayout(self)
        v.addLayout(form)
        v.addWidget(self.add_button)
        v.addWidget(self.info)
        v.addStretch(1)
        for g in (self.a, self.b):
            g.take.clicked.connect(self._show_summary)
            g.kind.currentTextChanged.connect(self._show_summary)
            g.value.currentTextChanged.connect(self._show_summary)
        state.store_changed.connect(self._on_store_changed)
        state.hook_changed.connect(self._pick_hook)
        self._on_store_changed(state.store)

    # ------------------------------------------------------------ AppState handlers
    def _on_store_changed(self, store: Any) -> None:
        """The store's hook points and label values (a job); groups taken from the old one go."""
        self.groups_info = None
        self.a.taken = self.b.taken = None
        for combo in (self.hook, self.label, self.a.value, self.b.value):
            combo.clear()
        self._show_summary()
        if store is not None and self.state.engine is not None:
            self.jobs.submit("groups", "hook points and labels of the store", store_groups, self._on_groups,
                             store_path=str(store))

    def _on_groups(self, info: StoreGroups) -> None:
        self.groups_info = info
        with QSignalBlocker(self.hook), QSignalBlocker(self.label):
            self.hook.addItems(info.hooks)
            self.label.addItems(list(info.labels))
        self._pick_hook(self.state.hook)
        self._fill_values(self.label.currentText())

    def _pick_hook(self, hook: str | None) -> None:
        if hook is not None and self.hook.findText(hook) >= 0:
            self.hook.setCurrentText(hook)

    def _fill_values(self, label: str) -> None:
        values = self.groups_info.labels.get(label, []) if self.groups_info else []
        for k, combo in enumerate((self.a.value, self.b.value)):
            with QSignalBlocker(combo):
                combo.clear()
                for value, name, rows in values:
                    combo.addItem(f"{name} ({rows} rows)", value)
                combo.setCurrentIndex(min(k, combo.count() - 1))
        self._show_summary()

    def _show_summary(self, *_: Any) -> None:
        self.info.setText(f"A: {self.a.summary()} \u00b7 B: {self.b.summary()}")

    # ------------------------------------------------------------ the job
    def add_delta(self) -> None:
        """Submit the delta-vector job for the groups as they stand; a missing piece is said."""
        if self.state.store is None or not self.hook.currentText():
            self.jobs.show_error("Open a store first: a delta vector is made of its rows.")
            return
        a, b = self.a.group(self.label.currentText()), self.b.group(self.label.currentText())
        for g in (a, b):
            if isinstance(g, str):
                self.jobs.show_error(g)
                return
        (rows_a, name_a), (rows_b, name_b) = a, b
        self.jobs.submit("delta", "delta vector of two groups of rows", delta_vector,
                         lambda d: self._on_delta(d, name_a, name_b), store_path=str(self.state.store),
                         hook=self.hook.currentText(), a=_plain(rows_a), b=_plain(rows_b))

    def _on_delta(self, delta: DeltaVector, a: str, b: str) -> None:
        self.last = delta
        self.info.setText(f"A: {a} ({delta.n_a} rows) \u2212 B: {b} ({delta.n_b} rows); "
                          f"\u2016A\u2212B\u2016 = {delta.norm:.3g}")
        self.add_item(delta_item(delta, f"{a} \u2212 {b}", a, b))

    def session_state(self) -> dict[str, Any]:
        return {"a": self.a.kind.currentText(), "b": self.b.kind.currentText(), "label": self.label.currentText()}

    def restore_session(self, data: dict[str, Any]) -> None:
        for g, key in ((self.a, "a"), (self.b, "b")):
            if isinstance(data.get(key), str) and g.kind.findText(data[key]) >= 0:
                g.kind.setCurrentText(data[key])
        if isinstance(data.get("label"), str) and self.label.findText(data["label"]) >= 0:
            self.label.setCurrentText(data["label"])


def _plain(group: Any) -> Any:
    """A group as the job takes it (row ids as a plain int64 array)."""
    return np.asarray(group, np.int64) if isinstance(group, np.ndarray) else group
