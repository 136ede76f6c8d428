"""The demo pipeline's first picture and its hook points, on the tiny llama: a first slice
of the store is announced (a copy, with its row PCA) before the whole store, which holds
several hook points with aligned rows; an older one-hook demo workspace opens from what it
has and gets the other hook points in a separate store beside it, captured afterwards by a
low-priority process."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.capture import capture
from engine.demo import GROWING, Stage, build_demo, growth_steps, layers_store, needs_layers
from engine.jobs import Cancelled, JobContext
from engine.projection.layout import Layout
from engine.sae.trainer import TrainingPoint
from engine.store.activations import ActivationStore
from engine.workspace import Workspace
from tests.conftest import small_demo_spec, wait_until

HOOKS = ["embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def _ctx(seen: list) -> JobContext:
    return JobContext(device=torch.device("cpu"), on_partial=seen.append)


def _read(path: Path) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    with ActivationStore.open(path) as store:
        return list(store.hooks), store.index("tokens", 0, store.n_rows), \
            {h: store.acts(h, 0, store.n_rows) for h in store.hooks}


def test_growth_steps_start_small_and_end_at_the_whole():
    assert growth_steps(2048, 50_000) == [2048, 8192, 50_000]
    assert growth_steps(500, 3000) == [500, 3000]
    assert growth_steps(2048, 3000) == [3000]  # less than two slices: no first picture
    assert growth_steps(0, 3000) == [3000]


def test_a_fresh_demo_announces_a_first_slice_and_its_layout_before_the_whole_store(tiny_llama, tmp_path):
    spec = small_demo_spec(tiny_llama, hooks=HOOKS, first_tokens=500, sae_epochs=1)
    seen: list = []
    ws = build_demo(_ctx(seen), tmp_path / "demo", spec)
    stages = [(i, o) for i, o in enumerate(seen) if isinstance(o, Stage)]
    (i_first, first), (i_whole, whole) = stages[0], stages[1]
    assert first.stage == whole.stage == "store"
    assert first.workspace.store.parent.name == GROWING and whole.workspace.store == ws.store
    pca = [(i, o) for i, o in enumerate(seen) if isinstance(o, Layout) and o.name == "rows/pca"]
    assert i_first < pca[0][0] < i_whole < pca[1][0]  # each store, then its picture
    assert 0 < len(pca[0][1].ids) <= 500 and pca[0][1].ids.max() < 500 and pca[1][1].ids.max() >= 500
    assert [o.stage for o in seen if isinstance(o, Stage)][2:] == ["sae", "stats", "projection"]
    i_sae = next(i for i, o in stages if o.stage == "sae")
    curves = [i for i, o in enumerate(seen) if isinstance(o, TrainingPoint)]  # the jobs panel draws them
    assert curves and i_whole < curves[0] and curves[-1] < i_sae and seen[curves[-1]].heldout
    assert not (ws.root / "stores" / GROWING).exists()  # the copies go once the pipeline is done
    assert Workspace.open(ws.root).store == ws.store
    # the whole store: every hook point, rows aligned, the same rows as one capture in one go
    hooks, tokens, acts = _read(ws.store)
    assert hooks == HOOKS and len(tokens) == 3000 and all(len(a) == 3000 for a in acts.values())
    once = tmp_path / "once.h5"
    capture(JobContext(), model=spec.model, source="demo", hooks=HOOKS, out=once, max_tokens=3000,
            batch_size=spec.capture_batch, ctx_len=spec.ctx_len)
    _, tokens1, acts1 = _read(once)
    assert np.array_equal(tokens, tokens1)
    for h in HOOKS:
        np.testing.assert_allclose(acts[h].astype(np.float32), acts1[h].astype(np.float32), atol=2e-2, rtol=1e-2)
    assert not needs_layers(ws.root, spec)


def test_an_older_one_hook_demo_opens_from_what_it_has_and_gets_its_layers_beside_it(
        tiny_llama, small_workspace, tmp_path):
    root = Path(shutil.copytree(small_workspace.root, tmp_path / "old"))
    built = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    spec = small_demo_spec(tiny_llama, hooks=HOOKS, first_tokens=500, layers="background")
    assert needs_layers(root, spec)
    seen: list = []
    ws = build_demo(_ctx(seen), root, spec)
    assert [o.stage for o in seen if isinstance(o, Stage)] == ["store", "sae", "stats", "projection"]
    assert {p: p.stat().st_mtime_ns for p in built} == built  # nothing captured, trained or laid out again
    from engine import demo
    process = demo._layers_process
    assert process is not None and process.wait(timeout=240) == 0
    out = layers_store(root, spec)
    hooks, tokens, _ = _read(out)
    _, old_tokens, _ = _read(ws.store)
    assert hooks == HOOKS and np.array_equal(tokens, old_tokens)  # row i is row i of the SAE's store
    assert out in Workspace.open(root).stores() and not needs_layers(root, spec)


def test_the_weight_hash_is_read_back_for_the_same_weight_files_only(tiny_llama, tmp_path):
    from engine.models.base import weight_fingerprint
    from engine.models.hf import HFCausalLM
    from engine.models.smollm2 import WEIGHT_HASH, remember_weight_hash
    folder = Path(shutil.copytree(tiny_llama, tmp_path / "model"))
    model = remember_weight_hash(HFCausalLM(folder), folder)
    saved = json.loads((folder / WEIGHT_HASH).read_text())
    assert saved["weight_hash"] == model.weight_hash() == weight_fingerprint(model.module)
    (folder / WEIGHT_HASH).write_text(json.dumps({**saved, "weight_hash": "read back"}))
    assert remember_weight_hash(HFCausalLM(folder), folder).weight_hash() == "read back"
    weights = next(folder.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # other weights
    assert remember_weight_hash(HFCausalLM(folder), folder).weight_hash() == weight_fingerprint(model.module)


def test_the_window_shows_the_first_slice_then_the_whole_store(window, qtbot, tiny_llama, tmp_path):
    scatter, drawn = window.views["Scatter"], []
    window.state.projection_changed.connect(  # after the scatter drew it (it connected first)
        lambda name: drawn.append((name, len(scatter.colours()), window.state.store)))
    root = tmp_path / "demo"
    assert window.open_workspace(root, demo=small_demo_spec(tiny_llama, hooks=HOOKS, first_tokens=500, sae_epochs=1))
    wait_until(qtbot, lambda: not window.bridge.busy(), 180)
    rows = [(n, store) for name, n, store in drawn if name == "rows/pca"]
    assert rows[0][1].parent.name == GROWING and 0 < rows[0][0] <= 500  # the first slice's picture
    assert rows[-1][1] == window.state.store == root / "stores" / "demo_llama.h5" and rows[-1][0] > 500
    assert len(scatter.colours()) == rows[-1][0] and not (root / "stores" / GROWING).exists()


def test_a_demo_store_left_unreadable_by_a_kill_goes_on_from_its_growing_copy(tiny_llama, tmp_path):
    spec = small_demo_spec(tiny_llama, hooks=HOOKS, first_tokens=500)

    def stop_at_first_picture(obj) -> None:  # the app closed once the first scatter is up
        if isinstance(obj, Layout):
            raise Cancelled()
    root = tmp_path / "demo"
    with pytest.raises(Cancelled):
        build_demo(JobContext(on_partial=stop_at_first_picture), root, spec)
    copy = root / "stores" / GROWING / "demo_llama-500.h5"
    _, first_tokens, _ = _read(copy)
    store = root / "stores" / "demo_llama.h5"
    store.write_bytes(b"not HDF5 any more")  # what no recovery can open
    seen: list = []
    ws = build_demo(_ctx(seen), root, spec)
    assert next(o for o in seen if isinstance(o, Stage)).workspace.store == copy  # the picture at once
    hooks, tokens, _ = _read(ws.store)
    assert hooks == HOOKS and len(tokens) == 3000 and np.array_equal(tokens[:500], first_tokens)


def test_a_first_slice_started_before_the_window_is_where_the_demo_goes_on_from(tiny_llama, tmp_path):
    """main.py starts the first slice's capture in a process before the window's imports;
    the demo job waits for it, shows that slice and captures the rest after it: the same
    store as one capture in one go."""
    from engine.startup import first_slice_running, start_first_slice, wait_first_slice
    spec = small_demo_spec(tiny_llama, hooks=HOOKS, first_tokens=500, sae_epochs=1, umap=False)
    root = tmp_path / "demo"
    process = start_first_slice(root, "cpu", spec.model_dump_json())
    assert process is not None and first_slice_running() is process
    assert start_first_slice(root, "cpu", spec.model_dump_json()) is None  # one at a time
    assert wait_first_slice(tmp_path / "other", lambda: None) is None  # another workspace's: not waited for
    seen: list = []
    messages: list[str] = []
    ctx = JobContext(device=torch.device("cpu"), on_partial=seen.append,
                     on_progress=lambda done, total, message: messages.append(message))
    ws = build_demo(ctx, root, spec)
    assert process.returncode == 0 and first_slice_running() is None
    assert any("first slice captured by the start-up process" in m for m in messages)
    first = next(o for o in seen if isinstance(o, Stage))
    assert first.workspace.store.parent.name == GROWING
    assert len(next(o for o in seen if isinstance(o, Layout)).ids) == 500  # the process's rows, shown
    hooks, tokens, acts = _read(ws.store)
    once = tmp_path / "once.h5"
    capture(JobContext(), model=spec.model, source="demo", hooks=HOOKS, out=once, max_tokens=3000,
            batch_size=spec.capture_batch, ctx_len=spec.ctx_len)
    _, tokens1, acts1 = _read(once)
    assert hooks == HOOKS and np.array_equal(tokens, tokens1)
    for h in HOOKS:
        np.testing.assert_allclose(acts[h].astype(np.float32), acts1[h].astype(np.float32), atol=2e-2, rtol=1e-2)
    assert start_first_slice(root, "cpu", spec.model_dump_json()) is None  # a second launch: the store is there
