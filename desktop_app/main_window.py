"""The main window: views in dockable, re-arrangeable panels, the jobs panel, menus and
shortcuts, and the glue that turns engine results (workspace stages, projection frames)
into AppState changes. Views are handed in by the caller (main.py), so the shell never
imports a view."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QFileDialog,
    QFormLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSpinBox,
    QWidget,
)

from desktop_app.bridge import FAILED, EngineBridge
from desktop_app.export import FORMATS, export_figure
from desktop_app.jobs_panel import JobsPanel
from desktop_app.opening import Opening, RecentLists, active_items, chosen_before
from desktop_app.provenance_dialog import show_provenance
from desktop_app.session import Session, session_input_problems
from desktop_app.state import AppState
from desktop_app.view import View
from engine import api
from engine.api import DemoSpec, Layout, Stage, Workspace, build_demo
from engine.errors import LatentLabError

if TYPE_CHECKING:
    from desktop_app.sae_dialog import TrainRequest

ViewFactory = Callable[[AppState], QWidget]  # the widget implements desktop_app.view.View
APP_NAME = "LatentLab"
RECENT_MENUS = {"stores": "Recent Stores", "saes": "Recent SAEs", "models": "Recent Models"}


class MainWindow(Opening, QMainWindow):
    """Docks one widget per view around the engine's jobs panel."""

    ask_on_close = False  # closing with unsaved session changes asks whether to save them (run_app: True)

    def __init__(self, state: AppState, bridge: EngineBridge,
                 views: list[tuple[str, ViewFactory]], settings: QSettings | None = None) -> None:
        super().__init__()
        self.state, self.bridge = state, bridge
        self.settings = settings or QSettings("LatentLab", "LatentLab")
        self.recent = RecentLists(self.settings)
        self.setWindowTitle(APP_NAME)
        self.setDockNestingEnabled(True)
        self.errors: list[tuple[str, str]] = []  # (sentence, details) shown to the user
        self.launched: float | None = None  # perf_counter() at process start, when known
        self.views: dict[str, View] = {}  # each a QWidget in its dock
        self._saved: dict[str, Any] | None = None  # the session as last saved or restored; None: nothing to save
        self._settling = False  # take the session as saved once the engine is idle (what opening loads)
        self._restore_when_ready = False
        self._demo_job: int | None = None  # the demo pipeline's job while it builds the workspace
        self._records: list[Callable[[], None]] = []  # manifest updates waiting for that job to end
        self._chosen: Workspace | None = None  # the active items the app chose there before the rebuild
        self.docks: dict[str, QDockWidget] = {}  # the views' and the jobs panel's
        # no central widget: every panel is a dock, so any can move anywhere. The first view
        # sits left, the second right, and later ones are tabs behind the second.
        for i, (name, factory) in enumerate(views):
            self.views[name] = factory(state)
            self._add_dock(name, self.views[name], Qt.DockWidgetArea.LeftDockWidgetArea
                           if i == 0 else Qt.DockWidgetArea.RightDockWidgetArea)
            if i >= 2:
                self.tabifyDockWidget(self.docks[views[1][0]], self.docks[name])
        if len(views) > 2:
            self.docks[views[1][0]].raise_()
        for name, _ in views[2:]:  # behind the second's tab from the start, not only once the
            self.views[name].hide()  # layout settles: a view may wait to work until it is shown
        self.jobs = JobsPanel(bridge, state=state)
        self._add_dock("Jobs", self.jobs, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.jobs.expanded_changed.connect(lambda on: QTimer.singleShot(0, lambda: self._size_jobs(on)))
        self._default_layout = self.saveState()
        self._build_menus()
        bridge.finished.connect(self._on_job_finished)
        state.workspace_changed.connect(self._update_title)
        state.selection_changed.connect(self._on_selection_changed)
        state.store_changed.connect(self._warm_digests)
        state.sae_changed.connect(self._warm_digests)
        self.statusBar().showMessage(f"engine on {bridge.device}")

    def _add_dock(self, name: str, widget: QWidget, area: Qt.DockWidgetArea) -> None:
        dock = QDockWidget(name, self)
        dock.setObjectName(f"dock-{name}")
        dock.setWidget(widget)
        # A dock behind another tab stays "visible" to Qt (only its region is empty); hiding
        # its view there lets a view put off work until it is on screen (its showEvent).
        dock.visibilityChanged.connect(widget.setVisible)
        self.addDockWidget(area, dock)
        self.docks[name] = dock

    # ------------------------------------------------------------------ menus
    def _build_menus(self) -> None:
        file = self.menuBar().addMenu("&File")
        self._action(file, "Open &Workspace...", QKeySequence.StandardKey.Open, self.choose_workspace)
        self.recent_menu = file.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        file.addSeparator()
        self.recent_menus = {}
        for kind, text, shortcut, slot in (("stores", "Open &Store...", "Ctrl+Shift+O", self.choose_store),
                                           ("saes", "Open S&AE...", None, self.choose_sae),
                                           ("models", "Open &Model...", None, self.choose_model)):
            self._action(file, text, shortcut, slot)
            menu = self.recent_menus[kind] = file.addMenu(RECENT_MENUS[kind])
            menu.aboutToShow.connect(lambda kind=kind: self._fill_recent_kind(kind))
        file.addSeparator()
        self._action(file, "&Save Session", QKeySequence.StandardKey.Save, self.save_session)
        self._action(file, "Save Session &As...", QKeySequence.StandardKey.SaveAs, self.save_session_as)
        self._action(file, "Restore Sess&ion...", "Ctrl+Shift+R", self.choose_session)
        file.addSeparator()
        self._action(file, "&Export Figure...", "Ctrl+E", self.export_dialog)
        file.addSeparator()
        self._action(file, "&Quit", QKeySequence.StandardKey.Quit, self.close)
        view = self.menuBar().addMenu("&View")
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
        view.addSeparator()
        self._action(view, "&Reset Layout", "Ctrl+Shift+L", lambda: self.restoreState(self._default_layout))
        self._action(view, "&Provenance...", "Ctrl+I", lambda: show_provenance(self))
        jobs = self.menuBar().addMenu("&Jobs")
        self._action(jobs, "&Capture Activations...", "Ctrl+Shift+C", self.capture_dialog)
        self._action(jobs, "&Train SAE...", None, self.train_sae_dialog)
        self._action(jobs, "Cancel &All", "Ctrl+.", self.bridge.cancel_all)
        help_menu = self.menuBar().addMenu("&Help")
        self._action(help_menu, "&About LatentLab", None, self._about)

    def _action(self, menu, text: str, shortcut: Any, slot: Callable[[], Any]) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(lambda checked=False: slot())
        menu.addAction(action)
        return action

    def _about(self) -> None:
        QMessageBox.about(self, "About LatentLab", "LatentLab: visual analytics of neural network "
                          f"representations.\nEngine device: {self.bridge.device}")

    # ------------------------------------------------------------------ errors
    def show_error(self, sentence: str, details: str = "") -> None:
        """One sentence, details on demand; never blocks the event loop."""
        self.errors.append((sentence, details))
        self.jobs.write(f"error: {sentence}")
        self.statusBar().showMessage(sentence, 15000)
        box = QMessageBox(QMessageBox.Icon.Warning, APP_NAME, sentence, QMessageBox.StandardButton.Ok, self)
        box.setObjectName("error-box")
        if details:
            box.setDetailedText(details)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    @Slot(int, str)
    def _on_job_finished(self, job_id: int, state: str) -> None:
        if self._settling:
            QTimer.singleShot(0, self._settle)  # after the job's result reached its view
        job = self.bridge.jobs[job_id]
        if state == FAILED and job.on_error is None and job.error is not None:
            self.show_error(*job.error)
        if job_id == self._demo_job:  # the pipeline no longer writes the manifest
            self._demo_job = None
            for record in self._records:
                record()
            self._records.clear()

    # ------------------------------------------------------------------ workspaces
    def open_workspace(self, path: str | Path, demo: DemoSpec | None = None, restore: bool = False) -> bool:
        """Open a workspace folder (or build/finish a demo one). False, with a message, if
        the folder is missing or not a workspace; the current one then stays open. With
        ``restore``, the workspace's last saved session is restored once it is ready."""
        path = Path(path).expanduser()
        self._restore_when_ready = restore
        if demo is None:
            try:
                ws = Workspace.open(path)
            except LatentLabError as exc:
                self.show_error(str(exc))
                return False
            self._apply_workspace(ws)
            self._request_projections(ws)
            self._workspace_ready(ws)
        else:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self.show_error(f"cannot create workspace folder {path} ({exc.strerror})")
                return False
            self.state.set_workspace(path)
            self._chosen = chosen_before(path)
            self._demo_job = self.bridge.submit("Demo workspace", build_demo, key="workspace", root=path, spec=demo,
                                                on_partial=self._on_workspace_partial, on_result=self._on_ready)
        self.recent.add("workspaces", path)
        return True

    def _on_ready(self, ws: Workspace) -> None:
        since = f" {time.perf_counter() - self.launched:.1f} s after launch" if self.launched else ""
        self.jobs.write(f"workspace {ws.root.name} ready{since}")
        self.statusBar().showMessage(f"workspace {ws.root} ready{since}", 10000)
        chosen, self._chosen = self._chosen, None
        if chosen is not None and chosen.root == ws.root and active_items(chosen) != active_items(ws):
            self._apply_workspace(chosen)  # what was opened there last time, not the demo's items
            self._request_projections(chosen)
            self._records.append(lambda: self._record(active_items(chosen)))  # the rebuild wrote the demo's
        self._workspace_ready(ws)

    def _workspace_ready(self, ws: Workspace) -> None:
        """Restore the workspace's last saved session when asked to; from here on, changes
        to the session count as unsaved."""
        if self._restore_when_ready and ws.session_path.is_file() and self.restore_session(ws.session_path):
            self.jobs.write(f"restored the last session ({ws.session_path.name})")
        self._restore_when_ready = False
        self._saved_when_idle()

    def _saved_when_idle(self) -> None:
        """Take the session as it stands once the jobs that opening started are done (layouts,
        colours, a suggested focus arrive then), so only the user's changes count as unsaved."""
        self._settling = True
        QTimer.singleShot(0, self._settle)

    def _settle(self) -> None:
        if self._settling and not self.bridge.busy():
            self._settling = False
            self._saved = self._content()

    def _apply_workspace(self, ws: Workspace) -> None:
        stats = ws.sae_id if ws.has_stats() else None
        with self.state.batch():
            self.state.set_workspace(ws.root)
            self.state.set_model(ws.model)
            self.state.set_store(ws.store)
            self.state.set_hook(ws.hook)
            self.state.set_sae(ws.sae)
            self.state.set_stats(stats)
        self._suggest_focus()

    def _suggest_focus(self) -> None:
        """With nothing focused yet, focus a specific, often firing latent, so the browser's
        detail pane and the scatter's colouring show something on opening."""
        from engine.api import ActivationStore, suggest_latent
        if self.state.focus or self.state.store is None or self.state.stats is None:
            return
        try:
            with ActivationStore.open(self.state.store) as store:
                latent = suggest_latent(store, self.state.stats)
        except LatentLabError:
            return
        if latent is not None:
            self.state.set_focus(latent)

    def _on_workspace_partial(self, obj: Any) -> None:
        if isinstance(obj, Layout):
            self.state.set_projection(obj)
        elif isinstance(obj, Stage):
            ws = obj.workspace
            if obj.stage == "store":
                with self.state.batch():
                    self.state.set_model(ws.model)
                    self.state.set_store(ws.store)
                    self.state.set_hook(ws.hook)
            elif obj.stage == "sae":
                self.state.set_sae(ws.sae)
            elif obj.stage == "stats":
                self.state.set_stats(ws.sae_id)
                self._suggest_focus()
        elif isinstance(obj, str):  # a job's note (e.g. no logit effects)
            self.jobs.write(obj)

    def _request_projections(self, ws: Workspace) -> None:
        """PCA at once, UMAP after it, for rows and (with an SAE) latents; cached per input."""
        from engine.api import UMAP_ROWS, project
        if ws.store is None or ws.hook is None:
            return
        whats = ("rows", "latents") if ws.sae is not None else ("rows",)
        for method in ("pca", "umap"):
            for what in whats:
                self.bridge.submit(f"{method.upper()} of {what}", project, key=f"project-{what}-{method}",
                                   on_result=self.state.set_projection,
                                   on_partial=self._on_workspace_partial,
                                   store_path=ws.store, hook=ws.hook, method=method, what=what,
                                   sae_path=ws.sae, cache_dir=ws.projections_dir,
                                   max_rows=UMAP_ROWS if method == "umap" else None)

    def open_store(self, path: str | Path) -> bool:
        """Make a store file the active one (its first hook point); a bad file is reported."""
        from engine.api import ActivationStore, validate
        path = Path(os.path.normpath(Path(path).expanduser().absolute()))
        try:
            validate(path)
            with ActivationStore.open(path) as store:
                hooks, model = store.hooks, store.meta.model_id
        except LatentLabError as exc:
            self.show_error(str(exc))
            return False
        with self.state.batch():
            self.state.set_store(path)
            self.state.set_hook(hooks[0] if hooks else None)
            self.state.set_model(model)
            self.state.set_sae(None)
        root = self.state.workspace or path.parent
        self._request_projections(Workspace(root=Path(root), model=model, store=path,
                                            hook=hooks[0] if hooks else None))
        self.recent.add("stores", path)
        self._record(dict(model=model, store=path, hook=hooks[0] if hooks else None, sae=None, sae_id=None,
                          stats=None), "stores", path)
        return True

    def choose_workspace(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open workspace", str(self.state.workspace or Path.home()))
        if folder:
            self.open_workspace(folder)

    def choose_store(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open activation store", str(self.state.workspace or Path.home()),
                                              "HDF5 stores (*.h5 *.hdf5);;All files (*)")
        if path:
            self.open_store(path)

    def capture_dialog(self, model: str | None = None) -> QDialog:
        """Jobs > Capture Activations: the dialog (on ``model``, default the active one) whose
        OK submits the capture; it stays usable while the hook points load."""
        from desktop_app.capture_dialog import CaptureDialog
        dialog = CaptureDialog(self.bridge, self.state, self, model=model)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self.start_capture(dialog.params()))
        dialog.open()
        return dialog

    def start_capture(self, params: dict[str, Any]) -> int:
        """Run ``engine.capture.capture(**params)`` as a job; the new store opens when it ends."""
        from desktop_app.capture_dialog import capture_summary
        from engine.api import capture

        def done(result) -> None:
            self.jobs.write(capture_summary(result))
            self.open_store(result.path)
        return self.bridge.submit(f"Capture {Path(params['out']).name}", capture, on_result=done, **params)

    def _on_selection_changed(self, selection) -> None:
        text = (f"{len(selection):,} {selection.kind} selected ({selection.how})" if len(selection)
                else "selection cleared")
        self.statusBar().showMessage(text)

    def _update_title(self, path: Path | None) -> None:
        self.setWindowTitle(f"{APP_NAME} - {path.name}" if path else APP_NAME)

    # ------------------------------------------------------------------ SAE training
    def train_sae_dialog(self) -> QDialog:
        """Jobs > Train SAE...: the dialog checks its fields; OK starts the training."""
        from desktop_app.sae_dialog import TrainSAEDialog
        dialog = TrainSAEDialog(self.state, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.accepted.connect(lambda: self.start_training(dialog.accepted_request))
        dialog.open()
        return dialog

    def start_training(self, request: TrainRequest) -> int:
        """Train an SAE as a job; once trained it becomes the current SAE (``use_sae``), its
        feature statistics run when asked, and the workspace records it."""
        root = Path(self.state.workspace or request.store.parent)

        def trained(result) -> None:
            self.use_sae(Workspace(root=root, model=request.model, store=request.store, hook=request.hook,
                                   sae=Path(result.out), sae_id=request.sae_id), stats=request.stats)
        return self.bridge.submit(f"Train SAE {request.out.name}", api.train_sae, on_result=trained,
                                  **request.train_params())

    # ------------------------------------------------------------------ sessions
    def session(self) -> Session:
        views = {name: view.session_state() for name, view in self.views.items()}
        return Session.capture(self.state, bytes(self.saveState().data()),
                               bytes(self.saveGeometry().data()), views)

    def _content(self, session: Session | None = None) -> dict[str, Any]:
        """The session (default: as it stands) without the window's geometry and dock layout
        (moving a dock is not a change worth asking about)."""
        return (session or self.session()).model_dump(mode="json",
                                                       exclude={"layout", "geometry", "inputs", "saved_in"})

    def has_unsaved_changes(self) -> bool:
        """Whether the workspace, selection, focus, recipe or a view's settings changed since
        the session was last saved or restored (or the workspace became ready)."""
        return self._saved is not None and self._content() != self._saved

    def save_session(self, path: str | Path | None = None) -> Path | None:
        if path is None:
            if self.state.workspace is None:
                return self.save_session_as()
            path = Workspace(root=self.state.workspace).session_path
        session = self.session()
        try:
            saved = session.save(path)
        except OSError as exc:
            self.show_error(f"cannot save the session to {path} ({exc.strerror})")
            return None
        self.statusBar().showMessage(f"session saved to {saved}", 5000)
        self._saved = self._content(session)
        return saved

    def save_session_as(self) -> Path | None:
        path, _ = QFileDialog.getSaveFileName(self, "Save session", str(self.state.workspace or Path.home()),
                                              "Sessions (*.json)")
        return self.save_session(path) if path else None

    def choose_session(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Restore session", str(self.state.workspace or Path.home()),
                                              "Sessions (*.json)")
        if path:
            self.restore_session(path)

    def restore_session(self, path: str | Path) -> bool:
        """Reopen the session's workspace, layout, store/SAE, selection and focus. A file or
        folder it names that is gone is left out and named; what moved is noted in the log;
        the inputs' hashes are checked by a job, whose message names a changed file."""
        try:
            s = Session.load(path)
        except LatentLabError as exc:
            self.show_error(str(exc))
            return False
        for note in s.notes:
            self.jobs.write(note)
        if s.workspace and Path(s.workspace) != self.state.workspace:
            if not self.open_workspace(s.workspace):
                return False
        gone = {field for field in ("store", "sae") if s.missing(field)}
        with self.state.batch():
            if s.store and "store" not in gone:
                self.state.set_store(s.store)
            if s.hook:
                self.state.set_hook(s.hook)
            if s.sae and "sae" not in gone:
                self.state.set_sae(s.sae)
            if s.stats and "sae" not in gone:
                self.state.set_stats(s.stats)
            self.state.set_selection(s.selection_value())
            self.state.set_focus(tuple(s.focus))
            self.state.set_steering(s.steering)
        if s.geometry:
            self.restoreGeometry(QByteArray(s.geometry_bytes()))
        if s.layout:
            self.restoreState(QByteArray(s.layout_bytes()))
        for name, view_state in s.views.items():
            view = self.views.get(name)
            if view is not None:
                view.restore_session(view_state)
        self._check_session_inputs(Path(path), s, gone)
        self._saved_when_idle()
        return True

    def _check_session_inputs(self, path: Path, s: Session, gone: set[str]) -> None:
        """Name the session's missing inputs now and its changed ones once a job has hashed
        them (off the GUI thread: a store may be gigabytes), in one message each."""
        missing = [f"{field} {getattr(s, field)}: missing" for field in sorted(gone)
                   if not any(i.role == field for i in s.inputs)]
        inputs = [i.model_dump() for i in s.inputs]

        def report(problems: list[str]) -> None:
            if problems or missing:
                self.show_error(f"session {path.name}: " + "; ".join([*problems, *missing]))
        if inputs:
            self.bridge.submit(f"Check {path.name}'s files", session_input_problems, on_result=report,
                               inputs=inputs)
        else:
            report([])

    # ------------------------------------------------------------------ export
    def export_view(self, name: str, path: str | Path, width: int = 1200, height: int = 900,
                    dpi: int = 150) -> Path | None:
        try:
            return export_figure(self.views[name], path, width, height, dpi)
        except LatentLabError as exc:
            self.show_error(str(exc))
            return None

    def export_dialog(self) -> None:
        dialog = ExportDialog(list(self.views), self)
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        name, width, height, dpi = dialog.values()
        path, _ = QFileDialog.getSaveFileName(self, f"Export {name}", str(self.state.workspace or Path.home()),
                                              "PNG image (*.png);;SVG drawing (*.svg);;PDF document (*.pdf)")
        if path:
            saved = self.export_view(name, path, width, height, dpi)
            if saved:
                self.statusBar().showMessage(f"exported {name} to {saved}", 5000)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not getattr(self, "_sized", False):  # docks get their sizes once the window has one
            self._sized = True
            QTimer.singleShot(0, self._size_docks)

    def _warm_digests(self, *_: object) -> None:
        """Hash the active store and SAE in a background thread as they change (hashlib works
        outside the GIL), so exports, the Provenance window and session saves on the GUI
        thread find their hashes memoised; not an engine job: it never queues before one."""
        paths = [p for p in (self.state.store, self.state.sae) if p is not None]
        if paths:
            threading.Thread(target=_digest_quietly, args=(paths,), name="latentlab-digests", daemon=True).start()

    def _size_docks(self) -> None:
        self._size_jobs(self.jobs.expanded())
        first = next(iter(self.docks.values()))
        self.resizeDocks([first], [int(self.width() * 0.45)], Qt.Orientation.Horizontal)
        self._default_layout = self.saveState()

    def _size_jobs(self, expanded: bool) -> None:
        """The jobs dock: a one-line strip, or a fifth of the window when expanded."""
        height = max(160, self.height() // 5) if expanded else self.jobs.sizeHint().height()
        first = next(iter(self.docks.values()))  # Qt sizes a dock area only against another one
        self.resizeDocks([first, self.docks["Jobs"]], [max(1, self.height() - height), height],
                         Qt.Orientation.Vertical)

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event: QCloseEvent) -> None:
        if self.ask_on_close and self.has_unsaved_changes() and not self._may_close():
            event.ignore()
            return
        for view in self.views.values():
            view.cancel_requests()
        self.bridge.cancel_all()
        super().closeEvent(event)


    def _may_close(self) -> bool:
        """Ask whether to save the changed session: Save (then close if it was saved),
        Discard, or Cancel (stay open)."""
        buttons = QMessageBox.StandardButton
        box = QMessageBox(QMessageBox.Icon.Question, APP_NAME, "The session has unsaved changes.",
                          buttons.Save | buttons.Discard | buttons.Cancel, self)
        box.setInformativeText("Save them to the workspace's session file before quitting?")
        box.setDefaultButton(buttons.Save)
        answer = box.exec()
        if answer == buttons.Save:
            return self.save_session() is not None
        return answer == buttons.Discard


class ExportDialog(QDialog):
    """Which view, and the figure's size in pixels and its resolution."""

    def __init__(self, views: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export figure")
        self.view = QComboBox()
        self.view.addItems(views)
        self.width_box, self.height_box, self.dpi_box = QSpinBox(), QSpinBox(), QSpinBox()
        for box, lo, hi, value in ((self.width_box, 16, 20000, 1200), (self.height_box, 16, 20000, 900),
                                   (self.dpi_box, 30, 2400, 300)):
            box.setRange(lo, hi)
            box.setValue(value)
        form = QFormLayout(self)
        form.addRow("View", self.view)
        form.addRow("Width (px)", self.width_box)
        form.addRow("Height (px)", self.height_box)
        form.addRow("Resolution (dpi)", self.dpi_box)
        form.addRow(QLabel(f"Formats: {', '.join(FORMATS)} (chosen by the file name)"))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def values(self) -> tuple[str, int, int, int]:
        return self.view.currentText(), self.width_box.value(), self.height_box.value(), self.dpi_box.value()


def _digest_quietly(paths: list[Path]) -> None:
    """Memoise the hashes of ``paths``; a file that went away is hashed when it is asked for."""
    for path in paths:
        try:
            api.file_digest(path)
        except (OSError, LatentLabError):
            pass
