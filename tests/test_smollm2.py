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


def test_gguf_conversion_matches_transformers_own_gguf_loading(tmp_path):
    """convert_gguf_llama (one read of the file) gives transformers' GGUF loader's weights bit
    for bit, its config's fields and a tokenizer that encodes, decodes and templates alike."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from engine.models.gguf_llama import convert_gguf_llama
    from engine.models.smollm2 import gguf_path
    src = gguf_path()
    folder = convert_gguf_llama(src, tmp_path / "converted")
    ours_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    theirs_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    ours, theirs = ours_model.state_dict(), theirs_model.state_dict()
    assert ours.keys() == theirs.keys()
    for name, w in theirs.items():
        assert ours[name].dtype == w.dtype and torch.equal(ours[name].view(torch.int32), w.view(torch.int32)), name
    ours_cfg = AutoConfig.from_pretrained(folder).to_dict()
    theirs_cfg = theirs_model.config.to_dict()  # parsed from the file as it loaded (a third parse costs seconds)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_parameters", "vocab_size",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act"):
        assert ours_cfg[key] == theirs_cfg[key], key
    ours_tok = AutoTokenizer.from_pretrained(folder)
    theirs_tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    from engine.sources.text import DemoCorpus
    texts = [example.text for example in DemoCorpus()]
    texts += ["<|im_start|>user\nhi<|im_end|>", "  two  spaces\tand\nlines ", "émoji 🤖 ünïcode", "<|endoftext|>x"]
    for text in texts:
        ids = theirs_tok(text)["input_ids"]
        assert ours_tok(text)["input_ids"] == ids, text
        assert ours_tok.decode(ids) == theirs_tok.decode(ids)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert ours_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        theirs_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert ours_tok.all_special_tokens == theirs_tok.all_special_tokens
