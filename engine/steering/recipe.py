"""Steering recipes: the plain-dict interventions that AppState carries and sessions save
(typed as engine.specs.RecipeItem), their command-line short form, how they become engine
interventions, and the streamed generation the steering view's sliders drive (one token at
a time, cancellable between tokens)."""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from engine.errors import LatentLabError
from engine.features.encode import cached_sae, latent_values
from engine.hooks import check_hooks, checking
from engine.jobs import JobContext
from engine.lru import LockedLRU
from engine.models.base import ModelAdapter
from engine.models.registry import cached_model
from engine.specs import LATENT_MODES as LATENT_MODES  # the view's choices (engine.steering's face)
from engine.specs import RecipeItem
from engine.steering.injection import InjectionResult, inject_concept
from engine.steering.steer import (
    AddDirection,
    ClampLatents,
    Intervention,
    TokenShift,
    concept_vector,
    generate_first,
    latent_direction,
    next_token_logprobs,
    next_token_shift,
    prompt_inputs,
    steered,
)
from engine.steering.sweep import SweepResult, concept_token_ids, load_concept_sets, sweep
from engine.steering.trails import Trail, run_trail, strength_trails

CONCEPT_CACHE_SIZE = 64

# A starting concept for the view (ocean against other topics); editable in the view.
OCEAN_TEXTS = ["The ocean is vast and deep, with waves crashing on the shore.",
               "Sailors crossed the sea, watching the waves and the salty water.",
               "Whales and dolphins swim in the deep blue ocean.",
               "The tide rolled in, and sea water covered the sandy beach."]
OTHER_TEXTS = ["The mountain trail climbed through a dry pine forest.",
               "She wrote the report on her computer in the office.",
               "The city traffic was heavy during the morning rush.",
               "He baked bread in the kitchen with flour and butter."]
OCEAN_WORDS = ["ocean", "sea", "waves", "water"]


# ---------------------------------------------------------------------- recipe items
def check_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe item (engine.specs.RecipeItem) as a dict with its defaults filled in;
    SpecError naming the bad field."""
    return RecipeItem.parse(item).as_dict()


SHORT_FORMS = ("add:HOOK:ALPHA:concept=FILE.json | add:HOOK:ALPHA:latent=SAE#J | clamp:HOOK:SAE:J=V[,J=V]"
               " | ablate:HOOK:SAE:J[,J] | mean-ablate:HOOK:SAE:J[,J]")


def short_form_items(text: str, store: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Recipe items of one intervention in the command line's short form (``SHORT_FORMS``);
    a mean-ablation takes its latents' means over the rows of ``store``. ValueError or
    LatentLabError saying what is wrong."""
    kind, _, rest = text.partition(":")
    parts = rest.split(":")
    if kind not in _SHORT or len(parts) != 3:
        raise ValueError(f"expected {SHORT_FORMS}")
    return [check_item(item) for item in _SHORT[kind](*parts, store)]


def _short_add(hook: str, alpha: str, source: str, store: Any) -> list[dict[str, Any]]:
    what, _, value = source.partition("=")
    if what == "concept":
        sets = load_concept_sets(value)
        return [{"kind": "concept", "hook": hook, "strength": alpha, "name": Path(value).stem,
                 "positive": sets["positive"], "negative": sets["negative"]}]
    if what == "latent":
        folder, _, latent = value.rpartition("#")
        return [{"kind": "latent", "hook": hook, "strength": alpha, "sae": folder, "latent": latent, "mode": "add"}]
    raise ValueError(f"unknown direction source {what!r}")


def _short_clamp(hook: str, sae: str, pairs: str, store: Any) -> list[dict[str, Any]]:
    return [{"kind": "latent", "hook": hook, "sae": sae, "latent": j, "mode": "clamp", "strength": v}
            for j, _, v in (pair.partition("=") for pair in pairs.split(","))]


def _short_ablate(hook: str, sae: str, latents: str, store: Any) -> list[dict[str, Any]]:
    return [{"kind": "latent", "hook": hook, "sae": sae, "latent": j, "mode": "ablate"} for j in latents.split(",")]


def _short_mean_ablate(hook: str, sae: str, latents: str, store: str | None) -> list[dict[str, Any]]:
    if store is None:
        raise ValueError("mean-ablation needs --store STORE (the means are taken over its rows)")
    ids = [int(j) for j in latents.split(",")]
    means = latent_means(JobContext(), store, hook, sae, ids)
    return [{"kind": "latent", "hook": hook, "sae": sae, "latent": j, "mode": "mean-ablate", "mean": m}
            for j, m in zip(ids, means, strict=True)]


