"""Jobs > Capture Activations: the fields ``main.py capture`` takes (model, source, hook
points, sizes, precisions, output store) in one dialog. The model's hook points are read by
an engine job (loading a model never runs on the GUI thread), every field is checked before
OK, and the window submits ``engine.capture.capture`` with ``CaptureDialog.params()``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from shiboken6 import isValid

from desktop_app.bridge import CANCELLED, EngineBridge
from desktop_app.form import ERROR_STYLE, field_row, spin
from desktop_app.state import AppState
from desktop_app.view import LatestWins
from engine import api
from engine.api import (
    TEXT_SUFFIXES,
    CaptureResult,
    CaptureSpec,
    ModelSpec,
    default_workspace,
)
from engine.errors import LatentLabError

PRESET_SOURCES = ("demo", "digits:train", "digits:test")
DIGIT_SPLITS = ("train", "test", "all")
STORE_SUFFIXES = (".h5", ".hdf5")
LOADING = "loading hook points\u2026"


def workspace_models(root: Path | None) -> list[str]:
    """The models the workspace ``root`` recorded as opened (File > Open Model), newest first,
    then the model folders under ``root/models`` (a digits-zoo or Hugging Face folder, two
    levels deep)."""
    if root is None:
        return []
    opened: list[str] = []
    if (Path(root) / "workspace.json").is_file():
        try:
            opened = api.Workspace.open(root).opened("models")
        except LatentLabError:
            pass  # an unreadable manifest: the folders are still offered
    found = [p.parent for pattern in ("*/", "*/*/") for name in ("latentlab_model.json", "config.json")
             for p in (Path(root) / "models").glob(pattern + name)] if (Path(root) / "models").is_dir() else []
    return list(dict.fromkeys([*opened, *sorted(str(p) for p in set(found))]))


def default_out(root: Path, spec: str, hook: str | None) -> Path:
    """``<root>/stores/<model>-<hook>.h5``, the store the dialog proposes."""
    name = ModelSpec.parse(spec).short_name
    return Path(root) / "stores" / (f"{name}-{hook}.h5" if hook else f"{name}.h5")


def model_problem(spec: str) -> str | None:
    """Why the model field cannot be loaded as it stands (a missing path), else None."""
    if not spec.split("?", 1)[0]:
        return "Model: empty; enter smollm2, a model folder or hf:NAME."
    missing = ModelSpec.parse(spec).missing()
    return None if missing is None else f"Model: {missing} does not exist."


def source_problem(spec: str) -> str | None:
    """Why the source field names nothing to read (a missing file, a wrong suffix), else None."""
    body = spec.split("?", 1)[0]
    if not body:
        return "Source: empty; enter demo, digits:train, digits:test, a .txt/.jsonl file or a folder."
    if body == "demo" or body == "digits":
        return None
    if body.startswith("digits:"):
        split = body.split(":", 1)[1]
        return None if split in DIGIT_SPLITS else f"Source: digits split {split!r} is not one of {', '.join(DIGIT_SPLITS)}."
    path = Path(body).expanduser()
    if not path.exists():
        return f"Source: file {body} does not exist."
    if path.is_file() and path.suffix not in TEXT_SUFFIXES:
        return f"Source: {body} is not a .txt or .jsonl file (or a folder of them)."
    return None


def capture_summary(result: CaptureResult) -> str:
    """One log line for a finished capture: its rows, pace (tokens/s), and the cosine to
    float32 where precision was given up: the one a reduced-precision model recorded in the
    store, or, for a float32 model writing float16 rows, the stored rows' to the model's."""
    from engine.api import ActivationStore
    text = (f"captured {result.added:,} rows into {result.path} ({result.rows:,} in the store, "
            f"{result.seconds:.1f} s, {result.rows_per_s:,.0f} {result.row_unit}/s)")
    try:
        with ActivationStore.open(result.path) as store:
            model_dtype, dtype, cosines = store.meta.model_dtype, store.meta.dtype, store.float32_cosine
    except (LatentLabError, ValueError):
        return text
    text += "".join(f"; {model_dtype} model at {hook}: cosine to float32 mean {c['mean']:.5f}, "
                    f"min {c['min']:.5f}" for hook, c in sorted(cosines.items()))
    return text + "".join(f"; {dtype} rows at {hook}: cosine to the float32 rows mean {c['mean']:.6f}, "
                          f"min {c['min']:.6f}" for hook, c in sorted((result.stored_cosine or {}).items()))


def _combo(items: list[str] | tuple[str, ...], editable: bool = False) -> QComboBox:
    box = QComboBox()
    box.addItems(list(items))
    box.setEditable(editable)
    box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
    return box


class CaptureDialog(QDialog):
    """Model, source, hook points, sizes, precisions and output store of one capture."""

    def __init__(self, bridge: EngineBridge, state: AppState, parent: QWidget | None = None,
                 model: str | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Capture activations")
        self.bridge, self.state = bridge, state
        self.root = Path(state.workspace) if state.workspace else default_workspace()
        self._requests = LatestWins(alive=lambda: isValid(self))  # the latest hook-point list wins
        self._hooks_model: str | None = None  # the model the hook list is (being) filled from
        self._hooks_state = "none"  # loading, ready or failed
        self._wanted: set[str] = {state.hook} if state.hook else set()  # ticked, kept across models
        self._out_auto = True  # the output follows model and hook until the user edits it
        self._build(model or state.model or "smollm2")
        bridge.finished.connect(self._on_job_finished)
        self.load_hooks()

    # ------------------------------------------------------------------ widgets
    def _build(self, model: str) -> None:
        models = list(dict.fromkeys(["smollm2", model, *workspace_models(self.state.workspace)]))
        self.model = _combo(models, editable=True)
        self.model.setCurrentText(model)
        self.model.lineEdit().editingFinished.connect(self.load_hooks)
        self.model.activated.connect(lambda _: self.load_hooks())  # also sent on editing finished
        self.model.setToolTip("smollm2, hf:PATH, hf-encoder:PATH?pooling=mean, a digits-zoo folder, file.py:factory")
        self.model_dtype = _combo(CaptureSpec.choices("model_dtype"))
        self.model_dtype.setToolTip("precision the model runs in; below float32 the store records "
                                    "the cosine of the first batch's rows to the float32 model's")
        self.source = _combo(PRESET_SOURCES, editable=True)
        self.source.setToolTip("demo, digits[:train|test], FILE.txt, FILE.jsonl?field=text, FOLDER")
        self.hook_filter = QLineEdit()
        self.hook_filter.setPlaceholderText("filter, e.g. resid_post")
        self.hook_filter.textChanged.connect(self._filter_hooks)
        self.hooks = QListWidget()
        self.hooks.setMinimumHeight(220)
        self.hooks.itemChanged.connect(self._on_hook_ticked)
        self.hooks_status = QLabel()
        self.max_tokens = spin(0, 2**31 - 1, 0, 1000)
        self.max_tokens.setSpecialValueText("all (the whole source)")
        self.ctx_len = spin(2, 32768, CaptureSpec.default("ctx_len"), 16)
        self.batch_size = spin(1, 4096, CaptureSpec.default("batch_size"))
        self.dtype = _combo(CaptureSpec.choices("dtype"))
        self.out = QLineEdit()
        self.out.textEdited.connect(lambda text: setattr(self, "_out_auto", not text))
        self.resume = QCheckBox("Resume if the file exists (continue from its committed rows)")
        self.error = QLabel()
        self.error.setObjectName("capture-error")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(ERROR_STYLE)
        self._lay_out()
        self._update_out()

    def _lay_out(self) -> None:
        form = QFormLayout()
        form.addRow("Model", field_row(self.model, self._button("Browse\u2026", self._browse_model)))
        form.addRow("Model precision", self.model_dtype)
        source_browse = self._button("Browse\u2026", None)
        menu = QMenu(source_browse)
        menu.addAction("Text file (.txt, .jsonl)\u2026", self._browse_source_file)
        menu.addAction("Folder of text files\u2026", self._browse_source_folder)
        source_browse.setMenu(menu)
        form.addRow("Source", field_row(self.source, source_browse))
        hooks = QWidget()
        column = QVBoxLayout(hooks)
        column.setContentsMargins(0, 0, 0, 0)
        for w in (self.hook_filter, self.hooks, self.hooks_status):
            column.addWidget(w)
        form.addRow("Hook points", hooks)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Context length", self.ctx_len)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Stored precision", self.dtype)
        form.addRow("Output file", field_row(self.out, self._button("Browse\u2026", self._browse_out)))
        form.addRow("", self.resume)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Capture")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        page = QVBoxLayout(self)
        page.addLayout(form)
        page.addWidget(self.error)
        page.addWidget(buttons)
        self.resize(640, 640)

    def _button(self, text: str, slot) -> QPushButton:
        button = QPushButton(text)
        button.setAutoDefault(False)
        if slot is not None:
            button.clicked.connect(slot)
        return button

    # ------------------------------------------------------------------ browsing
    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder", str(self.root))
        if folder:
            self.set_model(folder)

    def _browse_source_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Text source", str(self.root),
                                              "Text (*.txt *.jsonl);;All files (*)")
        if path:
            self.source.setCurrentText(path)

    def _browse_source_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of .txt / .jsonl files", str(self.root))
        if folder:
            self.source.setCurrentText(folder)

    def _browse_out(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Output store", self.out.text() or str(self.root / "stores"),
                                              "HDF5 stores (*.h5 *.hdf5)",
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if path:
            self.out.setText(path)
            self._out_auto = False

    # ------------------------------------------------------------------ hook points
    def model_spec(self) -> str:
        return self.model.currentText().strip()

    def set_model(self, spec: str) -> None:
        """Choose a model and load its hook points."""
        self.model.setCurrentText(spec)
        self.load_hooks(retry=True)

    def load_hooks(self, retry: bool = False) -> None:
        """Ask the engine for the chosen model's hook points unless the list already is (or
        is being) filled from it; ``retry`` loads a model that failed again. A stale answer
        is dropped."""
        spec = self.model_spec()
        if spec == self._hooks_model and not (retry and self._hooks_state == "failed"):
            return
        self._requests.forget("hooks")  # the previous model's list is not wanted any more
        self._hooks_model = spec
        problem = model_problem(spec)
        self._fill_hooks([], loading=not problem)
        if problem:
            self._set_hooks_state("failed", problem)
            return

        def failed(sentence: str, details: str) -> None:
            self._fill_hooks([], loading=False)
            self._set_hooks_state("failed", f"Model: {sentence}")
        self._set_hooks_state("loading", LOADING)
        self._requests.submit(self.bridge, "hooks", f"Hook points of {ModelSpec.parse(spec).short_name}", api.hook_points,
                              engine_key="capture-hooks", on_result=self._fill_hooks, on_error=failed,
                              model=self._expand(spec))

    def _on_job_finished(self, job_id: int, how: str) -> None:
        """The hook points' job was cancelled (from the jobs panel): say so, allow a retry."""
        if isValid(self) and how == CANCELLED and self._requests.key_of(job_id) == "hooks":
            self._requests.forget("hooks")
            self._fill_hooks([])
            self._set_hooks_state("failed", "Model: loading its hook points was cancelled; choose the model again.")

    def _fill_hooks(self, names: list[str], loading: bool = False) -> None:
        """Fill the list with ``names`` (or one "loading" line), the wanted ones ticked."""
        self.hooks.blockSignals(True)
        self.hooks.clear()
        if loading:
            item = QListWidgetItem(LOADING)
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.hooks.addItem(item)
        for name in names:
            item = QListWidgetItem(name)
            item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in self._wanted else Qt.CheckState.Unchecked)
            self.hooks.addItem(item)
        self.hooks.blockSignals(False)
        self._filter_hooks(self.hook_filter.text())
        if names:
            self._set_hooks_state("ready", "")
            ticked = [self.hooks.item(i) for i in range(self.hooks.count()) if self.hooks.item(i).text() in self._wanted]
            if ticked:
                self.hooks.scrollToItem(ticked[0], QListWidget.ScrollHint.PositionAtCenter)
        self._on_hooks_changed()

    def checked_hooks(self) -> list[str]:
        """The ticked hook points, in the model's forward order."""
        items = (self.hooks.item(i) for i in range(self.hooks.count()))
        return [it.text() for it in items if it.flags() & Qt.ItemFlag.ItemIsUserCheckable
                and it.checkState() == Qt.CheckState.Checked]

    def check_hooks(self, names: list[str]) -> None:
        """Tick exactly ``names`` in the list."""
        for i in range(self.hooks.count()):
            item = self.hooks.item(i)
            if item.flags() & Qt.ItemFlag.ItemIsUserCheckable:
                item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    def hooks_loaded(self) -> bool:
        """True once the list holds the hook points of the model now named."""
        return self._hooks_model == self.model_spec() and self._hooks_state == "ready"

    def _filter_hooks(self, text: str) -> None:
        words = text.lower().split()
        for i in range(self.hooks.count()):
            item = self.hooks.item(i)
            item.setHidden(bool(words) and not all(w in item.text().lower() for w in words))

    def _on_hook_ticked(self, item: QListWidgetItem) -> None:
        """A tick by the user: remembered across models, reflected in the output name."""
        if item.checkState() == Qt.CheckState.Checked:
            self._wanted.add(item.text())
        else:
            self._wanted.discard(item.text())
        self._on_hooks_changed()

    def _on_hooks_changed(self) -> None:
        if self._hooks_state == "ready":
            total = sum(1 for i in range(self.hooks.count())
                        if self.hooks.item(i).flags() & Qt.ItemFlag.ItemIsUserCheckable)
            self.hooks_status.setText(f"{len(self.checked_hooks())} of {total} hook points ticked")
        self._update_out()

    def _set_hooks_state(self, state: str, text: str) -> None:
        self._hooks_state = state
        self.hooks_status.setText(text)
        self.hooks_status.setStyleSheet(ERROR_STYLE if state == "failed" else "")

    def _update_out(self) -> None:
        if self._out_auto:
            hooks = self.checked_hooks()
            self.out.setText(str(default_out(self.root, self.model_spec(), hooks[0] if hooks else None)))

    # ------------------------------------------------------------------ checking and OK
    @staticmethod
    def _expand(spec: str) -> str:
        return str(Path(spec).expanduser()) if spec.startswith("~") else spec

    def problem(self) -> str | None:
        """The first field that stops the capture, as a sentence naming the field and value."""
        spec, source, out = self.model_spec(), self.source.currentText().strip(), self.out.text().strip()
        found = model_problem(spec) or source_problem(source)
        if found:
            return found
        if self._hooks_state == "failed":
            return self.hooks_status.text()
        if not self.hooks_loaded():
            return f"Hook points: still loading those of model {spec}; wait a moment."
        if not self.checked_hooks():
            return f"Hook points: none ticked; tick at least one hook point of model {spec}."
        return self._out_problem(out)

    def _out_problem(self, out: str) -> str | None:
        path = Path(out).expanduser()
        if not out:
            return "Output file: empty; choose the .h5 store to write."
        if path.suffix not in STORE_SUFFIXES:
            return f"Output file: {out} should end in .h5."
        if path.is_dir():
            return f"Output file: {out} is a folder."
        if path.exists() and not self.resume.isChecked():
            return (f"Output file: {out} already exists; tick Resume to continue it, "
                    "or choose another file (it is never overwritten).")
        return None

    def params(self) -> dict[str, Any]:
        """The keyword arguments of ``engine.capture.capture``, as ``main.py capture`` builds them
        (a CaptureSpec's)."""
        return CaptureSpec.parse(dict(
            model=self._expand(self.model_spec()), source=self._expand(self.source.currentText().strip()),
            hooks=self.checked_hooks(), out=Path(self.out.text().strip()).expanduser(),
            max_tokens=self.max_tokens.value() or None, resume=self.resume.isChecked(),
            batch_size=self.batch_size.value(), ctx_len=self.ctx_len.value(), dtype=self.dtype.currentText(),
            model_dtype=self.model_dtype.currentText())).job_params()

    def accept(self) -> None:
        """OK: with a problem, show it and stay open (nothing is submitted)."""
        self.load_hooks()  # a model typed but not yet committed starts loading now
        found = self.problem()
        self.error.setText(found or "")
        if found is None:
            super().accept()

    def reject(self) -> None:
        self._requests.forget_all()  # cancels a hook-point job still running
        super().reject()
