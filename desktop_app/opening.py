"""File > Open SAE / Open Model and the Recent submenus of the main window (``Opening``, a
part of MainWindow), the recent lists per kind (QSettings), the small Open Model dialog (a
typed spec or a folder), the job that checks an SAE against the active store before it
becomes the active SAE, and the records of what was opened in the workspace's manifest."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.bridge import QUEUED, RUNNING
from desktop_app.form import field_row
from engine import api
from engine.api import JobContext, ModelSpec, Stage, Workspace
from engine.errors import LatentLabError

if TYPE_CHECKING:
    from PySide6.QtWidgets import QMenu

    from desktop_app.bridge import EngineBridge
    from desktop_app.jobs_panel import JobsPanel
    from desktop_app.state import AppState

MAX_RECENT = 8
RECENT_KEYS = {"workspaces": "recent", "stores": "recent_stores", "saes": "recent_saes", "models": "recent_models"}
MODEL_HINT = ("smollm2 (bundled), hf:NAME (the offline Hugging Face cache), a Hugging Face or "
              "digits-zoo folder, file.py:factory or package.module:factory (a torch.nn.Module)")


class RecentLists:
    """The recently opened workspaces, stores, SAEs and models, newest first, in QSettings
    (the workspaces under the key the single recent list of earlier versions used)."""

    def __init__(self, settings: QSettings) -> None:
        self.settings = settings

    def get(self, kind: str) -> list[str]:
        value = self.settings.value(RECENT_KEYS[kind], [])
        return [value] if isinstance(value, str) else [str(v) for v in value or []]

    def add(self, kind: str, item: str | os.PathLike) -> None:
        item = str(item)
        self.settings.setValue(RECENT_KEYS[kind], [item, *(p for p in self.get(kind) if p != item)][:MAX_RECENT])


def absolute_spec(spec: str) -> str:
    """A typed model spec with the file or folder it names made absolute (against the
    working folder), so it means the same wherever it is used or recorded."""
    parsed = ModelSpec.parse(spec)
    names_file = parsed.kind in ("path", "factory") or parsed.kind == "name" and os.path.isdir(parsed.target)
    file = parsed.file if names_file else None
    if not file or not parsed.text.startswith(file) or os.path.isabs(file):
        return parsed.text
    return os.path.normpath(Path(file).expanduser().absolute()) + parsed.text[len(file):]


def sae_in_workspace(ctx: JobContext, workspace: Workspace, folder: Path) -> Workspace:
    """Job: ``workspace`` with the SAE in ``folder`` active, checked against its store and
    with its statistics found when they exist (``Workspace.with_sae``)."""
    ctx.progress(0, 0, f"reading {folder.name}")
    return workspace.with_sae(folder)


class OpenModelDialog(QDialog):
    """File > Open Model...: a model spec typed, or a model folder chosen with Folder...;
    OK hands the spec to the window, which loads it as a job."""

    def __init__(self, spec: str, start: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open model")
        self.setObjectName("open-model-dialog")
        self.start = start
        self.spec_edit = QLineEdit(spec)
        self.spec_edit.setPlaceholderText("smollm2, hf:NAME, a model folder or file.py:factory")
        self.spec_edit.setToolTip(MODEL_HINT)
        self.spec_edit.setMinimumWidth(420)
        folder = QPushButton("Folder\u2026")
        folder.setAutoDefault(False)
        folder.clicked.connect(self._browse)
        hint = QLabel(MODEL_HINT)
        hint.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        page = QVBoxLayout(self)
        page.addWidget(QLabel("Model"))
        page.addWidget(field_row(self.spec_edit, folder))
        page.addWidget(hint)
        page.addWidget(self.buttons)

    def spec(self) -> str:
        return self.spec_edit.text().strip()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (Hugging Face or digits zoo)", str(self.start))
        if folder:
            self.spec_edit.setText(folder)


class Opening:
    """The main window's File > Open SAE / Open Model, its Recent submenus, and the records
    of what was opened or trained in the open workspace's manifest (``workspace.json``)."""

    state: AppState  # what MainWindow holds and this part uses
    bridge: EngineBridge
    jobs: JobsPanel
    recent: RecentLists
    recent_menu: QMenu
    recent_menus: dict[str, QMenu]
    _demo_job: int | None
    _records: list[Callable[[], None]]

    def choose_sae(self) -> None:
        """File > Open SAE...: a folder dialog starting at the workspace's saes/."""
        start = self.state.workspace / "saes" if self.state.workspace else Path.home()
        folder = QFileDialog.getExistingDirectory(self, "Open SAE folder (LatentLab, SAELens, sparsify, dictionary_learning or overcomplete)",
                                                  str(start if start.is_dir() else start.parent))
        if folder:
            self.open_sae(folder)

    def choose_model(self) -> QDialog:
        """File > Open Model...: a small dialog for a spec or a folder; Open loads it as a job."""
        dialog = OpenModelDialog(self.state.model or "", Path(self.state.workspace or Path.home()), self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self.open_model(dialog.spec()))
        dialog.open()
        return dialog

    def open_sae(self, folder: str | Path) -> int:
        """Make the SAE in ``folder`` the active one over the active store, checked (in a job)
        against its hook point's width; its statistics are used when they exist, else
        computed (``use_sae``). A bad folder or width is one sentence naming the folder."""
        folder = Path(os.path.normpath(Path(folder).expanduser().absolute()))
        store = self.state.store
        root = Path(self.state.workspace or (store.parent if store else folder.parent))
        ws = Workspace(root=root, model=self.state.model, store=store, hook=self.state.hook)

        def failed(sentence: str, details: str) -> None:
            self.show_error(sentence if str(folder) in sentence else f"SAE folder {folder}: {sentence}", details)
        return self.bridge.submit(f"Open SAE {folder.name}", sae_in_workspace, key="open-sae",
                                  on_result=self.use_sae, on_error=failed, workspace=ws, folder=folder)

    def open_model(self, spec: str) -> int | None:
        """Load the model a spec names (a folder, ``hf:NAME``, ``smollm2``, ``file.py:factory``)
        as a job; once it loads it is the active model (captures and steering use it). One
        sentence naming the spec when it does not."""
        from engine.api import hook_points
        spec = absolute_spec(spec) if spec.strip() else ""
        missing = ModelSpec.parse(spec).missing() if spec else None
        if not spec or missing:
            self.show_error(f"Model {spec or '(empty)'} cannot be opened: "
                            + (f"{missing} does not exist." if missing else "enter smollm2, hf:NAME or a folder."))
            return None

        def loaded(hooks: list[str]) -> None:
            self.state.set_model(spec)
            self.recent.add("models", spec)
            self._record({"model": spec}, "models", spec)
            self.jobs.write(f"model {spec} loaded ({len(hooks)} hook points)")

        def failed(sentence: str, details: str) -> None:
            reason = sentence.removeprefix("The job failed with ")
            self.show_error(f"Model {spec} did not load: {reason[:1].lower()}{reason[1:]}", details)
        return self.bridge.submit(f"Open model {ModelSpec.parse(spec).short_name}", hook_points, key="open-model",
                                  on_result=loaded, on_error=failed, model=spec)

    def _record(self, active: dict[str, Any], kind: str | None = None, item: str | Path | None = None) -> None:
        """Write into the open workspace's manifest the active items given (as chosen in the
        app) and put ``item`` first in its list of opened ``kind``; while the demo pipeline
        still writes the manifest, once it is done. Without a workspace nothing is written."""
        root = self.state.workspace

        def write() -> None:
            try:
                ws = Workspace.open(root)
                for field, value in active.items():
                    setattr(ws, field, value)
                ws.chosen = ws.chosen or bool(active)
                if kind is not None:
                    ws.remember(kind, item)
                ws.save()
            except (LatentLabError, OSError) as exc:
                self.jobs.write(f"note: not recorded in the workspace ({exc})")
        if root is None:
            return
        demo = self.bridge.jobs.get(self._demo_job) if self._demo_job is not None else None
        if demo is not None and demo.state in (QUEUED, RUNNING):
            self._records.append(write)
        else:
            write()

    def _workspace_opened(self, kind: str) -> list[str]:
        """The open workspace's active store, SAE or model, then the ones opened or trained
        in it (empty without a workspace)."""
        if self.state.workspace is None:
            return []
        try:
            ws = Workspace.open(self.state.workspace)
        except LatentLabError:
            return []
        active = {"stores": ws.store, "saes": ws.sae, "models": ws.model}[kind]
        return list(dict.fromkeys(([str(active)] if active is not None else []) + ws.opened(kind)))

    def _fill_recent(self) -> None:
        self._fill_menu(self.recent_menu, [], self.recent.get("workspaces"), self.open_recent)

    def _fill_recent_kind(self, kind: str) -> None:
        """A Recent submenu: what the open workspace recorded, then what this app opened lately."""
        opener = {"stores": self.open_store, "saes": self.open_sae, "models": self.open_model}[kind]
        self._fill_menu(self.recent_menus[kind], self._workspace_opened(kind), self.recent.get(kind), opener)

    def _fill_menu(self, menu, in_workspace: list[str], recent: list[str], opener: Callable[[str], Any]) -> None:
        """``menu`` refilled: the workspace's items, then the other recent ones, each opening its item."""
        menu.clear()
        if in_workspace:
            menu.addSection(f"In workspace {self.state.workspace.name}")
        for item in in_workspace:
            menu.addAction(item).triggered.connect(lambda checked=False, p=item: opener(p))
        others = [p for p in recent if p not in in_workspace]
        if in_workspace and others:
            menu.addSection("Recent")
        for item in others:
            menu.addAction(item).triggered.connect(lambda checked=False, p=item: opener(p))
        if not in_workspace and not others:
            menu.addAction("(none)").setEnabled(False)

    def open_recent(self, path: str) -> bool:
        p = Path(path)  # earlier versions kept stores in this list too
        return self.open_store(p) if p.suffix in (".h5", ".hdf5") else self.open_workspace(p)

    def use_sae(self, ws: Workspace, stats: bool = True) -> None:
        """Make ``ws``'s SAE the active one over its store and hook point: its feature
        statistics when ``ws.stats`` names them, else (with ``stats``) a cancellable job
        computes them and the browser lists its latents once they are in; its latents are
        laid out; the workspace records it (Open SAE and training both end here)."""
        for stage in ("store", "sae"):
            self._on_workspace_partial(Stage(stage, ws))
        if ws.stats is not None:
            self._on_workspace_partial(Stage("stats", ws))
        elif stats and ws.store is not None and ws.hook is not None:
            self.bridge.submit(f"Feature statistics of {ws.sae_id}", api.sae_feature_stats,
                               on_partial=self.jobs.write, on_result=lambda result: self._stats_ready(ws, result),
                               store=ws.store, sae=ws.sae, hook=ws.hook, sae_id=ws.sae_id)
        self._request_projections(ws)
        self.recent.add("saes", ws.sae)
        self._record(active_items(ws), "saes", ws.sae)

    def _stats_ready(self, ws: Workspace, result: Any) -> None:
        if self.state.sae == ws.sae:  # not replaced by another SAE meanwhile
            self._on_workspace_partial(Stage("stats", ws))
            self._record({"stats": Path(result.stats_path)})


def active_items(ws: Workspace) -> dict[str, Any]:
    """The active items of a workspace, as the manifest records them."""
    return {field: getattr(ws, field) for field in ("model", "store", "hook", "sae", "sae_id", "stats")}


def chosen_before(root: Path) -> Workspace | None:
    """The manifest of ``root`` when the app chose its active items (opened or trained them)
    and they are still there, so the demo's rebuild at launch does not replace them."""
    try:
        ws = Workspace.open(root) if (root / "workspace.json").is_file() else None
    except LatentLabError:
        return None
    if ws is None or not ws.chosen or (ws.store is not None and not ws.store.is_file()):
        return None
    return None if ws.sae is not None and not ws.sae.is_dir() else ws
