"""Steering recipes (the dicts AppState carries) and the streamed generation behind the
steering view's sliders, on the tiny llama: streamed tokens equal a plain generate, a
recipe means the same as the interventions it names, bad items name their field, and a
stream stops at the next token when cancelled."""

from __future__ import annotations

import pytest
import torch

from engine.errors import LatentLabError
from engine.jobs import Cancelled, JobContext
from engine.sae.io import load_sae
from engine.steering.recipe import (
    check_item,
    generate_stream,
    latent_item,
    recipe_interventions,
    steerable_hooks,
)
from engine.steering.steer import (
    AddDirection,
    ClampLatents,
    compare_generation,
    generate,
    latent_direction,
    prompt_inputs,
    steered,
)

PROMPT = "the ocean and the sea"


def _ctx(partials: list | None = None) -> JobContext:
    return JobContext(device=torch.device("cpu"), on_partial=None if partials is None else partials.append)


def test_baseline_stream_equals_plain_generate(small_workspace, llama):
    partials: list = []
    gen = generate_stream(_ctx(partials), small_workspace.model, PROMPT, which="baseline", max_new_tokens=12)
    model = steerable_hooks(_ctx(), small_workspace.model)  # the cached adapter generate_stream used
    assert small_workspace.hook in model
    from engine.models.registry import cached_model
    adapter = cached_model(small_workspace.model)
    plain = generate(adapter, prompt_inputs(adapter, PROMPT), 12, 0, False, 1.0)
    assert gen.done and gen.tokens == plain
    assert [len(p.tokens) for p in partials] == list(range(1, len(plain) + 1))
    assert not any(p.done for p in partials)
    assert "".join(gen.texts) == adapter.tokenizer.decode(plain)


def test_recipe_means_its_interventions(small_workspace):
    from engine.models.registry import cached_model
    adapter = cached_model(small_workspace.model)
    hook, sae = small_workspace.hook, load_sae(small_workspace.sae)
    inputs = prompt_inputs(adapter, PROMPT)
    recipe = [{"kind": "latent", "hook": hook, "sae": str(small_workspace.sae), "latent": 3, "mode": "clamp",
               "strength": 25.0},
              {"kind": "latent", "hook": hook, "sae": str(small_workspace.sae), "latent": 5, "mode": "add",
               "strength": -4.0}]
    with steered(adapter, [ClampLatents(hook, sae, (3,), (25.0,)),
                           AddDirection(hook, latent_direction(sae, 5), -4.0)]):
        expected = generate(adapter, inputs, 10, 0, False, 1.0)
    gen = generate_stream(_ctx(), small_workspace.model, PROMPT, recipe=recipe, max_new_tokens=10)
    assert gen.tokens == expected
    base = generate_stream(_ctx(), small_workspace.model, PROMPT, which="baseline", max_new_tokens=10)
    assert gen.tokens != base.tokens and gen.kl > 0
    assert gen.gained[0].delta > 0 > gen.lost[0].delta
    # the same shift as separate forward passes give, whether the baseline ran before or after
    ivs = recipe_interventions(adapter, recipe)
    reference = compare_generation(_ctx(), adapter, PROMPT, ivs, max_new_tokens=10, top=8)
    again = generate_stream(_ctx(), small_workspace.model, PROMPT, recipe=recipe, max_new_tokens=10)
    for run in (gen, again):
        assert run.kl == pytest.approx(reference.kl, rel=1e-4)
        assert [t.token for t in run.gained] == [t.token for t in reference.gained]
        assert [t.token for t in run.lost] == [t.token for t in reference.lost]


def test_zero_and_disabled_items_run_the_plain_model(small_workspace):
    from engine.models.registry import cached_model
    adapter = cached_model(small_workspace.model)
    concept = {"kind": "concept", "hook": small_workspace.hook, "strength": 0.0,
               "positive": ["the sea"], "negative": ["the office"]}
    off = {"kind": "latent", "hook": small_workspace.hook, "sae": str(small_workspace.sae), "latent": 1,
           "mode": "ablate", "enabled": False}
    assert recipe_interventions(adapter, [concept, off]) == []
    gen = generate_stream(_ctx(), small_workspace.model, PROMPT, recipe=[concept, off], max_new_tokens=8)
    base = generate_stream(_ctx(), small_workspace.model, PROMPT, which="baseline", max_new_tokens=8)
    assert gen.tokens == base.tokens and gen.kl == pytest.approx(0.0, abs=1e-6)
    strong = recipe_interventions(adapter, [{**concept, "strength": 3.0}])
    assert len(strong) == 1 and strong[0].alpha == 3.0


