"""Sessions that travel: a workspace folder copied elsewhere (the original gone) opens in the
real window with its store, SAE, statistics and cached layouts, and its session restores;
a store changed by one byte or removed is named with the expected and found hashes; older
session formats (tests/data/session_v1.json, a format-2 file) and the current one kept in
tests/data (session_v3.json) open."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import main
from desktop_app.session import Session
from desktop_app.state import ROWS, Selection
from engine.api import JobContext, Workspace, file_digest, project
from engine.projection import layouts
from tests.conftest import wait_until

DATA = Path(__file__).parent / "data"


@pytest.fixture
def opened(open_window, qtbot):
    """Open a workspace in a real window and wait for its PCA layouts."""
    def open_(root: Path, restore: bool = False):
        window = open_window()
        assert window.open_workspace(root, restore=restore)
        wait_until(qtbot, lambda: {"rows/pca", "latents/pca"} <= set(window.state.projections), 60)
        return window
    return open_


def _pca_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "projections").glob("*-pca-*.npz"))


def _idle(window) -> None:
    """Stop the window's jobs (a UMAP) so its folder can be copied whole."""
    window.bridge.cancel_all()
    assert window.bridge.wait_idle(60)


def test_travel_copied_workspace_opens_with_its_session_and_layouts(small_workspace, opened, qtbot, tmp_path,
                                                                   monkeypatch, capsys):
    first = Path(shutil.copytree(small_workspace.root, tmp_path / "first"))
    win = opened(first)
    state = win.state
    state.set_selection(Selection(ROWS, [3, 5, 8, 13], "lasso"))
    state.set_focus(7)
    item = {"kind": "latent", "hook": state.hook, "strength": 2.0, "sae": str(state.sae), "latent": 7,
            "mode": "add", "enabled": True, "name": "latent 7"}
    state.set_steering([item])
    win.views["Scatter"].set_projection_name("latents/pca")
    win.views["Scatter"].set_colour_mode("density")
    win.views["Features"].search.setText("class")
    # the Steering view's "focused latent" row follows the focus through a job: saved with it
    wait_until(qtbot, lambda: any(i.get("follows_focus") for i in state.steering), 30)
    saved_path = win.save_session()
    assert saved_path == first / "session.json"
    saved = json.loads(saved_path.read_text())
    assert saved["format"] == Session.FORMAT == 3
    assert (saved["workspace"], saved["store"], saved["sae"]) == (
        "./", f"./stores/{small_workspace.store.name}", f"./saes/{small_workspace.sae.name}")
    assert str(first) not in json.dumps({k: v for k, v in saved.items() if k != "saved_in"})
    steering, views = Session.load(saved_path).steering, win.session().views
    # the same session as format 2 wrote it (absolute paths, no hashes): it must travel too
    old = Session.load(saved_path).model_dump(mode="json", by_alias=True, exclude={"inputs", "saved_in"})
    (first / "session_v2.json").write_text(json.dumps({**old, "format": 2}))
    pca = _pca_files(first)
    _idle(win)

    second = Path(shutil.copytree(first, tmp_path / "elsewhere" / "second"))
    first.rename(tmp_path / "gone")  # the original is gone: absolute paths into it break
    other = opened(second, restore=True)
    s = other.state
    assert (s.workspace, s.store, s.sae, s.stats) == (
        second, second / "stores" / small_workspace.store.name, second / "saes" / small_workspace.sae.name,
        small_workspace.sae_id)
    assert np.array_equal(s.selection.ids, [3, 5, 8, 13]) and s.focus == (7,)
    assert len(steering) == 2  # the latent item and the focused-latent row, both with the SAE
    wait_until(qtbot, lambda: list(s.steering) == [{**i, "sae": str(s.sae)} for i in steering], 30)
    wait_until(qtbot, lambda: other.views["Scatter"].session_state() == views["Scatter"], 30)
    assert other.views["Features"].session_state() == views["Features"]
    assert _pca_files(second) == pca  # the copied layouts were found, not laid out again
    log = other.jobs.log.toPlainText()
    assert f"session saved in {first}: its files are read from {second}" in log
    _idle(other)
    assert other.errors == []
    # the session is a recipe file too: steer --recipe reads its ./ SAE folder from its folder
    monkeypatch.chdir(tmp_path)
    assert main.main(["steer", "--model", small_workspace.model, "--recipe", str(second / "session.json"),
                      "--prompt", "The", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert "steered:  " in capsys.readouterr().out

    older = opened(second)  # the format-2 file: its absolute paths into the gone folder
    older.state.set_selection(Selection(ROWS, [1], "other"))
    assert older.restore_session(second / "session_v2.json")
    assert older.state.store == s.store and older.state.sae == s.sae
    assert np.array_equal(older.state.selection.ids, [3, 5, 8, 13]) and older.state.focus == (7,)
    assert list(older.state.steering) == list(s.steering)
    assert f"session saved in {first}, which is gone" in older.jobs.log.toPlainText()
    _idle(older)
    assert older.errors == []


def _flip_one_byte(store: Path) -> None:
    """Change the low byte of the first stored activation (the file stays a valid store)."""
    with h5py.File(store, "r") as f:
        acts = f["acts"][next(iter(f["acts"]))]
        offset = acts.id.get_chunk_info(0).byte_offset
    with open(store, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 1]))


