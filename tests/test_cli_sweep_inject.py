"""`sweep` and `inject` on the command line with the tiny llama: the printed grids and
tables, the JSON files they write, and bad input named in one line (never a traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import main
from engine.steering.injection import InjectionResult
from engine.steering.sweep import SweepResult, concept_token_ids

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture
def sets(tmp_path):
    path = tmp_path / "sets.json"
    path.write_text(json.dumps({"positive": ["the value of the list"], "negative": ["a train station"],
                                "words": ["value"]}))
    return path


def test_sweep_prints_three_grids_and_writes_json(tiny_llama, sets, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert main.main(["sweep", "--model", str(tiny_llama), "--concept", str(sets), "--layers", "1,2",
                      "--strengths", "-4,0,4", "--prompt", "The value of", "--prompt", "A list is",
                      "--max-new-tokens", "3", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "concept score" in text and "coherence" in text and "KL(steered || baseline)" in text
    lines = text.splitlines()
    heads = [ln for ln in lines if ln.startswith("hook \\ strength")]
    assert len(heads) == 3 and heads[0].split()[-3:] == ["-4", "0", "4"]
    assert sum(ln.startswith("blocks.1.hook_resid_post ") for ln in lines) == 3
    r = SweepResult.load(out)
    assert r.hooks == ["blocks.1.hook_resid_post", HOOK] and r.strengths == [-4.0, 0.0, 4.0]
    assert r.concept.shape == (2, 3)
    np.testing.assert_allclose(r.kl[:, 1], 0.0, atol=1e-6)  # strength 0 is the baseline
    np.testing.assert_allclose(r.concept[:, 1], r.baseline_concept, atol=1e-6)


def test_concept_token_ids(llama):
    ids = concept_token_ids(llama, ["value", "Value"])
    assert len(ids) == len(set(ids)) and llama.tokenize(" value")[0] in ids
    assert llama.tokenize("Value")[0] in ids and llama.tokenize(" Value")[0] in ids
    assert concept_token_ids(llama, ["", " "]) == []


def test_inject_prints_the_table_and_rates(tiny_llama, sets, tmp_path, capsys):
    out = tmp_path / "inject.json"
    assert main.main(["inject", "--model", str(tiny_llama), "--concept", str(sets), "--hook", HOOK,
                      "--strengths", "0,8", "--question", "What is on your mind?", "--words", "value,list",
                      "--max-new-tokens", "4", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "q1: What is on your mind?" in text and "names the concept (value, list) per strength: 0: " in text
    rows = [ln.split() for ln in text.splitlines() if ln.strip().startswith(("0 ", "8 "))]
    assert [r[:2] for r in rows] == [["0", "1"], ["8", "1"]] and all(r[2] in ("yes", "no") for r in rows)
    r = InjectionResult.load(out)
    assert r.hook == HOOK and r.strengths == [0.0, 8.0] and len(r.trials) == 2
    assert r.concept_words == ["value", "list"]


def _err(capsys, argv) -> str:
    assert main.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_input_is_named(tiny_llama, sets, tmp_path, capsys):
    model = ["--model", str(tiny_llama)]
    sweep = ["sweep", *model, "--layers", "1"]
    inject = ["inject", *model, "--hook", HOOK]
    missing = tmp_path / "nope.json"
    assert str(missing) in _err(capsys, [*sweep, "--concept", str(missing)])
    bad = tmp_path / "bad.json"
    bad.write_text("{positive: ")
    assert "not valid JSON" in _err(capsys, [*inject, "--concept", str(bad)])
    bad.write_text(json.dumps({"positive": ["sea"]}))
    assert "'negative'" in _err(capsys, [*inject, "--concept", str(bad)])
    bad.write_text(json.dumps({"positive": ["sea"], "negative": ["land"], "words": "sea"}))
    assert "'words'" in _err(capsys, [*sweep, "--concept", str(bad)])
    bad.write_text(json.dumps({"positive": ["sea"], "negative": ["land"]}))
    assert "--words" in _err(capsys, [*sweep, "--concept", str(bad)])
    assert "'blocks.7.hook_resid_post'" in _err(capsys, ["inject", *model, "--concept", str(sets),
                                                         "--hook", "blocks.7.hook_resid_post"])
    assert "'blocks.9.hook_resid_post'" in _err(capsys, ["sweep", *model, "--concept", str(sets),
                                                         "--layers", "1,9"])
    assert "--strengths" in _err(capsys, [*sweep, "--concept", str(sets), "--strengths", ","])
    assert "--strengths '-1,x'" in _err(capsys, [*inject, "--concept", str(sets), "--strengths", "-1,x"])
    assert "--hooks" in _err(capsys, ["sweep", *model, "--concept", str(sets)])
    assert "--out" in _err(capsys, [*inject, "--concept", str(sets), "--strengths", "0",
                                    "--max-new-tokens", "1", "--out", str(tmp_path / "no" / "x.json")])
