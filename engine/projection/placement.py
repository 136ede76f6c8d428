"""Placing new activation rows (a steered run's tokens) into an existing row layout.

A ``Layout`` keeps only its coordinates and row ids, so ``layout_placer`` rebuilds what a
placement needs from the layout's own rows, read again from the store by ``layout.ids``:

- PCA (``rows/pca``): the basis (mean, two components) recomputed by the same exact PCA
  (``engine.projection.pca``) over the same rows in the same order, so a row of the layout
  is placed at its layout coordinates, and any row at ``(row - mean) @ components``.
- UMAP (``rows/umap``): the fitted umap-learn object is not kept (LatentLab runs umap's SGD
  itself), so a row is placed by a k-nearest-neighbour weighted mean, as umap-learn's
  ``transform`` initialises a new point: its ``PLACE_NEIGHBORS`` nearest layout rows in the
  original space, weighted by UMAP's membership strengths exp(-(d - d_1) / sigma) with sigma
  chosen so they sum to log2(k) (umap's ``smooth_knn_dist``); the SGD epochs ``transform``
  runs afterwards are left out, so placed points never move the layout. A row at distance 0
  from layout rows gets their coordinates exactly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.lru import LockedLRU
from engine.projection.layout import Layout
from engine.projection.pca import mean_cov, project_onto, top_components
from engine.store.activations import ActivationStore

PLACE_NEIGHBORS = 15  # k of the k-NN placement (UMAP's default n_neighbors)
CANDIDATES = 8  # extra float32 candidates re-ranked by exact float64 distances
SEARCH_ROWS = 64  # new rows per distance GEMM (64 x 50,000 float32: 13 MB)
SIGMA_STEPS = 64  # bisection steps of the membership bandwidth (umap's smooth_knn_dist)
READ_BYTES = 64 << 20  # float32 rows read from a store at a time
PLACERS_KEPT = 2  # placers kept per process (a slider move re-uses the layout's; a UMAP one holds its rows)


class Placer(NamedTuple):
    """What places new rows into one layout: a PCA basis, or the layout's rows for k-NN."""

    name: str  # the layout's name ("rows/pca", "rows/umap")
    xy: np.ndarray  # (n, 2) the layout's coordinates
    mean: np.ndarray | None = None  # (d,) float64 (PCA)
    components: np.ndarray | None = None  # (d, 2) float64 (PCA)
    rows: np.ndarray | None = None  # (n, d) float32 the layout's rows (k-NN)


def make_placer(layout: Layout, rows: np.ndarray) -> Placer:
    """A placer for ``layout`` from its rows (n, d) float32, in the order of ``layout.ids``."""
    rows = np.asarray(rows, np.float32)
    if len(rows) != len(layout.xy):
        raise LatentLabError(f"layout {layout.name} has {len(layout.xy)} points but {len(rows)} rows were given")
    if layout.name.endswith("/pca"):
        mean, cov = mean_cov(rows)
        return Placer(layout.name, layout.xy, mean, top_components(cov, 2))
    return Placer(layout.name, np.asarray(layout.xy, np.float64), rows=rows)


def place_in_layout(placer: Placer, rows: np.ndarray) -> np.ndarray:
    """(m, 2) float32 coordinates of new rows (m, d) in the placer's layout (module docstring)."""
    rows = np.asarray(rows, np.float32).reshape(len(rows), -1)
    if placer.components is not None:
        if rows.shape[1] != len(placer.mean):
            raise LatentLabError(f"rows of width {rows.shape[1]} cannot be placed in {placer.name} "
                                 f"of width {len(placer.mean)}")
        return project_onto(rows, placer.mean, placer.components)
    return knn_place(placer.rows, placer.xy, rows)


def knn_place(ref: np.ndarray, xy: np.ndarray, rows: np.ndarray, k: int = PLACE_NEIGHBORS) -> np.ndarray:
    """UMAP-style k-NN placement of ``rows`` (m, d) among ``ref`` (n, d) laid out at ``xy``."""
    if ref.shape[1] != rows.shape[1]:
        raise LatentLabError(f"rows of width {rows.shape[1]} cannot be placed among layout rows "
                             f"of width {ref.shape[1]}")
    out = np.full((len(rows), 2), np.nan, np.float32)
    if not len(ref):
        return out
    k = min(k, len(ref))
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    for lo in range(0, len(rows), SEARCH_ROWS):
        block = rows[lo:lo + SEARCH_ROWS]
        idx, dist = _nearest(ref, ref_sq, block, k)
        out[lo:lo + len(block)] = _weighted_xy(xy, idx, dist)
    return out


