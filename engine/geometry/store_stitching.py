"""Stitching from stored rows: any two row-aligned stores (e.g. two language models over
the same text, or one model's store at two layers). An affine map from A's rows at
``hook_a`` to B's rows at ``hook_b`` is fitted by ridge least squares on the rows of the
training documents (``stitching.Moments``), and judged on the held-out documents two ways:

- reconstruction: the share of the variance of B's held-out rows that the mapped A rows
  explain (R^2; 1 = B's rows exactly, 0 = no better than B's mean row);
- downstream, when B's store comes from a causal LM that loads here with the store's
  weights: B runs on the held-out token windows (rebuilt from the store's tokens) with its
  activations at ``hook_b`` replaced by the mapped A rows, and its next-token loss is set
  beside B's own loss and the loss with B's mean row in their place (mean ablation).
  ``loss_recovered`` = (mean - stitched) / (mean - own): 1 when the stitched B predicts as
  well as B, 0 when A's mapped rows help no more than B's average activation.

No model runs for the fit, and A's model is never needed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from engine.errors import LatentLabError, ModelError
from engine.geometry.stitching import AffineMap, Moments, StitchBatch, apply_map, task_score
from engine.geometry.streams import open_aligned, parse_spec
from engine.hooks import replacing
from engine.jobs import JobContext
from engine.models.base import ModelAdapter, next_token_pairs
from engine.models.registry import cached_model
from engine.store.activations import ActivationStore

HOLDOUT = 0.2  # share of the documents held out for evaluation
BLOCK = 8192  # rows read at a time


class StoreStitchResult(NamedTuple):
    """A map from A's rows to B's, scored on held-out rows and, for a causal LM B, by B's
    next-token loss with the mapped rows in place of its own (nats per predicted token)."""

    a: str  # "STORE.h5:HOOK"
    b: str
    n_train: int  # rows the map was fitted on
    n_eval: int  # held-out rows
    r2_train: float  # share of B's row variance the map explains, training rows
    r2_eval: float  # the same on the held-out rows
    n_tokens: int = 0  # predicted tokens the losses average over (0: no downstream score)
    loss_b: float = math.nan  # B's own next-token loss
    loss_stitched: float = math.nan  # with A's mapped rows at hook_b
    loss_mean: float = math.nan  # with B's mean training row at hook_b
    accuracy_b: float = math.nan  # next-token top-1 accuracy
    accuracy_stitched: float = math.nan
    note: str = ""  # why there is no downstream score, when there is none

    @property
    def loss_recovered(self) -> float:
        """(mean - stitched) / (mean - own): 1 = as good as B's own rows, 0 = as B's mean row."""
        gap = self.loss_mean - self.loss_b
        return (self.loss_mean - self.loss_stitched) / gap if gap > 0 else math.nan


# ---------------------------------------------------------------- rows
def split_rows(samples: np.ndarray, holdout: float = HOLDOUT) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out row ids: the last ``holdout`` share of the documents (in order
    of appearance) are held out, so no held-out token's document was seen in the fit; a
    store of one document holds out its last rows instead."""
    n = len(samples)
    if n < 4:
        raise LatentLabError(f"stitching needs at least 4 rows to fit and to test a map, the stores hold {n}")
    docs = samples[np.sort(np.unique(samples, return_index=True)[1])]
    if len(docs) >= 2:
        held = docs[len(docs) - max(1, int(round(len(docs) * holdout))):]
        test = np.isin(samples, held)
    else:
        test = np.arange(n) >= n - max(1, int(round(n * holdout)))
    return np.flatnonzero(~test), np.flatnonzero(test)


def _blocks(ids: np.ndarray) -> list[np.ndarray]:
    return [ids[i:i + BLOCK] for i in range(0, len(ids), BLOCK)]


