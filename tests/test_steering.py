"""Steering on the tiny random llama: added directions land exactly where asked, SAE
clamps and ablations change only their latents (error splice), concept vectors are
antisymmetric, and generation comparisons are deterministic (KV cache included)."""

from __future__ import annotations

import pytest
import torch

from engine.errors import HookError
from engine.jobs import JobContext
from engine.sae.base import SAEConfig, build_sae
from engine.steering.recipe import OCEAN_TEXTS as OCEAN
from engine.steering.recipe import OTHER_TEXTS as OTHER
from engine.steering.steer import (
    AblateLatents,
    AddDirection,
    ClampLatents,
    compare_generation,
    concept_vector,
    first_divergence,
    latent_direction,
    next_token_shift,
    shift_text,
    splice_codes,
    steered,
)

HOOK = "blocks.1.hook_resid_post"
PROMPT = "The river flows into the sea and the"


def make_sae(arch: str, d_in: int, d_sae: int = 64, seed: int = 0):
    """A random SAE for the tiny model's width (ReLU with mixed biases so some latents fire)."""
    torch.manual_seed(seed)
    sae = build_sae(SAEConfig(arch, d_in, d_sae, k=8)).eval()
    with torch.no_grad():
        sae.b_enc.normal_(-0.1 if arch == "relu" else 0.0, 0.2)
        sae.b_dec.normal_(0, 0.05)
    return sae


@pytest.fixture(scope="module")
def prompt_batch(llama):
    return llama.make_batch([llama.tokenize(PROMPT)])


@pytest.fixture(scope="module")
def d_model(llama) -> int:
    return int(llama.module.config.hidden_size)


def acts(llama, batch, interventions=()):
    """(n_doc_tokens, d) activations at HOOK, recorded after any steering hooks."""
    with steered(llama, list(interventions)):
        return llama.forward(batch, [HOOK])[HOOK]


def full_acts(llama, batch, interventions=()):
    """(seq, d) activations at HOOK for every position (BOS included)."""
    from engine.hooks import recording
    with steered(llama, list(interventions)), recording({HOOK: llama.hook_sites()[HOOK]}, False) as got, \
            torch.inference_mode():
        llama.run(batch)
    return got[HOOK][0]


def test_zero_alpha_leaves_logits_exactly(llama, prompt_batch, d_model):
    base = llama.logits(prompt_batch)
    with steered(llama, [AddDirection(HOOK, torch.randn(d_model), 0.0)]):
        same = llama.logits(prompt_batch)
    assert torch.equal(base, same)


def test_add_direction_is_exactly_linear(llama, prompt_batch, d_model):
    d = torch.randn(d_model)
    x = acts(llama, prompt_batch)
    x2 = acts(llama, prompt_batch, [AddDirection(HOOK, d, 3.0)])
    torch.testing.assert_close(x2, x + 3.0 * d, atol=1e-6, rtol=0)
    base = llama.logits(prompt_batch)
    with steered(llama, [AddDirection(HOOK, d, 3.0)]):
        assert (llama.logits(prompt_batch) - base).abs().max() > 1e-3


def test_add_direction_at_positions_only(llama, prompt_batch, d_model):
    d = torch.randn(d_model)
    x = full_acts(llama, prompt_batch)
    x2 = full_acts(llama, prompt_batch, [AddDirection(HOOK, d, 2.0, positions=(2, 4))])
    want = x.clone()
    want[[2, 4]] += 2.0 * d
    torch.testing.assert_close(x2, want, atol=1e-6, rtol=0)


def test_hooks_removed_after_context(llama, prompt_batch, d_model):
    base = llama.logits(prompt_batch)
    with steered(llama, [AddDirection(HOOK, torch.randn(d_model), 5.0)]):
        pass
    assert torch.equal(llama.logits(prompt_batch), base)


