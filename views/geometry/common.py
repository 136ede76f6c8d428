"""Pieces the geometry view's tabs share: finding stores and digits-zoo models in a
workspace, the store picker (file + hook points), and a job helper that keeps only each
kind's latest answer and shows progress and errors in a tab's status line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSignalBlocker, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from engine.api import ActivationStore
from engine.errors import LatentLabError
from views.common.requests import ERROR_STYLE

ZOO_FILE = "latentlab_model.json"
ZOO_PREFIX = "digits-zoo:"


# ---------------------------------------------------------------- files in a workspace
def workspace_stores(workspace: Path | None) -> list[Path]:
    """The ``*.h5`` stores in ``workspace/stores`` (sorted); none without a workspace."""
    folder = None if workspace is None else Path(workspace) / "stores"
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.h5") if p.is_file() and ".rank" not in p.name)


def zoo_info(folder: Path) -> dict[str, Any] | None:
    """The parsed ``latentlab_model.json`` of a digits-zoo folder, or None if it is not one."""
    try:
        info = json.loads((Path(folder) / ZOO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("config"), dict) else None


def workspace_models(workspace: Path | None, depth: int = 3) -> list[Path]:
    """Digits-zoo model folders under ``workspace/models`` (up to ``depth`` levels), sorted."""
    root = None if workspace is None else Path(workspace) / "models"
    if root is None or not root.is_dir():
        return []
    found, level = [], [root]
    for _ in range(depth):
        nxt = []
        for folder in level:
            for child in sorted(p for p in folder.iterdir() if p.is_dir()):
                (found if (child / ZOO_FILE).is_file() else nxt).append(child)
        level = nxt
    return sorted(found)


def is_pruned(folder: Path) -> bool:
    """Whether a zoo folder holds a pruned variant (its config names a pruning method)."""
    info = zoo_info(folder)
    return bool(info and info["config"].get("method"))


def resolve_zoo_folder(model_id: str, store: Path | None, workspace: Path | None) -> Path | None:
    """The digits-zoo folder a store's ``meta.model_id`` names: the id itself when it is a
    zoo folder, else a folder of that model's name in the workspace's ``models`` or beside
    the store; None when the model is no zoo classifier found here."""
    direct = Path(model_id)
    if (direct / ZOO_FILE).is_file():
        return direct
    if not model_id.startswith(ZOO_PREFIX):
        return None
    name = model_id[len(ZOO_PREFIX):]
    for folder in workspace_models(workspace):
        if folder.name == name:
            return folder
    if store is not None:
        for near in (store.parent / name, store.parent.parent / "models" / name):
            if (near / ZOO_FILE).is_file():
                return near
    return None


def compact(combo: QComboBox, chars: int) -> None:
    """Let a combo shrink to ``chars`` characters (its longest item no longer sets the view's width)."""
    combo.setMinimumContentsLength(chars)
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)


def fill_paths(combo: QComboBox, paths: list[Path]) -> None:
    """The combo's items become ``paths``: each shown by its name, the full path as data and tooltip."""
    combo.clear()
    for p in paths:
        combo.addItem(p.name, str(p))
        combo.setItemData(combo.count() - 1, str(p), Qt.ItemDataRole.ToolTipRole)