def test_travel_a_changed_or_removed_store_is_named_with_its_hashes(small_workspace, opened, qtbot, tmp_path):
    root = Path(shutil.copytree(small_workspace.root, tmp_path / "ws"))
    win = opened(root)
    win.state.set_selection(Selection(ROWS, [2, 4, 6], "lasso"))
    win.state.set_focus(5)
    path = win.save_session()
    _idle(win)
    store = root / "stores" / small_workspace.store.name
    expected = file_digest(store)
    assert {"role": "store", "path": f"./stores/{store.name}", "sha256": expected} in json.loads(
        path.read_text())["inputs"]

    _flip_one_byte(store)
    found = file_digest(store)
    assert found != expected
    other = opened(root, restore=True)
    wait_until(qtbot, lambda: any("session.json" in e for e, _ in other.errors), 30)
    message = next(e for e, _ in other.errors if "session.json" in e)
    assert message == f"session session.json: store {store}: changed (expected {expected}, found {found})"
    assert np.array_equal(other.state.selection.ids, [2, 4, 6]) and other.state.focus == (5,)  # restored
    _idle(other)

    store.unlink()
    other.errors.clear()
    other.state.set_focus(1)
    assert other.restore_session(path)
    wait_until(qtbot, lambda: any("session.json" in e for e, _ in other.errors), 30)
    message = next(e for e, _ in other.errors if "session.json" in e)
    assert message == f"session session.json: store {store}: missing (expected {expected})"
    assert other.state.focus == (5,) and other.state.sae == root / "saes" / small_workspace.sae.name
    assert "Traceback" not in " ".join(e + d for e, d in other.errors)
    _idle(other)


