"""Feature statistics in one pass over a source: the model runs once over the tokens,
truncated after the SAE's hook point (the capture's forward, ``engine.capture``), and each
batch's rows are encoded and folded into the same accumulators the store path uses
(``engine.features.running``), so the statistics equal those of capture-then-feature_stats
on the same tokens. The pass still writes a store: tokens, samples, positions, labels and
documents (the browser's contexts) and the activation rows unless told not to; the
statistics with the sparse codes of every row go to their own file beside it
(``engine.features.stats.stats_path``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from engine.capture import (
    CapturePlan,
    check_capture_args,
    no_empty_store,
    open_capture_store,
    plan_capture,
    run_capture,
)
from engine.errors import StoreError
from engine.features.running import RunningStats
from engine.features.stats import (
    FeatureStatsResult,
    check_sae,
    check_stats_id,
    new_running,
    row_labels,
    stats_target,
    write_feature_stats,
)
from engine.jobs import JobContext
from engine.models.base import ModelAdapter
from engine.sae.base import SparseAutoencoder
from engine.sources import Source


def _first_label(plan: CapturePlan) -> tuple[str | None, int]:
    """The label field the store path would count (the store sorts its label names) and
    how many classes the source names for it up front."""
    names = sorted(plan.source.label_names)
    if not names:
        return None, 0
    declared = (plan.meta.params.get("label_classes") or {}).get(names[0], [])
    return names[0], len(declared)


def _consumer(run: RunningStats, sae: SparseAutoencoder, hook: str, dtype: str,
              label: str | None):
    """The per-batch work: round the rows as the store holds them (so later re-encodings
    of the store agree), encode them and fold the codes in."""
    as_stored = getattr(torch, dtype)
    device = sae.W_dec.device

    @torch.inference_mode()
    def consume(acts: dict[str, torch.Tensor], first_row: int, labels: dict[str, np.ndarray]) -> None:
        x = acts[hook].to(device, as_stored).float()
        lab = None if label is None else torch.from_numpy(labels[label]).to(device, torch.int64)
        run.encode_and_add(sae, x, lab)
    return consume


def feature_pass(ctx: JobContext, model: str | ModelAdapter, source: str | Source,
                 sae: SparseAutoencoder, hook: str, sae_id: str, out: str | os.PathLike,
                 max_tokens: int | None = None, batch_size: int = 8, ctx_len: int = 128,
                 dtype: str = "float16", top_n: int = 32, n_quantiles: int = 11,
                 write_acts: bool = True, logits: bool = True) -> FeatureStatsResult:
    """Job: run ``model`` over ``source`` (up to ``max_tokens`` rows, ``batch_size`` windows
    of ``ctx_len`` a batch) once, and write the new store ``out`` holding its rows
    (activations of ``hook`` too when ``write_acts``) and, beside it, the statistics of
    ``sae`` (``stats_path``; ``find_stats(store, sae_id)`` finds them), with logit effects
    when ``logits`` and the model has an unembedding (decoder neighbours and logit effects
    come from the cache of weight-only tables when it holds them for these weights). A
    cancelled or failed pass leaves the store with its committed rows and no statistics.
    The SAE is moved to ``ctx.device``."""
    t0 = time.perf_counter()
    out = Path(out)
    check_stats_id(sae_id)
    check_capture_args(max_tokens, batch_size, ctx_len)
    if out.exists():
        raise StoreError(f"{out}: already exists; choose another --out, or compute statistics "
                         f"of the rows it holds with feature-stats --store {out}")
    plan = plan_capture(ctx, model, source, [hook], ctx_len, dtype, stored=[hook] if write_acts else [])
    sae = sae.to(ctx.device).eval()
    width = plan.meta.dims[hook] if write_acts else plan.adapter.hook_dims([hook])[hook]
    check_sae(sae, width, hook, plan.adapter.model_id, top_n)
    label, n_declared = _first_label(plan)
    run = new_running(sae, top_n, n_declared, count_labels=label is not None)
    with no_empty_store(out, plan.source), open_capture_store(out, plan.meta, plan.source, resume=False) as store:
        started = time.perf_counter()
        run_capture(ctx, plan, store, [hook], batch_size, max_tokens,
                    consume=_consumer(run, sae, hook, dtype, label))
        pass_seconds = time.perf_counter() - started
        labels = row_labels(store, sae.d_sae)
        tokens = store.index("tokens")
        target = stats_target(store, sae_id, sae)
    cached = write_feature_stats(ctx, target, run, sae, hook, sae_id, top_n, n_quantiles, tokens,
                                 labels, plan.adapter if logits else None)
    return FeatureStatsResult(str(out), sae_id, str(target.path), run.n, sae.d_sae,
                              time.perf_counter() - t0, pass_seconds, cached)

