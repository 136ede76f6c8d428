"""The feature browser's table of latents: a Qt model whose rows sort in numpy and filter
by a precomputed mask (fast for 100k latents), and the proxy that delegates both to it."""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt

from engine import api

COLUMNS = ("latent", "density", "max", "mean", "label association", "auto-label")
SORT_ROLE = Qt.ItemDataRole.UserRole  # numbers for numeric columns, text for the others


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
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
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
