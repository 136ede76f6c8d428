"""`probe-text`, `delta` and `steer-predict` on the command line: the browser's text probe,
a delta vector written as a recipe item (equal to numpy's means), and a classifier's
predictions before and after it; bad input named in one line."""

from __future__ import annotations

import json

import numpy as np
import torch

import main
from engine.jobs import JobContext
from engine.specs import SteeringRecipe
from engine.store.activations import ActivationStore

CPU = JobContext(device=torch.device("cpu"))


def test_probe_text_prints_each_token_s_firing_latents(small_workspace, capsys):
    ws = small_workspace
    assert main.main(["probe-text", "--model", ws.model, "--hook", ws.hook, "--sae", str(ws.sae),
                      "--text", "The sea and the waves", "--top", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 3 and all(line.split()[0].isdigit() for line in lines)
    assert sum("=" in line for line in lines) >= 1  # latents with values
    assert main.main(["probe-text", "--model", ws.model, "--hook", ws.hook, "--sae", str(ws.sae)]) == 2
    assert "--text or --file" in capsys.readouterr().err


def test_delta_writes_a_recipe_item_equal_to_the_means_of_the_groups(small_workspace, tmp_path, capsys):
    ws = small_workspace
    out = tmp_path / "recipe.json"
    assert main.main(["delta", "--store", str(ws.store), "--hook", ws.hook, "--a", "topic=0", "--out", str(out),
                      "--quiet", "--device", "cpu"]) == 0
    assert main.main(["delta", "--store", str(ws.store), "--hook", ws.hook, "--a", "topic=0", "--b", "topic=1",
                      "--name", "zero-one", "--strength", "2", "--out", str(out), "--quiet"]) == 0
    assert "item 2 of the recipe" in capsys.readouterr().out
    items = SteeringRecipe.load(out).dicts()
    assert [i["name"] for i in items] == ["topic=0 - rest", "zero-one"] and items[1]["strength"] == 2.0
    with ActivationStore.open(ws.store) as s:
        acts, topic = s.acts(ws.hook).astype(np.float64), s.index("topic")
    np.testing.assert_allclose(items[0]["vector"], acts[topic == 0].mean(0) - acts[topic != 0].mean(0), atol=1e-5)
    np.testing.assert_allclose(items[1]["vector"], acts[topic == 0].mean(0) - acts[topic == 1].mean(0), atol=1e-5)
    assert main.main(["delta", "--store", str(ws.store), "--hook", ws.hook, "--a", "colour=red", "--out", str(out)]) == 2
    assert "the store has no label 'colour' (it has topic)" in capsys.readouterr().err


def test_steer_predict_shows_the_delta_moving_predictions_to_a_class(digits_workspace, tmp_path, capsys):
    folder, store = digits_workspace
    recipe = tmp_path / "r.json"
    assert main.main(["delta", "--store", str(store), "--hook", "blocks.1.hook_post", "--a", "digit=3",
                      "--b", "digit=5", "--strength", "3", "--out", str(recipe), "--quiet"]) == 0
    capsys.readouterr()
    assert main.main(["steer-predict", "--model", str(folder), "--store", str(store), "--recipe", str(recipe),
                      "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: [int(line.split()[1]), int(line.split()[2])] for line in out[3:]}
    assert sum(b for b, _ in rows.values()) == sum(a for _, a in rows.values()) == 450
    assert rows["3"][1] > rows["3"][0] and rows["5"][1] < rows["5"][0]  # towards 3, away from 5
    assert out[1].startswith("accuracy against digit:")
    json.loads(recipe.read_text())  # still a plain recipe file
    assert main.main(["steer-predict", "--model", str(folder), "--store", str(store)]) == 2
    assert "no interventions" in capsys.readouterr().err
