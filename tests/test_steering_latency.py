"""Slider latency on the real SmolLM2, measured the way a researcher meets it: from a
strength slider change in the steering view to the first steered token on screen, and to
all 20 new tokens on screen, against a plain Hugging Face ``generate`` of the same length
in the same process (the figures go to benchmarks/RESULTS.md; run with ``-s`` to see them)."""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from desktop_app.bridge import EngineBridge
from desktop_app.state import AppState
from engine.models.registry import cached_model
from engine.steering import _prompt_inputs
from engine.steering_recipe import OCEAN_TEXTS, OTHER_TEXTS
from engine.steering_sweep import NEUTRAL_PROMPTS
from views.steering import SteeringView

pytestmark = pytest.mark.slow
NEW_TOKENS = 20
HOOK = "blocks.9.hook_resid_post"


def _plain_generate_seconds(prompt: str) -> float:
    """Median wall time of plain greedy ``generate`` for NEW_TOKENS tokens (no hooks)."""
    adapter = cached_model("smollm2")
    inputs = _prompt_inputs(adapter, prompt)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = adapter.module.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                          do_sample=False, pad_token_id=adapter.tokenizer.eos_token_id,
                                          temperature=None, top_k=None, top_p=None)
        times.append(time.perf_counter() - t0)
        assert out.shape[1] - inputs["input_ids"].shape[1] == NEW_TOKENS
    return statistics.median(times)


def test_slider_to_steered_text_against_plain_generate(qtbot):
    bridge = EngineBridge(device="cpu")
    try:
        state = AppState(bridge)
        view = SteeringView(state)
        qtbot.addWidget(view)
        view.resize(1200, 700)
        view.show()
        gen = view.generate
        gen.prompt.setText(NEUTRAL_PROMPTS[0])
        gen.max_tokens.setValue(NEW_TOKENS)
        state.set_model("smollm2")
        state.set_steering([{"kind": "concept", "name": "ocean", "hook": HOOK, "strength": 1.0, "range": 8.0,
                             "positive": OCEAN_TEXTS, "negative": OTHER_TEXTS}])
        assert bridge.wait_idle(300)  # model loaded, concept vector computed, first texts shown
        marks: dict[str, float] = {}

        def shown(which: str, n: int, done: bool) -> None:
            if which == "steered" and n >= 1:
                marks.setdefault("first", time.perf_counter())
                if n >= len(gen.baseline.tokens):
                    marks.setdefault("full", time.perf_counter())
        gen.text_shown.connect(shown)
        first, full = [], []
        for tick in (260, 300, 340, 280, 320):
            marks.clear()
            t0 = time.perf_counter()
            gen.strength_slider.setValue(tick)
            qtbot.waitUntil(lambda: "full" in marks, timeout=60000)
            first.append(marks["first"] - t0)
            full.append(marks["full"] - t0)
            assert bridge.wait_idle(60)
        assert len(gen.baseline.tokens) == NEW_TOKENS and len(gen.steered.tokens) == NEW_TOKENS
        plain = _plain_generate_seconds(NEUTRAL_PROMPTS[0])
        ratio = statistics.median(full) / plain
        print(f"\nslider -> first steered token {statistics.median(first) * 1000:.0f} ms (median of 5), "
              f"-> all {NEW_TOKENS} tokens {statistics.median(full) * 1000:.0f} ms; plain generate "
              f"{plain * 1000:.0f} ms; ratio {ratio:.2f}")
        assert ratio <= 1.2
    finally:
        bridge.shutdown()
