"""engine.provenance: content hashes of files and folders, portable paths, the check that
names a missing or changed input with the expected and found hashes, and the record every
result carries (stores, SAEs, statistics, layouts, comparisons, sweeps, injections, figures:
embedded in PNG, SVG and PDF exports, shown by View > Provenance)."""

from __future__ import annotations

import datetime
import hashlib
import html
import importlib.metadata
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.geometry import compare, layer_matrix
from engine.jobs import JobContext
from engine.projection import project
from engine.provenance import (
    ProvenanceError,
    check_inputs,
    describe_record,
    file_digest,
    input_record,
    portable_path,
    provenance_record,
    resolve_path,
)
from engine.sae import sae_provenance
from engine.steering.sweep import SweepResult, sweep
from engine.store.activations import ActivationStore

DATA = Path(__file__).parent / "data"
CPU = JobContext(device=torch.device("cpu"))


def test_provenance_file_digest_is_sha256_of_the_bytes_and_follows_changes(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    assert file_digest(f) == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    f.write_bytes(b"hellp!")  # another size: the memo does not answer for it
    assert file_digest(f) == "sha256:" + hashlib.sha256(b"hellp!").hexdigest()


def test_provenance_folder_digest_covers_names_and_contents(tmp_path):
    d = tmp_path / "sae"
    (d / "sub").mkdir(parents=True)
    (d / "cfg.json").write_text("{}")
    (d / "sub" / "w.bin").write_bytes(b"\x00\x01")
    first = file_digest(d)
    (d / "sub" / "w.bin").rename(d / "sub" / "v.bin")
    assert file_digest(d) != first


def test_provenance_paths_inside_the_workspace_travel_with_it(tmp_path):
    root = tmp_path / "ws"
    (root / "stores").mkdir(parents=True)
    assert portable_path(root / "stores" / "a.h5", root) == "./stores/a.h5"
    assert portable_path(tmp_path / "elsewhere.h5", root) == str(tmp_path / "elsewhere.h5")
    assert resolve_path("./stores/a.h5", tmp_path / "copy") == tmp_path / "copy" / "stores" / "a.h5"


def test_provenance_check_names_a_changed_or_missing_input(tmp_path):
    store = tmp_path / "s.h5"
    store.write_bytes(b"x" * 100)
    rec = [input_record(store, "store", tmp_path)]
    check_inputs(rec, tmp_path)
    store.write_bytes(b"x" * 99 + b"y")
    with pytest.raises(ProvenanceError, match=r"store .*s\.h5: changed \(expected sha256:[0-9a-f]{64}, found sha256:"):
        check_inputs(rec, tmp_path)
    store.unlink()
    with pytest.raises(ProvenanceError, match="s.h5: missing"):
        check_inputs(rec, tmp_path)


def test_provenance_record_names_inputs_model_sae_params_version_seed_and_time(tmp_path):
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "cfg.json").write_text("{}")
    (tmp_path / "s.h5").write_bytes(b"rows")
    rec = provenance_record("projection", inputs=[("store", tmp_path / "s.h5")], model_id="m",
                            model_hash="sha256:w", sae=tmp_path / "sae", params={"k": np.int64(3), "p": (1, 2)},
                            seed=7, root=tmp_path)
    assert rec["inputs"] == [{"role": "store", "path": "./s.h5", "sha256": file_digest(tmp_path / "s.h5")}]
    assert rec["model"] == {"id": "m", "sha256": "sha256:w"}
    assert rec["sae"] == {"id": "sae", "sha256": file_digest(tmp_path / "sae")}
    assert rec["params"] == {"k": 3, "p": [1, 2]} and rec["seed"] == 7 and rec["kind"] == "projection"
    assert rec["latentlab"] == importlib.metadata.version("latentlab")
    assert datetime.datetime.fromisoformat(rec["created"]).tzinfo is not None
    assert json.loads(json.dumps(rec)) == rec
    text = describe_record(rec)
    assert "input store: ./s.h5  sha256:" in text and "seed: 7" in text and "k: 3" in text


def test_provenance_of_store_layout_and_comparison_names_the_store_by_its_hash(tmp_path):
    from tests.test_render import tiny_store
    path = tiny_store(tmp_path / "tiny.h5")
    with ActivationStore.open(path) as store:
        rec = store.provenance
    assert rec["kind"] == "store" and rec["model"] == {"id": "synthetic", "sha256": "sha256:synthetic"}
    assert rec["params"]["hooks"][0] == "blocks.0.hook_resid_post" and rec.get("recorded") is not False
    digest = file_digest(path)
    layout = project(CPU, path, "blocks.1.hook_resid_post", "pca", "rows", max_rows=None)
    assert layout.provenance["inputs"][0]["sha256"] == digest
    assert layout.provenance["params"] == {"what": "rows", "hook": "blocks.1.hook_resid_post", "max_rows": None,
                                           "method": "pca", "seed": 0}
    m = layer_matrix(CPU, path, ["blocks.0.hook_resid_post"], path, ["blocks.1.hook_resid_post"])
    assert [i["sha256"] for i in m.provenance["inputs"]] == [digest] and m.provenance["params"]["measure"] == "linear_cka"
    c = compare(CPU, f"{path}:blocks.0.hook_resid_post", f"{path}:blocks.2.hook_resid_post", ["linear_cka"])
    assert c.provenance["kind"] == "comparison" and c.provenance["params"]["measures"] == ["linear_cka"]