def _read(store: ActivationStore, hook: str, ids: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(store.rows(hook, ids).astype(np.float64, copy=False))


def _fit(ctx: JobContext, sa: ActivationStore, ha: str, sb: ActivationStore, hb: str,
         train: np.ndarray, ridge: float) -> tuple[AffineMap, float, torch.Tensor]:
    """The ridge map on the training rows, its training R^2 and B's mean training row."""
    moments = Moments()
    for k, ids in enumerate(_blocks(train)):
        ctx.check_cancelled()
        moments.add(_read(sa, ha, ids), _read(sb, hb, ids))
        ctx.progress(k + 1, len(train) // BLOCK + 1, "fitting the map on stored rows")
    m, r2 = moments.solve(ridge)
    return m, r2, moments.sy / moments.n


def _held_out_r2(ctx: JobContext, sa: ActivationStore, ha: str, sb: ActivationStore, hb: str,
                 test: np.ndarray, m: AffineMap) -> float:
    """1 - SSE / SST of the mapped A rows against B's held-out rows (SST about their mean)."""
    sse, sy, syy, n = 0.0, 0.0, 0.0, 0
    for ids in _blocks(test):
        ctx.check_cancelled()
        y = _read(sb, hb, ids)
        sse += float((apply_map(m, _read(sa, ha, ids)) - y).pow(2).sum())
        sy, syy, n = sy + y.sum(0), syy + float(y.pow(2).sum()), n + len(y)
    sst = syy - float((sy * sy).sum()) / n
    return 1 - sse / sst if sst > 0 else math.nan


# ---------------------------------------------------------------- downstream
def _windows(store: ActivationStore, ids: np.ndarray, span: int, cap: int) -> list[np.ndarray]:
    """The held-out rows as the capture's token windows (consecutive rows of one document
    whose position // span agree), at most ``cap`` rows in all."""
    sample, position = store.index("sample")[ids], store.index("position")[ids]
    key = sample.astype(np.int64) * (1 << 32) + position // span
    cuts = np.flatnonzero((np.diff(key) != 0) | (np.diff(ids) != 1)) + 1
    out, total = [], 0
    for w in np.split(ids, cuts):
        if total + len(w) > cap:
            break
        out.append(w)
        total += len(w)
    return out


def _lm_for(store: ActivationStore, hook: str) -> tuple[ModelAdapter | None, str]:
    """B's model when it scores next tokens here: loads, is a causal LM with the store's
    weights and the hook point; else (None, why not)."""
    model_id = store.meta.model_id
    try:
        adapter = cached_model(model_id)
    except (ModelError, LatentLabError) as exc:
        return None, f"no downstream loss: B's model {model_id} does not load here ({exc})"
    if adapter.kind != "causal-lm" or adapter.pooling:
        return None, f"no downstream loss: B's model {model_id} is a {adapter.kind}, not a language model"
    if adapter.weight_hash() != store.meta.model_hash:
        return None, (f"no downstream loss: {model_id} here has other weights than the ones "
                      f"{store.path.name} was captured from")
    if hook not in adapter.hook_sites():
        return None, f"no downstream loss: {model_id} has no hook point {hook!r}"
    return adapter, ""


def _run_with(adapter: ModelAdapter, hook: str, batch: StitchBatch,
              rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """B's summed loss and hits on ``batch``, with ``rows`` at ``hook``'s kept tokens
    (B's own activations when None)."""
    if rows is None:
        return task_score(adapter, adapter.run(batch.b), batch)
    keep = batch.b.keep

    def put(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(*t.shape[:2], -1).clone()
        if flat.shape[:2] != keep.shape or flat.shape[2] != rows.shape[1]:
            raise LatentLabError(f"{hook} of {adapter.model_id} gives {tuple(t.shape)} per batch; "
                                 f"its stored rows are {rows.shape[1]} wide")
        flat[keep] = rows.to(flat.dtype)
        return flat.reshape(t.shape)

    with replacing(adapter.hook_sites()[hook], put):
        return task_score(adapter, adapter.run(batch.b), batch)


def _downstream(ctx: JobContext, adapter: ModelAdapter, sa: ActivationStore, ha: str,
                sb: ActivationStore, hb: str, test: np.ndarray, m: AffineMap,
                mean: torch.Tensor, max_tokens: int, batch_size: int) -> dict[str, float]:
    """Summed losses and hits of B (own, stitched, mean row) over held-out windows."""
    adapter = adapter.to(ctx.device)
    span = int(sb.meta.params.get("ctx_len", adapter.max_context)) - adapter.n_special
    windows = _windows(sb, test, max(1, span), max_tokens)
    tokens = sb.index("tokens")
    sums = dict.fromkeys(("loss_b", "loss_s", "loss_m", "hit_b", "hit_s", "n"), 0.0)
    for k in range(0, len(windows), batch_size):
        ctx.check_cancelled()
        chunk = windows[k:k + batch_size]
        ids = np.concatenate(chunk)
        mb = adapter.make_batch([tokens[w].tolist() for w in chunk]).to(adapter.device)
        batch = StitchBatch(mb, mb, None)
        mapped = apply_map(m, _read(sa, ha, ids)).to(adapter.device)
        with torch.inference_mode():
            for key, rows in (("b", None), ("s", mapped), ("m", mean.expand(len(ids), -1).to(adapter.device))):
                loss, hits = _run_with(adapter, hb, batch, rows)
                sums[f"loss_{key}"] += float(loss)
                if key != "m":
                    sums[f"hit_{key}"] += int(hits)
        sums["n"] += int(next_token_pairs(mb)[0].sum())
        ctx.progress(min(k + batch_size, len(windows)), len(windows), "running B on the held-out windows")
    return sums


# ---------------------------------------------------------------- the job
def stitch_stores(ctx: JobContext, a: str, b: str, ridge: float = 1e-3, holdout: float = HOLDOUT,
                  max_tokens: int = 4096, batch_size: int = 8, downstream: bool = True) -> StoreStitchResult:
    """Job: fit an affine map from ``a``'s rows to ``b``'s ("STORE.h5:HOOK", row-aligned
    stores: the same tokens row for row) on the training documents and score it on the
    held-out ones: R^2 against B's rows and, when B's store comes from a causal LM that
    loads here (and ``downstream``), B's next-token loss on up to ``max_tokens`` held-out
    tokens with the mapped rows in place (see the module's docstring)."""
    (pa, ha), (pb, hb) = parse_spec(a), parse_spec(b)
    if ha is None or hb is None:
        raise LatentLabError("name the hook points to stitch as STORE.h5:HOOK on both sides")
    with open_aligned(pa, pb) as (sa, sb):  # LatentLabError naming both unless row-aligned
        sa.dim(ha)  # StoreError listing the hooks when unknown
        sb.dim(hb)
        train, test = split_rows(sa.index("sample"), holdout)
        ctx.progress(0, 0, "fitting the map on stored rows")
        m, r2_train, mean = _fit(ctx, sa, ha, sb, hb, train, ridge)
        r2_eval = _held_out_r2(ctx, sa, ha, sb, hb, test, m)
        base = StoreStitchResult(f"{Path(pa).name}:{ha}", f"{Path(pb).name}:{hb}", len(train), len(test),
                                 r2_train, r2_eval)
        if not downstream:
            return base._replace(note="downstream loss not asked for")
        ctx.progress(0, 0, f"loading {sb.meta.model_id}")
        adapter, note = _lm_for(sb, hb)
        if adapter is None:
            return base._replace(note=note)
        s = _downstream(ctx, adapter, sa, ha, sb, hb, test, m, mean, max_tokens, batch_size)
    n = max(1.0, s["n"])
    return base._replace(n_tokens=int(s["n"]), loss_b=s["loss_b"] / n, loss_stitched=s["loss_s"] / n,
                         loss_mean=s["loss_m"] / n, accuracy_b=s["hit_b"] / n, accuracy_stitched=s["hit_s"] / n)