_SHORT = {"add": _short_add, "clamp": _short_clamp, "ablate": _short_ablate, "mean-ablate": _short_mean_ablate}


_concepts = LockedLRU(CONCEPT_CACHE_SIZE)


def cached_concept(adapter: ModelAdapter, hook: str, positive: Sequence[str],
                   negative: Sequence[str]) -> torch.Tensor:
    """``concept_vector`` memoised per model, hook and prompt sets (a slider that moves the
    layer or the strength does not re-run the prompt sets)."""
    key = (adapter.model_id, str(adapter.device), hook, tuple(positive), tuple(negative))
    hit = _concepts.get(key)
    if hit is not None:
        return hit
    vec = concept_vector(adapter, hook, positive, negative).to(adapter.device)
    _concepts.put(key, vec)
    return vec


def recipe_interventions(adapter: ModelAdapter, recipe: Sequence[Mapping[str, Any]]) -> list[Intervention]:
    """The interventions of the enabled items, in order. Additions of strength 0 are left
    out (they change nothing), so an all-zero recipe runs the plain model. Neighbouring
    clamps and ablations of one SAE at one hook become one splice: the latents are edited
    together, as one code, not re-encoded after each edit."""
    out: list[Intervention] = []
    for raw in recipe:
        item = check_item(raw)
        if not item["enabled"]:
            continue
        hook, strength = item["hook"], item["strength"]
        if item["kind"] in ("concept", "direction"):
            if strength:
                out.append(AddDirection(hook, item_direction(adapter, item), strength))
            continue
        sae = cached_sae(item["sae"], adapter.device)
        latent = item["latent"]
        if not 0 <= latent < sae.W_dec.shape[0]:
            raise LatentLabError(f"latent {latent} is outside the SAE in {item['sae']} "
                                 f"({sae.W_dec.shape[0]} latents)")
        if item["mode"] == "add":
            if strength:
                out.append(AddDirection(hook, latent_direction(sae, latent), strength))
            continue
        value = {"clamp": strength, "ablate": 0.0}.get(item["mode"], item.get("mean", 0.0))
        last = out[-1] if out else None
        if isinstance(last, ClampLatents) and last.hook == hook and last.sae is sae and latent not in last.latents:
            out[-1] = ClampLatents(hook, sae, (*last.latents, latent), (*last.values, value))
        else:
            out.append(ClampLatents(hook, sae, (latent,), (value,)))
    return out


# ---------------------------------------------------------------------- streamed generation
class Generation(NamedTuple):
    """A continuation so far (``done`` False while streaming) and, once done for a steered
    run, how the first next-token distribution moved against the unsteered model."""

    which: str  # "baseline" or "steered"
    tokens: list[int]  # new tokens only
    texts: list[str]  # each token's text, for highlighting
    done: bool
    kl: float = float("nan")  # KL(steered || baseline) of the token after the prompt
    gained: list[TokenShift] = []
    lost: list[TokenShift] = []
    trail: Trail | None = None  # the run's activations at a hook point, when asked (trail_hook)


class _TokenStream:
    """A transformers streamer: the first ``put`` is the prompt, each later one a new token;
    every token is sent as a partial and is a cancellation point."""

    def __init__(self, ctx: JobContext, adapter: ModelAdapter, which: str, total: int) -> None:
        self.ctx, self.adapter, self.which, self.total = ctx, adapter, which, total
        self.prompt_seen = False
        self.tokens: list[int] = []
        self.texts: list[str] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ctx.check_cancelled()
        new = value.reshape(-1).tolist()
        self.tokens.extend(new)
        self.texts.extend(self.adapter.tokenizer.decode([t]) for t in new)
        self.ctx.partial(Generation(self.which, list(self.tokens), list(self.texts), False))
        self.ctx.progress(len(self.tokens), self.total, f"{self.which} token {len(self.tokens)}")

    def end(self) -> None:
        pass


def _ready_model(model: str | ModelAdapter, device: torch.device) -> ModelAdapter:
    adapter = cached_model(model) if isinstance(model, str) else model
    if adapter.tokenizer is None:
        raise LatentLabError(f"model {adapter.model_id} has no tokenizer: steering generates text")
    if adapter.device != device:
        adapter.to(device)
    return adapter


