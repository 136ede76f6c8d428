"""Hugging Face adapters against the models' own outputs (an independent reference)."""

from __future__ import annotations

import pytest
import torch

from engine.errors import HookError, ModelError
from engine.models import load_model


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_resid_post_equals_hf_hidden_states(tiny_models, family):
    model = load_model(str(tiny_models[family]))
    assert model.kind == "causal-lm"
    ids = model.tokenize("def f(x):\n    return x + 1  # the identity plus one")
    batch = model.make_batch([ids])
    hooks = ["embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    rows = model.forward(batch, hooks)
    with torch.no_grad():
        ref = model.module(**batch.inputs, output_hidden_states=True).hidden_states
    keep = batch.keep[0]
    for i, hook in enumerate(hooks):
        assert rows[hook].shape == (len(ids), 32)
        torch.testing.assert_close(rows[hook], ref[i][0][keep], rtol=1e-5, atol=1e-5)


def test_special_tokens_are_not_rows(tiny_models):
    llama = load_model(str(tiny_models["llama"]))
    assert llama.n_special == 1  # the tokenizer adds <s>
    batch = llama.make_batch([[10, 11, 12], [13]])
    assert batch.inputs["input_ids"][0].tolist() == [3, 10, 11, 12]
    assert batch.keep.tolist() == [[False, True, True, True], [False, True, False, False]]
    assert batch.inputs["attention_mask"][1].tolist() == [1, 1, 0, 0]


def test_padding_does_not_change_rows(tiny_models):
    model = load_model(str(tiny_models["llama"]))
    a, b = model.tokenize("import os and sys"), model.tokenize("x")
    alone = model.forward(model.make_batch([b]), ["blocks.2.hook_resid_post"])["blocks.2.hook_resid_post"]
    padded = model.forward(model.make_batch([a, b]), ["blocks.2.hook_resid_post"])["blocks.2.hook_resid_post"]
    torch.testing.assert_close(padded[len(a):], alone, rtol=1e-5, atol=1e-5)


def test_mlp_out_and_hook_z_match_module_io(tiny_models):
    model = load_model(str(tiny_models["llama"]))
    layer = model.module.model.layers[1]
    seen = {}
    h1 = layer.mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o))
    h2 = layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0]))
    try:
        batch = model.make_batch([model.tokenize("while True: pass")])
        rows = model.forward(batch, ["blocks.1.hook_mlp_out", "blocks.1.attn.hook_z"])
    finally:
        h1.remove()
        h2.remove()
    torch.testing.assert_close(rows["blocks.1.hook_mlp_out"], seen["mlp"][batch.keep])
    torch.testing.assert_close(rows["blocks.1.attn.hook_z"], seen["z"][batch.keep])


def test_forward_stops_at_deepest_hook(tiny_models):
    model = load_model(str(tiny_models["gpt2"]))
    calls = []
    handle = model.module.transformer.h[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        model.forward(model.make_batch([[5, 6, 7]]), ["blocks.0.hook_resid_post", "embed"])
        assert calls == []
        model.forward(model.make_batch([[5, 6, 7]]), ["blocks.2.hook_mlp_out"])
        assert calls == []  # the block's own output comes after its MLP
        model.forward(model.make_batch([[5, 6, 7]]), ["blocks.2.hook_resid_post"])
        assert calls == [1]
    finally:
        handle.remove()


def test_encoder_mean_pooling(tiny_models):
    path = tiny_models["bert"]
    enc = load_model(f"hf-encoder:{path}?pooling=mean")
    assert enc.kind == "encoder" and enc.n_special == 2
    texts = [enc.tokenize("a list of items"), enc.tokenize("dict")]
    pooled = enc.forward(enc.make_batch(texts), ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]
    plain = load_model(str(path))
    assert plain.kind == "encoder" and plain.pooling is None
    tokens = plain.forward(plain.make_batch([texts[0]]), ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"]
    assert pooled.shape == (2, 32)
    torch.testing.assert_close(pooled[0], tokens.mean(0), rtol=1e-5, atol=1e-5)


def test_unknown_hook_lists_valid_ones(tiny_models):
    model = load_model(str(tiny_models["gpt2"]))
    with pytest.raises(HookError, match=r"unknown hook point 'blocks\.9\.hook_resid_post'.*valid: embed"):
        model.forward(model.make_batch([[1, 2]]), ["blocks.9.hook_resid_post"])


def test_bad_model_specs(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nope" / "model"))
    with pytest.raises(ModelError, match="neither config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="offline Hugging Face cache"):
        load_model("hf:some-org/not-downloaded")
    with pytest.raises(ModelError, match="pooling"):
        (tmp_path / "config.json").write_text('{"model_type": "bert"}')
        load_model(f"hf-encoder:{tmp_path}?pooling=max")


def test_weight_hash_tracks_weights(tiny_models):
    a, b = load_model(str(tiny_models["gpt2"])), load_model(str(tiny_models["gpt2"]))
    assert a.weight_hash() == b.weight_hash()
    with torch.no_grad():
        b.module.transformer.h[0].mlp.c_fc.weight[0, 0] += 1.0
    b._weight_hash = None
    del b._weight_hash
    assert a.weight_hash() != b.weight_hash()


def test_offline_hf_cache_by_name(tiny_models, tmp_path, monkeypatch):
    import shutil
    repo = tmp_path / "hub" / "models--tiny-org--tiny-gpt2"
    snapshot = repo / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_models["gpt2"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_model("hf:tiny-org/tiny-gpt2")
    assert model.kind == "causal-lm" and model.model_id == "hf:tiny-org/tiny-gpt2"
    assert model.weight_hash() == load_model(str(tiny_models["gpt2"])).weight_hash()
