"""Typed, versioned specs: files older versions wrote (tests/data) keep loading and save in
today's format, a newer format is refused, every bad value is one sentence naming the field
and the value, the defaults are the jobs' own, and the CLI's short steering form and
``steer --recipe`` mean the same recipe a session saves."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest

import main
from desktop_app.session import Session
from engine.api import (
    CaptureSpec,
    ConceptSets,
    DemoSpec,
    ModelSpec,
    RecipeItem,
    SpecError,
    SteeringRecipe,
    TrainSpec,
    Workspace,
    capture,
    short_form_items,
    train_sae,
)
from engine.errors import LatentLabError

DATA = Path(__file__).parent / "data"
HOOK = "blocks.1.hook_resid_post"


# ---------------------------------------------------------------------- old files
def test_a_v1_workspace_opens_and_saves_unchanged_but_for_new_fields(tmp_path):
    root = Path(shutil.copytree(DATA / "workspace_v1", tmp_path / "ws"))
    ws = Workspace.open(root)
    assert (ws.name, ws.model, ws.hook, ws.sae_id) == ("demo", "smollm2", "blocks.15.hook_resid_post", "topk")
    assert ws.store == root / "stores" / "demo_smollm2.h5" and ws.sae == root / "saes" / "topk"
    old = json.loads((DATA / "workspace_v1" / "workspace.json").read_text())
    ws.save()
    new = json.loads((root / "workspace.json").read_text())
    assert new["format"] == Workspace.FORMAT and {k: new[k] for k in old} == old
    assert Workspace.open(root) == ws


def test_a_v1_session_opens_and_saves_as_v2_with_its_recipe(tmp_path):
    s = Session.load(DATA / "session_v1.json")
    assert s.workspace == "/home/user/latentlab/demo" and s.stats == "topk" and s.focus == [3, 7]
    assert s.selection_value().ids.tolist() == [1, 5, 9] and s.layout_bytes()[:4] == b"\x00\x00\x00\xff"
    old = json.loads((DATA / "session_v1.json").read_text())
    assert s.steering == old["steering"]  # v1 kept the items as check_item returned them
    assert s.views == old["views"]
    path = s.save(tmp_path / "session.json")
    saved = json.loads(path.read_text())
    assert saved["format"] == Session.FORMAT and saved["steering"]["format"] == SteeringRecipe.FORMAT
    assert Session.load(path) == s
    assert SteeringRecipe.load(path).dicts() == s.steering  # a session file is a recipe file too


def test_a_v1_recipe_opens_and_saves_as_v2(tmp_path):
    old = json.loads((DATA / "recipe_v1.json").read_text())
    recipe = SteeringRecipe.load(DATA / "recipe_v1.json")
    assert recipe.dicts() == old
    assert [i.mode for i in recipe.items] == [None, "add", "clamp", "clamp", "ablate", "mean-ablate", "add"]
    path = recipe.write(tmp_path / "recipe.json")
    assert json.loads(path.read_text())["format"] == 2
    assert SteeringRecipe.load(path) == recipe


@pytest.mark.parametrize("load", [
    lambda p: Workspace.open(p.parent),
    Session.load,
    SteeringRecipe.load,
])
def test_a_newer_format_is_refused_in_one_sentence(tmp_path, load):
    path = tmp_path / "workspace.json"
    path.write_text('{"format": 99}')
    with pytest.raises(LatentLabError, match=r"format 99 is newer than this LatentLab reads \(\d\); update"):
        load(path)


# ---------------------------------------------------------------------- bad values
@pytest.mark.parametrize(("spec", "data", "words"), [
    (TrainSpec, {"k": 0}, ["train-sae: field 'k' should be a number above 0, not 0"]),
    (TrainSpec, {"lr": "fast"}, ["field 'lr' should be a number, not 'fast'"]),
    (TrainSpec, {"epochs": "inf"}, ["field 'epochs' should be a finite number, not inf"]),
    (TrainSpec, {"arch": "dense"}, ["field 'arch' should be one of ", "topk", "not 'dense'"]),
    (TrainSpec, {"hook": None}, ["field 'hook' should be a string, not None"]),
    (TrainSpec, {"surprise": 1}, ["train-sae: field 'surprise' is unknown"]),
    (CaptureSpec, {"dtype": "float64"}, ["capture: field 'dtype' should be 'float16' or 'float32', not 'float64'"]),
    (CaptureSpec, {"hooks": []}, ["field 'hooks' should be a list of at least 1"]),
    (CaptureSpec, {"ctx_len": 1}, ["field 'ctx_len' should be a number of at least 2, not 1"]),
])
def test_a_bad_value_names_its_field_and_value(spec, data, words):
    good = {TrainSpec: dict(store="s.h5", hook=HOOK, out="sae"),
            CaptureSpec: dict(model="smollm2", source="demo", hooks=[HOOK], out="s.h5")}[spec]
    with pytest.raises(SpecError) as info:
        spec.parse({**good, **data})
    for word in words:
        assert word in str(info.value), str(info.value)
    assert "\n" not in str(info.value) and "pydantic" not in str(info.value)


def test_recipe_errors_say_where_in_the_recipe():
    bad = {"items": [{"kind": "concept", "hook": HOOK, "positive": ["sea"], "negative": ["land"]},
                     {"kind": "latent", "hook": HOOK, "sae": "s", "latent": 1, "mode": "mean-ablate"}]}
    with pytest.raises(SpecError, match=r"steering recipe: items\[1\]: field 'mean' is missing"):
        SteeringRecipe.parse(bad)
    with pytest.raises(SpecError, match=r"items\[0\]\.strength' should be a number, not 'big'"):
        SteeringRecipe.parse([{**bad["items"][0], "strength": "big"}])
    with pytest.raises(SpecError, match=r"field 'items\[0\]' should be a JSON object, not 'add:h:1"):
        SteeringRecipe.parse(["add:h:1:latent=s#1"])


def test_concept_sets_drop_blank_texts_and_name_a_bad_field(tmp_path):
    path = tmp_path / "sea.json"
    path.write_text(json.dumps({"positive": ["sea", " "], "negative": ["land"], "extra": 1}))
    assert ConceptSets.load(path).model_dump() == {"positive": ["sea"], "negative": ["land"], "words": []}
    path.write_text(json.dumps({"positive": [" "], "negative": ["land"]}))
    with pytest.raises(SpecError, match="field 'positive' should be a list with at least one text"):
        ConceptSets.load(path)


# ---------------------------------------------------------------------- one source of defaults
def _defaults(job) -> dict:
    return {n: p.default for n, p in inspect.signature(job).parameters.items() if p.default is not p.empty}


def test_spec_defaults_are_the_jobs_own():
    train = _defaults(train_sae)
    assert {f: TrainSpec.default(f) for f in TrainSpec.model_fields if f in train} == \
        {f: train[f] for f in TrainSpec.model_fields if f in train}
    assert {"l1_coeff", "l0_coeff"} <= set(TrainSpec.model_fields) - set(train)  # SAEConfig's, passed on
    cap = _defaults(capture)
    assert {f: CaptureSpec.default(f) for f in ("max_tokens", "resume", "batch_size", "ctx_len", "dtype")} == \
        {f: cap[f] for f in ("max_tokens", "resume", "batch_size", "ctx_len", "dtype")}
    demo = DemoSpec()
    assert (demo.ctx_len, demo.capture_batch) == (CaptureSpec.default("ctx_len"), CaptureSpec.default("batch_size"))
    assert (demo.arch, demo.expansion, demo.k) == tuple(TrainSpec.default(f) for f in ("arch", "expansion", "k"))


def test_the_cli_reads_its_defaults_and_choices_from_the_specs():
    parser = main.build_parser()
    train = parser.parse_args(["train-sae", "--store", "s", "--hook", "h", "--out", "o"])
    assert {f: getattr(train, f) for f in ("expansion", "k", "batch_size", "epochs", "lr", "holdout", "l1_coeff")} \
        == {f: TrainSpec.default(f) for f in ("expansion", "k", "batch_size", "epochs", "lr", "holdout", "l1_coeff")}
    cap = parser.parse_args(["capture", "--model", "m", "--source", "s", "--hooks", "h", "--out", "o"])
    assert (cap.batch_size, cap.ctx_len, cap.dtype, cap.model_dtype) == \
        tuple(CaptureSpec.default(f) for f in ("batch_size", "ctx_len", "dtype", "model_dtype"))
    assert parser.parse_args(["demo"]).max_tokens == DemoSpec.default("max_tokens")


@pytest.mark.parametrize(("argv", "error"), [
    (["train-sae", "--store", "s", "--hook", "h", "--out", "o", "--k", "0"],
     "error: --k should be a number above 0, not 0"),
    (["capture", "--model", "m", "--source", "s", "--hooks", "h", "--out", "o.h5", "--ctx-len", "x"],
     "error: --ctx-len should be a whole number, not 'x'"),
    (["demo", "--max-tokens", "-1"], "error: --max-tokens should be a number above 0, not -1"),
])
def test_a_bad_flag_is_one_error_line_naming_it(argv, error, capsys):
    assert main.main(argv) == 2
    assert capsys.readouterr().err.strip() == error


def test_negative_strength_lists_parse_without_argparse_internals():
    parser = main.build_parser()
    for command in (["sweep", "--concept", "c.json", "--layers", "1"], ["inject", "--concept", "c.json", "--hook", "h"]):
        args = parser.parse_args(main._glue_number_lists([*command, "--model", "m", "--strengths", "-8,-4,0"]))
        assert args.strengths == "-8,-4,0"
    assert main._glue_number_lists(["--strengths", "0,4", "--prompt", "-x"]) == ["--strengths", "0,4", "--prompt", "-x"]
    assert "_negative_number_matcher" not in Path(main.__file__).read_text()


# ---------------------------------------------------------------------- model specs
@pytest.mark.parametrize(("spec", "kind", "short"), [
    ("smollm2", "smollm2", "smollm2"),
    ("hf:HuggingFaceTB/SmolLM2-135M", "hf", "SmolLM2-135M"),
    ("hf-encoder:/models/bert?pooling=mean", "hf-encoder", "bert"),
    ("/models/zoo/cnn-w8-d2-s0/", "path", "cnn-w8-d2-s0"),
    ("~/nets.py:make", "factory", "nets"),
    ("torchvision.models:resnet18", "factory", "torchvision.models_resnet18"),
    ("gpt2", "name", "gpt2"),
])
def test_model_specs_parse_once(spec, kind, short):
    parsed = ModelSpec.parse(spec)
    assert (parsed.kind, parsed.short_name) == (kind, short)


def test_a_missing_model_path_is_found_without_loading(tmp_path):
    assert ModelSpec.parse(str(tmp_path / "none")).missing() == str(tmp_path / "none")
    assert ModelSpec.parse(f"{tmp_path}/nets.py:make").missing() == f"{tmp_path}/nets.py"
    assert ModelSpec.parse(str(tmp_path)).missing() is None
    assert ModelSpec.parse("gpt2").missing() is None and ModelSpec.parse("hf:/x/y").missing() is None


# ---------------------------------------------------------------------- the short form and steer --recipe
def test_the_short_form_means_the_items_the_v1_recipe_holds(tmp_path):
    sets = tmp_path / "ocean.json"
    sets.write_text(json.dumps({"positive": ["the sea and the waves"], "negative": ["the train station"]}))
    items = [item for text in (f"add:{HOOK}:8:concept={sets}", f"add:{HOOK}:1.5:latent=saes/topk#7",
                               f"clamp:{HOOK}:saes/topk:3=5.0,4=2.5", f"ablate:{HOOK}:saes/topk:9")
             for item in short_form_items(text)]
    assert items == json.loads((DATA / "recipe_v1.json").read_text())[:5]
    with pytest.raises(ValueError, match="expected add:HOOK:ALPHA"):
        short_form_items(f"push:{HOOK}:1")
    with pytest.raises(SpecError, match="field 'latent' should be a whole number, not 'x'"):
        short_form_items(f"ablate:{HOOK}:saes/topk:x")


def test_steer_reads_a_recipe_file_or_a_session_like_the_short_form(tiny_llama, tmp_path, capsys):
    from engine.sae.base import SAEConfig, build_sae
    from engine.sae.io import save_sae
    sae = tmp_path / "sae"
    save_sae(build_sae(SAEConfig("topk", 32, 64, k=8)), sae)  # the tiny llama is 32 wide
    short = f"clamp:{HOOK}:{sae}:3=5.0"
    run = ["steer", "--model", str(tiny_llama), "--prompt", "The", "--max-new-tokens", "4", "--device", "cpu"]
    assert main.main([*run, "--intervention", short]) == 0
    expected = capsys.readouterr().out
    recipe = SteeringRecipe(items=[RecipeItem.parse(i) for i in short_form_items(short)])
    session = Session(steering=recipe)
    for path in (recipe.write(tmp_path / "recipe.json"), session.save(tmp_path / "session.json")):
        assert main.main([*run, "--recipe", str(path)]) == 0
        assert capsys.readouterr().out == expected
    (tmp_path / "bad.json").write_text('{"format": 2, "items": [{"kind": "latent", "hook": "h"}]}')
    assert main.main([*run, "--recipe", str(tmp_path / "bad.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --recipe {tmp_path / 'bad.json'}: items[0]: field 'sae'")
