"""Jobs > Train SAE...: the dialog on the real window and engine thread (tiny llama's small
workspace): training from it makes the new SAE current with the same statistics
``feature-stats --store`` writes, the fields follow the architecture, and every refusal names
its field and value in the dialog without submitting a job."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox

from desktop_app.bridge import DONE, FAILED
from desktop_app.sae_dialog import ARCHS, RESUME_TEXT, TrainSAEDialog
from engine.features.stats import load_feature_stats
from engine.sae.io import load_sae
from engine.store.activations import ActivationStore, StoreMeta
from main import main as cli
from tests.conftest import wait_until

HOOK = "blocks.1.hook_resid_post"  # the small workspace's hook point (d_in 32, 3000 rows)


@pytest.fixture
def workspace(small_workspace, tmp_path) -> Path:
    """A copy of the small workspace: training writes an SAE and statistics into it."""
    return Path(shutil.copytree(small_workspace.root, tmp_path / "ws"))


@pytest.fixture
def dialog(open_window, tmp_path, small_workspace):
    """The dialog over a bare window whose state points at a copy of the small workspace's store."""
    win = open_window([], size=None)
    (tmp_path / "ws" / "stores").mkdir(parents=True)
    with win.state.batch():
        win.state.set_workspace(tmp_path / "ws")
        win.state.set_store(shutil.copy(small_workspace.store, tmp_path / "ws" / "stores"))
        win.state.set_hook(small_workspace.hook)
    return win.train_sae_dialog()  # accepted, it deletes itself; the window closes it otherwise


def _type(edit, text: str) -> None:
    """Set a line edit's text as typing would (its signals included)."""
    edit.setText(text)
    edit.textEdited.emit(text)
    edit.editingFinished.emit()


def _train(dlg: TrainSAEDialog, qtbot) -> None:
    qtbot.mouseClick(dlg.buttons.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton)


def test_training_from_the_dialog_makes_the_sae_current_with_its_statistics(window, qtbot, workspace):
    assert window.open_workspace(workspace)
    wait_until(qtbot, lambda: window.state.stats and not window.bridge.busy())
    state, browser = window.state, window.views["Features"]
    jobs_menu = next(a for a in window.menuBar().actions() if a.text() == "&Jobs").menu()
    next(a for a in jobs_menu.actions() if a.text() == "&Train SAE...").trigger()
    dlg = window.findChild(TrainSAEDialog)
    assert dlg.isVisible() and dlg.store_edit.text() == str(state.store)
    assert dlg.hook_box.currentText() == HOOK
    dlg.arch_box.setCurrentIndex(ARCHS.index("topk"))
    dlg.expansion_box.setValue(2)
    dlg.k_box.setValue(4)
    dlg.batch_box.setValue(256)
    dlg.epochs_edit.setText("1")
    out = workspace / "saes" / f"topk-{HOOK}"
    assert Path(dlg.out_edit.text()) == out
    n_jobs = len(window.bridge.jobs)
    _train(dlg, qtbot)
    assert not dlg.isVisible()
    wait_until(qtbot, lambda: not window.bridge.busy() and state.stats == out.name, 120)
    jobs = list(window.bridge.jobs.values())[n_jobs:]
    assert [j.title for j in jobs[:2]] == [f"Train SAE {out.name}", f"Feature statistics of {out.name}"]
    assert {j.state for j in jobs} == {DONE}
    log = window.jobs.log.toPlainText()  # both ran in the jobs panel (progress, cancel, log)
    assert f"done: Train SAE {out.name}" in log and f"done: Feature statistics of {out.name}" in log
    assert (out / "sae_weights.safetensors").is_file() and (out / "metrics.json").is_file()
    cfg = load_sae(out).cfg
    assert (cfg.arch, cfg.d_sae, cfg.k, cfg.hook_name) == ("topk", 64, 4, HOOK)
    assert state.sae == out and state.stats == out.name and state.hook == HOOK
    wait_until(qtbot, lambda: browser.table.model().rowCount() == 64)  # the new SAE's latents
    assert len(state.projections["latents/pca"].ids) == 64
    _check_same_statistics(state.store, out)


def _check_same_statistics(store_path: Path, out: Path) -> None:
    """The dialog's statistics equal those ``feature-stats --store`` writes for the same SAE."""
    assert cli(["feature-stats", "--store", str(store_path), "--sae", str(out), "--sae-id", "cli"]) == 0
    with ActivationStore.open(store_path) as store:
        gui, ref = load_feature_stats(store, out.name), load_feature_stats(store, "cli")
    assert gui.density.shape == (64,) and gui.density.sum() > 0
    assert gui.logit_top_ids.shape[0] == 64  # logit effects from the store's model
    for name in ("density", "max", "top_values", "top_rows", "logit_top_ids", "neighbours"):
        np.testing.assert_allclose(getattr(gui, name), getattr(ref, name), rtol=1e-5, err_msg=name)


