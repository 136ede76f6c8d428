"""The bundled SmolLM2-135M-Instruct, for real (marked slow; runs in CI too)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from engine.capture import capture
from engine.jobs import JobContext
from engine.models.hf import HFCausalLM
from engine.models.smollm2 import ensure_cached, load_smollm2
from engine.store.activations import ActivationStore, validate

pytestmark = pytest.mark.slow
HOOK = "blocks.15.hook_resid_post"


@pytest.fixture(scope="module")
def smollm2() -> HFCausalLM:
    return load_smollm2()


def test_cached_load_gives_the_same_weights(smollm2):
    again = HFCausalLM(ensure_cached(), model_id="smollm2")
    assert again.weight_hash() == smollm2.weight_hash()


@pytest.mark.perf
def test_cached_load_is_fast(smollm2):
    folder = ensure_cached()
    start = time.perf_counter()
    HFCausalLM(folder, model_id="smollm2")
    assert time.perf_counter() - start < 2.0


def test_model_knows_facts(smollm2):
    prompt = smollm2.tokenize("The capital of France is")
    batch = smollm2.make_batch([prompt])
    logits = smollm2.logits(batch)[0, len(prompt) - 1]
    top = [smollm2.tokenizer.decode([int(i)]).strip() for i in logits.topk(5).indices]
    assert "Paris" in top
    assert smollm2.module.config.rope_parameters["rope_theta"] == 100000.0


def test_capture_5000_tokens(smollm2, tmp_path):
    out = tmp_path / "smol.h5"
    result = capture(JobContext(device=torch.device("cpu")), model=smollm2, source="demo", hooks=[HOOK],
                     out=out, max_tokens=5000)
    assert result.rows == 5000
    validate(out)
    with ActivationStore.open(out) as store:
        assert store.dim(HOOK) == 576 and store.meta.model_id == "smollm2"
        acts = store.acts(HOOK)
        assert acts.shape == (5000, 576) and np.isfinite(acts).all()
        assert acts.astype(np.float32).std() > 0.1
        ids, at = store.context(100)
        assert ids[at] == store.index("tokens", 100, 101)[0]
