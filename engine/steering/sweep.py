"""Steering sweeps: one direction per hook point, a grid of strengths x layers, and per cell
how strongly the concept shows (log probability mass of its tokens as the next token), how
coherent the steered continuation stays (its perplexity under the unsteered model) and how
far the next-token distribution moved (KL to the baseline), averaged over prompts."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.models.base import ModelAdapter
from engine.provenance import array_digest, provenance_record
from engine.specs import ConceptSets
from engine.steering.steer import (
    AddDirection,
    generate_first,
    kl_divergence,
    next_token_logprobs,
    prompt_inputs,
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
    provenance: dict[str, Any] | None = None  # engine.provenance record of a finished sweep

    def to_json(self) -> str:
        """The result as a JSON text (NaN as null); ``from_json`` reads it back."""
        grids = {k: [[_num(v) for v in row] for row in getattr(self, k).tolist()] for k in _GRIDS}
        return json.dumps({"kind": "steering-sweep", "version": 1, "hooks": self.hooks,
                           "strengths": self.strengths, **grids,
                           "baseline_concept": _num(self.baseline_concept),
                           "baseline_coherence": _num(self.baseline_coherence),
                           "provenance": self.provenance}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SweepResult:
        """Parse what ``to_json`` wrote; LatentLabError when it is not a sweep or its grids
        do not match its hooks x strengths."""
        try:
            body = json.loads(text)
            hooks, strengths = [str(h) for h in body["hooks"]], [float(s) for s in body["strengths"]]
            grids = [np.array(body[k], dtype=float).reshape(len(hooks), len(strengths)) for k in _GRIDS]
            return cls(hooks, strengths, *grids, _float(body["baseline_concept"]),
                       _float(body["baseline_coherence"]), body.get("provenance"))
        except (ValueError, KeyError, TypeError) as exc:
            raise LatentLabError(f"not a steering-sweep result ({exc})") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> SweepResult:
        return cls.from_json(Path(path).read_text())

    def format(self) -> str:
        """The three grids as aligned text tables (hook rows, strength columns)."""
        return "\n\n".join([
            format_grid(f"concept score: log P(next token is a concept token); baseline "
                        f"{self.baseline_concept:.3f}", self.hooks, self.strengths, self.concept),
            format_grid(f"coherence: perplexity of the steered continuation under the plain model; "
                        f"baseline {self.baseline_coherence:.2f}", self.hooks, self.strengths,
                        self.coherence, "{:.2f}"),
            format_grid("KL(steered || baseline) of the next token", self.hooks, self.strengths, self.kl,
                        "{:.4f}")])


_GRIDS = ("concept", "coherence", "kl")
NEUTRAL_PROMPTS = ("I went outside and saw the", "My favourite thing in the world is the",
                   "Yesterday we talked about the", "The best place to relax is the")


def _num(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _float(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def format_grid(title: str, hooks: Sequence[str], strengths: Sequence[float], values: np.ndarray,
                fmt: str = "{:.3f}") -> str:
    """``title`` over a text table: one row per hook, one right-aligned column per strength."""
    table = [["hook \\ strength", *(f"{s:g}" for s in strengths)]]
    table += [[h, *(fmt.format(v) for v in row)] for h, row in zip(hooks, np.asarray(values).tolist(), strict=True)]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))])
             for r in table]
    return "\n".join([title, *lines])


def load_concept_sets(path: str | Path) -> dict[str, list[str]]:
    """A concept file (engine.specs.ConceptSets: "positive" and "negative" texts, optional
    "words") as a dict; LatentLabError naming the file and the field at fault."""
    return ConceptSets.load(path, f"concept file {path}").model_dump()


def concept_token_ids(adapter: ModelAdapter, words: Sequence[str]) -> list[int]:
    """Token ids for a sweep's concept score: the first token of each word with and without
    a leading space, lower-case and capitalised; deduplicated in first-seen order."""
    out: dict[int, None] = {}
    for word in words:
        w = word.strip()
        for variant in (w, w.lower(), w.capitalize()):
            for text in (" " + variant, variant):
                ids = adapter.tokenize(text) if variant else []
                if ids:
                    out.setdefault(int(ids[0]), None)
    return list(out)


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
            new, lp = generate_first(adapter, inputs, max_new_tokens, seed, False, 1.0)
        scores.append(float(torch.logsumexp(lp[concept], 0)))
        kls.append(kl_divergence(lp, base))
        ppls.append(_perplexity(adapter, inputs, new))
    return float(np.mean(scores)), float(np.nanmean(ppls)), float(np.mean(kls))


def sweep(ctx: JobContext, adapter: ModelAdapter, prompts: Sequence[str],
          directions: Mapping[str, torch.Tensor], strengths: Sequence[float],
          concept_tokens: Sequence[int], max_new_tokens: int = 10, seed: int = 0) -> SweepResult:
    """Job: steer with ``alpha * directions[hook]`` for every hook x strength; one cell at a
    time, with progress, a cancellation check and a partial result (cells not yet run are
    NaN) per cell."""
    if not prompts or not directions or not strengths or not concept_tokens:
        raise LatentLabError("a sweep needs prompts, at least one hook direction, strengths and "
                             "concept tokens")
    hooks, strengths = list(directions), [float(s) for s in strengths]
    concept = torch.as_tensor(list(concept_tokens), dtype=torch.long, device=adapter.device)
    inputs = [prompt_inputs(adapter, p) for p in prompts]
    base_lp = [next_token_logprobs(adapter, x) for x in inputs]
    total = len(hooks) * len(strengths) + 1
    ctx.progress(0, total, "baseline")
    base_score, base_ppl, _ = _cell(adapter, inputs, base_lp, concept, None, max_new_tokens, seed)
    out = np.full((3, len(hooks), len(strengths)), np.nan)
    for i, hook in enumerate(hooks):
        for j, alpha in enumerate(strengths):
            ctx.check_cancelled()
            iv = AddDirection(hook, directions[hook].to(adapter.device), alpha)
            out[:, i, j] = _cell(adapter, inputs, base_lp, concept, iv, max_new_tokens, seed)
            ctx.progress(1 + i * len(strengths) + j + 1, total, f"{hook} x {alpha:g}")
            grids = out.copy()
            ctx.partial(SweepResult(hooks, strengths, grids[0], grids[1], grids[2], base_score, base_ppl))
    record = provenance_record("sweep", model_id=adapter.model_id, model_hash=adapter.weight_hash(), seed=seed, params={
        "prompts": list(prompts), "hooks": hooks, "strengths": strengths, "concept_tokens": [int(t) for t in concept_tokens],
        "max_new_tokens": max_new_tokens, "directions": {h: array_digest(directions[h].detach().float().cpu()) for h in hooks}})
    return SweepResult(hooks, strengths, out[0], out[1], out[2], base_score, base_ppl, record)
