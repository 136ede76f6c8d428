"""Jobs > Train SAE...: the desktop face of ``main.py train-sae`` (and of ``feature-stats
--store`` once training is done). The dialog reads the store's hook points (metadata only),
shows only the parameters the chosen architecture uses, refuses a bad value with a sentence
naming the field and the value, and once accepted holds a ``TrainRequest``, which the window
runs as engine jobs on its engine thread (progress and cancel in the jobs panel)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from PySide6.QtCore import QSignalBlocker, Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from desktop_app.form import ERROR_STYLE, field_row, spin
from engine import api
from engine.api import SpecError, TrainSpec
from engine.errors import LatentLabError

if TYPE_CHECKING:
    from desktop_app.state import AppState

ARCHS = tuple(api.architectures())  # the registered architectures at import; the dialog asks again
RESUME_TEXT = "Resume from the last checkpoint"
DEFAULT = TrainSpec.default  # the dialog starts from train-sae's defaults


class FieldError(LatentLabError):
    """A value the dialog refuses; ``widget`` is the field to fix."""

    def __init__(self, message: str, widget: QWidget | None = None) -> None:
        super().__init__(message)
        self.widget = widget


def training_rows(n_rows: int, holdout: float = DEFAULT("holdout")) -> int:
    """Rows train_sae trains on: the last ``holdout`` share is held out for its metrics."""
    return n_rows - (max(1, int(holdout * n_rows)) if holdout < 1 else int(holdout))


class TrainRequest(TrainSpec):
    """One training run as the dialog accepted it: ``train_sae``'s parameters (TrainSpec),
    the store's model, and whether to compute the feature statistics afterwards."""

    what: ClassVar[str] = "Train SAE"
    model: str
    stats: bool = True

    @property
    def sae_id(self) -> str:
        """The statistics' name: the SAE folder's name, as feature-stats uses."""
        return self.out.name

    def train_params(self) -> dict[str, Any]:
        """Keyword arguments of ``train_sae``."""
        return self.job_params()


def _note() -> QLabel:
    """A muted line under a field saying what its value amounts to."""
    label = QLabel()
    label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
    return label


def _say(label: QLabel, text: str, width: int = 600) -> None:
    """One line in ``label``, elided to ``width`` pixels (the whole text as its tooltip)."""
    label.setText(label.fontMetrics().elidedText(text, Qt.TextElideMode.ElideMiddle, width))
    label.setToolTip(text)


