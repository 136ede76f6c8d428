"""Workspace folders: the manifest round-trips with relative paths, bad folders and files
give one clear sentence, and the digits-zoo stage of the demo builds what the geometry view
needs (two seeds, a pruned family, captures over digits:test) and reuses it."""

from __future__ import annotations

import json
import time

import pytest
import torch

from engine.demo import ZOO_HOOKS, build_zoo
from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.store.activations import ActivationStore
from engine.workspace import Workspace


def test_manifest_round_trips_with_paths_relative_to_the_folder(tmp_path):
    ws = Workspace.create(tmp_path / "a", model="smollm2", store=tmp_path / "a" / "stores" / "x.h5",
                          hook="blocks.1.hook_resid_post", sae=tmp_path / "a" / "saes" / "topk", sae_id="topk")
    data = json.loads((ws.root / "workspace.json").read_text())
    assert data["store"] == "stores/x.h5" and data["sae"] == "saes/topk"
    moved = tmp_path / "b"
    ws.root.rename(moved)
    again = Workspace.open(moved)
    assert again.store == moved / "stores" / "x.h5" and again.sae_id == "topk"
    assert {p.name for p in moved.iterdir()} >= {"stores", "saes", "projections", "workspace.json"}


def test_manifest_lists_what_was_opened_relative_under_the_folder_absolute_elsewhere(tmp_path):
    root, elsewhere = tmp_path / "a", tmp_path / "elsewhere"
    ws = Workspace.create(root, model=f"{root / 'models' / 'cnn'}", store=elsewhere / "x.h5")
    for kind, item in (("stores", root / "stores" / "y.h5"), ("stores", elsewhere / "x.h5"),
                       ("stores", root / "stores" / "y.h5"), ("saes", root / "saes" / "topk"),
                       ("models", f"{root / 'net.py'}:make?x=1"), ("models", "hf:gpt2"),
                       ("models", str(elsewhere / "llama")), ("models", str(root / "cnn"))):
        ws.remember(kind, item)
    ws.chosen = True
    ws.save()
    data = json.loads((root / "workspace.json").read_text())
    assert data["model"] == "models/cnn" and data["store"] == str(elsewhere / "x.h5") and data["chosen"]
    assert data["opened_stores"] == ["stores/y.h5", str(elsewhere / "x.h5")]  # newest first, once each
    assert data["opened_saes"] == ["saes/topk"]
    assert data["opened_models"] == ["./cnn", str(elsewhere / "llama"), "hf:gpt2", "./net.py:make?x=1"]
    moved = tmp_path / "b"
    root.rename(moved)
    again = Workspace.open(moved)
    assert again.model == str(moved / "models" / "cnn") and again.store == elsewhere / "x.h5"
    assert again.opened("stores") == [str(moved / "stores" / "y.h5"), str(elsewhere / "x.h5")]
    assert again.opened("models") == [str(moved / "cnn"), str(elsewhere / "llama"), "hf:gpt2",
                                      f"{moved / 'net.py'}:make?x=1"]


@pytest.mark.parametrize("content, needle", [
    (None, "does not exist"),
    ("", "has no workspace.json"),
    ("{not json", "not readable JSON"),
    ('["a"]', "expected a JSON object"),
    ('{"store": 3}', "field 'store' should be a string"),
    ('{"format": 99}', "newer than this"),
])
def test_bad_workspaces_name_the_problem(tmp_path, content, needle):
    root = tmp_path / "ws"
    if content is not None:
        root.mkdir()
        if content:
            (root / "workspace.json").write_text(content)
    with pytest.raises(LatentLabError, match=needle):
        Workspace.open(root)


def test_zoo_stage_builds_models_pruned_family_and_captures_once(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    ctx = JobContext(device=torch.device("cpu"))
    stores = build_zoo(ctx, ws)
    assert [p.name for p in stores] == ["digits_cnn-w8-d2-s0.h5", "digits_cnn-w8-d2-s1.h5"]
    for path in stores:
        with ActivationStore.open(path) as store:
            assert list(store.hooks) == list(ZOO_HOOKS) and store.n_rows == 450  # digits:test
    pruned = sorted(p.name for p in (ws.root / "models" / "pruned").iterdir())
    assert len(pruned) == 6 and any("magnitude" in p for p in pruned)
    stamps = {p: p.stat().st_mtime_ns for p in (ws.root / "models").rglob("*") if p.is_file()}
    assert build_zoo(ctx, ws) == stores  # a second run only reads (the perf test times it)
    assert stamps == {p: p.stat().st_mtime_ns for p in (ws.root / "models").rglob("*") if p.is_file()}


@pytest.mark.perf
def test_a_second_zoo_stage_only_reads_within_5s(tmp_path):
    ws = Workspace.create(tmp_path / "ws")
    ctx = JobContext(device=torch.device("cpu"))
    stores = build_zoo(ctx, ws)
    t0 = time.perf_counter()
    assert build_zoo(ctx, ws) == stores
    assert time.perf_counter() - t0 < 5.0
