"""The engine's front door: every job a client runs, and the result types it gets back.

``main.py``, the dialogs, the views and the demo pipeline import the engine only through
this module (an import-linter contract holds the views and the shell to it). A job is
``f(ctx, **params)`` (see ``engine.jobs``); the rest are plain readers and data types.
The capability packages behind it (``engine.store``, ``engine.features``, ...) are for
engine code and notebooks that want one family in depth.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine import features, geometry, models, projection, sae, steering, store
from engine.cache import default_workspace
from engine.capture import CaptureResult, capture, capture_distributed
from engine.demo import DemoSpec, Stage, build_demo
from engine.errors import LatentLabError
from engine.features import *  # noqa: F403 (the package's public face, its __all__)
from engine.features import (
    FeatureStats,
    LatentTable,
    latent_table,
    latent_values,
    load_feature_stats,
)
from engine.geometry import *  # noqa: F403
from engine.hooks import check_hooks
from engine.jobs import Cancelled, JobContext, is_quick_read, quick_read, resolve_device, run_cli
from engine.models import *  # noqa: F403
from engine.models import Vocab, cached_model, load_vocab
from engine.models.registry import ModelSpec
from engine.projection import *  # noqa: F403
from engine.provenance import (
    ProvenanceError,
    check_inputs,
    describe_record,
    file_digest,
    input_problems,
    input_record,
    known_record,
    latentlab_version,
    portable_path,
    provenance_record,
    record_json,
    resolve_path,
    sae_identity,
)
from engine.sae import *  # noqa: F403
from engine.sources.text import TEXT_SUFFIXES
from engine.specs import (
    CaptureSpec,
    ConceptSets,
    RecipeItem,
    Spec,
    SpecError,
    SpecFile,
    SteeringRecipe,
    TrainSpec,
)
from engine.steering import *  # noqa: F403
from engine.steering.recipe import SHORT_FORMS, short_form_items
from engine.store import *  # noqa: F403
from engine.store import ActivationStore
from engine.workspace import Workspace


# ---------------------------------------------------------------- stores
class StoreSummary(NamedTuple):
    """What a client needs to know of a store before asking for work on it."""

    path: Path
    n_rows: int
    hooks: tuple[str, ...]
    dims: dict[str, int]
    label_names: tuple[str, ...]
    label_classes: dict[str, list[str]]  # class names per label field, where the capture kept them
    has_tokens: bool
    has_images: bool
    model_id: str


def store_summary(path: str | os.PathLike) -> StoreSummary:
    """Rows, hook points and widths, label fields, token or image rows, and the model of a
    store, read from its metadata and first rows (StoreError names the file otherwise)."""
    with ActivationStore.open(path) as store:
        first = store.index("tokens", 0, 64)
        return StoreSummary(Path(path), store.n_rows, tuple(store.hooks), {h: store.dim(h) for h in store.hooks},
                            tuple(store.label_names), dict(store.meta.params.get("label_classes", {}) or {}),
                            bool(len(first) and (first >= 0).any()), _has_images(store), store.meta.model_id)


def _has_images(store: ActivationStore) -> bool:
    try:
        store.image(0)
    except (KeyError, IndexError, ValueError):
        return False
    return True


@quick_read
def index_values(ctx: JobContext, store_path: str | os.PathLike, field: str, ids: np.ndarray) -> np.ndarray:
    """Job: values of one index column (tokens, position, a label) at the given store rows
    (-1 for ids outside the store)."""
    ctx.check_cancelled()
    with ActivationStore.open(store_path) as store:
        column = store.index(field)
    ids = np.asarray(ids, np.int64)
    out = np.full(len(ids), -1, np.int64)
    ok = (ids >= 0) & (ids < len(column))
    out[ok] = column[ids[ok]]
    return out


# ---------------------------------------------------------------- models
def hook_points(ctx: JobContext, model: str) -> list[str]:
    """Job: the hook points of ``model``, as ``main.py hooks`` lists them; it loads the model,
    which stays in the engine thread's cache for the capture that follows."""
    ctx.progress(0, 0, f"loading {model}")
    return cached_model(model).hook_points()


