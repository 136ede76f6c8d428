"""`steer` on the command line: concept and SAE-latent interventions on the tiny llama, and
a bad intervention spec named in one line."""

from __future__ import annotations

import json

import main
from engine.sae.base import SAEConfig, build_sae
from engine.sae.io import save_sae

HOOK = "blocks.1.hook_resid_post"


def test_steer_with_a_concept_and_a_clamped_latent(tiny_llama, tmp_path, capsys):
    sets = tmp_path / "sets.json"
    sets.write_text(json.dumps({"positive": ["the sea and the waves"], "negative": ["the train station"]}))
    sae = tmp_path / "sae"
    save_sae(build_sae(SAEConfig("topk", 32, 64, k=8)), sae)  # the tiny llama is 32 wide
    assert main.main(["steer", "--model", str(tiny_llama), "--prompt", "The", "--max-new-tokens", "5",
                      "--intervention", f"add:{HOOK}:8:concept={sets}",
                      "--intervention", f"clamp:{HOOK}:{sae}:3=5.0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("baseline: ") and "steered:  " in out and "KL(steered || baseline)" in out
    assert main.main(["steer", "--model", str(tiny_llama), "--prompt", "The", "--max-new-tokens", "3",
                      "--intervention", f"add:{HOOK}:1:latent={sae}#7"]) == 0


def test_a_bad_intervention_is_named(tiny_llama, capsys):
    assert main.main(["steer", "--model", str(tiny_llama), "--prompt", "The",
                      "--intervention", f"push:{HOOK}:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --intervention 'push:") and "add:HOOK:ALPHA" in err


def test_mean_ablation_reads_the_means_from_a_store(small_workspace, capsys):
    ws = small_workspace
    spec = f"mean-ablate:{ws.hook}:{ws.sae}:1,2"
    assert main.main(["steer", "--model", ws.model, "--prompt", "The", "--max-new-tokens", "3",
                      "--intervention", spec, "--store", str(ws.store), "--device", "cpu"]) == 0
    assert "steered:  " in capsys.readouterr().out
    assert main.main(["steer", "--model", ws.model, "--prompt", "The", "--intervention", spec]) == 2
    assert "mean-ablation needs --store" in capsys.readouterr().err
