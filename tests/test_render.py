"""Figures that regenerate headless: an export from the real window writes ``F.json`` beside
the image; ``desktop_app.render`` (``main.py render``) draws it again from the original files
to the same SVG text and PNG pixels, and refuses a changed or missing input before anything
runs. ``tests/data/figure_*`` keeps an exported figure with its small input store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtGui import QImage

from desktop_app.render import render_figure
from engine.api import ActivationStore, ProvenanceError, StoreMeta, file_digest
from main import gui_views, main
from tests.conftest import wait_until
from views.geometry import GeometryView
from views.scatter import ScatterView

DATA = Path(__file__).parent / "data"


def tiny_store(path: Path) -> Path:
    """A small float32 store of three row-aligned hook points (the second a rotation of the
    first plus noise, the third unrelated), 96 rows of 8 widths: a CKA heatmap's input."""
    rng = np.random.default_rng(19)
    x = rng.normal(size=(96, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    acts = {"blocks.0.hook_resid_post": x, "blocks.1.hook_resid_post": x @ q + 0.3 * rng.normal(size=(96, 8)),
            "blocks.2.hook_resid_post": rng.normal(size=(96, 8))}
    meta = StoreMeta(model_id="synthetic", model_hash="sha256:synthetic", source_id="synthetic",
                     hooks=tuple(acts), dims={h: 8 for h in acts}, dtype="float32")
    with ActivationStore.create(path, meta) as store:
        r = np.arange(96, dtype=np.int32)
        store.append({h: a.astype(np.float32) for h, a in acts.items()}, r % 7, r // 12, r % 12)
    return path


def cka_window(open_window, qtbot, root: Path, store: Path):
    """The window with the geometry view alone, its Compare tab's CKA matrix of ``store``
    with itself computed and one cell clicked."""
    win = open_window(views=[("Geometry", GeometryView)], size=(1100, 700))
    with win.state.batch():
        win.state.set_workspace(root)
        win.state.set_store(store)
    tab = win.views["Geometry"].compare
    tab.picker_a.set_path(store)
    tab.picker_b.set_path(store)
    tab.measure.setCurrentText("cka")
    tab.compute_matrix()
    wait_until(qtbot, lambda: tab.matrix is not None and not win.bridge.busy())
    tab.select_cell(1, 0)
    wait_until(qtbot, lambda: tab.match is not None and not win.bridge.busy())
    qtbot.wait(100)  # deferred layouts land, as they have by the time a user exports
    return win


def skip_umap(win) -> None:
    """Cancel the window's UMAP layouts (the figures here draw PCA; jobs run one at a time)."""
    for job_id, job in list(win.bridge.jobs.items()):
        if job.title.startswith("UMAP"):
            win.bridge.cancel(job_id)


def _pixels(path: Path) -> np.ndarray:
    image = QImage(str(path)).convertToFormat(QImage.Format.Format_RGB32)
    return np.frombuffer(image.constBits(), np.uint32, image.width() * image.height()).copy()


@pytest.fixture
def scatter_window(open_window, qtbot, small_workspace):
    """The window with the scatter alone on the small workspace, its PCA and colours loaded."""
    win = open_window(views=[("Scatter", ScatterView)], size=(1000, 700))
    assert win.open_workspace(small_workspace.root)
    skip_umap(win)
    wait_until(qtbot, lambda: win.state.stats and "rows/pca" in win.state.projections and not win.bridge.busy())
    return win


def test_render_regenerates_the_scatter_export_to_the_same_svg_and_png(scatter_window, qtbot, tmp_path):
    win = scatter_window
    view = win.views["Scatter"]
    view.set_projection_name("rows/pca")
    view.set_colour_mode("label:topic")
    view.plot.set_view_range(-3.0, 4.0, -2.5, 3.0)  # a zoomed view: the figure keeps its range
    wait_until(qtbot, lambda: not win.bridge.busy())
    qtbot.wait(100)
    svg = win.export_view("Scatter", tmp_path / "scatter.svg", 900, 600, 150)
    png = win.export_view("Scatter", tmp_path / "small.png", 450, 300, 100)
    record = json.loads((tmp_path / "scatter.json").read_text())
    assert record["view"] == "ScatterView" and record["projections"]["rows/pca"]["method"] == "pca"
    roles = {i["role"]: i for i in record["provenance"]["inputs"]}
    assert roles["store"]["sha256"] == file_digest(win.state.store)
    assert record["provenance"]["model"]["sha256"]  # the store's model weight hash
    again = render_figure(tmp_path / "scatter.json", tmp_path / "again.svg", gui_views())
    assert again.read_text() == svg.read_text()
    again = render_figure(tmp_path / "small.json", tmp_path / "again.png", gui_views())
    assert np.array_equal(_pixels(again), _pixels(png))


def test_render_regenerates_the_cka_heatmap_export_to_the_same_svg(open_window, qtbot, tmp_path):
    store = tiny_store(tmp_path / "stores" / "tiny.h5")
    win = cka_window(open_window, qtbot, tmp_path, store)
    (tmp_path / "figs").mkdir()
    svg = win.export_view("Geometry", tmp_path / "figs" / "cka.svg", 800, 500, 150)
    record = json.loads(svg.with_suffix(".json").read_text())
    assert record["workspace"] == "./.." and record["view_state"]["compare"]["cell"] == [1, 0]
    assert record["view_state"]["compare"]["a"]["path"] == "./stores/tiny.h5"
    assert [i["role"] for i in record["provenance"]["inputs"]] == ["store"]
    again = render_figure(svg.with_suffix(".json"), tmp_path / "again.svg", gui_views())
    assert again.read_text() == svg.read_text()
    record["view_state"]["compare"]["cell"] = None  # the record drives the drawing: no cell, no match plot
    (tmp_path / "figs" / "no_cell.json").write_text(json.dumps(record))
    other = render_figure(tmp_path / "figs" / "no_cell.json", tmp_path / "other.svg", gui_views())
    assert other.read_text() != svg.read_text()
    assert "latentlab" in svg.read_text() and "&quot;kind&quot;" in svg.read_text()  # the record in <desc>


@pytest.fixture
def kept_figure(tmp_path) -> Path:
    """tests/data's exported CKA figure (its record and its input store) copied to a folder
    of their own, as a figure folder travels to another machine."""
    for name in ("figure_cka.json", "figure_store.h5"):
        shutil.copy(DATA / name, tmp_path / name)
    return tmp_path / "figure_cka.json"


def test_render_draws_the_kept_figure_again_from_its_record(kept_figure, qapp, capsys):
    record = json.loads(kept_figure.read_text())
    assert record["provenance"]["inputs"][0] == {
        "role": "store", "path": "./figure_store.h5", "sha256": file_digest(DATA / "figure_store.h5")}
    assert main(["render", str(kept_figure), "--out", str(kept_figure.with_name("again.png"))]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(str(kept_figure.with_name("again.png")))
    again, kept = _pixels(kept_figure.with_name("again.png")), _pixels(DATA / "figure_cka.png")
    assert again.shape == kept.shape == (640 * 400,)
    assert (again != kept).mean() < 0.05  # the same heatmap and matched-neuron plot (fonts may differ)
    text = QImage(str(kept_figure.with_name("again.png"))).text("latentlab-provenance")
    assert json.loads(text)["provenance"] == record["provenance"]  # the figure's own record, embedded


def test_render_refuses_a_store_changed_by_one_byte_naming_it_and_both_hashes(kept_figure, qapp, capsys):
    store = kept_figure.with_name("figure_store.h5")
    expected = file_digest(store)
    data = bytearray(store.read_bytes())
    data[len(data) // 2] ^= 0x01
    store.write_bytes(bytes(data))
    out = kept_figure.with_name("never.svg")
    with pytest.raises(ProvenanceError) as err:
        render_figure(kept_figure, out, gui_views())
    assert f"store {store}: changed (expected {expected}, found {file_digest(store)})" == str(err.value)
    assert main(["render", str(kept_figure), "--out", str(out)]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and str(store) in said[0] and expected in said[0]
    store.unlink()
    assert main(["render", str(kept_figure), "--out", str(out)]) == 2
    assert f"{store}: missing (expected {expected})" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()  # refused before anything ran