def test_provenance_of_files_written_before_records_says_what_is_known():
    with ActivationStore.open(DATA / "old_format_store.h5") as store:
        rec = store.provenance
        model = store.meta.model_id
    assert rec["recorded"] is False and rec["kind"] == "store" and rec["model"]["id"] == model
    assert rec["inputs"] == [] and rec["created"]
    sae = sae_provenance(DATA / "old_format_sae")
    assert sae["recorded"] is False and sae["sae"] == {"id": "old_format_sae", "sha256": file_digest(DATA / "old_format_sae")}
    assert "written before records were kept" in describe_record(sae)


def test_provenance_of_the_demo_sae_and_statistics_names_the_store_they_read(small_workspace):
    from engine.features import stats_provenance
    sae = sae_provenance(small_workspace.sae)
    assert sae["kind"] == "sae" and sae.get("recorded") is not False
    assert sae["inputs"][0]["role"] == "store" and Path(sae["inputs"][0]["path"]).name == small_workspace.store.name
    assert sae["params"]["hook"] == small_workspace.hook and sae["params"]["arch"] == "topk"
    with ActivationStore.open(small_workspace.store) as store:
        stats = stats_provenance(store, small_workspace.sae_id)
    assert stats["kind"] == "statistics" and stats["inputs"][0]["sha256"].startswith("sha256:")
    assert stats["params"]["hook"] == small_workspace.hook and stats["sae"]["weights"]


def test_provenance_of_a_sweep_names_model_weights_and_direction_and_survives_json(llama):
    direction = torch.ones(32) / 32 ** 0.5
    r = sweep(CPU, llama, ["The value of"], {"blocks.1.hook_resid_post": direction}, [0.0, 2.0], [5],
              max_new_tokens=2, seed=3)
    rec = r.provenance
    assert rec["model"] == {"id": llama.model_id, "sha256": llama.weight_hash()} and rec["seed"] == 3
    assert rec["params"]["directions"]["blocks.1.hook_resid_post"] == (
        "sha256:" + hashlib.sha256(direction.numpy().astype(np.float32).tobytes()).hexdigest())
    assert SweepResult.from_json(r.to_json()).provenance == rec


def test_provenance_is_embedded_in_png_svg_and_pdf_exports(tmp_path, qapp):
    from PySide6.QtGui import QImage

    from desktop_app.render import render_figure
    from main import gui_views
    for name in ("figure_cka.json", "figure_store.h5"):
        shutil.copy(DATA / name, tmp_path / name)
    record = json.loads((tmp_path / "figure_cka.json").read_text())
    (tmp_path / "out").mkdir()
    for fmt in ("png", "svg", "pdf"):
        out = render_figure(tmp_path / "figure_cka.json", tmp_path / "out" / f"f.{fmt}", gui_views())
        assert json.loads(out.with_suffix(".json").read_text()) == record  # the record beside it
        if fmt == "png":
            embedded = QImage(str(out)).text("latentlab-provenance")
        elif fmt == "svg":
            embedded = html.unescape(re.search(r"<desc>(.*?)</desc>", out.read_text(), re.S).group(1))
        else:
            data = out.read_bytes()
            assert f"LatentLab {record['provenance']['latentlab']}".encode("utf-16-be") in data  # /Creator
            embedded = html.unescape(re.search(rb'x-default">(.*?)</rdf:li>', data, re.S).group(1).decode())
        assert json.loads(embedded) == record, fmt


def test_provenance_window_shows_the_scatter_record(open_window, qtbot, small_workspace):
    from PySide6.QtWidgets import QApplication

    from desktop_app.provenance_dialog import ProvenanceDialog
    from tests.conftest import wait_until
    from tests.test_render import skip_umap
    from views.scatter import ScatterView
    win = open_window(views=[("Scatter", ScatterView)], size=(900, 600))
    assert win.open_workspace(small_workspace.root)
    skip_umap(win)
    wait_until(qtbot, lambda: "rows/pca" in win.state.projections and not win.bridge.busy())
    view_menu = next(a.menu() for a in win.menuBar().actions() if a.text() == "&View")
    next(a for a in view_menu.actions() if a.text() == "&Provenance...").trigger()
    dialog = next(w for w in QApplication.topLevelWidgets() if isinstance(w, ProvenanceDialog) and w.isVisible())
    text = dialog.text.toPlainText()
    assert dialog.windowTitle() == "Provenance: Scatter"
    assert f"input store: ./{small_workspace.store.relative_to(small_workspace.root)}  " \
           f"{file_digest(small_workspace.store)}" in text
    assert f"sae: {small_workspace.sae_id}  {file_digest(small_workspace.sae)}" in text
    assert "layout rows/pca\nprojection: made" in text and "method: pca" in text
    dialog.close()