def generate_stream(ctx: JobContext, model: str | ModelAdapter, prompt: str,
                    recipe: Sequence[Mapping[str, Any]] = (), max_new_tokens: int = 20, seed: int = 0,
                    sample: bool = False, temperature: float = 1.0, which: str = "steered",
                    compare: bool = True, top: int = 8, trail_hook: str | None = None) -> Generation:
    """Job: the continuation of ``prompt`` under ``recipe`` (``which="baseline"`` ignores
    the recipe), streamed token by token as partials; a steered run then compares its first
    next-token distribution with the unsteered one (``compare``). With ``trail_hook`` the
    result also holds the run's activations there (prompt and generated tokens, under the
    same interventions: engine.steering.trails), for the map's trails."""
    if not prompt:
        raise LatentLabError("the prompt is empty")
    adapter = _ready_model(model, ctx.device)
    interventions = recipe_interventions(adapter, recipe) if which == "steered" else []
    inputs = prompt_inputs(adapter, prompt)
    stream = _TokenStream(ctx, adapter, which, max_new_tokens)
    with steered(adapter, interventions), checking(adapter.blocks(), ctx.check_cancelled):
        _, first = generate_first(adapter, inputs, max_new_tokens, seed, sample, temperature, streamer=stream)
    result = Generation(which, stream.tokens, stream.texts, True)
    if trail_hook is not None:
        ctx.check_cancelled()
        result = result._replace(trail=run_trail(adapter, prompt, stream.tokens, trail_hook, interventions, which))
    if which != "steered":
        _remember_baseline(adapter, inputs, first)
        return result
    if not compare:
        return result
    ctx.check_cancelled()
    shift = next_token_shift(adapter, first, _baseline_logprobs(adapter, inputs), top)
    return result._replace(kl=shift.kl, gained=shift.gained, lost=shift.lost)


BASELINE_CACHE_SIZE = 16
_baselines = LockedLRU(BASELINE_CACHE_SIZE)  # (module id, prompt ids) -> (module ref, log-probs)


def _baseline_key(adapter: ModelAdapter, inputs: dict[str, torch.Tensor]) -> tuple:
    return id(adapter.module), tuple(inputs["input_ids"][0].tolist())


def _remember_baseline(adapter: ModelAdapter, inputs: dict[str, torch.Tensor], logprobs: torch.Tensor) -> None:
    """Keep the unsteered next-token distribution after a prompt, which the baseline run
    computes anyway, so a steered run compares against it without another forward pass."""
    _baselines.put(_baseline_key(adapter, inputs), (weakref.ref(adapter.module), logprobs))


