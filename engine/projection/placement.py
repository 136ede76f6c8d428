"""Placing new activation rows (a steered run's tokens) into an existing row layout.

A ``Layout`` keeps only its coordinates and row ids, so ``layout_placer`` rebuilds what a
placement needs from the layout's own rows, read again from the store by ``layout.ids``:

- PCA (``rows/pca``): the basis (mean, two components) recomputed by the same exact PCA
  (``engine.projection.pca``) over the same rows in the same order, so a row of the layout
  is placed at its layout coordinates, and any row at ``(row - mean) @ components``.
- UMAP (``rows/umap``): the fitted umap-learn object is not kept (LatentLab runs umap's SGD
  itself), so ``UMAP.transform`` is redone from the layout's rows and coordinates
  (``engine.projection.umap_kernels.umap_transform``): each new row's n_neighbors nearest
  layout rows in the original space (exact float64 distances), umap's bipartite fuzzy graph
  to them (``smooth_knn_dist`` at local connectivity 0), the start at the strength-weighted
  mean of their coordinates (a row equal to a layout row starts on its point), then umap's
  SGD epochs for the new points only (100 for up to 10,000 rows, else 30, or a third of the
  fit's n_epochs when one was given; initial learning rate 1/4; negative samples drawn from
  the layout, seeded by umap's transform_seed 42) against the layout, which never moves;
  that SGD equals umap-learn's ``optimize_layout_euclidean`` bit for bit from the same
  graph and start (umap-learn's own float32 neighbour distances differ in the last bits). n_neighbors, min_dist and
  n_epochs are the layout's own (its provenance), else UMAP's defaults. The rows of one call
  are placed together (as ``transform`` takes a batch), so a run's placement is repeatable.
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
from engine.projection.numba_cache import configure_numba_cache
from engine.projection.pca import mean_cov, project_onto, top_components
from engine.projection.umap_kernels import umap_transform
from engine.projection.umap_warm import await_warming
from engine.store.activations import ActivationStore

PLACE_NEIGHBORS = 15  # n_neighbors of a UMAP layout without provenance (UMAP's default)
MIN_DIST = 0.1  # min_dist of a UMAP layout without provenance (UMAP's default)
CANDIDATES = 8  # extra float32 candidates re-ranked by exact float64 distances
SEARCH_ROWS = 64  # new rows per distance GEMM (64 x 50,000 float32: 13 MB)
READ_BYTES = 64 << 20  # float32 rows read from a store at a time
PLACERS_KEPT = 2  # placers kept per process (a slider move re-uses the layout's; a UMAP one holds its rows)


class Placer(NamedTuple):
    """What places new rows into one layout: a PCA basis, or the layout's rows and UMAP
    settings for umap's ``transform``."""

    name: str  # the layout's name ("rows/pca", "rows/umap")
    xy: np.ndarray  # (n, 2) the layout's coordinates
    mean: np.ndarray | None = None  # (d,) float64 (PCA)
    components: np.ndarray | None = None  # (d, 2) float64 (PCA)
    rows: np.ndarray | None = None  # (n, d) float32 the layout's rows (UMAP)
    n_neighbors: int = PLACE_NEIGHBORS  # the UMAP layout's settings
    min_dist: float = MIN_DIST
    n_epochs: int | None = None


def make_placer(layout: Layout, rows: np.ndarray) -> Placer:
    """A placer for ``layout`` from its rows (n, d) float32, in the order of ``layout.ids``."""
    rows = np.asarray(rows, np.float32)
    if len(rows) != len(layout.xy):
        raise LatentLabError(f"layout {layout.name} has {len(layout.xy)} points but {len(rows)} rows were given")
    if layout.name.endswith("/pca"):
        mean, cov = mean_cov(rows)
        return Placer(layout.name, layout.xy, mean, top_components(cov, 2))
    params = (layout.provenance or {}).get("params") or {}
    n_neighbors = int(params.get("n_neighbors") or PLACE_NEIGHBORS)
    min_dist = params.get("min_dist")
    return Placer(layout.name, np.ascontiguousarray(layout.xy, np.float32), rows=rows,
                  n_neighbors=n_neighbors, min_dist=MIN_DIST if min_dist is None else float(min_dist),
                  n_epochs=None if params.get("n_epochs") is None else int(params["n_epochs"]))


def place_in_layout(placer: Placer, rows: np.ndarray) -> np.ndarray:
    """(m, 2) float32 coordinates of new rows (m, d) in the placer's layout (module docstring)."""
    rows = np.asarray(rows, np.float32).reshape(len(rows), -1)
    if placer.components is not None:
        if rows.shape[1] != len(placer.mean):
            raise LatentLabError(f"rows of width {rows.shape[1]} cannot be placed in {placer.name} "
                                 f"of width {len(placer.mean)}")
        return project_onto(rows, placer.mean, placer.components)
    return umap_place(placer.rows, placer.xy, rows, placer.n_neighbors, placer.min_dist, placer.n_epochs)


def umap_place(ref: np.ndarray, xy: np.ndarray, rows: np.ndarray, n_neighbors: int = PLACE_NEIGHBORS,
               min_dist: float = MIN_DIST, n_epochs: int | None = None) -> np.ndarray:
    """umap's ``transform`` of ``rows`` (m, d) into the UMAP layout ``xy`` (n, 2) of ``ref``
    (n, d), fitted with ``n_neighbors``, ``min_dist``, ``n_epochs`` (module docstring); rows
    that are not finite are not placed (NaN)."""
    if ref.shape[1] != rows.shape[1]:
        raise LatentLabError(f"rows of width {rows.shape[1]} cannot be placed among layout rows "
                             f"of width {ref.shape[1]}")
    out = np.full((len(rows), 2), np.nan, np.float32)
    finite = np.isfinite(rows).all(1)
    if not len(ref) or not finite.any():
        return out
    k = n_neighbors if len(ref) > n_neighbors else len(ref) - 1 if len(ref) > 1 else 1  # as UMAP.fit
    new = rows[finite]
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    idx, dist = np.empty((len(new), k), np.int64), np.empty((len(new), k))
    for lo in range(0, len(new), SEARCH_ROWS):
        idx[lo:lo + SEARCH_ROWS], dist[lo:lo + SEARCH_ROWS] = _nearest(ref, ref_sq, new[lo:lo + SEARCH_ROWS], k)
    out[finite] = umap_transform(idx, dist, xy, min_dist, n_epochs)
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
    if placer.rows is not None:  # umap's kernels: from the persistent cache, not compiled twice
        configure_numba_cache()
        await_warming(ctx)
    out = []
    for rows in runs:
        ctx.check_cancelled()
        out.append(place_in_layout(placer, rows))
    return out