class TrainSAEDialog(QDialog):
    """Store, hook point, architecture (with its own parameters), sizes, output folder and
    whether to compute feature statistics; it closes as accepted only with every field good,
    holding them in ``accepted_request``."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.setWindowTitle("Train SAE")
        self.setObjectName("train-sae-dialog")
        self.info: api.StoreSummary | None = None
        self.accepted_request: TrainRequest | None = None
        self._out_edited = False  # once the user types a folder, it no longer follows arch/hook
        self._build()
        if state.store is not None:
            self.store_edit.setText(str(state.store))
        self._load_store(prefer=state.hook)
        self._on_arch_changed()
        self.arch_box.setFocus()

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        self.store_edit = QLineEdit()
        self.store_edit.setPlaceholderText("an activation store (.h5)")
        self.store_edit.editingFinished.connect(self._load_store)
        self.store_button = QPushButton("Browse...")
        self.store_button.clicked.connect(self._browse_store)
        self.hook_box = QComboBox()
        self.hook_box.currentTextChanged.connect(self._on_hook_changed)
        self.store_note = _note()
        self.store_error = ""  # why the store cannot be read, if it cannot
        self.arch_box = QComboBox()
        for arch in api.architectures():  # the registry's, plugins included
            summary = api.architecture(arch).summary
            self.arch_box.addItem(f"{arch}  ({summary})" if summary else arch, arch)
        self.arch_box.setCurrentIndex(max(self.arch_box.findData(DEFAULT("arch")), 0))
        self.arch_box.currentIndexChanged.connect(self._on_arch_changed)
        self.k_box = spin(1, 1_000_000, DEFAULT("k"))
        self.l1_edit, self.l0_edit = QLineEdit(f"{DEFAULT('l1_coeff'):g}"), QLineEdit(f"{DEFAULT('l0_coeff'):g}")
        self.expansion_box = spin(1, 1024, DEFAULT("expansion"))
        self.expansion_box.valueChanged.connect(self._update_width)
        self.width_note = _note()
        self.batch_box = spin(1, 1 << 22, DEFAULT("batch_size"))
        self.epochs_edit, self.lr_edit = QLineEdit(f"{DEFAULT('epochs'):g}"), QLineEdit(f"{DEFAULT('lr'):g}")
        self.steps_note = _note()
        self.batch_box.valueChanged.connect(self._update_steps)
        self.epochs_edit.textChanged.connect(self._update_steps)
        self.seed_box = spin(0, 2**31 - 1, DEFAULT("seed"))
        self.out_edit = QLineEdit()
        self.out_edit.textEdited.connect(self._mark_out_edited)
        self.out_button = QPushButton("Browse...")
        self.out_button.clicked.connect(self._browse_out)
        self.resume_check = QCheckBox(RESUME_TEXT)
        self.stats_check = QCheckBox("Compute feature statistics when done (as feature-stats --store)")
        self.stats_check.setChecked(True)
        self.message = QLabel()
        self.message.setObjectName("train-sae-message")
        self.message.setWordWrap(True)
        self.message.setStyleSheet(ERROR_STYLE)
        self.message.hide()
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Train")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        self._lay_out()

    def _lay_out(self) -> None:
        form = self.form = QFormLayout(self)
        form.addRow("Store", field_row(self.store_edit, self.store_button))
        form.addRow("Hook point", self.hook_box)
        form.addRow("", self.store_note)
        form.addRow("Architecture", self.arch_box)
        form.addRow("k (latents per row)", self.k_box)
        form.addRow("L1 coefficient", self.l1_edit)
        form.addRow("L0 coefficient", self.l0_edit)
        form.addRow("Expansion", self.expansion_box)
        form.addRow("", self.width_note)
        form.addRow("Batch size", self.batch_box)
        form.addRow("Epochs", self.epochs_edit)
        form.addRow("", self.steps_note)
        form.addRow("Learning rate", self.lr_edit)
        form.addRow("Seed", self.seed_box)
        form.addRow("Output folder", field_row(self.out_edit, self.out_button))
        form.addRow("", self.resume_check)
        form.addRow("", self.stats_check)
        form.addRow(self.message)
        form.addRow(self.buttons)
        self.setMinimumWidth(760)

    # ------------------------------------------------------------------ field changes
    def _browse_store(self) -> None:
        start = self.store_edit.text() or str(self.state.workspace or Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Train on store", start,
                                              "HDF5 stores (*.h5 *.hdf5);;All files (*)")
        if path:
            self.store_edit.setText(path)
            self._load_store()

    def _browse_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder", self.out_edit.text() or str(Path.home()))
        if folder:
            self.out_edit.setText(folder)
            self._out_edited = True

    def _mark_out_edited(self) -> None:
        self._out_edited = True

    def _load_store(self, prefer: str | None = None) -> None:
        """Read the store's hook points (keeping the chosen one when the store has it)."""
        text = self.store_edit.text().strip()
        keep = prefer or self.hook_box.currentText()
        self.info = None
        self.store_error = ""
        try:
            self.info = api.store_summary(Path(text).expanduser()) if text else None
        except LatentLabError as exc:
            self.store_error = str(exc)
        hooks = self.info.hooks if self.info else ()
        with QSignalBlocker(self.hook_box):
            self.hook_box.clear()
            self.hook_box.addItems(list(hooks))
            if keep in hooks:
                self.hook_box.setCurrentText(keep)
        self._on_hook_changed()

    def _on_hook_changed(self, *_: Any) -> None:
        info, hook = self.info, self.hook_box.currentText()
        if info is not None:
            _say(self.store_note, f"{info.n_rows:,} rows, d_in {info.dims[hook]:,}, model {info.model_id}"
                 if hook else "this store holds no activation rows (made with --no-acts?)")
        else:
            _say(self.store_note, self.store_error)
        self._update_width()
        self._update_steps()
        self._update_out()

    def _on_arch_changed(self, *_: Any) -> None:
        """Show only the parameters the architecture uses."""
        cls = api.architecture(self.arch())
        self.form.setRowVisible(self.k_box, cls.takes_k)
        self.form.setRowVisible(self.l1_edit, "l1_coeff" in cls.options)
        self.form.setRowVisible(self.l0_edit, "l0_coeff" in cls.options)
        self.form.labelForField(self.k_box).setText(f"k ({cls.k_means})")
        self._update_out()

    def _update_width(self, *_: Any) -> None:
        d_in = self._d_in()
        self.width_note.setText(f"{self.expansion_box.value() * d_in:,} latents "
                                f"({self.expansion_box.value()} x d_in {d_in:,})" if d_in else "")

    def _update_steps(self, *_: Any) -> None:
        """How many optimiser steps the epochs make (as train_sae counts them)."""
        try:
            epochs = float(self.epochs_edit.text())
        except ValueError:
            epochs = 0.0
        hook = self.hook_box.currentText()
        if not (self.info and hook and 0 < epochs < float("inf")):
            self.steps_note.setText("")
            return
        n_train = training_rows(self.info.n_rows)
        steps = max(1, math.ceil(epochs * n_train / self.batch_box.value()))
        self.steps_note.setText(f"{steps:,} optimiser step{'s' if steps != 1 else ''} over {n_train:,} training rows "
                                f"({self.info.n_rows - n_train:,} held out for the metrics)")

    def _update_out(self) -> None:
        """The default folder, <workspace>/saes/<arch>-<hook>, until the user picks one."""
        if self._out_edited:
            return
        hook = self.hook_box.currentText()
        store = Path(self.store_edit.text().strip()).expanduser()
        root = self.state.workspace or (store.parent if self.store_edit.text().strip() else None)
        self.out_edit.setText(str(Path(root) / "saes" / f"{self.arch()}-{hook}") if root and hook else "")

    def arch(self) -> str:
        return self.arch_box.currentData()

    def _d_in(self) -> int:
        hook = self.hook_box.currentText()
        return self.info.dims.get(hook, 0) if self.info and hook else 0

    # ------------------------------------------------------------------ checking
    def request(self) -> TrainRequest:
        """The fields as a TrainRequest; FieldError (naming the field and value) if one is bad."""
        info, hook = self._checked_store()
        arch = self.arch()
        k = self.k_box.value()
        d_sae = self.expansion_box.value() * info.dims[hook]
        if api.takes_k(arch) and k > d_sae:
            raise FieldError(f"k: {k:,} is more than the SAE's {d_sae:,} latents (expansion "
                             f"{self.expansion_box.value()} x d_in {info.dims[hook]:,})", self.k_box)
        n_train, batch = training_rows(info.n_rows), self.batch_box.value()
        if batch > n_train:
            raise FieldError(f"Batch size: {batch:,} is more than the {n_train:,} training rows of "
                             f"{hook} (the last {DEFAULT('holdout'):.0%} are held out)", self.batch_box)
        typed = {"epochs": self.epochs_edit, "lr": self.lr_edit, "l1_coeff": self.l1_edit, "l0_coeff": self.l0_edit}
        uses = {"epochs", "lr", *api.architecture(arch).options}
        fields = dict(store=info.path, hook=hook, out=self._checked_out(), model=info.model_id, arch=arch,
                      expansion=self.expansion_box.value(), k=k, batch_size=batch, seed=self.seed_box.value(),
                      resume=self.resume_check.isChecked(), stats=self.stats_check.isChecked(),
                      **{name: typed[name].text().strip() for name in uses})
        try:
            return TrainRequest.parse(fields)
        except SpecError as exc:  # a typed number the spec refuses, said with the field's label
            widget = typed.get(exc.field)
            label = self.form.labelForField(widget).text() if widget else exc.field
            raise FieldError(exc.sentence or f"{label}: {exc.shown} is not {exc.expected}", widget) from None

    def _checked_store(self) -> tuple[api.StoreSummary, str]:
        text = self.store_edit.text().strip()
        if not text:
            raise FieldError("Store: none chosen; pick an activation store (.h5)", self.store_edit)
        self._load_store()
        if self.info is None:
            raise FieldError(f"Store: {self.store_error}", self.store_edit)
        hook = self.hook_box.currentText()
        if not hook:
            raise FieldError(f"Hook point: {self.info.path} holds no activation rows (made with "
                             "--no-acts?); an SAE trains on stored rows", self.hook_box)
        return self.info, hook

    def _checked_out(self) -> Path:
        text = self.out_edit.text().strip()
        if not text:
            raise FieldError("Output folder: none given; name a folder for the SAE", self.out_edit)
        out = Path(text).expanduser().resolve()
        if out.exists() and not out.is_dir():
            raise FieldError(f"Output folder: {out} is a file, not a folder", self.out_edit)
        filled = out.is_dir() and any(out.iterdir())
        if filled and not self.resume_check.isChecked():
            raise FieldError(f"Output folder: {out} already exists and is not empty; choose another "
                             f"folder, or tick '{RESUME_TEXT}' to continue the run in it", self.out_edit)
        if filled and not ((out / "checkpoint").is_dir() or (out / "cfg.json").is_file()):
            raise FieldError(f"Output folder: {out} holds no checkpoint or trained SAE to resume from",
                             self.out_edit)
        return out

    def accept(self) -> None:
        """Close as accepted when every field is good; otherwise say which is not."""
        try:
            self.accepted_request = self.request()
        except FieldError as exc:
            self.show_message(str(exc), exc.widget)
            return
        super().accept()

    def show_message(self, text: str, widget: QWidget | None = None) -> None:
        """A refusal, inside the dialog, with the offending field focused."""
        self.message.setText(text)
        self.message.show()
        if widget is not None:
            widget.setFocus()
