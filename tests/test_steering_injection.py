"""Concept injection on the tiny llama: strength 0 is exactly the unsteered greedy answer,
a token's unembedding added at the last block makes the answers name that token, the
whole-word matcher, chat prompts, cancellation between and within trials, and JSON files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.errors import HookError, LatentLabError
from engine.jobs import Cancelled, JobContext
from engine.models.hf import HFCausalLM
from engine.steering.injection import (
    DEFAULT_PREAMBLE,
    InjectionResult,
    concept_matches,
    inject_concept,
    injection_prompt,
    naming_rates,
    word_forms,
)
from engine.steering.recipe import OCEAN_TEXTS as OCEAN
from engine.steering.recipe import OTHER_TEXTS as OTHER
from engine.steering.sweep import SweepResult

LAST = "blocks.2.hook_resid_post"  # the tiny llama's last block: straight to the head
PREAMBLE = "An experiment on your thoughts."
QUESTIONS = ["Do you detect an injected thought?", "What is on your mind?"]


def _ctx(**kw) -> JobContext:
    return JobContext(device=torch.device("cpu"), **kw)


@pytest.fixture(scope="module")
def value_direction(llama) -> torch.Tensor:
    """The unit unembedding row of ' value', a single token whose own row is its best match."""
    ids = llama.tokenize(" value")
    w_u = llama.module.get_output_embeddings().weight.detach()
    assert len(ids) == 1 and int((w_u @ w_u[ids[0]]).argmax()) == ids[0]
    return w_u[ids[0]] / w_u[ids[0]].norm()


def _run(llama, direction, strengths, **kw):
    opts = dict(questions=QUESTIONS, preamble=PREAMBLE, max_new_tokens=6)
    return inject_concept(kw.pop("ctx", None) or _ctx(), llama, LAST, direction, strengths, ["value"], **{**opts, **kw})


def test_strength_zero_is_the_plain_greedy_answer(llama, value_direction):
    r = _run(llama, value_direction, [0.0])
    for trial in r.trials:
        text, _, chat = injection_prompt(llama.tokenizer, QUESTIONS[trial.question], PREAMBLE)
        assert not chat  # the tiny tokenizer has no chat template: plain text after its BOS
        ids = llama.make_batch([llama.tokenize(text)]).inputs["input_ids"]
        with torch.inference_mode():
            out = llama.module.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                        do_sample=False, pad_token_id=0)
        assert trial.tokens == out[0, ids.shape[1]:].tolist()
        assert trial.answer == llama.tokenizer.decode(trial.tokens, skip_special_tokens=True).strip()


def test_the_unembedding_direction_gets_named(llama, value_direction):
    partials, progress = [], []
    r = _run(llama, value_direction, [0.0, 64.0], ctx=_ctx(on_partial=partials.append,
                                                             on_progress=lambda d, t, m: progress.append((d, t))))
    assert r.rates == [0.0, 1.0]
    assert [t.strength for t in r.trials] == [0.0, 0.0, 64.0, 64.0]
    assert all(t.matched == ["value"] and "value" in t.answer.lower() for t in r.trials[2:])
    assert partials == r.trials and progress[-1] == (4, 4)
    # from the question on, the answer tokens are still steered
    assert _run(llama, value_direction, [64.0], from_question=True).rates == [1.0]


def test_whole_word_matching():
    words = ["sea", "wave", "Ocean", "beach", "city"]
    assert concept_matches("The SEA was calm.", words) == ["sea"]
    assert concept_matches("Seashells and seaweed; a seaside town", words) == []
    assert concept_matches("waves, beaches (and cities)!", words) == ["wave", "beach", "city"]
    assert concept_matches("the ocean's edge", words) == ["Ocean"]
    assert concept_matches("oceanic microwaves", words) == []
    assert concept_matches("", words) == []
    assert concept_matches("ice cream in the sun", ["ice  cream", " "]) == ["ice  cream"]
    assert word_forms("Waves") == {"waves", "wave"} and word_forms("beach") == {"beach", "beaches"}
    assert word_forms("glass") == {"glass", "glasses"} and word_forms("day") == {"day", "days"}


def test_chat_template_prompt(llama, tiny_llama):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    text, at, chat = injection_prompt(tok, "What now?", "Intro.")
    assert chat and text == "<s>user: Intro.\n\nWhat now?</s><s>assistant:" and text[at:].startswith("What now?")
    chat_model = HFCausalLM(tiny_llama, module=llama.module, tokenizer=tok)
    r = inject_concept(_ctx(), chat_model, LAST, torch.zeros(32), [0.0], ["value"], ["What now?"],
                       max_new_tokens=3, preamble="Intro.")
    bos = tok.convert_tokens_to_ids("<s>")
    ids = torch.tensor([chat_model.tokenize(text)])
    assert ids[0, 0] == bos and ids[0, 1] != bos  # the template's own BOS, no second one
    with torch.inference_mode():
        out = llama.module.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                                    do_sample=False, pad_token_id=0)
    assert r.trials[0].tokens == out[0, ids.shape[1]:].tolist()


def test_cancelled_between_and_within_trials(llama, value_direction):
    ctx = _ctx()
    ctx.on_progress = lambda d, t, m: ctx.cancel() if d >= 1 else None
    with pytest.raises(Cancelled):
        _run(llama, value_direction, [0.0, 4.0], ctx=ctx)
    ctx, calls = _ctx(), []

    def count(module, args, out):
        calls.append(1)
        if len(calls) == 3:
            ctx.cancel()
    base = llama.logits(llama.make_batch([llama.tokenize("The value")]))
    handle = llama.module.register_forward_hook(count)
    try:
        with pytest.raises(Cancelled):
            _run(llama, value_direction, [4.0], ctx=ctx, max_new_tokens=50)
    finally:
        handle.remove()
    assert len(calls) == 3  # stopped before the fourth token's forward pass
    assert torch.equal(llama.logits(llama.make_batch([llama.tokenize("The value")])), base)  # hooks gone


def test_bad_inputs(llama, value_direction):
    with pytest.raises(LatentLabError, match="strength"):
        _run(llama, value_direction, [])
    with pytest.raises(LatentLabError, match="concept word"):
        inject_concept(_ctx(), llama, LAST, value_direction, [0.0], [" "])
    with pytest.raises(LatentLabError, match="question"):
        _run(llama, value_direction, [0.0], questions=[""])
    with pytest.raises(LatentLabError, match=r"shape \(5,\)"):
        _run(llama, torch.zeros(5), [0.0])
    with pytest.raises(HookError, match="blocks.9.hook_resid_post"):
        inject_concept(_ctx(), llama, "blocks.9.hook_resid_post", value_direction, [0.0], ["value"])


def test_results_round_trip_as_json(llama, value_direction, tmp_path):
    r = _run(llama, value_direction, [0.0, 64.0], questions=QUESTIONS[:1])
    r.save(tmp_path / "inject.json")
    assert InjectionResult.load(tmp_path / "inject.json") == r
    assert naming_rates(r.trials, [0.0, 64.0, 3.0])[:2] == r.rates and math.isnan(naming_rates(r.trials, [3.0])[0])
    grid = np.array([[1.0, float("nan")], [2.5, -1.0]])
    s = SweepResult(["a", "b"], [0.0, 4.0], grid, grid * 2, grid + 1, -3.5, float("nan"))
    back = SweepResult.from_json(s.to_json())
    assert back.hooks == s.hooks and back.strengths == s.strengths and back.baseline_concept == -3.5
    for k in ("concept", "coherence", "kl"):
        np.testing.assert_array_equal(getattr(back, k), getattr(s, k))
    assert math.isnan(back.baseline_coherence)
    with pytest.raises(LatentLabError, match="steering-sweep"):
        SweepResult.from_json('{"hooks": ["a"], "strengths": [1, 2], "concept": [[1]]}')
    with pytest.raises(LatentLabError, match="concept-injection"):
        InjectionResult.from_json("[]")
    assert DEFAULT_PREAMBLE and "strength" in r.format() and "1/1 (100%)" in r.format()


# ---------------------------------------------------------------------- the real SmolLM2
OCEAN_WORDS = ["ocean", "sea", "wave", "water", "beach", "tide", "whale", "dolphin", "shore", "sailor"]


@pytest.mark.slow
def test_smollm2_names_an_injected_ocean():
    """Greedy answers to the default questions name the ocean under a moderate injection at
    block 6 (of 30) and never in the control (observed with 20 new tokens: 0/3 at 0, 1.5 and
    2; 3/3 at 2.5 and 3); far stronger injections break the answers instead."""
    from engine.models.registry import cached_model
    from engine.steering.steer import concept_vector
    model = cached_model("smollm2")
    hook = "blocks.6.hook_resid_post"
    vector = concept_vector(model, hook, OCEAN, OTHER)
    r = inject_concept(_ctx(), model, hook, vector, [0.0, 2.5, 3.0], OCEAN_WORDS, max_new_tokens=16)
    assert r.rates[0] == 0.0 and min(r.rates[1:]) >= 2 / 3, r.format()
    assert all("ocean" in t.matched for t in r.trials if t.names_concept)