@pytest.mark.parametrize(("item", "field"), [
    ({"kind": "vector", "hook": "h"}, "'kind'"),
    ({"kind": "concept", "hook": "", "positive": ["a"], "negative": ["b"]}, "'hook'"),
    ({"kind": "concept", "hook": "h", "strength": "lots", "positive": ["a"], "negative": ["b"]}, "'strength'"),
    ({"kind": "concept", "hook": "h", "positive": [" "], "negative": ["b"]}, "'positive'"),
    ({"kind": "latent", "hook": "h", "sae": "", "latent": 1}, "'sae'"),
    ({"kind": "latent", "hook": "h", "sae": "s", "latent": "x"}, "'latent'"),
    ({"kind": "latent", "hook": "h", "sae": "s", "latent": 1, "mode": "boost"}, "'mode'"),
])
def test_bad_items_name_their_field(item, field):
    with pytest.raises(LatentLabError, match=field):
        check_item(item)


def test_unknown_hook_and_latent_are_named(small_workspace):
    bad_hook = [{"kind": "concept", "hook": "blocks.99.hook_resid_post", "strength": 1.0,
                 "positive": ["a"], "negative": ["b"]}]
    with pytest.raises(LatentLabError, match="blocks.99.hook_resid_post"):
        generate_stream(_ctx(), small_workspace.model, PROMPT, recipe=bad_hook)
    with pytest.raises(LatentLabError, match="latent 100000"):
        latent_item(_ctx(), str(small_workspace.sae), 100000, small_workspace.hook)


def test_latent_item_starts_at_the_latents_max(small_workspace):
    from engine.features.stats import load_feature_stats
    from engine.store.activations import ActivationStore
    with ActivationStore.open(small_workspace.store) as store:
        stats = load_feature_stats(store, small_workspace.sae_id)
    j = int(stats.max.argmax())
    item = latent_item(_ctx(), str(small_workspace.sae), j, small_workspace.hook,
                       str(small_workspace.store), small_workspace.sae_id)
    assert item["strength"] == pytest.approx(float(stats.max[j]), abs=0.01)
    assert item["mean"] == pytest.approx(float(stats.mean[j] * stats.density[j]), rel=1e-4)
    assert item["range"] == pytest.approx(2 * float(stats.max[j]), abs=0.1)
    assert item["mode"] == "add" and item["latent"] == j


def test_cancelling_stops_the_stream_at_the_next_token(small_workspace):
    seen: list = []
    ctx = _ctx()

    def on_partial(gen) -> None:
        seen.append(gen)
        if len(gen.tokens) == 2:
            ctx.cancel()
    ctx.on_partial = on_partial
    with pytest.raises(Cancelled):
        generate_stream(ctx, small_workspace.model, PROMPT, which="baseline", max_new_tokens=30)
    assert len(seen) == 2


def test_a_cancel_stops_the_generation_within_a_block(small_workspace):
    """Cancelled while block 0 computes the third new token: no later block of that token runs."""
    from engine.models.registry import cached_model
    adapter = cached_model(small_workspace.model)
    sites = adapter.hook_sites()
    first, last = sites["blocks.0.hook_resid_post"].module, sites["blocks.2.hook_resid_post"].module
    ctx, runs = _ctx(), {"first": 0, "last": 0}

    def count(which):
        def hook(module, args, output):
            runs[which] += 1
            if which == "first" and runs["first"] == 3:  # the prompt, new token 1, then token 2's pass
                ctx.cancel()
        return hook
    handles = [first.register_forward_hook(count("first")), last.register_forward_hook(count("last"))]
    try:
        with pytest.raises(Cancelled):
            generate_stream(ctx, adapter, PROMPT, which="baseline", max_new_tokens=30)
    finally:
        for handle in handles:
            handle.remove()
    assert runs == {"first": 3, "last": 2}  # the last block never ran in the cancelled pass
    generate_stream(_ctx(), adapter, PROMPT, which="baseline", max_new_tokens=3)  # no hook left behind


def test_neighbouring_clamps_are_one_splice_and_mean_ablation_uses_the_mean(small_workspace):
    """Two clamps of one SAE edit one code together (a TopK SAE re-encoding after the first
    edit could pick other latents); mean-ablation sets the code to the given mean."""
    from engine.models.registry import cached_model
    adapter = cached_model(small_workspace.model)
    hook, folder = small_workspace.hook, str(small_workspace.sae)
    recipe = [{"kind": "latent", "hook": hook, "sae": folder, "latent": 3, "mode": "clamp", "strength": 5.0},
              {"kind": "latent", "hook": hook, "sae": folder, "latent": 7, "mode": "ablate"},
              {"kind": "latent", "hook": hook, "sae": folder, "latent": 9, "mode": "mean-ablate", "mean": 0.25}]
    (iv,) = recipe_interventions(adapter, recipe)
    assert isinstance(iv, ClampLatents) and iv.latents == (3, 7, 9) and iv.values == (5.0, 0.0, 0.25)
    with pytest.raises(LatentLabError, match="'mean'"):
        check_item({**recipe[2], "mean": None})
