"""Delta vectors on a small store written here (no model): streamed over chunks they equal
numpy's mean difference; empty groups, unknown labels, rows outside the store and a bad
vector in a recipe are named in one sentence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.specs import RecipeItem, SpecError
from engine.steering import delta as delta_mod
from engine.steering.delta import REST, LabelValue, delta_item, delta_vector
from engine.store.activations import ActivationStore, StoreMeta

CPU = JobContext(device=torch.device("cpu"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    n, d = 1000, 6
    acts = rng.normal(size=(n, d)).astype(np.float32)
    path = tmp_path_factory.mktemp("delta") / "s.h5"
    meta = StoreMeta(model_id="m", model_hash="h", source_id="s", hooks=("h0",), dims={"h0": d}, dtype="float32")
    with ActivationStore.create(path, meta, labels=["colour"]) as s:
        s.append({"h0": acts}, np.zeros(n, np.int32), np.arange(n, dtype=np.int32) // 10,
                 np.arange(n, dtype=np.int32) % 10, {"colour": (np.arange(n) % 3).astype(np.int32)})
    return path, acts, np.arange(n) % 3


def test_streamed_delta_equals_numpy(store, monkeypatch):
    path, acts, colour = store
    monkeypatch.setattr(delta_mod, "CHUNK_ROWS", 64)  # many chunks, a ragged last one
    a = np.array([3, 10, 500, 999, 64, 65])
    rest = np.setdiff1d(np.arange(len(acts)), a)
    d = delta_vector(CPU, path, "h0", a, REST)
    x = acts.astype(np.float64)
    assert (d.n_a, d.n_b) == (6, len(rest)) and np.allclose(d.direction, x[a].mean(0) - x[rest].mean(0), atol=1e-6)
    d = delta_vector(CPU, path, "h0", LabelValue("colour", 2), LabelValue("colour", 0))
    assert np.allclose(d.direction, x[colour == 2].mean(0) - x[colour == 0].mean(0), atol=1e-6)
    assert d.norm == pytest.approx(float(np.linalg.norm(d.direction)))
    item = RecipeItem.parse(delta_item(d, "2 - 0", "colour=2", "colour=0")).as_dict()
    assert item["kind"] == "direction" and item["groups"]["n_a"] == int((colour == 2).sum())


def test_bad_groups_are_named(store):
    path, acts, _ = store
    with pytest.raises(LatentLabError, match="group A holds no rows"):
        delta_vector(CPU, path, "h0", np.array([], np.int64))
    with pytest.raises(LatentLabError, match="group B holds no rows"):
        delta_vector(CPU, path, "h0", np.arange(len(acts)))
    with pytest.raises(LatentLabError, match="no label 'size'"):
        delta_vector(CPU, path, "h0", LabelValue("size", 1))
    with pytest.raises(LatentLabError, match="row 5000 is outside"):
        delta_vector(CPU, path, "h0", np.array([1, 5000]))
    with pytest.raises(SpecError, match="'vector'"):
        RecipeItem.parse({"kind": "direction", "hook": "h0"})
    with pytest.raises(SpecError, match="finite"):
        RecipeItem.parse({"kind": "direction", "hook": "h0", "vector": [1.0, float("nan")]})
