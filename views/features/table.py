"""The feature browser's tables: the table of latents (a Qt model whose rows sort in numpy
and filter by a precomputed mask, fast for 100k latents; the proxy that delegates both to
it; a view that shows the columns that fit its width, each wide enough for its longest
text, so none is elided), and the small tables of a latent's details (``small_table``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QFontMetrics, QResizeEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
)

from engine import api

COLUMNS = ("latent", "density", "max", "mean", "label association", "auto-label")
SORT_ROLE = Qt.ItemDataRole.UserRole  # numbers for numeric columns, text for the others
PRIORITY = (0, 5, 1, 4, 2, 3)  # the columns kept when not all fit: latent, auto-label, density, ...
STRETCH = 5  # the column that takes the room left over
CELL_PADDING = 14  # a cell's margins and focus frame beside its text
ROW_HEIGHT = 20


class LatentTableModel(QAbstractTableModel):
    """One row per latent; rows sort in numpy (``sort``) and filter by a precomputed mask."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.data_: api.BrowserData | None = None
        self._order = np.zeros(0, np.int64)  # row -> latent
        self._row_of = np.zeros(0, np.int64)  # latent -> row
        self._accept: list[bool] = []  # per row
        self._mask: np.ndarray | None = None  # (d_sae,) latents to show; None: all

    def set_data(self, data: api.BrowserData | None) -> None:
        self.beginResetModel()
        self.data_, self._mask = data, None
        n = 0 if data is None else len(data.stats.count)
        self._order = np.arange(n)
        self._row_of = np.arange(n)
        self._accept = [True] * n
        self.endResetModel()

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._order)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        label = self.data_.stats.label_name if self.data_ is not None else None
        if role == Qt.ItemDataRole.DisplayRole:
            return label if section == 4 and label else COLUMNS[section]
        if role == Qt.ItemDataRole.ToolTipRole and section == 4:
            return f"label association: the best class of {label or 'the label field'} and its share of the firing rows"
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or self.data_ is None:
            return None
        j, col = int(self._order[index.row()]), index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(j, col)
        if role == SORT_ROLE:
            value = self.sort_key(col)[j]
            return value.item() if isinstance(value, np.generic) else value
        if role == Qt.ItemDataRole.TextAlignmentRole and col < 4:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _text(self, j: int, col: int) -> str:
        d, s = self.data_, self.data_.stats
        return (str(j), f"{s.density[j]:.3%}", f"{s.max[j]:.4g}", f"{s.mean[j]:.4g}",
                d.table.association[j], d.table.labels[j])[col]

    def longest_texts(self, col: int, n: int = 24) -> list[str]:
        """The ``n`` longest texts of a column (by characters): the ones to measure."""
        if self.data_ is None:
            return []
        d_sae = len(self.data_.stats.count)
        if col >= 4:
            texts = self.data_.table.association if col == 4 else self.data_.table.labels
            lengths = np.fromiter((len(t) for t in texts), np.int64, d_sae)
            return [texts[j] for j in np.argsort(-lengths, kind="stable")[:n]]
        key = self.sort_key(col)
        picks = np.unique(np.concatenate([np.argsort(key)[:n // 2], np.argsort(key)[-n // 2:]]))
        return [self._text(int(j), col) for j in picks]

    def sort_key(self, col: int) -> np.ndarray:
        d = self.data_
        s = d.stats
        return (np.arange(len(s.count)), s.density, s.max, s.mean, d.table.precision, d.table.labels)[col]

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Reorder rows by a column's values (numbers numerically), stable, in numpy."""
        if self.data_ is None or not 0 <= column < len(COLUMNS):
            return
        key = self.sort_key(column)
        _, rank = np.unique(np.char.lower(key.astype(str)) if key.dtype == object else key,
                            return_inverse=True)
        up = order == Qt.SortOrder.AscendingOrder
        new = np.argsort(rank if up else -rank, kind="stable")  # ties keep latent order
        self.layoutAboutToBeChanged.emit()
        old_rows = [(i, int(self._order[i.row()])) for i in self.persistentIndexList()]
        self._order = new.astype(np.int64)
        self._row_of = np.empty_like(self._order)
        self._row_of[self._order] = np.arange(len(self._order))
        self._refresh_accept()
        self.changePersistentIndexList([i for i, _ in old_rows],
                                       [self.index(int(self._row_of[j]), i.column()) for i, j in old_rows])
        self.layoutChanged.emit()

    def set_filter(self, mask: np.ndarray | None) -> None:
        """Which latents to show ((d_sae,) bool; None: all); the proxy re-filters after this."""
        self._mask = mask
        self._refresh_accept()

    def _refresh_accept(self) -> None:
        mask = self._mask
        self._accept = [True] * len(self._order) if mask is None else mask[self._order].tolist()

    def accepts(self, row: int) -> bool:
        return self._accept[row]

    def latent_at(self, row: int) -> int:
        return int(self._order[row])

    def row_of(self, latent: int) -> int:
        return int(self._row_of[latent]) if 0 <= latent < len(self._row_of) else -1


class LatentFilterProxy(QSortFilterProxyModel):
    """Filters by the source model's mask; sorting is delegated to the source (numpy)."""

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex) -> bool:
        return self.sourceModel().accepts(source_row)

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        self.sourceModel().sort(column, order)

    def refilter(self) -> None:
        if hasattr(self, "beginFilterChange"):
            self.beginFilterChange()
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self.invalidateRowsFilter()


class LatentTableView(QTableView):
    """The table of latents: on every resize it shows the columns (in PRIORITY order) that
    fit its width at their full text width, the STRETCH column taking what is left; the
    columns left out are named in the header's tooltip."""

    def __init__(self, model: LatentFilterProxy) -> None:
        super().__init__()
        self.setModel(model)
        self.widths: list[int] = []  # per column, the width its header and longest text need
        self.left_out: list[int] = []
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.horizontalHeader().setStretchLastSection(False)

    def measure(self) -> None:
        """Each column's needed width, from its header and its longest texts (after new data)."""
        source: LatentTableModel = self.model().sourceModel()
        fm, header = QFontMetrics(self.font()), self.horizontalHeader()
        self.widths = [max(header.sectionSizeHint(c) + 4,
                           max((fm.horizontalAdvance(t) for t in source.longest_texts(c)), default=0)
                           + CELL_PADDING) for c in range(len(COLUMNS))]
        self.fit()

    def room(self) -> int:
        return self.width() - 2 * self.frameWidth() - self.verticalScrollBar().sizeHint().width()

    def fit(self) -> None:
        if not self.widths:
            return
        room, used, shown = self.room(), 0, []
        for c in PRIORITY:
            if not shown or used + self.widths[c] <= room:
                shown.append(c)
                used += self.widths[c]
        self.left_out = [c for c in range(len(COLUMNS)) if c not in shown]
        spare = max(0, room - used)
        target = STRETCH if STRETCH in shown else shown[-1]
        for c in range(len(COLUMNS)):
            self.setColumnHidden(c, c not in shown)
            if c in shown:
                self.setColumnWidth(c, self.widths[c] + (spare if c == target else 0))
        names = [str(self.model().headerData(c, Qt.Orientation.Horizontal)) for c in self.left_out]
        self.horizontalHeader().setToolTip(f"not shown for lack of room: {', '.join(names)} (widen the panel)"
                                           if names else "")

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.fit()


def small_table(headers: Sequence[str]) -> QTableWidget:
    """A read-only table of a few rows whose columns are as wide as their contents (never
    elided) and whose rows are whole-row selected."""
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(list(headers))
    table.verticalHeader().hide()
    table.verticalHeader().setDefaultSectionSize(ROW_HEIGHT)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.horizontalHeader().setStretchLastSection(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    return table


def fill_table(table: QTableWidget, rows: Sequence[Sequence[str]], data: Sequence[Any] | None = None,
               numeric: Sequence[int] = ()) -> None:
    """Put ``rows`` of texts in ``table``; ``data[i]`` goes to row i's first cell as its
    user data; the ``numeric`` columns are right-aligned."""
    table.setRowCount(len(rows))
    right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
    for r, texts in enumerate(rows):
        for c, text in enumerate(texts):
            item = QTableWidgetItem(text)
            if c in numeric:
                item.setTextAlignment(right)
            if c == 0 and data is not None:
                item.setData(Qt.ItemDataRole.UserRole, data[r])
            table.setItem(r, c, item)
