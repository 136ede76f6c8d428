"""Steering sweeps: one direction per hook point, a grid of strengths x layers, and per cell
how strongly the concept shows (log probability mass of its tokens as the next token), how
coherent the steered continuation stays (its perplexity under the unsteered model) and how
far the next-token distribution moved (KL to the baseline), averaged over prompts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch

from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.models.base import ModelAdapter
from engine.steering import (
    AddDirection,
    _generate,
    _next_token_logprobs,
    _prompt_inputs,
    concept_vector,
    steered,
)


class SweepResult(NamedTuple):
    """Rows are hook points, columns strengths; every cell a mean over the prompts."""

    hooks: list[str]
    strengths: list[float]
    concept: np.ndarray  # (hooks, strengths) log P(next token is a concept token)
    coherence: np.ndarray  # (hooks, strengths) perplexity of the steered continuation, unsteered model
    kl: np.ndarray  # (hooks, strengths) KL(steered || baseline) of the next token
    baseline_concept: float  # the same concept score without steering
    baseline_coherence: float  # perplexity of the unsteered continuation


def concept_directions(adapter: ModelAdapter, hooks: Sequence[str], positive: Sequence[str],
                       negative: Sequence[str]) -> dict[str, torch.Tensor]:
    """A concept vector at each hook point (the same two prompt sets)."""
    return {hook: concept_vector(adapter, hook, positive, negative) for hook in hooks}


def _perplexity(adapter: ModelAdapter, inputs: dict[str, torch.Tensor], new: list[int]) -> float:
    """exp(mean NLL) of the tokens ``new`` after the prompt, under the model as it is now."""
    if not new:
        return float("nan")
    ids = torch.cat([inputs["input_ids"], torch.tensor([new], device=inputs["input_ids"].device)], 1)
    with torch.inference_mode():
        logits = adapter.module(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
    n = inputs["input_ids"].shape[1]
    lp = torch.log_softmax(logits[0, n - 1:-1].float(), -1)
    return float(torch.exp(-lp.gather(1, ids[0, n:, None]).mean()))


def _cell(adapter: ModelAdapter, prompts: list[dict[str, torch.Tensor]], base_lp: list[torch.Tensor],
          concept: torch.Tensor, iv: AddDirection | None, max_new_tokens: int, seed: int
          ) -> tuple[float, float, float]:
    scores, ppls, kls = [], [], []
    for inputs, base in zip(prompts, base_lp, strict=True):
        with steered(adapter, [iv] if iv is not None else []):
            lp = _next_token_logprobs(adapter, inputs)
            new = _generate(adapter, inputs, max_new_tokens, seed, False, 1.0)
        scores.append(float(torch.logsumexp(lp[concept], 0)))
        kls.append(float((lp.exp() * (lp - base)).sum().clamp_min(0)))
        ppls.append(_perplexity(adapter, inputs, new))
    return float(np.mean(scores)), float(np.nanmean(ppls)), float(np.mean(kls))


def sweep(ctx: JobContext, adapter: ModelAdapter, prompts: Sequence[str],
          directions: Mapping[str, torch.Tensor], strengths: Sequence[float],
          concept_tokens: Sequence[int], max_new_tokens: int = 10, seed: int = 0) -> SweepResult:
    """Job: steer with ``alpha * directions[hook]`` for every hook x strength; one cell at a
    time, with progress and a cancellation check per cell."""
    if not prompts or not directions or not strengths or not concept_tokens:
        raise LatentLabError("a sweep needs prompts, at least one hook direction, strengths and "
                             "concept tokens")
    hooks, strengths = list(directions), [float(s) for s in strengths]
    concept = torch.as_tensor(list(concept_tokens), dtype=torch.long, device=adapter.device)
    inputs = [_prompt_inputs(adapter, p) for p in prompts]
    base_lp = [_next_token_logprobs(adapter, x) for x in inputs]
    total = len(hooks) * len(strengths) + 1
    ctx.progress(0, total, "baseline")
    base_score, base_ppl, _ = _cell(adapter, inputs, base_lp, concept, None, max_new_tokens, seed)
    out = np.zeros((3, len(hooks), len(strengths)))
    for i, hook in enumerate(hooks):
        for j, alpha in enumerate(strengths):
            ctx.check_cancelled()
            iv = AddDirection(hook, directions[hook].to(adapter.device), alpha)
            out[:, i, j] = _cell(adapter, inputs, base_lp, concept, iv, max_new_tokens, seed)
            ctx.progress(1 + i * len(strengths) + j + 1, total, f"{hook} x {alpha:g}")
    return SweepResult(hooks, strengths, out[0], out[1], out[2], base_score, base_ppl)
