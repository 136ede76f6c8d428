"""Steering sweeps on the tiny llama: a zero strength reproduces the baseline exactly,
steering along a token's unembedding raises that token's probability, and the grid job
reports progress per cell and can be cancelled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.jobs import Cancelled, JobContext
from engine.steering.steer import concept_vector
from engine.steering.sweep import sweep

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
PROMPTS = ["The value of", "A list is"]


def _ctx(**kw) -> JobContext:
    return JobContext(device=torch.device("cpu"), **kw)


def test_zero_strength_is_the_baseline_and_the_token_direction_raises_the_concept(llama):
    token = int(llama.tokenize(" list")[0])
    w_u = llama.module.get_output_embeddings().weight[token].detach().float()
    directions = {h: w_u / w_u.norm() for h in HOOKS}
    seen = []
    r = sweep(_ctx(on_progress=lambda d, t, m: seen.append((d, t))), llama, PROMPTS, directions,
              [0.0, 4.0, 16.0], [token], max_new_tokens=4)
    assert r.concept.shape == r.coherence.shape == r.kl.shape == (2, 3)
    np.testing.assert_allclose(r.concept[:, 0], r.baseline_concept, atol=1e-6)
    np.testing.assert_allclose(r.kl[:, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(r.coherence[:, 0], r.baseline_coherence, rtol=1e-5)
    assert r.concept[1, 2] > r.concept[1, 1] > r.baseline_concept  # the last block, straight to the head
    assert (r.kl[:, 2] > r.kl[:, 1]).all()
    assert seen[-1] == (7, 7) and len(seen) == 7


def test_concept_directions_and_cancellation(llama):
    dirs = {h: concept_vector(llama, h, ["the sea and the waves"], ["the train station"]) for h in HOOKS}
    assert set(dirs) == set(HOOKS) and all(d.shape == (32,) for d in dirs.values())
    ctx = _ctx()
    ctx.on_progress = lambda d, t, m: ctx.cancel() if d >= 2 else None
    with pytest.raises(Cancelled):
        sweep(ctx, llama, PROMPTS, dirs, [1.0, 2.0], [5], max_new_tokens=2)
