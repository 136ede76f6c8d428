"""Replaying a prompt's untouched leading blocks (engine.steering.prompt_prefix) on the tiny llama:
which blocks a hook leaves untouched, a replayed generation equal bit for bit to a full
one, the replayed blocks really skipped, and a cancelled prefill leaving the model as it was."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext

import pytest
import torch

from engine.hooks import checking, reads_only, recording, replacing
from engine.jobs import Cancelled, JobContext
from engine.models.registry import cached_model
from engine.steering.prompt_prefix import reusing_prompt, untouched_blocks
from engine.steering.recipe import generate_stream
from engine.steering.steer import (
    AddDirection,
    generate,
    generation_options,
    prompt_inputs,
    steered,
)

PROMPTS = ("the ocean and the sea", "a quiet office on monday morning")


@pytest.fixture()
def adapter(tiny_llama):
    return cached_model(str(tiny_llama))


def _direction(adapter, hook: str) -> torch.Tensor:
    width = adapter.hook_dims([hook])[hook]
    return torch.randn(width, generator=torch.Generator().manual_seed(3)) * 4


def _steered_run(adapter, prompt: str, hook: str, n: int, sample: bool = False, replay: bool = True):
    """Ids and per-step logits of a generation steered at ``hook``, with the prompt replay
    or (``replay=False``) with none at all."""
    inputs = prompt_inputs(adapter, prompt)
    torch.manual_seed(5)
    with steered(adapter, [AddDirection(hook, _direction(adapter, hook))]), \
            reusing_prompt(adapter, inputs["input_ids"]) if replay else nullcontext(), torch.inference_mode():
        out = adapter.module.generate(**inputs, **generation_options(adapter, n, sample, 1.0),
                                      output_logits=True, return_dict_in_generate=True)
    return out.sequences, out.logits


def _full(adapter, prompt: str, hook: str, n: int, sample: bool = False):
    """A steered generation with no replay at all."""
    return _steered_run(adapter, prompt, hook, n, sample, replay=False)


def _replayed(adapter, prompt: str, hook: str, n: int, sample: bool = False):
    return _steered_run(adapter, prompt, hook, n, sample)


@contextmanager
def _counting(modules):
    """How many times each of ``modules`` ran inside the block (a list, reset by assigning
    to its slice), counted by read-only hooks so replay still applies."""
    calls = [0] * len(modules)
    handles = [m.register_forward_hook(reads_only(lambda *a, b=b: calls.__setitem__(b, calls[b] + 1)))
               for b, m in enumerate(modules)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _untouched(adapter, hooks: list[str]) -> int:
    """untouched_blocks while values are replaced at ``hooks`` and read at every site."""
    sites = adapter.hook_sites()
    with ExitStack() as stack:
        for hook in hooks:
            stack.enter_context(replacing(sites[hook], lambda x: x))
        stack.enter_context(recording(sites, stop_early=False))
        stack.enter_context(checking(adapter.blocks(), lambda: None))
        return untouched_blocks(adapter)


def test_untouched_blocks_follow_the_hooks_that_change_values(adapter):
    n = len(adapter.blocks())
    assert n == 3
    assert _untouched(adapter, []) == n
    assert _untouched(adapter, ["embed"]) == 0
    assert _untouched(adapter, ["blocks.0.hook_resid_post"]) == 1
    assert _untouched(adapter, ["blocks.1.hook_resid_post"]) == 2
    assert _untouched(adapter, ["blocks.1.hook_mlp_out"]) == 1  # inside block 1
    assert _untouched(adapter, ["blocks.2.attn.hook_z"]) == 2
    assert _untouched(adapter, ["blocks.2.hook_resid_post", "blocks.0.hook_mlp_out"]) == 0
    handle = adapter.module.model.embed_tokens.register_forward_hook(lambda m, a, out: out * 2)
    try:  # a hook outside the blocks, before them
        assert untouched_blocks(adapter) == 0
    finally:
        handle.remove()


def test_a_bare_hook_under_generate_is_never_replayed_over(adapter):
    """A hook attached without ``steered`` (as a user's script would) still keeps the
    blocks after it from being replayed, or recorded as if untouched."""
    prompt, hook = PROMPTS[1], "blocks.0.hook_resid_post"
    inputs = prompt_inputs(adapter, prompt)
    plain = generate(adapter, inputs, 6, 0, False, 1.0)
    vector = _direction(adapter, hook)
    handle = adapter.blocks()[0].register_forward_hook(lambda m, a, out: out + vector)
    try:
        hooked = generate(adapter, inputs, 6, 0, False, 1.0)
    finally:
        handle.remove()
    assert hooked != plain
    assert generate(adapter, inputs, 6, 0, False, 1.0) == plain


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post",
                                  "blocks.1.hook_mlp_out", "blocks.2.hook_resid_post"])
def test_a_replayed_prompt_generates_exactly_what_a_full_run_does(adapter, hook):
    for prompt in PROMPTS:
        generate(adapter, prompt_inputs(adapter, prompt), 4, 0, False, 1.0)  # records every block
    for prompt in PROMPTS:
        for sample in (False, True):
            ids, logits = _full(adapter, prompt, hook, 8, sample)
            for _ in range(2):  # recorded by the baseline, then by the steered run itself
                again, again_logits = _replayed(adapter, prompt, hook, 8, sample)
                assert torch.equal(again, ids)
                assert all(torch.equal(a, b) for a, b in zip(again_logits, logits, strict=True))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox"])
def test_other_families_replay_exactly_too(tiny_models, family):
    """GPT-2 and GPT-NeoX blocks (other attention code, other cache calls) replay as llama's do."""
    adapter = cached_model(str(tiny_models[family]))
    hook = "blocks.1.hook_resid_post"
    sites = adapter.hook_sites()
    inner = [sites[f"blocks.{b}.hook_mlp_out"].module for b in range(len(adapter.blocks()))]
    with _counting(inner) as calls:
        ids, logits = _full(adapter, PROMPTS[0], hook, 6)
        _replayed(adapter, PROMPTS[0], hook, 6)  # records blocks 0 and 1
        calls[:] = [0] * len(calls)
        again, again_logits = _replayed(adapter, PROMPTS[0], hook, 6)
    assert torch.equal(again, ids)
    assert all(torch.equal(a, b) for a, b in zip(again_logits, logits, strict=True))
    assert calls == [5, 5, 6]  # blocks 0 and 1 ran for the 5 new tokens only, block 2 for all 6 steps


def test_replayed_blocks_do_not_run_over_the_prompt(adapter):
    prompt, hook, n = "blocks replayed from the record", "blocks.1.hook_resid_post", 5
    with _counting([block.self_attn for block in adapter.blocks()]) as calls:
        _replayed(adapter, prompt, hook, n)  # first time: nothing recorded, everything runs
        assert calls == [n, n, n]
        calls[:] = [0, 0, 0]
        _replayed(adapter, prompt, hook, n)  # blocks 0 and 1 only for the n - 1 new tokens
        assert calls == [n - 1, n - 1, n]
        calls[:] = [0, 0, 0]
        _replayed(adapter, prompt, "blocks.2.hook_resid_post", n)  # block 2 recorded now
        _replayed(adapter, prompt, "blocks.2.hook_resid_post", n)
    assert calls == [2 * (n - 1), 2 * (n - 1), n + n - 1]


def test_a_cancelled_prefill_leaves_the_model_as_it_was(adapter):
    prompt, hook = PROMPTS[0], "blocks.2.hook_resid_post"
    generate(adapter, prompt_inputs(adapter, prompt), 3, 0, False, 1.0)
    ids, _ = _full(adapter, prompt, hook, 6)
    ctx = JobContext(device=torch.device("cpu"))
    ctx.cancel()
    item = {"kind": "concept", "hook": hook, "strength": 2.0, "positive": ["the sea"], "negative": ["an office"]}
    with pytest.raises(Cancelled):
        generate_stream(ctx, adapter, prompt, recipe=[item], max_new_tokens=6)
    assert all("forward" not in vars(block) for block in adapter.blocks())
    again, _ = _replayed(adapter, prompt, hook, 6)
    assert torch.equal(again, ids)


def test_a_long_prompt_replays_only_the_blocks_the_memory_budget_holds(adapter, monkeypatch):
    import engine.steering.prompt_prefix as prefix
    prompt, hook, n = "a long prompt " * 6, "blocks.2.hook_resid_post", 4
    width = adapter.module.config.hidden_size
    n_prompt = prompt_inputs(adapter, prompt)["input_ids"].shape[1]
    monkeypatch.setattr(prefix, "PREFIX_BYTES", 3 * width * 4 * n_prompt + 1)  # one block's worth
    with _counting([block.self_attn for block in adapter.blocks()]) as calls:
        ids, _ = _full(adapter, prompt, hook, n)
        _replayed(adapter, prompt, hook, n)
        calls[:] = [0, 0, 0]
        again, _ = _replayed(adapter, prompt, hook, n)
    assert torch.equal(again, ids)
    assert calls == [n - 1, n, n]
