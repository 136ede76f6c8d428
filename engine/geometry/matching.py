"""Unit matching between two representations of the same inputs (Li et al. 2016,
"Convergent Learning: Do different neural networks learn the same representations?"):
one-to-one (Hungarian matching on Pearson correlation, and the semi-matching "best
partner" of each unit), one-to-many (a Lasso from all units of A to each unit of B),
many-to-many (spectral clustering of the units of both), and SAE latent matching by
decoder cosine.

Shapes: x (n, d1) and y (n, d2) hold row-aligned activations (row i of both comes from
the same token or image); SAE decoders W_dec (d_sae, d_in)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_array
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from engine.errors import LatentLabError
from engine.geometry.measures import sample_ids
from engine.geometry.streams import open_aligned, parse_spec
from engine.jobs import JobContext
from engine.store.activations import ActivationStore

METHODS = ("hungarian", "sparse", "clusters", "sae")
EXACT_LIMIT = 4096  # above this many latents on a side, match_saes uses the sparse graph
HOLDOUT = 0.2  # sparse_prediction scores R^2 on the last fifth of the rows


class NeuronMatch(NamedTuple):
    """One-to-one matching of units by correlation, and each A unit's best partner."""

    a_units: np.ndarray  # (m,) int64, m = min(d1, d2), ascending
    b_units: np.ndarray  # (m,) int64, the Hungarian partner of each
    corr: np.ndarray  # (m,) float32 correlation of each matched pair
    corr_matrix: np.ndarray  # (d1, d2) float32 Pearson correlation, 0 for constant units
    best_corr: np.ndarray  # (d1,) float32 best correlation of each unit of A (semi-matching)
    best_b: np.ndarray  # (d1,) int64 the unit of B reaching it


class SparsePrediction(NamedTuple):
    """Lasso weights from A's units to each unit of B and how well they predict it."""

    coef: np.ndarray  # (d2, d1) float32 Lasso weights on standardised units
    r2: np.ndarray  # (d2,) float32 held-out R^2 per unit of B (0 for a constant unit)
    n_nonzero: np.ndarray  # (d2,) int64 units of A used per unit of B


class UnitClusters(NamedTuple):
    """Clusters of the units of both models, and how mixed each cluster is."""

    labels_a: np.ndarray  # (d1,) int64 cluster of each unit of A
    labels_b: np.ndarray  # (d2,) int64
    mixing: np.ndarray  # (n_clusters,) float64 share of each cluster's units from A


class SAEMatch(NamedTuple):
    """SAE latents matched by decoder cosine: best partners and a one-to-one matching."""

    best_cos_a: np.ndarray  # (d_sae_a,) float32 best decoder cosine to any latent of B
    best_b: np.ndarray  # (d_sae_a,) int64
    hungarian_a: np.ndarray  # (m,) int64 ascending
    hungarian_b: np.ndarray  # (m,) int64
    hungarian_cos: np.ndarray  # (m,) float32
    share_matched: float  # share of A's latents whose Hungarian partner has cos >= threshold
    share_best: float  # share of A's latents whose best match has cos >= threshold
    exact: bool = True  # False: matched on the sparsified top-k graph (large SAEs)


