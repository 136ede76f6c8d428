"""Jobs > Capture Activations as a researcher uses it: the real window and engine thread, the
tiny llama's hook points loaded by an engine job, a bfloat16 capture that lands in a store the
views then show, and one clear message per invalid field (with no job submitted)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialogButtonBox

from desktop_app.bridge import DONE
from desktop_app.capture_dialog import LOADING, CaptureDialog
from engine.store.activations import COSINE_ATTR, ActivationStore
from engine.workspace import Workspace
from tests.conftest import wait_until

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def window(open_window, tmp_path):
    """The real window on an empty workspace folder."""
    win = open_window(size=None)
    win.state.set_workspace(tmp_path / "ws")
    return win


@pytest.fixture
def dialog(window, qtbot, tiny_llama) -> CaptureDialog:
    """The dialog on the tiny llama with its hook points loaded and one ticked."""
    dlg = window.capture_dialog(model=str(tiny_llama))
    wait_until(qtbot, dlg.hooks_loaded)
    dlg.check_hooks([HOOK])
    dlg.max_tokens.setValue(256)
    return dlg


def press_capture(qtbot, dlg: CaptureDialog) -> None:
    button = dlg.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def capture_jobs(window) -> list:
    return [j for j in window.bridge.jobs.values() if j.title.startswith("Capture")]


def test_capture_from_the_dialog_opens_the_new_store(window, qtbot, tiny_llama, tmp_path):
    dlg = window.capture_dialog(model=str(tiny_llama))
    assert dlg.isVisible() and dlg.hooks.item(0).text() == LOADING  # the engine is still loading
    assert dlg.hooks_status.text() == LOADING
    wait_until(qtbot, dlg.hooks_loaded)
    names = [dlg.hooks.item(i).text() for i in range(dlg.hooks.count())]
    assert HOOK in names and "embed" in names and window.bridge.jobs[1].title == "Hook points of llama"
    dlg.hook_filter.setText("resid_post")
    shown = [dlg.hooks.item(i).text() for i in range(dlg.hooks.count()) if not dlg.hooks.item(i).isHidden()]
    assert shown and all("resid_post" in n for n in shown) and len(shown) < len(names)
    dlg.check_hooks([HOOK])
    assert dlg.hooks_status.text().startswith("1 of ")
    out = tmp_path / "ws" / "stores" / f"llama-{HOOK}.h5"
    assert dlg.out.text() == str(out)  # the default follows the model and the first hook
    dlg.max_tokens.setValue(256)
    dlg.ctx_len.setValue(64)
    dlg.model_dtype.setCurrentText("bfloat16")
    press_capture(qtbot, dlg)
    assert dlg.error.text() == ""
    wait_until(qtbot, lambda: window.state.store == out)
    assert [j.state for j in capture_jobs(window)] == [DONE]
    with ActivationStore.open(out) as store:
        assert store.hooks == (HOOK,) and store.n_rows == 256
        assert store.meta.model_dtype == "bfloat16" and store.meta.dtype == "float16"
        assert store.meta.params["ctx_len"] == 64
        cosine = json.loads(store.attrs[COSINE_ATTR])[HOOK]
        model_id = store.meta.model_id
    assert 0.98 < cosine["mean"] <= 1.0 + 1e-6 and cosine["rows"] > 0
    assert window.state.hook == HOOK and window.state.model == model_id and window.state.sae is None
    assert any(j.title == "PCA of rows" for j in window.bridge.jobs.values())  # the views ask for it
    log = window.jobs.log.toPlainText()
    assert f"captured 256 rows into {out}" in log and "bfloat16 model at" in log and "cosine to float32" in log


def test_jobs_menu_opens_the_dialog_on_the_active_model(window, qtbot, tiny_llama):
    window.state.set_model(str(tiny_llama))
    jobs = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Jobs")
    action = next(a for a in jobs.actions() if a.text() == "&Capture Activations...")
    assert action.shortcut().toString() == "Ctrl+Shift+C"
    action.trigger()
    dlg = window.findChild(CaptureDialog)
    assert dlg is not None and dlg.isVisible() and dlg.model_spec() == str(tiny_llama)
    wait_until(qtbot, dlg.hooks_loaded)
    dlg.reject()


def test_ticked_hooks_and_a_workspace_models_are_offered(window, qtbot, tiny_llama, tmp_path):
    models = tmp_path / "ws" / "models"
    for sub in ("cnn-a", "pruned/cnn-a-magnitude-0.5"):
        (models / sub).mkdir(parents=True)
        (models / sub / "latentlab_model.json").write_text("{}")
    ws = Workspace.create(tmp_path / "ws")  # File > Open Model records what it opened here
    ws.remember("models", "hf:gpt2")
    ws.remember("models", "./net.py:make")
    ws.save()
    window.state.set_hook(HOOK)  # the active hook point starts ticked
    dlg = window.capture_dialog(model=str(tiny_llama))
    items = [dlg.model.itemText(i) for i in range(dlg.model.count())]
    assert items[:2] == ["smollm2", str(tiny_llama)]
    assert str(models / "cnn-a") in items and str(models / "pruned" / "cnn-a-magnitude-0.5") in items
    assert items.index(f"{tmp_path / 'ws'}/net.py:make") < items.index("hf:gpt2") < items.index(str(models / "cnn-a"))
    wait_until(qtbot, dlg.hooks_loaded)
    assert dlg.checked_hooks() == [HOOK]


@pytest.mark.parametrize("case", ["missing source", "source suffix", "no hook", "output exists",
                                  "output suffix", "missing model", "digits split"])
def test_each_invalid_field_is_named_and_nothing_is_submitted(window, dialog, qtbot, tmp_path, case):
    bad = tmp_path / "corpus.txt"
    if case == "missing source":
        dialog.source.setCurrentText(str(bad))
        expect = f"Source: file {bad} does not exist."
    elif case == "source suffix":
        bad = tmp_path / "table.csv"
        bad.write_text("a,b\n")
        dialog.source.setCurrentText(str(bad))
        expect = f"Source: {bad} is not a .txt or .jsonl file"
    elif case == "no hook":
        dialog.check_hooks([])
        expect = "Hook points: none ticked; tick at least one hook point of model"
    elif case == "output exists":
        out = Path(dialog.out.text())
        out.parent.mkdir(parents=True)
        out.write_bytes(b"")
        expect = f"Output file: {out} already exists; tick Resume"
    elif case == "output suffix":
        dialog.out.setText(str(tmp_path / "rows.txt"))
        expect = f"Output file: {tmp_path / 'rows.txt'} should end in .h5."
    elif case == "missing model":
        dialog.set_model(str(tmp_path / "no-such-model"))
        assert dialog.hooks_status.text() == f"Model: {tmp_path / 'no-such-model'} does not exist."
        expect = f"Model: {tmp_path / 'no-such-model'} does not exist."
    else:
        dialog.source.setCurrentText("digits:validation")
        expect = "Source: digits split 'validation' is not one of train, test, all."
    jobs = len(window.bridge.jobs)
    press_capture(qtbot, dialog)
    assert dialog.error.text().startswith(expect), dialog.error.text()
    assert dialog.isVisible() and len(window.bridge.jobs) == jobs and not capture_jobs(window)


def test_a_model_the_engine_cannot_load_is_reported_in_the_dialog(window, qtbot, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    dlg = window.capture_dialog(model=str(folder))
    wait_until(qtbot, lambda: dlg.hooks_status.text() != LOADING)
    assert dlg.hooks_status.text().startswith(f"Model: model folder {folder} has neither config.json")
    press_capture(qtbot, dlg)
    assert dlg.error.text() == dlg.hooks_status.text() and dlg.isVisible()
    assert not window.errors and not capture_jobs(window)  # the dialog said it, not a box


def test_cancelling_the_hook_points_job_is_said_and_a_retry_loads_them(window, qtbot, tiny_llama):
    release = threading.Event()
    window.bridge.submit("Busy", lambda ctx: release.wait(30))  # the hook points' job waits behind it
    dlg = window.capture_dialog(model=str(tiny_llama))
    job = next(j for j in window.bridge.jobs.values() if j.title == "Hook points of llama")
    window.bridge.cancel(job.id)  # as the jobs panel's Cancel button does
    release.set()
    wait_until(qtbot, lambda: dlg.hooks_status.text() != LOADING)
    assert dlg.hooks_status.text().startswith("Model: loading its hook points was cancelled")
    press_capture(qtbot, dlg)
    assert dlg.error.text() == dlg.hooks_status.text() and not capture_jobs(window)
    dlg.set_model(str(tiny_llama))  # choosing it again retries
    wait_until(qtbot, dlg.hooks_loaded)
    assert dlg.hooks.count() > 1


def test_an_engine_failure_reaches_the_window_as_a_sentence(window, dialog, qtbot):
    out = Path(dialog.out.text())
    out.parent.mkdir(parents=True)
    out.write_bytes(b"not an HDF5 file")
    dialog.resume.setChecked(True)
    press_capture(qtbot, dialog)
    assert dialog.error.text() == ""
    wait_until(qtbot, lambda: not window.bridge.busy() and bool(window.errors))
    sentence, details = window.errors[-1]
    assert str(out) in sentence and "Traceback" not in sentence and "Traceback" in details
    assert window.state.store is None