# ---------------------------------------------------------------- jobs
class StorePicker(QWidget):
    """One side of a comparison: a store (the workspace's or any browsed file), its model,
    and the hook points to use (all checked by default)."""

    changed = Signal()

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace: Path | None = None
        self.meta = None  # StoreMeta of the chosen store
        self.n_rows = 0
        self.combo = QComboBox()
        self.combo.setMinimumContentsLength(14)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.currentIndexChanged.connect(self._on_combo)
        self.browse = QPushButton("Browse\u2026")
        self.browse.clicked.connect(self._on_browse)
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.hook_list = QListWidget()
        self.hook_list.setMaximumHeight(110)
        self.hook_list.itemChanged.connect(lambda _item: self.changed.emit())
        row = QHBoxLayout()
        row.addWidget(QLabel(f"<b>{title}</b>"))
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse)
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        col.addLayout(row)
        col.addWidget(self.info)
        col.addWidget(self.hook_list)
        self._show(None)

    def set_workspace(self, workspace: Path | None, preferred: Path | None = None) -> None:
        """List the workspace's stores (and ``preferred`` first when it lies elsewhere)."""
        moved = workspace != self.workspace  # another workspace: start from its stores
        self.workspace = workspace
        current = preferred if moved else (self.path() or preferred)
        kept = self.hooks() if self.path() is not None and not moved else None  # re-listing keeps the choice
        paths = workspace_stores(workspace)
        if preferred is not None and preferred not in paths:
            paths.insert(0, preferred)
        if current is not None and current not in paths:
            paths.insert(0, current)
        with QSignalBlocker(self.combo):
            fill_paths(self.combo, paths)
            if not paths:
                self.combo.addItem("(no stores: browse for one)", None)
            i = self.combo.findData(str(current)) if current is not None else 0
            self.combo.setCurrentIndex(max(i, 0))
        self._load(self.path())
        if kept is not None and self.path() == current:
            self.set_hooks(kept)
        self.changed.emit()

    def set_path(self, path: Path | str | None, hooks: list[str] | None = None) -> None:
        """Choose ``path`` (added to the list if needed) and, if given, check only ``hooks``."""
        if path is None:
            return
        path = Path(path)
        with QSignalBlocker(self.combo):
            i = self.combo.findData(str(path))
            if i < 0:
                if self.combo.count() == 1 and self.combo.itemData(0) is None:
                    self.combo.clear()
                self.combo.addItem(path.name, str(path))
                i = self.combo.count() - 1
            self.combo.setCurrentIndex(i)
        self._load(path)
        if hooks is not None:
            self.set_hooks(hooks)
        self.changed.emit()

    def path(self) -> Path | None:
        data = self.combo.currentData()
        return Path(data) if data else None

    def hooks(self) -> list[str]:
        """The checked hook points, in the store's order."""
        return [self.hook_list.item(i).text() for i in range(self.hook_list.count())
                if self.hook_list.item(i).checkState() == Qt.CheckState.Checked]

    def set_hooks(self, hooks: list[str]) -> None:
        wanted = set(hooks)
        with QSignalBlocker(self.hook_list):
            for i in range(self.hook_list.count()):
                item = self.hook_list.item(i)
                item.setCheckState(Qt.CheckState.Checked if item.text() in wanted else Qt.CheckState.Unchecked)

    def _on_combo(self, *_: Any) -> None:
        self._load(self.path())
        self.changed.emit()

    def _on_browse(self) -> None:
        start = str(self.path().parent) if self.path() else str(self.workspace or Path.home())
        name, _ = QFileDialog.getOpenFileName(self, "Open an activation store", start,
                                              "Activation stores (*.h5);;All files (*)")
        if name:
            self.set_path(Path(name))

    def _load(self, path: Path | None) -> None:
        """Read the store's model, rows and hook points (attributes only: cheap)."""
        if path is None:
            self._show(None)
            return
        try:
            with ActivationStore.open(path) as store:
                meta, n = store.meta, store.n_rows
        except (LatentLabError, OSError) as exc:
            self._show(None, str(exc))
            return
        self._show(meta, n=n)

    def _show(self, meta: Any, error: str = "", n: int = 0) -> None:
        self.meta, self.n_rows = meta, n
        with QSignalBlocker(self.hook_list):
            self.hook_list.clear()
            for hook in (meta.hooks if meta is not None else ()):
                item = QListWidgetItem(hook)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked)
                self.hook_list.addItem(item)
        if meta is None:
            self.info.setText(error or "no store chosen")
            self.info.setStyleSheet(ERROR_STYLE if error else "color: gray;")
            return
        self.info.setStyleSheet("")
        self.info.setText(f"model <b>{meta.model_id}</b> \u00b7 {n:,} rows \u00b7 source {meta.source_id}")

    def model_id(self) -> str | None:
        return None if self.meta is None else self.meta.model_id