def test_parameter_fields_follow_the_architecture(dialog):
    form, out = dialog.form, dialog.out_edit
    uses = {"relu": "l1", "topk": "k", "batchtopk": "k", "jumprelu": "l0", "mp": "k", "gtopk": "k", "gated": "l1"}
    assert [dialog.arch_box.itemData(i) for i in range(dialog.arch_box.count())] == list(ARCHS)
    for arch in ARCHS:
        dialog.arch_box.setCurrentIndex(ARCHS.index(arch))
        shown = {name for name, w in (("k", dialog.k_box), ("l1", dialog.l1_edit), ("l0", dialog.l0_edit))
                 if form.isRowVisible(w)}
        assert shown == {uses[arch]}, arch
        assert Path(out.text()).name == f"{arch}-{HOOK}"
    dialog.arch_box.setCurrentIndex(ARCHS.index("mp"))
    assert form.labelForField(dialog.k_box).text() == "k (pursuit steps)"
    assert dialog.width_note.text().startswith("256 latents")  # expansion 8 x d_in 32
    _type(out, "/somewhere/mine")
    dialog.arch_box.setCurrentIndex(ARCHS.index("relu"))
    assert out.text() == "/somewhere/mine"  # a folder the user chose stays


def _bad_store(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.h5"
    if kind == "text":
        path.write_text("not a store")
    else:  # a store holding no activation rows (as --no-acts makes)
        ActivationStore.create(path, StoreMeta("m", "h", "s", hooks=(), dims={})).close()
    return path


def _filled(tmp_path: Path, checkpoint: bool = False) -> Path:
    out = tmp_path / "taken"
    (out / ("checkpoint" if checkpoint else "notes")).mkdir(parents=True)
    return out


CASES = {  # field set to a bad value -> what the message must say
    "store-empty": (lambda d, t: _type(d.store_edit, ""), ["Store:", "none chosen"]),
    "store-text": (lambda d, t: _type(d.store_edit, str(_bad_store(t, "text"))), ["Store:", "text.h5", "not an HDF5"]),
    "hook-none": (lambda d, t: _type(d.store_edit, str(_bad_store(t, "noacts"))), ["Hook point:", "noacts.h5"]),
    "k": (lambda d, t: (d.expansion_box.setValue(1), d.k_box.setValue(40)), ["k: 40", "32 latents"]),
    "l1": (lambda d, t: (d.arch_box.setCurrentIndex(0), d.l1_edit.setText("abc")), ["L1 coefficient: 'abc'"]),
    "l0": (lambda d, t: (d.arch_box.setCurrentIndex(3), d.l0_edit.setText("-1")), ["L0 coefficient: -1", "above 0"]),
    "batch": (lambda d, t: d.batch_box.setValue(4096), ["Batch size: 4,096", "2,850 training rows"]),
    "epochs": (lambda d, t: d.epochs_edit.setText("0"), ["Epochs: 0", "above 0"]),
    "lr": (lambda d, t: d.lr_edit.setText("fast"), ["Learning rate: 'fast'"]),
    "out-empty": (lambda d, t: _type(d.out_edit, ""), ["Output folder:", "none given"]),
    "out-file": (lambda d, t: _type(d.out_edit, str(_bad_store(t, "text"))), ["Output folder:", "is a file"]),
    "out-taken": (lambda d, t: _type(d.out_edit, str(_filled(t))), ["Output folder:", "taken", "not empty", RESUME_TEXT]),
    "out-no-checkpoint": (lambda d, t: (_type(d.out_edit, str(_filled(t))), d.resume_check.setChecked(True)),
                          ["Output folder:", "taken", "no checkpoint"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_field_is_named_in_the_dialog_and_nothing_runs(dialog, qtbot, tmp_path, case):
    setup, words = CASES[case]
    dialog.batch_box.setValue(256)  # every other field valid
    setup(dialog, tmp_path)
    _train(dialog, qtbot)
    assert dialog.isVisible() and dialog.message.isVisible()
    text = dialog.message.text()
    for word in words:
        assert word in text, (word, text)
    assert "Traceback" not in text and not dialog.parent().bridge.jobs


def test_an_engine_error_reaches_the_user_as_a_sentence(dialog, qtbot, tmp_path):
    """A checkpoint folder that passes the dialog but cannot be loaded: the training job
    fails, the window shows one sentence, and the current SAE stays."""
    window = dialog.parent()
    before = window.state.sae
    out = _filled(tmp_path, checkpoint=True)
    (out / "checkpoint" / "trainer_state.pt").write_bytes(b"")
    _type(dialog.out_edit, str(out))
    dialog.resume_check.setChecked(True)
    dialog.batch_box.setValue(256)
    _train(dialog, qtbot)
    wait_until(qtbot, lambda: not window.bridge.busy())
    (job,) = window.bridge.jobs.values()
    assert job.state == FAILED and window.errors
    sentence = window.errors[-1][0]
    assert "checkpoint" in sentence and "\n" not in sentence and "Traceback" not in sentence
    assert window.state.sae == before
