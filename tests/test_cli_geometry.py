"""The geometry commands end to end on the digits zoo: two seeds of a CNN captured over
digits, compared layer by layer, matched, stitched, and a pruned family compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import main
from engine.capture import capture
from engine.jobs import JobContext
from engine.models.digits_zoo import prune_zoo, train_zoo

HOOKS = ["blocks.0.hook_post", "blocks.1.hook_post", "logits"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    ctx = JobContext(device=CPU)
    folders = train_zoo(ctx, str(root), arch="cnn", widths=(8,), depths=(2,), seeds=(0, 1))
    out = {}
    for seed, folder in enumerate(folders):
        out[f"model{seed}"] = Path(folder)
        out[f"store{seed}"] = root / f"s{seed}.h5"
        capture(ctx, model=str(folder), source="digits", hooks=HOOKS, out=out[f"store{seed}"])
    return out


def test_compare_layers_has_its_largest_values_on_the_diagonal(zoo, tmp_path, capsys):
    out = tmp_path / "matrix.json"
    assert main.main(["compare", str(zoo["store0"]), str(zoo["store1"]), "--layers",
                      "--out", str(out), "--device", "cpu"]) == 0
    data = json.loads(out.read_text())
    values = np.array(data["values"])
    assert data["hooks_a"] == HOOKS and values.shape == (3, 3)
    assert (values.argmax(axis=1) == np.arange(3)).all() and (values.argmax(axis=0) == np.arange(3)).all()


def test_compare_all_measures_of_a_store_with_itself(zoo, tmp_path):
    out = tmp_path / "same.json"
    spec = f"{zoo['store0']}:blocks.1.hook_post"
    assert main.main(["compare", spec, spec, "--measures", "all", "--out", str(out)]) == 0
    values = json.loads(out.read_text())["values"]
    for name in ("linear_cka", "rbf_cka", "debiased_cka", "rsa_pearson", "rsa_spearman", "mutual_knn"):
        assert values[name] == pytest.approx(1.0, abs=1e-6), name
    assert values["procrustes"] == pytest.approx(0.0, abs=1e-4)


def test_compare_with_flags_and_the_cka_alias(zoo, tmp_path, capsys):
    out = tmp_path / "r.json"
    a, b = (f"{zoo[f'store{s}']}:blocks.0.hook_post" for s in (0, 1))
    assert main.main(["compare", "--a", a, "--b", b, "--measures", "cka,svcca", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["values"]) == {"linear_cka", "svcca"}
    assert main.main(["compare", "--a", a]) == 2
    assert "two sides" in capsys.readouterr().err


def test_match_and_stitch_two_seeds(zoo, capsys):
    a, b = (f"{zoo[f'store{s}']}:blocks.1.hook_post" for s in (0, 1))
    assert main.main(["match", a, b]) == 0
    assert "matched pairs: mean correlation" in capsys.readouterr().out
    assert main.main(["stitch", "--model-a", str(zoo["model0"]), "--hook-a", "blocks.1.hook_post",
                      "--model-b", str(zoo["model1"]), "--hook-b", "blocks.1.hook_post"]) == 0
    line = capsys.readouterr().out
    stitched, own = (float(line.split(key)[1].split()[0].strip("(),;")) for key in ("accuracy ", "B alone "))
    assert abs(stitched - own) <= 0.02


def test_stitch_stores_of_two_seeds_reports_the_held_out_r2(zoo, capsys):
    a, b = (f"{zoo[f'store{s}']}:blocks.1.hook_post" for s in (0, 1))
    assert main.main(["stitch-stores", a, b, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    r2 = float(out.split("held-out R^2 ")[1].split()[0])
    assert 0.2 < r2 < 1.0 and "no downstream loss" in out  # a digits classifier, no language model


def test_compare_pruned_writes_a_loadable_comparison(zoo, tmp_path, capsys):
    from engine.geometry.pruning import load_comparison
    pruned = prune_zoo(JobContext(device=CPU), str(zoo["model0"]), tmp_path / "pruned",
                       methods=("magnitude", "random"), sparsities=(0.9,))
    out = tmp_path / "cmp.npz"
    assert main.main(["compare-pruned", str(zoo["model0"]), *map(str, pruned), "--corruption",
                      "none", "--corruption", "noise:0.3", "--out", str(out)]) == 0
    result = load_comparison(out)
    assert result.models[0] == "dense" and len(result.models) == 3
    assert result.corruptions == ["none", "noise:0.3"]
    assert "random90" in capsys.readouterr().out


def test_misaligned_stores_give_one_clear_error(zoo, tmp_path, capsys):
    from engine.store.activations import ActivationStore, StoreMeta
    small = tmp_path / "small.h5"
    meta = StoreMeta(model_id="x", model_hash="0", source_id="s", hooks=("h",), dims={"h": 4})
    with ActivationStore.create(small, meta) as store:
        store.append({"h": np.ones((10, 4), np.float32)}, np.zeros(10, np.int32),
                     np.zeros(10, np.int32), np.arange(10, dtype=np.int32))
    assert main.main(["compare", f"{zoo['store0']}:logits", f"{small}:h"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "small.h5" in err
