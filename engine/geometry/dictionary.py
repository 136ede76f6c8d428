"""What SAE dictionary matching shows beside a matched pair: one latent of an SAE over a
store, with its top activating contexts shaded by its activation. The contexts come from
the SAE's feature statistics over the store, which are computed first (and written beside
the store, as ``feature-stats`` writes them) when the store has none of these weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from engine.errors import LatentLabError
from engine.features.encode import Context, shaded_contexts
from engine.features.stats import find_stats, load_feature_stats, sae_feature_stats
from engine.jobs import JobContext
from engine.models.base import weight_fingerprint
from engine.models.tokens import Vocab, load_vocab
from engine.sae.io import load_sae
from engine.store.activations import ActivationStore


class LatentContexts(NamedTuple):
    """One latent of an SAE over a store: how often it fires and where most strongly."""

    sae_id: str  # the statistics' id (the SAE folder's name)
    hook: str
    latent: int
    density: float  # share of the store's rows where it fires
    max_value: float
    contexts: list[Context]  # strongest first
    vocab: Vocab | None  # the store's model's tokens (None for image models)
    computed: bool  # the statistics were computed for this request


def sae_hook(store: ActivationStore, hook_name: str, d_in: int, where: str) -> str:
    """The store's hook point an SAE reads: the one it was trained on when the store has
    it, else the only one of its width; LatentLabError naming both otherwise."""
    if hook_name in store.hooks and store.dim(hook_name) == d_in:
        return hook_name
    fits = [h for h in store.hooks if store.dim(h) == d_in]
    if len(fits) == 1:
        return fits[0]
    raise LatentLabError(f"{where} reads {d_in}-wide rows{f' at {hook_name}' if hook_name else ''}; "
                         f"{store.path.name} has {'no' if not fits else 'several'} such hook points "
                         f"({', '.join(f'{h} ({store.dim(h)})' for h in store.hooks)})")


def latent_contexts(ctx: JobContext, store: str | os.PathLike, sae: str | os.PathLike, latent: int,
                    n: int = 8) -> LatentContexts:
    """Job: ``latent`` of the SAE folder ``sae`` over ``store``: density, maximum and its
    ``n`` top contexts with its activation on every token, from the statistics of these
    weights over the store (computed first when there are none)."""
    sae_path, store_path = Path(sae), Path(store)
    model = load_sae(sae_path)
    sae_id, fingerprint = sae_path.name, weight_fingerprint(model)
    if not 0 <= latent < model.cfg.d_sae:
        raise LatentLabError(f"latent {latent} is outside {sae_id}'s {model.cfg.d_sae} latents")
    with ActivationStore.open(store_path) as s:
        hook = sae_hook(s, model.cfg.hook_name, model.cfg.d_in, sae_id)
        found = find_stats(s, sae_id, fingerprint) is not None
        model_id = s.meta.model_id
    if not found:
        ctx.progress(0, 0, f"feature statistics of {sae_id} over {store_path.name}")
        sae_feature_stats(ctx, store_path, sae_path, hook, sae_id)
    with ActivationStore.open(store_path) as s:
        stats = load_feature_stats(s, sae_id, fingerprint)
    ctx.progress(0, 0, f"contexts of latent {latent}")
    _, contexts = shaded_contexts(ctx, store_path, hook, sae_path, latent, stats.top_rows[latent],
                                  stats.top_values[latent], n=n, stats_id=sae_id)
    return LatentContexts(sae_id, hook, latent, float(stats.density[latent]), float(stats.max[latent]),
                          contexts, load_vocab(model_id), not found)