def test_unknown_hook_raises(llama, d_model):
    with pytest.raises(HookError), steered(llama, [AddDirection("nope", torch.zeros(d_model))]):
        pass


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_clamp_changes_only_its_latent(llama, prompt_batch, d_model, arch):
    sae = make_sae(arch, d_model)
    x = acts(llama, prompt_batch)
    codes = sae.encode(x).detach()
    j = int(codes.sum(0).argmax())
    spliced = splice_codes(sae, x, [j], [7.0])
    # x' - x = (7 - c_j) W_dec[j]: only latent j's code moved, everything else kept
    want = x + (7.0 - codes[:, j:j + 1]) * sae.W_dec[j].detach()
    torch.testing.assert_close(spliced, want, atol=1e-5, rtol=0)
    # decomposed on the decoder: the codes the splice decodes differ from encode(x) only at j
    edited = codes.clone()
    edited[:, j] = 7.0
    err = x - sae.decode(codes).detach()
    torch.testing.assert_close(sae.decode(edited).detach() + err, spliced, atol=1e-5, rtol=0)
    recorded = acts(llama, prompt_batch, [ClampLatents(HOOK, sae, (j,), (7.0,))])
    torch.testing.assert_close(recorded, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_clamp_to_current_value_keeps_logits(llama, prompt_batch, d_model, arch):
    sae = make_sae(arch, d_model)
    codes = sae.encode(full_acts(llama, prompt_batch)).detach()
    dead = int((codes.abs().sum(0) == 0).nonzero()[0])  # a latent at 0 at every position
    live = int(codes.sum(0).argmax())
    base = llama.logits(prompt_batch)
    with steered(llama, [ClampLatents(HOOK, sae, (dead,), (0.0,))]):
        torch.testing.assert_close(llama.logits(prompt_batch), base, atol=1e-4, rtol=0)
    with steered(llama, [ClampLatents(HOOK, sae, (live,), (20.0,))]):
        assert (llama.logits(prompt_batch) - base).abs().max() > 1e-3


def test_ablate_zero_removes_only_that_latent(llama, prompt_batch, d_model):
    sae = make_sae("relu", d_model)
    x = acts(llama, prompt_batch)
    codes = sae.encode(x).detach()
    j = int(codes.sum(0).argmax())
    got = acts(llama, prompt_batch, [AblateLatents(HOOK, sae, (j,))])
    torch.testing.assert_close(got, x - codes[:, j:j + 1] * sae.W_dec[j].detach(), atol=1e-5, rtol=0)
    # the code the splice decodes: latent j at 0, the others as encode(x) gave them
    edited = codes.clone()
    edited[:, j] = 0
    torch.testing.assert_close(sae.decode(edited).detach() + (x - sae.decode(codes).detach()), got,
                               atol=1e-5, rtol=0)


def test_ablate_mean_and_bad_specs(llama, prompt_batch, d_model):
    sae = make_sae("relu", d_model)
    x = acts(llama, prompt_batch)
    codes = sae.encode(x).detach()
    got = acts(llama, prompt_batch, [AblateLatents(HOOK, sae, (3, 5), "mean", (0.5, 1.5))])
    want = x + (0.5 - codes[:, 3:4]) * sae.W_dec[3].detach() + (1.5 - codes[:, 5:6]) * sae.W_dec[5].detach()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError), steered(llama, [AblateLatents(HOOK, sae, (3,), "mean")]):
        pass
    with pytest.raises(ValueError), steered(llama, [ClampLatents(HOOK, sae, (3, 4), (1.0,))]):
        pass


def test_several_interventions_compose(llama, prompt_batch, d_model):
    sae = make_sae("relu", d_model)
    d = torch.randn(d_model)
    x = acts(llama, prompt_batch)
    shifted = x + d
    codes = sae.encode(shifted).detach()
    got = acts(llama, prompt_batch, [AddDirection(HOOK, d, 1.0), AblateLatents(HOOK, sae, (7,))])
    torch.testing.assert_close(got, shifted - codes[:, 7:8] * sae.W_dec[7].detach(), atol=1e-5, rtol=0)


def test_concept_vector_and_latent_direction(llama, d_model):
    pos = ["the ocean and the sea", "waves on the water"]
    neg = ["a mountain of stone", "the city at night"]
    assert torch.equal(concept_vector(llama, HOOK, pos, pos), torch.zeros(d_model))
    v = concept_vector(llama, HOOK, pos, neg)
    assert v.shape == (d_model,) and v.norm() > 0
    torch.testing.assert_close(concept_vector(llama, HOOK, neg, pos), -v)
    sae = make_sae("relu", d_model)
    assert torch.equal(latent_direction(sae, 5), sae.W_dec[5].detach())
    with pytest.raises(ValueError):
        concept_vector(llama, HOOK, pos, [])


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) == -1
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def test_compare_without_intervention(llama):
    ctx = JobContext(device=torch.device("cpu"))
    for sample in (False, True):
        r = compare_generation(ctx, llama, PROMPT, [], max_new_tokens=8, sample=sample)
        assert r.first_divergence == -1 and r.baseline_tokens == r.steered_tokens
        assert r.kl == pytest.approx(0, abs=1e-6) and r.baseline_text == r.steered_text
        assert r.gained == [] and r.lost == [] and shift_text(r.gained) == "none"  # nothing moved