@quick_read
def vocab(ctx: JobContext, model_id: str) -> Vocab | None:
    """Job: the vocabulary of a store's model (None for image models), off the GUI thread."""
    return load_vocab(model_id)


# ---------------------------------------------------------------- features
class BrowserData(NamedTuple):
    """What the feature browser shows of one SAE's statistics, prepared off the GUI thread."""

    stats: FeatureStats
    vocab: Vocab | None
    table: LatentTable
    search_text: np.ndarray  # (d_sae,) str: lower-case label columns, for the search box


def make_browser_data(stats: FeatureStats, vocab: Vocab | None, ctx: JobContext | None = None) -> BrowserData:
    """The latent table's label columns and search text for every latent of ``stats``."""
    table = latent_table(stats, vocab, ctx)
    text = np.char.lower(np.array([f"{a}\t{b}" for a, b in zip(table.association, table.labels, strict=True)],
                                  dtype=str))
    return BrowserData(stats, vocab, table, text)


def load_browser(ctx: JobContext, store_path: str | os.PathLike, stats_id: str) -> BrowserData:
    """Job: the statistics ``stats_id`` of the store, with its model's vocabulary, for the browser."""
    with ActivationStore.open(store_path) as store:
        stats = load_feature_stats(store, stats_id)
        model_id = store.meta.model_id
    ctx.progress(0, 0, "loading the vocabulary")
    return make_browser_data(stats, load_vocab(model_id), ctx)


@quick_read
def latent_stats(ctx: JobContext, store_path: str | os.PathLike, sae_id: str) -> dict[str, Any]:
    """Job: density and most promoted tokens of every latent, from the store's statistics."""
    ctx.check_cancelled()
    with ActivationStore.open(store_path) as store:
        stats = load_feature_stats(store, sae_id)
    return {"density": np.asarray(stats.density, np.float64), "logit_top_ids": stats.logit_top_ids}


def focused_values(ctx: JobContext, store_path: str | os.PathLike, hook: str, sae_path: str | os.PathLike,
                   latent: int, rows: np.ndarray | None, stats_id: str | None = None) -> np.ndarray:
    """Job: the activation of one latent on the given store rows (all rows when None), read
    from the statistics' stored codes when they match the SAE, else encoded."""
    values = latent_values(ctx, store_path=Path(store_path), hook=hook, sae_path=Path(sae_path),
                           latents=[int(latent)], rows=rows, stats_id=stats_id)
    return np.asarray(values)[:, 0]


# ---------------------------------------------------------------- geometry
def open_comparison(ctx: JobContext, path: str | os.PathLike) -> geometry.PruningComparison:
    """Job: read a pruning comparison that ``compare-pruned --out`` saved."""
    ctx.progress(0, 0, f"reading {Path(path).name}")
    return geometry.load_comparison(path)


__all__ = [
    *features.__all__, *geometry.__all__, *models.__all__, *projection.__all__, *sae.__all__,
    *steering.__all__, *store.__all__,
    "BrowserData", "Cancelled", "CaptureResult", "DemoSpec", "JobContext", "LatentLabError", "Stage",
    "StoreSummary", "TEXT_SUFFIXES", "Workspace",
    "build_demo", "capture", "capture_distributed", "check_hooks", "default_workspace",
    "focused_values", "hook_points", "index_values", "is_quick_read", "latent_stats", "load_browser", "make_browser_data",
    "open_comparison", "quick_read",
    "resolve_device", "run_cli", "store_summary", "vocab",
    # provenance: input hashes, portable paths, checks (engine.provenance)
    "ProvenanceError", "check_inputs", "describe_record", "file_digest", "input_problems", "input_record",
    "known_record", "latentlab_version", "portable_path", "provenance_record", "record_json", "resolve_path",
    "sae_identity",
    # typed specs (engine.specs, engine.models.registry) and the recipe's short form
    "CaptureSpec", "ConceptSets", "ModelSpec", "RecipeItem", "Spec", "SpecError", "SpecFile",
    "SteeringRecipe", "TrainSpec", "SHORT_FORMS", "short_form_items",
]
