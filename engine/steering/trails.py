"""Steered runs as trails in the map: a run's activations at one hook point (the prompt's
tokens, then the generated ones), read by one forward pass of the whole run under the same
interventions, so the scatter can place them in its layout; one trail per strength of a
recipe item; and the SAE latents whose activation changed most between two runs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from engine.errors import LatentLabError
from engine.features.encode import cached_sae
from engine.jobs import JobContext
from engine.models.base import ModelAdapter
from engine.steering.steer import AddDirection, Intervention, generate, prompt_inputs, steered

ENCODE_ROWS = 4096  # rows per SAE encode when ranking latent changes
SINK_FACTOR = 10.0  # a baseline row this many times the run's median norm is an attention sink


class Trail(NamedTuple):
    """One run's tokens and their activations at ``hook``: the prompt's document tokens
    (BOS excluded, as a store's rows) followed by the generated ones."""

    which: str  # "baseline" or "steered"
    label: str  # what the legend calls it ("baseline", "steered", "strength 4")
    hook: str
    texts: list[str]  # one per row: the token's text
    n_prompt: int  # the first n_prompt rows are the prompt's tokens
    acts: np.ndarray  # (n, d) float32
    strength: float | None = None  # the varied item's strength (strength trails)


def run_rows(adapter: ModelAdapter, prompt: str, new_tokens: Sequence[int], hook: str,
             interventions: Sequence[Intervention]) -> tuple[np.ndarray, list[str], int]:
    """Activations (n, d) float32 at ``hook`` of the prompt's document tokens and
    ``new_tokens``, from one forward pass under ``interventions`` (a causal model's rows
    equal those of the token-by-token generation), their texts and the prompt's length."""
    doc = list(adapter.tokenize(prompt))
    ids = doc + [int(t) for t in new_tokens]
    with steered(adapter, interventions):
        rows = adapter.forward(adapter.make_batch([ids]), [hook])[hook]
    return rows.float().cpu().numpy(), adapter.decode(ids), len(doc)


def run_trail(adapter: ModelAdapter, prompt: str, new_tokens: Sequence[int], hook: str,
              interventions: Sequence[Intervention], which: str, label: str | None = None,
              strength: float | None = None) -> Trail:
    """A ``Trail`` of one finished run (``run_rows``)."""
    acts, texts, n_prompt = run_rows(adapter, prompt, new_tokens, hook, interventions)
    return Trail(which, label or which, hook, texts, n_prompt, acts, strength)


def strength_trails(ctx: JobContext, adapter: ModelAdapter, prompt: str, steer_hook: str,
                    direction: torch.Tensor, strengths: Sequence[float], hook: str,
                    max_new_tokens: int = 8, seed: int = 0) -> list[Trail]:
    """The baseline trail, then one trail per strength of ``direction`` added at
    ``steer_hook``, each a greedy generation of ``prompt`` read at ``hook``: what a sweep
    draws in the map (a strength of 0 is the plain model)."""
    if not prompt:
        raise LatentLabError("the prompt is empty")
    inputs = prompt_inputs(adapter, prompt)
    runs: list[float | None] = [None, *(float(s) for s in strengths)]
    out = []
    for i, strength in enumerate(runs):
        ctx.check_cancelled()
        label = "baseline" if strength is None else f"strength {strength:g}"
        ctx.progress(i, len(runs), label)
        ivs = [AddDirection(steer_hook, direction, strength)] if strength else []
        with steered(adapter, ivs):
            new = generate(adapter, inputs, max_new_tokens, seed, False, 1.0)
        out.append(run_trail(adapter, prompt, new, hook, ivs, "baseline" if strength is None else "steered",
                             label, strength))
    ctx.progress(len(runs), len(runs), "trails")
    return out


def sink_positions(baseline: np.ndarray, factor: float = SINK_FACTOR) -> np.ndarray:
    """(n,) bool: the baseline run's rows whose L2 norm is above ``factor`` x the run's median
    norm (attention-sink tokens, which a row layout leaves out by the same rule), or not
    finite. Their positions are left out of every run's trail and ranking: steering does
    not move a token's sink role, and one sink row would own every mean."""
    norms = np.linalg.norm(np.asarray(baseline, np.float64), axis=1)
    finite = np.isfinite(norms)
    median = float(np.median(norms[finite])) if finite.any() else 0.0
    return ~finite | (norms > factor * median) if median > 0 else ~finite


def without_sinks(rows: np.ndarray, sinks: np.ndarray) -> np.ndarray:
    """``rows`` without the positions ``sinks`` marks (rows past its end are kept)."""
    keep = np.ones(len(rows), bool)
    n = min(len(rows), len(sinks))
    keep[:n] = ~sinks[:n]
    return rows[keep]


# ---------------------------------------------------------------- changed latents
class LatentChanges(NamedTuple):
    """SAE latents ranked by how much their mean activation over a run changed between the
    baseline and the steered run, largest |change| first."""

    latents: np.ndarray  # (top,) int64
    change: np.ndarray  # (top,) steered mean minus baseline mean
    baseline: np.ndarray  # (top,) mean activation over the baseline run's rows
    steered: np.ndarray  # (top,) mean activation over the steered run's rows


def mean_codes(sae: Any, rows: np.ndarray) -> np.ndarray:
    """Mean SAE code (d_sae,) float64 over ``rows`` (n, d_in), encoded in blocks."""
    total = np.zeros(sae.d_sae)
    if not len(rows):
        return total
    device, dtype = sae.W_enc.device, sae.W_enc.dtype
    with torch.no_grad():
        for lo in range(0, len(rows), ENCODE_ROWS):
            x = torch.as_tensor(np.asarray(rows[lo:lo + ENCODE_ROWS]), device=device, dtype=dtype)
            total += sae.encode(x).double().sum(0).cpu().numpy()
    return total / len(rows)


def latent_changes(sae: Any, baseline: np.ndarray, steered_rows: np.ndarray, top: int = 20) -> LatentChanges:
    """The ``top`` latents whose mean code changed most (|steered - baseline|) between two
    runs' rows (the runs may differ in length once their generated tokens part); ties by
    latent id. Latents that did not change are left out."""
    if baseline.shape[1:] != steered_rows.shape[1:] or baseline.shape[1] != sae.W_enc.shape[0]:
        raise LatentLabError(f"rows of widths {baseline.shape[1]} and {steered_rows.shape[1]} cannot be "
                             f"encoded by an SAE of width {sae.W_enc.shape[0]}")
    base, steer = mean_codes(sae, baseline), mean_codes(sae, steered_rows)
    change = steer - base
    order = np.lexsort((np.arange(len(change)), -np.abs(change)))[:top]
    order = order[change[order] != 0]
    return LatentChanges(order.astype(np.int64), change[order], base[order], steer[order])


def rank_latent_changes(ctx: JobContext, sae_path: str | os.PathLike, baseline: Trail, steered_trail: Trail,
                        top: int = 20) -> LatentChanges:
    """Job: ``latent_changes`` of two trails under the SAE in ``sae_path``, the baseline's
    attention-sink positions (``sink_positions``) left out of both."""
    if baseline.hook != steered_trail.hook:
        raise LatentLabError(f"the runs were read at two hook points ({baseline.hook}, {steered_trail.hook})")
    ctx.progress(0, 1, "encoding the runs")
    sinks = sink_positions(baseline.acts)
    return latent_changes(cached_sae(sae_path, "cpu"), without_sinks(baseline.acts, sinks),
                          without_sinks(steered_trail.acts, sinks), top)