def test_shifts_list_only_tokens_that_moved(llama):
    base = torch.log_softmax(torch.randn(llama.module.config.vocab_size), 0)
    steered = base.clone()
    steered[[3, 7]] += torch.tensor([0.5, -0.5])  # one token up, one down, the rest unchanged
    steered = torch.log_softmax(steered, 0)
    shift = next_token_shift(llama, steered, base, top=10)
    delta = steered.exp() - base.exp()
    assert [t.token for t in shift.gained] == [3] and shift.gained[0].delta == pytest.approx(float(delta[3]))
    assert 7 in [t.token for t in shift.lost] and all(t.delta < 0 for t in shift.lost)
    assert len(shift.lost) == int((delta < -1e-6).sum().clamp(max=10))  # renormalising moved the rest down
    assert shift_text(shift.gained).startswith(repr(shift.gained[0].text))


def test_compare_is_deterministic_and_steers(llama, d_model):
    ctx = JobContext(device=torch.device("cpu"))
    torch.manual_seed(1)
    iv = [AddDirection(HOOK, torch.randn(d_model), 30.0)]
    for sample in (False, True):
        a = compare_generation(ctx, llama, PROMPT, iv, max_new_tokens=10, seed=3, sample=sample)
        b = compare_generation(ctx, llama, PROMPT, iv, max_new_tokens=10, seed=3, sample=sample)
        assert a == b
        assert a.kl > 0 and a.first_divergence >= 0
        assert a.gained[0].delta > 0 > a.lost[0].delta
        plain = compare_generation(ctx, llama, PROMPT, [], max_new_tokens=10, seed=3, sample=sample)
        assert plain.baseline_tokens == a.baseline_tokens  # same seed -> same baseline


def test_positions_respected_with_kv_cache(llama, d_model):
    """Cached generation steers the same absolute positions as full recomputation does."""
    ids = llama.make_batch([llama.tokenize(PROMPT)]).inputs["input_ids"]
    n = ids.shape[1]
    torch.manual_seed(2)
    iv = [AddDirection(HOOK, torch.randn(d_model), 30.0, positions=(n - 1, n + 1))]
    with steered(llama, iv), torch.inference_mode():
        cached = llama.module.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                       do_sample=False, use_cache=True, pad_token_id=0)[0, n:].tolist()
        seq = ids
        for _ in range(5):
            nxt = llama.module(seq, use_cache=False).logits[0, -1].argmax()
            seq = torch.cat([seq, nxt.view(1, 1)], 1)
    assert cached == seq[0, n:].tolist()


# ---------------------------------------------------------------------- the real SmolLM2
NEUTRAL = ["I went outside and saw the", "My favourite thing in the world is the",
           "Yesterday we talked about the", "The picture on the wall shows the",
           "She opened the window and looked at the", "The best place to relax is the",
           "He told me a story about the", "In the morning, I like to look at the",
           "The children were playing near the", "Last summer we visited the"]
OCEAN_WORDS = [" ocean", " sea", " waves", " water"]


def _ocean_logprob(model, hook, vector, alpha) -> torch.Tensor:
    """log P(any ocean word next) after each neutral prompt, steered by alpha * vector."""
    ids = [model.tokenize(w)[0] for w in OCEAN_WORDS]
    out = []
    with steered(model, [AddDirection(hook, vector, alpha)]):
        for prompt in NEUTRAL:
            lp = torch.log_softmax(model.logits(model.make_batch([model.tokenize(prompt)]))[0, -1].float(), -1)
            out.append(torch.logsumexp(lp[ids], 0))
    return torch.stack(out)


@pytest.mark.slow
def test_smollm2_ocean_concept_vector():
    from engine.models.registry import cached_model
    model = cached_model("smollm2")
    hook = "blocks.9.hook_resid_post"  # of 30 blocks; deeper layers carry huge-norm outlier dims
    vector = concept_vector(model, hook, OCEAN, OTHER)
    base = _ocean_logprob(model, hook, vector, 0.0)
    assert int((_ocean_logprob(model, hook, vector, 2.0) > base).sum()) >= 8
    assert int((_ocean_logprob(model, hook, vector, -2.0) < base).sum()) >= 8
    r = compare_generation(JobContext(device=torch.device("cpu")), model, NEUTRAL[0],
                           [AddDirection(hook, vector, 2.0)], max_new_tokens=12)
    assert r.kl > 0 and {g.token for g in r.gained} & {model.tokenize(w)[0] for w in OCEAN_WORDS}