# ---------------------------------------------------------------- correlation
def _standardise(x: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit variance (float64); constant columns become 0."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    xc = x - mean
    std = np.sqrt((xc * xc).mean(0))
    const = std <= 1e-7 * np.abs(mean)
    return xc / np.where(const, np.inf, std)


def correlation_matrix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation (d1, d2) float64 of every unit of ``x`` with every unit of
    ``y``; a constant unit correlates 0 with everything (never NaN)."""
    _check_rows(x, y)
    corr = _standardise(x).T @ _standardise(y) / len(x)
    return np.clip(corr, -1.0, 1.0)


def _check_rows(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise LatentLabError(f"activations must be (rows, units) arrays, got {x.shape} and {y.shape}")
    if len(x) != len(y):
        raise LatentLabError(f"activations are not row-aligned: {len(x)} rows against {len(y)}")
    if len(x) < 2:
        raise LatentLabError(f"matching needs at least 2 rows, got {len(x)}")


def match_neurons(x: np.ndarray, y: np.ndarray) -> NeuronMatch:
    """One-to-one unit matching maximising the total correlation (Hungarian algorithm),
    plus each unit of A's best partner in B (semi-matching)."""
    corr = correlation_matrix(x, y)  # (d1, d2)
    rows, cols = linear_sum_assignment(corr, maximize=True)
    best_b = corr.argmax(1)
    return NeuronMatch(rows.astype(np.int64), cols.astype(np.int64),
                       corr[rows, cols].astype(np.float32), corr.astype(np.float32),
                       corr[np.arange(len(corr)), best_b].astype(np.float32), best_b.astype(np.int64))


# ---------------------------------------------------------------- one-to-many
def _split(n: int) -> int:
    """First held-out row: the last ``HOLDOUT`` share of the rows (at least one row each)."""
    return min(n - 1, max(1, int(round(n * (1 - HOLDOUT)))))


def _refit_support(xs: np.ndarray, ys: np.ndarray, coef: np.ndarray, k: int) -> np.ndarray:
    """Keep each target's ``k`` largest |weights| and refit them by least squares."""
    out = np.zeros_like(coef)
    for j, row in enumerate(coef):
        support = np.flatnonzero(row)
        if len(support) > k:
            support = support[np.argsort(-np.abs(row[support]), kind="stable")[:k]]
        if len(support):
            out[j, support] = np.linalg.lstsq(xs[:, support], ys[:, j], rcond=None)[0]
    return out


def _r2(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Held-out R^2 per column; 0 where the held-out truth is constant."""
    sst = ((truth - truth.mean(0)) ** 2).sum(0)
    sse = ((truth - pred) ** 2).sum(0)
    return np.where(sst > 0, 1 - sse / np.where(sst > 0, sst, 1), 0.0)


def sparse_prediction(x: np.ndarray, y: np.ndarray, alpha: float = 0.01,
                      max_units: int | None = None) -> SparsePrediction:
    """One-to-many mapping: a Lasso (sklearn, strength ``alpha``) from all standardised
    units of A to each standardised unit of B, fitted on the first 80% of the rows and
    scored by R^2 on the last 20%. ``max_units`` keeps at most that many units of A per
    unit of B (the largest weights, refitted by least squares)."""
    from sklearn.linear_model import Lasso

    _check_rows(x, y)
    cut = _split(len(x))
    xs, ys = _standardise(x[:cut]), _standardise(y[:cut])
    # precompute: one Gram matrix for all targets (20x faster than plain coordinate descent)
    model = Lasso(alpha=alpha, fit_intercept=False, max_iter=5000, tol=1e-5, precompute=True)
    coef = np.atleast_2d(model.fit(xs, ys).coef_)  # (d2, d1)
    if max_units is not None:
        coef = _refit_support(xs, ys, coef, int(max_units))
    xt, yt = _held_out(x, cut), _held_out(y, cut)
    return SparsePrediction(coef.astype(np.float32), _r2(xt @ coef.T, yt).astype(np.float32),
                            (coef != 0).sum(1).astype(np.int64))


def _held_out(a: np.ndarray, cut: int) -> np.ndarray:
    """Rows ``cut:`` standardised with the training rows' mean and spread."""
    train = np.asarray(a[:cut], np.float64)
    mean, std = train.mean(0), train.std(0)
    const = std <= 1e-7 * np.abs(mean)
    return (np.asarray(a[cut:], np.float64) - mean) / np.where(const, np.inf, std)


# ---------------------------------------------------------------- many-to-many
def unit_clusters(x: np.ndarray, y: np.ndarray, n_clusters: int, seed: int = 0) -> UnitClusters:
    """Many-to-many mapping: spectral clustering of all d1 + d2 units on their absolute
    correlation; ``mixing`` near the share of A's units means a cluster spans both."""
    from sklearn.cluster import SpectralClustering

    _check_rows(x, y)
    d1, d2 = x.shape[1], y.shape[1]
    if not 1 <= n_clusters <= d1 + d2:
        raise LatentLabError(f"n_clusters {n_clusters} must lie between 1 and {d1 + d2} (the units)")
    both = np.concatenate([_standardise(x), _standardise(y)], axis=1)
    affinity = np.abs(both.T @ both / len(x))  # (d1 + d2, d1 + d2)
    np.fill_diagonal(affinity, 1.0)
    affinity += 1e-6  # keeps constant units (no correlation) in one connected graph
    labels = SpectralClustering(n_clusters, affinity="precomputed", random_state=seed,
                                assign_labels="cluster_qr").fit_predict(affinity).astype(np.int64)
    counts = np.bincount(labels, minlength=n_clusters)
    from_a = np.bincount(labels[:d1], minlength=n_clusters)
    mixing = np.divide(from_a, counts, out=np.full(n_clusters, np.nan), where=counts > 0)
    return UnitClusters(labels[:d1], labels[d1:], mixing)


# ---------------------------------------------------------------- SAE latents
def _decoder(sae: Any) -> torch.Tensor:
    """Unit-norm decoder rows (d_sae, d_in) float32 of an SAE, SAE folder or W_dec array."""
    if isinstance(sae, (str, os.PathLike)):
        from engine.sae.io import load_sae
        sae = load_sae(Path(sae))
    w = getattr(sae, "W_dec", sae)
    w = w.detach().cpu().float() if isinstance(w, torch.Tensor) else \
        torch.from_numpy(np.asarray(w, np.float32))
    if w.ndim != 2:
        raise LatentLabError(f"an SAE decoder must be (d_sae, d_in), got shape {tuple(w.shape)}")
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


class _Edges(NamedTuple):
    rows: np.ndarray  # (e,) int64 latent of A
    cols: np.ndarray  # (e,) int64 latent of B
    cos: np.ndarray  # (e,) float64 decoder cosine


def _blocks(a: torch.Tensor, b: torch.Tensor, device: torch.device, block: int = 2048):
    """(start, cosines (rows, d_sae_b)) for consecutive blocks of A's rows, computed on
    ``device``."""
    a, b = a.to(device), b.to(device)
    for start in range(0, len(a), block):
        yield start, a[start:start + block] @ b.T


Pairs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # rows, cols, best cos, best partner


def _exact(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> Pairs:
    """Hungarian matching on the full cosine matrix, and each A latent's best partner."""
    cos = torch.cat([c.cpu() for _, c in _blocks(a, b, device)]).numpy()  # (d_sae_a, d_sae_b)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    best = cos.argmax(1)
    return rows, cols, cos[np.arange(len(cos)), best], best


def _unique(edges: _Edges, n_b: int) -> _Edges:
    """The edges without repeats."""
    keys, first = np.unique(edges.rows * n_b + edges.cols, return_index=True)
    return _Edges(keys // n_b, keys % n_b, edges.cos[first])


def _top_edges(a: torch.Tensor, b: torch.Tensor, k: int, device: torch.device) -> _Edges:
    """In one blocked pass over the cosines: each A latent's ``k`` best partners in B and
    each B latent's ``k`` best in A (a running top-k over the blocks)."""
    k_a, k_b = min(k, len(b)), min(k, len(a))
    rows, cols, vals = [], [], []
    col_val, col_idx = torch.full((0, len(b)), -2.0), torch.zeros((0, len(b)), dtype=torch.long)
    for start, cos in _blocks(a, b, device):
        val, idx = (t.cpu() for t in cos.topk(k_a, dim=1))
        rows.append(torch.arange(start, start + len(cos)).repeat_interleave(k_a))
        cols.append(idx.reshape(-1))
        vals.append(val.reshape(-1))
        val, idx = (t.cpu() for t in cos.topk(min(k_b, len(cos)), dim=0))
        merged_val, merged_idx = torch.cat([col_val, val]), torch.cat([col_idx, idx + start])
        keep = merged_val.topk(min(k_b, len(merged_val)), dim=0).indices
        col_val, col_idx = merged_val.gather(0, keep), merged_idx.gather(0, keep)
    rows.append(col_idx.reshape(-1))
    cols.append(torch.arange(len(b)).repeat(len(col_idx)))
    vals.append(col_val.reshape(-1))
    edges = _Edges(*(torch.cat(t).numpy() for t in (rows, cols, vals)))
    return _Edges(edges.rows.astype(np.int64), edges.cols.astype(np.int64),
                  edges.cos.astype(np.float64))


def _greedy_completion(a: torch.Tensor, b: torch.Tensor, edges: _Edges) -> _Edges:
    """A full matching (size min(d_a, d_b)): the candidate edges taken greedily by falling
    cosine, then leftover latents paired in index order. Its edges guarantee that the
    sparse graph holds a full matching."""
    used_a, used_b = np.zeros(len(a), bool), np.zeros(len(b), bool)
    picked = []
    for e in np.argsort(-edges.cos, kind="stable"):
        i, j = edges.rows[e], edges.cols[e]
        if not used_a[i] and not used_b[j]:
            used_a[i] = used_b[j] = True
            picked.append(e)
    free_a, free_b = np.flatnonzero(~used_a), np.flatnonzero(~used_b)
    m = min(len(free_a), len(free_b))
    free_a, free_b = free_a[:m], free_b[:m]
    extra = (a[free_a] * b[free_b]).sum(1).numpy().astype(np.float64)
    picked = np.asarray(picked, np.int64)
    return _Edges(np.concatenate([edges.rows[picked], free_a]),
                  np.concatenate([edges.cols[picked], free_b]),
                  np.concatenate([edges.cos[picked], extra]))


def _sparse(a: torch.Tensor, b: torch.Tensor, k: int, device: torch.device) -> Pairs:
    """Maximum-cosine full matching restricted to the top-``k`` graph (plus a greedy
    matching's edges), solved exactly on that graph by LAPJVsp; and each A latent's best
    cosine (its first top-k edge)."""
    top = _unique(_top_edges(a, b, k, device), len(b))
    extra = _greedy_completion(a, b, top)
    edges = _unique(_Edges(*(np.concatenate(p) for p in zip(top, extra, strict=True))), len(b))
    graph = coo_array((2.0 - edges.cos, (edges.rows, edges.cols)),  # weights in [1, 3]
                      shape=(len(a), len(b))).tocsr()
    rows, cols = min_weight_full_bipartite_matching(graph)
    order = np.lexsort((-top.cos, top.rows))  # by A latent, best edge first
    first = order[np.searchsorted(top.rows[order], np.arange(len(a)))]
    return rows, cols, top.cos[first], top.cols[first]


def match_saes(sae_a: Any, sae_b: Any, threshold: float = 0.7, exact_limit: int = EXACT_LIMIT,
               top_k: int = 16, device: torch.device | str | None = None) -> SAEMatch:
    """Match SAE latents by the cosine of their unit-normalised decoder rows: each latent
    of A's best partner in B, and a one-to-one matching maximising the total cosine.

    Up to ``exact_limit`` latents a side the matching is exact (Hungarian). Above it the
    full matrix (16k x 16k is 1 GB and slow to assign) is sparsified to each latent's
    ``top_k`` partners in both directions plus a greedy full matching, and the best full
    matching on that graph is found exactly (scipy's LAPJVsp); it can only miss pairs
    outside every top-k list (measured: within 1e-4 of the exact total at 600-4096 latents;
    16k x 16k at d_in 576 takes about 20 s and 0.8 GB on 2 CPU cores). The cosine blocks
    are computed on ``device`` (default CPU), the assignment on the CPU. ``sae_a`` and
    ``sae_b``: SAEs, SAE folders or W_dec arrays."""
    a, b = _decoder(sae_a), _decoder(sae_b)
    if a.shape[1] != b.shape[1]:
        raise LatentLabError(f"SAE decoders differ in d_in ({a.shape[1]} and {b.shape[1]}); "
                             "only SAEs of the same activation space can be matched")
    exact = max(len(a), len(b)) <= exact_limit
    device = torch.device(device or "cpu")
    rows, cols, best_cos, best_b = _exact(a, b, device) if exact else _sparse(a, b, top_k, device)
    rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    cos = (a[rows] * b[cols]).sum(1).numpy()  # (m,)
    best_cos = best_cos.astype(np.float32)
    return SAEMatch(best_cos, best_b.astype(np.int64), rows, cols, cos,
                    float((cos >= threshold).sum() / len(a)), float((best_cos >= threshold).mean()),
                    exact)


# ---------------------------------------------------------------- the job
def _hook_of(store: ActivationStore, hook: str | None) -> str:
    """The named hook (checked) or the store's only one."""
    if hook is not None:
        store.dim(hook)  # StoreError naming the file and its hooks when unknown
        return hook
    if len(store.hooks) != 1:
        raise LatentLabError(f"{store.path} holds hooks {list(store.hooks)}; name one as "
                             f"{store.path}:HOOK")
    return store.hooks[0]


def load_aligned(ctx: JobContext, a: str, b: str, max_rows: int | None = 20000,
                 seed: int = 0, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row-aligned float32 activations (n, d1) and (n, d2) of two ``STORE.h5[:HOOK]``
    specs, ``max_rows`` of them (of ``rows`` when given) drawn at random, the same rows
    from both."""
    (pa, ha), (pb, hb) = parse_spec(a), parse_spec(b)
    with open_aligned(pa, pb) as (sa, sb):  # LatentLabError naming both unless row-aligned
        ha, hb = _hook_of(sa, ha), _hook_of(sb, hb)
        idx = sample_ids(sa.n_rows, max_rows, seed, rows)
        out = []
        for i, (store, hook) in enumerate(((sa, ha), (sb, hb))):
            ctx.check_cancelled()
            ctx.progress(i, 3, f"reading {store.path.name}:{hook}")
            rows = store.acts(hook) if idx is None else store.rows(hook, idx)
            out.append(rows.astype(np.float32, copy=False))
    return out[0], out[1]


def match(ctx: JobContext, a: str, b: str, method: str = "hungarian",
          max_rows: int | None = 20000, seed: int = 0, alpha: float = 0.01,
          max_units: int | None = None, n_clusters: int = 8, threshold: float = 0.7,
          rows: np.ndarray | None = None) -> NeuronMatch | SparsePrediction | UnitClusters | SAEMatch:
    """Job: match units of two row-aligned store hooks (``hungarian``, ``sparse``,
    ``clusters``; on ``rows`` only when given) or the latents of two SAE folders (``sae``)."""
    if method not in METHODS:
        raise LatentLabError(f"matching method {method!r} is not one of {', '.join(METHODS)}")
    if method == "sae":
        ctx.progress(0, 1, "matching SAE decoders")
        result: Any = match_saes(a, b, threshold, device=ctx.device)
        ctx.progress(1, 1, "done")
        return result
    x, y = load_aligned(ctx, a, b, max_rows, seed, rows)
    ctx.check_cancelled()
    ctx.progress(2, 3, f"{method} on {len(x)} rows")
    if method == "hungarian":
        result = match_neurons(x, y)
    elif method == "sparse":
        result = sparse_prediction(x, y, alpha, max_units)
    else:
        result = unit_clusters(x, y, n_clusters, seed)
    ctx.progress(3, 3, "done")
    return result