def test_travel_the_current_format_session_in_tests_data_opens(opened, qtbot, tmp_path):
    """tests/data/session_v3.json, saved by the window over a workspace holding
    tests/data/old_format_store.h5 and old_format_sae, opens in that workspace rebuilt here."""
    data = json.loads((DATA / "session_v3.json").read_text())
    assert data["format"] == Session.FORMAT  # a newer format needs a new file beside this one
    root = tmp_path / "copied"
    (root / "stores").mkdir(parents=True)
    store = Path(shutil.copy(DATA / "old_format_store.h5", root / "stores" / "old_format_store.h5"))
    sae = Path(shutil.copytree(DATA / "old_format_sae", root / "saes" / "old_format_sae"))
    Workspace.create(root, store=store, hook=data["hook"], sae=sae, sae_id=data["stats"])
    shutil.copy(DATA / "session_v3.json", root / "session.json")

    win = opened(root, restore=True)
    s = win.state
    assert (s.store, s.sae, s.stats, s.hook) == (store, sae, "old_sae", "blocks.0.hook_resid_post")
    assert np.array_equal(s.selection.ids, [4, 8, 15, 16, 23, 42]) and s.focus == (5,)
    assert [(i["kind"], i.get("sae"), i.get("latent")) for i in s.steering][:2] == [
        ("latent", str(sae), 5), ("concept", None, None)]
    wait_until(qtbot, lambda: win.views["Scatter"].session_state() == data["views"]["Scatter"], 30)
    assert win.views["Features"].search.text() == "5"
    assert win.session().views["Geometry"]["compare"]["a"]["path"] == str(store)  # a view's path too
    assert (f"session saved in /home/user/latentlab/old-format: its files are read from {root}"
            in win.jobs.log.toPlainText())
    _idle(win)
    assert win.errors == []


@pytest.mark.parametrize("version", [1, 2])
def test_travel_an_older_session_in_a_moved_workspace_opens(tmp_path, version):
    """session_v1.json (and the same as format 2) named /home/user/latentlab/demo; as the
    session.json of a workspace now elsewhere, its paths are read from there."""
    data = json.loads((DATA / "session_v1.json").read_text())
    if version == 2:
        data = {**data, "format": 2, "steering": {"format": 2, "items": data["steering"]}}
    root = tmp_path / "demo-here"
    (root / "stores").mkdir(parents=True)
    (root / "stores" / "demo_smollm2.h5").write_bytes(b"")
    (root / "saes" / "topk").mkdir(parents=True)
    Workspace.create(root)
    (root / "session.json").write_text(json.dumps(data))
    s = Session.load(root / "session.json")
    assert (s.workspace, s.store, s.sae) == (str(root), str(root / "stores" / "demo_smollm2.h5"),
                                              str(root / "saes" / "topk"))
    assert s.notes == [f"session saved in /home/user/latentlab/demo, which is gone: 3 of its paths are "
                       f"read from {root} instead"]
    assert s.steering == json.loads((DATA / "session_v1.json").read_text())["steering"]  # relative: kept
    assert s.focus == [3, 7] and s.selection_value().ids.tolist() == [1, 5, 9]
    kept = Session.load(DATA / "session_v1.json")  # where nothing moved, nothing changes
    assert kept.store == data["store"] and kept.notes == []


def test_travel_layouts_are_found_in_a_copied_workspace(small_workspace, tmp_path, monkeypatch):
    """The layout cache is keyed by the store's path in the workspace and its content hash:
    a copy finds the layouts, a copy whose store changed lays them out anew."""
    root = Path(shutil.copytree(small_workspace.root, tmp_path / "copy"))
    store, ctx = root / "stores" / small_workspace.store.name, JobContext(device=torch.device("cpu"))
    with monkeypatch.context() as m:
        m.setattr(layouts, "row_matrix", lambda *a, **k: 1 / 0)
        m.setattr(layouts, "latent_matrix", lambda *a, **k: 1 / 0)
        rows = project(ctx, store, small_workspace.hook, "pca", cache_dir=root / "projections",
                       max_rows=None)
        latents = project(ctx, None, small_workspace.hook, "pca", "latents",
                          sae_path=root / "saes" / small_workspace.sae.name, cache_dir=root / "projections")
    assert rows.name == "rows/pca" and latents.name == "latents/pca"
    _flip_one_byte(store)
    with pytest.raises(ZeroDivisionError), monkeypatch.context() as m:
        m.setattr(layouts, "row_matrix", lambda *a, **k: 1 / 0)
        project(ctx, store, small_workspace.hook, "pca", cache_dir=root / "projections",
                       max_rows=None)