def _nearest(ref: np.ndarray, ref_sq: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest ref rows of each row (m, k) and their exact float64 distances, ascending:
    float32 GEMM distances pick k + CANDIDATES candidates, float64 differences rank them."""
    d2 = ref_sq[None, :] - 2.0 * (rows @ ref.T) + np.einsum("ij,ij->i", rows, rows)[:, None]
    c = min(k + CANDIDATES, len(ref))
    cand = np.argpartition(d2, c - 1, axis=1)[:, :c] if c < len(ref) else np.broadcast_to(
        np.arange(len(ref)), (len(rows), len(ref)))
    diff = ref[cand].astype(np.float64) - rows[:, None, :].astype(np.float64)
    exact = np.sqrt(np.einsum("mcd,mcd->mc", diff, diff))
    order = np.argsort(exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand, order, 1), np.take_along_axis(exact, order, 1)


def membership(dist: np.ndarray) -> np.ndarray:
    """UMAP's membership strengths (m, k) of each row to its k neighbours at ascending
    distances ``dist``: exp(-(d - d_1) / sigma), sigma bisected so each row sums to log2(k)."""
    k = dist.shape[1]
    gap = np.maximum(dist - dist[:, :1], 0.0)
    target = np.log2(k) if k > 1 else 1.0
    lo, hi = np.zeros(len(dist)), np.full(len(dist), np.inf)
    sigma = np.ones(len(dist))
    for _ in range(SIGMA_STEPS):
        total = np.exp(-gap / sigma[:, None]).sum(1)
        big = total > target
        hi = np.where(big, sigma, hi)
        lo = np.where(big, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2.0, (lo + hi) / 2.0)
    return np.exp(-gap / sigma[:, None])


def _weighted_xy(xy: np.ndarray, idx: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Membership-weighted mean of the neighbours' coordinates; exact hits (distance 0) take
    the mean of the coordinates of the rows they equal."""
    w = membership(dist)
    hit = dist[:, 0] == 0.0
    w[hit] = (dist[hit] == 0.0).astype(np.float64)
    return np.einsum("mk,mkj->mj", w, xy[idx]) / w.sum(1, keepdims=True)


# ---------------------------------------------------------------- the job
_placers = LockedLRU(PLACERS_KEPT)


def _layout_key(store_path: Path, hook: str, layout: Layout) -> tuple:
    """What a placer depends on: the store file's state, the hook and the layout's points."""
    st = store_path.stat()
    digest = hashlib.blake2b(np.ascontiguousarray(layout.ids).tobytes(), digest_size=16)
    digest.update(np.ascontiguousarray(layout.xy, np.float32).tobytes())
    return str(store_path.resolve()), st.st_mtime_ns, st.st_size, hook, layout.name, digest.hexdigest()


def _layout_rows(ctx: JobContext, store: ActivationStore, hook: str, ids: np.ndarray) -> np.ndarray:
    """Rows ``ids`` (any order) as float32, streamed in blocks of the store (a sample of more
    than one row per HDF5 chunk touches every chunk anyway; block reads beat fancy indexing)."""
    if ids.size and (ids.min() < 0 or ids.max() >= store.n_rows):
        raise LatentLabError(f"the layout names rows outside the store ({store.n_rows} rows): it is "
                             "from another state of the store; lay it out again")
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    out = np.empty((len(ids), store.dim(hook)), np.float32)
    step = max(1, READ_BYTES // (4 * max(store.dim(hook), 1)))
    for lo in range(0, int(ordered[-1]) + 1 if ids.size else 0, step):
        a, b = np.searchsorted(ordered, lo), np.searchsorted(ordered, lo + step)
        if a < b:
            out[order[a:b]] = store.acts(hook, lo, lo + step)[ordered[a:b] - lo]
        ctx.check_cancelled()
    return out


def layout_placer(ctx: JobContext, store_path: str | os.PathLike, hook: str, layout: Layout) -> Placer:
    """The placer of a row layout of ``store_path`` at ``hook``: its rows read again by
    ``layout.ids`` (kept for the latest few layouts, so moving a slider reads nothing)."""
    if not layout.name.startswith("rows/"):
        raise LatentLabError(f"layout {layout.name} lays out SAE latents, not activation rows: "
                             "only rows can be placed in it")
    path = Path(store_path)
    key = _layout_key(path, hook, layout)
    hit = _placers.get(key)
    if hit is not None:
        return hit
    ctx.progress(0, 2, "reading the layout's rows")
    with ActivationStore.open(path) as store:
        if hook not in store.hooks:
            raise LatentLabError(f"store {path} has no hook point {hook!r}; it has {list(store.hooks)}")
        rows = _layout_rows(ctx, store, hook, np.asarray(layout.ids, np.int64))
    ctx.progress(1, 2, "placement basis")
    placer = make_placer(layout, rows)
    _placers.put(key, placer)
    ctx.progress(2, 2, "placement basis")
    return placer


def place_rows(ctx: JobContext, store_path: str | os.PathLike, hook: str, layout: Layout,
               runs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Job: each run's rows (m_i, d) placed in ``layout`` (a row layout of ``store_path`` at
    ``hook``), as (m_i, 2) float32 coordinates: what the scatter draws as trails."""
    placer = layout_placer(ctx, store_path, hook, layout)
    out = []
    for rows in runs:
        ctx.check_cancelled()
        out.append(place_in_layout(placer, rows))
    return out