def _baseline_logprobs(adapter: ModelAdapter, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The unsteered next-token log-probabilities after the prompt: remembered from the
    baseline run when it came first, computed (and remembered) otherwise."""
    found = _baselines.get(_baseline_key(adapter, inputs))
    if found is not None and found[0]() is adapter.module:
        return found[1]
    logprobs = next_token_logprobs(adapter, inputs)
    _remember_baseline(adapter, inputs, logprobs)
    return logprobs


def steerable_hooks(ctx: JobContext, model: str) -> list[str]:
    """Job: the model's hook points (loading it once, so later steering starts warm); a
    classifier's too (its predictions are steered instead of a text)."""
    adapter = cached_model(model)
    if adapter.device != ctx.device:
        adapter.to(ctx.device)
    return list(adapter.hook_sites())


def latent_item(ctx: JobContext, sae: str, latent: int, hook: str, store: str | None = None,
                stats_id: str | None = None) -> dict[str, Any]:
    """Job: a recipe item adding ``latent``'s decoder row at ``hook``. With a store, its
    strength starts at the latent's largest activation there (a scale the latent itself
    reaches; the slider range is twice that) and ``mean`` holds its mean activation over
    the store's rows, for mean-ablation (stored codes are read when ``stats_id`` has them)."""
    return latent_items(ctx, sae, [latent], hook, store, stats_id)[0]


def latent_items(ctx: JobContext, sae: str, latents: Sequence[int], hook: str, store: str | None = None,
                 stats_id: str | None = None) -> list[dict[str, Any]]:
    """Job: ``latent_item`` for each of ``latents`` (one pass over the store for all)."""
    latents = [int(j) for j in latents]
    n_latents = cached_sae(sae, "cpu").W_dec.shape[0]
    for j in latents:
        if not 0 <= j < n_latents:
            raise LatentLabError(f"latent {j} is outside the SAE in {sae} ({n_latents} latents)")
    values = None
    if store and latents:
        values = latent_values(ctx, Path(store), hook, Path(sae), latents, stats_id=stats_id)
    items = []
    for k, j in enumerate(latents):
        top, mean = 10.0, 0.0
        if values is not None and values.shape[0]:
            top = float(values[:, k].max()) if values[:, k].max() > 0 else top
            mean = float(values[:, k].mean())
        items.append(check_item({"kind": "latent", "hook": hook, "sae": str(sae), "latent": j, "mode": "add",
                                 "strength": round(top, 2), "range": round(2 * top, 1), "mean": mean,
                                 "name": f"latent {j}"}))
    return items


def latent_means(ctx: JobContext, store: str | Path, hook: str, sae: str | Path,
                 latents: Sequence[int]) -> list[float]:
    """Job: each latent's mean activation over all of the store's rows of ``hook``."""
    values = latent_values(ctx, Path(store), hook, Path(sae), [int(j) for j in latents])
    return [float(v) for v in values.mean(0)] if values.size else [0.0] * len(latents)


def stored_direction(adapter: ModelAdapter, item: Mapping[str, Any], hook: str) -> torch.Tensor:
    """A ``direction`` item's vector on the model's device; LatentLabError when it is asked
    for at another hook point or its width is not the hook point's."""
    if hook != item["hook"]:
        raise LatentLabError(f"{item['name']} is a direction at {item['hook']}; it has no direction at "
                             f"{hook} (make a delta vector there)")
    check_hooks([hook], list(adapter.hook_sites()), adapter.model_id)
    width = adapter.hook_dims([hook])[hook]
    if len(item["vector"]) != width:
        raise LatentLabError(f"{item['name']} has {len(item['vector'])} values but {hook} of "
                             f"{adapter.model_id} is {width} wide")
    return torch.tensor(item["vector"], dtype=torch.float32, device=adapter.device)


# ---------------------------------------------------------------------- sweeps and injection
def item_direction(adapter: ModelAdapter, item: Mapping[str, Any], hook: str | None = None) -> torch.Tensor:
    """The direction a recipe item adds: a concept vector at ``hook`` (default the item's),
    or a latent's decoder row, which exists at its SAE's hook point only."""
    item = check_item(item)
    hook = hook or item["hook"]
    if item["kind"] == "concept":
        return cached_concept(adapter, hook, item["positive"], item["negative"])
    if item["kind"] == "direction":
        return stored_direction(adapter, item, hook)
    if hook != item["hook"]:
        raise LatentLabError(f"{item['name']} is a latent of an SAE at {item['hook']}; it has no "
                             f"direction at {hook} (sweep its strength only, or use a concept vector)")
    return latent_direction(cached_sae(item["sae"], adapter.device), item["latent"]).to(adapter.device)


def sweep_item(ctx: JobContext, model: str | ModelAdapter, item: Mapping[str, Any], hooks: Sequence[str],
               strengths: Sequence[float], prompts: Sequence[str], words: Sequence[str],
               max_new_tokens: int = 8, seed: int = 0) -> SweepResult:
    """Job: a strength x layer sweep of one recipe item's direction (engine.steering.sweep)."""
    adapter = _ready_model(model, ctx.device)
    if not hooks:
        raise LatentLabError("a sweep needs at least one layer")
    ctx.progress(0, len(hooks), "directions")
    directions = {}
    for hook in hooks:
        ctx.check_cancelled()
        directions[hook] = item_direction(adapter, item, hook)
    tokens = concept_token_ids(adapter, words)
    return sweep(ctx, adapter, list(prompts), directions, list(strengths), tokens, max_new_tokens, seed)


def sweep_trails(ctx: JobContext, model: str | ModelAdapter, item: Mapping[str, Any],
                 strengths: Sequence[float], prompt: str, hook: str, max_new_tokens: int = 8,
                 seed: int = 0) -> list[Trail]:
    """Job: the baseline trail and one trail per strength of a recipe item's direction at its
    hook point, read at ``hook`` (engine.steering.trails.strength_trails): a sweep in the map."""
    adapter = _ready_model(model, ctx.device)
    item = check_item(item)
    ctx.progress(0, 1, "direction")
    direction = item_direction(adapter, item)
    return strength_trails(ctx, adapter, prompt, item["hook"], direction, strengths, hook,
                           max_new_tokens, seed)


def inject_item(ctx: JobContext, model: str | ModelAdapter, item: Mapping[str, Any],
                strengths: Sequence[float], words: Sequence[str], questions: Sequence[str],
                max_new_tokens: int = 40, seed: int = 0, **options: Any) -> InjectionResult:
    """Job: concept injection (engine.steering.injection) of one recipe item's direction at
    its hook point; ``options`` go to ``inject_concept`` (preamble, from_question, sample,
    temperature, samples)."""
    adapter = _ready_model(model, ctx.device)
    item = check_item(item)
    return inject_concept(ctx, adapter, item["hook"], item_direction(adapter, item), list(strengths),
                          list(words), list(questions), max_new_tokens=max_new_tokens, seed=seed, **options)
