"""File > Open Store / Open SAE / Open Model on the real window and engine thread (a copy of
the tiny llama's small workspace): each makes its item the active one, lands in its Recent
submenu and in workspace.json, and reopening the workspace (another window, its own
settings) brings the active items and the lists back; bad input is one sentence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PySide6.QtWidgets import QDialogButtonBox, QFileDialog, QPushButton

from desktop_app.bridge import DONE
from desktop_app.opening import OpenModelDialog
from desktop_app.sae_dialog import TrainRequest
from engine.jobs import JobContext
from engine.projection.layouts import UMAP_ROWS, project
from engine.sae.base import SAEConfig, build_sae
from engine.sae.io import save_sae
from tests.conftest import small_demo_spec, wait_until

HOOK = "blocks.1.hook_resid_post"  # the small workspace's hook point (32 wide)


@pytest.fixture(scope="session")
def laid_out(small_workspace, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the small workspace with its UMAP layouts too, made once (the window asks
    for them when it opens the workspace; the cache knows them by path), and its manifest."""
    root = Path(shutil.copytree(small_workspace.root, tmp_path_factory.mktemp("open") / "ws"))
    ctx = JobContext(device=torch.device("cpu"))
    for what in ("rows", "latents"):
        project(ctx, root / small_workspace.store.relative_to(small_workspace.root), HOOK, method="umap",
                what=what, sae_path=root / small_workspace.sae.relative_to(small_workspace.root),
                cache_dir=root / "projections", max_rows=UMAP_ROWS)
    return root, (root / "workspace.json").read_text()


@pytest.fixture
def ws(laid_out) -> Path:
    """That workspace with its manifest as the demo wrote it (opening things records them there)."""
    root, text = laid_out
    (root / "workspace.json").write_text(text)
    return root


@pytest.fixture
def app(open_window):
    """A factory of real main windows without views: what is tested is the window's File
    menu and the engine jobs it starts, not what a view draws."""
    return lambda: open_window([], size=None)


@pytest.fixture
def opened(app, qtbot, ws):
    window = app()
    assert window.open_workspace(ws)
    wait_until(qtbot, lambda: bool(window.state.stats) and not window.bridge.busy(), 60)
    return window


def file_menu(window):
    return next(a.menu() for a in window.menuBar().actions() if a.text() == "&File")


def trigger(window, text: str) -> None:
    next(a for a in file_menu(window).actions() if a.text() == text).trigger()


def listed(window, title: str) -> list[str]:
    """The items a File submenu lists when it opens (section headings and "(none)" left out)."""
    menu = next(a.menu() for a in file_menu(window).actions() if a.text() == title)
    menu.aboutToShow.emit()
    return [a.text() for a in menu.actions() if not a.isSeparator() and a.isEnabled()]


def manifest(root: Path) -> dict:
    return json.loads((root / "workspace.json").read_text())


def new_jobs(window, since: int) -> list:
    return list(window.bridge.jobs.values())[since:]


def test_open_store_makes_it_active_and_reopening_the_workspace_brings_it_back(opened, qtbot, ws, tmp_path,
                                                                                 monkeypatch, app):
    outside, inside = tmp_path / "other.h5", ws / "stores" / "second.h5"
    original = opened.state.store
    for path in (outside, inside):
        shutil.copy(original, path)
        monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, p=path, **k: (str(p), ""))
        trigger(opened, "Open &Store...")
        assert opened.state.store == path and opened.state.hook == HOOK and opened.state.sae is None
    data = manifest(ws)
    assert data["store"] == "stores/second.h5" and data["sae"] is None and data["hook"] == HOOK
    assert data["opened_stores"] == ["stores/second.h5", str(outside)]  # newest first
    assert listed(opened, "Recent Stores") == [str(inside), str(outside)]
    other = app()  # its own settings: the lists come from the workspace
    assert other.open_workspace(ws)
    assert other.state.store == inside and other.state.sae is None
    assert listed(other, "Recent Stores") == [str(inside), str(outside)]


def test_open_store_chosen_in_the_demo_workspace_outlives_its_rebuild_at_launch(app, qtbot, ws, tiny_llama):
    spec, window = small_demo_spec(tiny_llama), app()
    assert window.open_workspace(ws, demo=spec)
    wait_until(qtbot, lambda: bool(window.state.stats) and not window.bridge.busy(), 60)
    chosen = ws / "stores" / "chosen.h5"
    shutil.copy(window.state.store, chosen)
    assert window.open_store(chosen)
    other = app()
    assert other.open_workspace(ws, demo=spec)  # as the next launch does
    wait_until(qtbot, lambda: other._demo_job is None)
    assert other.state.store == chosen and other.state.sae is None
    assert manifest(ws)["store"] == "stores/chosen.h5"


def test_open_sae_with_statistics_over_the_store_uses_them(opened, qtbot, ws, monkeypatch):
    sae = opened.state.sae
    assert opened.open_store(opened.state.store) and opened.state.sae is None  # the same store, no SAE
    wait_until(qtbot, lambda: not opened.bridge.busy())
    since = len(opened.bridge.jobs)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(sae))
    trigger(opened, "Open S&AE...")
    wait_until(qtbot, lambda: opened.state.stats == sae.name and not opened.bridge.busy())
    titles = [j.title for j in new_jobs(opened, since)]
    assert titles[0] == f"Open SAE {sae.name}" and not any(t.startswith("Feature statistics") for t in titles)
    assert opened.state.sae == sae and listed(opened, "Recent SAEs") == [str(sae)]


def test_open_sae_without_statistics_computes_them_and_is_recorded(opened, qtbot, ws, tmp_path, app):
    folder = Path(shutil.copytree(opened.state.sae, tmp_path / "mysae"))  # outside the workspace
    since = len(opened.bridge.jobs)
    opened.open_sae(folder)
    wait_until(qtbot, lambda: opened.state.stats == "mysae" and not opened.bridge.busy(), 60)
    jobs = new_jobs(opened, since)
    assert [j.title for j in jobs[:2]] == ["Open SAE mysae", "Feature statistics of mysae"]
    assert {j.state for j in jobs} == {DONE} and "latents/pca" in opened.state.projections
    data = manifest(ws)
    assert data["sae"] == str(folder) and data["sae_id"] == "mysae" and data["opened_saes"] == [str(folder)]
    assert data["stats"].startswith("stores/")  # the statistics file beside the store
    other = app()
    assert other.open_workspace(ws)
    wait_until(qtbot, lambda: other.state.stats == "mysae")
    assert other.state.sae == folder and listed(other, "Recent SAEs") == [str(folder)]


def test_open_sae_refuses_a_bad_folder_and_a_width_mismatch_in_one_sentence(opened, qtbot, tmp_path):
    state, sae = opened.state, opened.state.sae
    empty = tmp_path / "empty"
    empty.mkdir()
    narrow = save_sae(build_sae(SAEConfig(arch="topk", d_in=16, d_sae=64, k=4)), tmp_path / "narrow")
    for folder, words in ((empty, ["cfg.json"]), (narrow, ["16", "32", HOOK])):
        n = len(opened.errors)
        opened.open_sae(folder)
        wait_until(qtbot, lambda n=n: len(opened.errors) > n)
        sentence = opened.errors[-1][0]
        assert str(folder) in sentence and all(w in sentence for w in words), sentence
        assert "Traceback" not in sentence and state.sae == sae
    assert json.loads((state.workspace / "workspace.json").read_text()).get("opened_saes") == []


def test_open_sae_trained_in_the_app_is_recorded_in_the_workspace(opened, qtbot, ws):
    out = ws / "saes" / "trained"
    request = TrainRequest(store=opened.state.store, hook=HOOK, out=out, arch="topk", expansion=2, k=4,
                           batch_size=256, steps=5, model=opened.state.model, stats=False)
    opened.start_training(request)
    wait_until(qtbot, lambda: opened.state.sae == out and not opened.bridge.busy(), 60)
    data = manifest(ws)
    assert data["sae"] == "saes/trained" and data["sae_id"] == "trained" and data["opened_saes"] == ["saes/trained"]


def test_open_model_typed_or_a_folder_becomes_active_and_is_recorded(opened, qtbot, ws, tiny_llama, monkeypatch,
                                                                    app):
    (ws / "net.py").write_text("import torch\n\n\ndef make():\n    net = torch.nn.Sequential(torch.nn.Linear(4, 3))\n"
                               "    net.input_shape = (4,)\n    return net\n")
    factory = f"{ws / 'net.py'}:make"
    assert opened.state.model == str(tiny_llama)  # the workspace's
    trigger(opened, "Open &Model...")
    dialog = opened.findChild(OpenModelDialog)
    dialog.spec_edit.setText(factory)  # a typed spec
    dialog.buttons.button(QDialogButtonBox.StandardButton.Open).click()
    wait_until(qtbot, lambda: opened.state.model == factory and not opened.bridge.busy())
    trigger(opened, "Open &Model...")
    dialog = next(d for d in opened.findChildren(OpenModelDialog) if d.isVisible())
    assert dialog.spec() == factory  # it starts from the active model
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tiny_llama))
    next(b for b in dialog.findChildren(QPushButton) if b.text() == "Folder\u2026").click()
    assert dialog.spec() == str(tiny_llama)
    dialog.buttons.button(QDialogButtonBox.StandardButton.Open).click()
    wait_until(qtbot, lambda: opened.state.model == str(tiny_llama) and not opened.bridge.busy())
    data = manifest(ws)
    assert data["model"] == str(tiny_llama) and data["opened_models"] == [str(tiny_llama), "./net.py:make"]
    other = app()
    assert other.open_workspace(ws)
    assert other.state.model == str(tiny_llama) and listed(other, "Recent Models") == [str(tiny_llama), factory]


def test_open_model_that_does_not_load_names_the_spec(opened, qtbot, tmp_path):
    model = opened.state.model
    assert opened.open_model(str(tmp_path / "missing")) is None  # refused before any job
    assert str(tmp_path / "missing") in opened.errors[-1][0] and "does not exist" in opened.errors[-1][0]
    n = len(opened.errors)
    opened.open_model("hf:no-such-model")
    wait_until(qtbot, lambda: len(opened.errors) > n)
    assert opened.errors[-1][0].startswith("Model hf:no-such-model did not load: ")
    assert opened.state.model == model
