"""2-D layouts of activation rows and SAE latents for the embedding scatter.

``pca_layout`` is an exact PCA from the covariance in float64; ``umap_layout`` is umap-learn's
optimisation run in chunks so the scatter can show it moving; ``project`` is the job the GUI
and CLI run, with an on-disk cache keyed by what the layout was computed from.

Where ``umap_layout`` differs from ``umap.UMAP(random_state=seed).fit``:
- kNN: ``engine.projection.knn``; exact up to 12,000 rows (below 4096 as UMAP's own exact path),
  above (where UMAP runs pynndescent, about a minute of compilation per process) an
  inverted-file search with exact distances, recall >= 0.95 tested.
- init: the first two principal axes of the covariance the kNN uses (estimated from up to
  UMAP_AXES_ROWS rows), or ``init``, then UMAP's own scaling (largest |coord| 10, noise
  1e-4, per axis min-max to [0, 10]); UMAP's default init is spectral.
- SGD: the same numba epoch function ``optimize_layout_euclidean`` runs, called epoch by
  epoch with its state (next sample epochs, per-point RNG, learning rate) kept across
  chunks, so the final layout equals one uninterrupted ``optimize_layout_euclidean`` call
  bit for bit (restarting that public function per chunk would reset its edge sampling
  and drop every edge sampled less often than once a chunk). No densMAP, no parallel SGD.
- umap's graph and SGD kernels are compiled again with numba's ``cache=True`` (umap itself
  recompiles them in every process, ~10 s) and warmed at start-up (``engine.projection.umap_warm``).
- frames: the first one after FIRST_FRAME_EPOCHS epochs, then evenly spaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.projection.layout import Layout
from engine.projection.numba_cache import configure_numba_cache
from engine.projection.pca import pca_layout, top_components
from engine.projection.umap_kernels import (
    INT32_MAX,
    INT32_MIN,
    UmapGraph,
    UmapSGD,
    scaled_init,
    umap_graph,
    umap_moments,
)
from engine.projection.umap_warm import await_warming
from engine.provenance import file_digest, portable_path, provenance_record
from engine.store.activations import ActivationStore

METHODS = ("pca", "umap")
WHATS = ("rows", "latents")
UMAP_PARAMS = ("n_neighbors", "min_dist", "n_epochs", "frames")
CACHE_VERSION = 2  # 2: the cell kNN and the init from the shared covariance
FIRST_FRAME_EPOCHS = 5  # a progressive UMAP shows its first frame after this many epochs
READ_BYTES = 64 << 20  # float32 rows read from a store at a time
UMAP_ROWS = 50_000  # rows the app's and the demo's UMAP of a store sample (all of the demo's)


# ------------------------------------------------------------------ inputs
def row_matrix(store: ActivationStore, hook: str, max_rows: int | None = None, seed: int = 0,
               outlier_factor: float = 10.0, ctx: JobContext | None = None,
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows of ``hook`` as float32 (a sorted random subsample above ``max_rows``), their
    store ids, and how many were dropped: rows with NaN/inf or a norm above ``outlier_factor``
    x the median (attention-sink tokens would otherwise own the PCA)."""
    ids = _sample_ids(store.n_rows, max_rows, seed)
    x = _read_rows(store, hook, ids, ctx)
    keep = _inliers(x, outlier_factor)
    dropped = int(len(ids) - keep.sum())
    if dropped:
        x, ids = x[keep], ids[keep]
    return x, ids, dropped


def _sample_ids(n: int, max_rows: int | None, seed: int) -> np.ndarray:
    """All row ids, or ``max_rows`` of them drawn evenly at random (sorted)."""
    if max_rows is None or n <= max_rows:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max(int(max_rows), 0), replace=False)).astype(np.int64)


def _read_rows(store: ActivationStore, hook: str, ids: np.ndarray,
               ctx: JobContext | None) -> np.ndarray:
    """Stream the store in blocks and keep the rows ``ids`` (sorted): a sample of more than
    one row per HDF5 chunk touches every chunk anyway, and block reads beat fancy indexing."""
    n, d = store.n_rows, store.dim(hook)
    out = np.empty((len(ids), d), np.float32)
    step = max(1, READ_BYTES // (4 * max(d, 1)))
    at = 0
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        sel = ids[np.searchsorted(ids, lo):np.searchsorted(ids, hi)]
        if sel.size:
            block = store.acts(hook, lo, hi)
            out[at:at + sel.size] = block if sel.size == hi - lo else block[sel - lo]  # all: no gather
            at += sel.size
        if ctx is not None:
            ctx.progress(hi, n, "reading rows")
            ctx.check_cancelled()
    return out


def _inliers(x: np.ndarray, factor: float) -> np.ndarray:
    """Rows that are finite and whose L2 norm is at most ``factor`` x the median norm."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # NaN or inf for rows holding one
    finite = np.isfinite(norms)
    median = float(np.median(norms[finite])) if finite.any() else 0.0
    return finite & (norms <= factor * median) if median > 0 else finite


def latent_matrix(sae: Any) -> tuple[np.ndarray, np.ndarray]:
    """An SAE's decoder rows W_dec (d_sae, d_in) scaled to unit length, and ids 0..d_sae-1:
    latents laid out by direction, not by how large their decoder rows happen to be."""
    w = sae.W_dec
    w = w.detach().float().cpu().numpy() if hasattr(w, "detach") else np.asarray(w, np.float32)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    return (w / np.maximum(norms, 1e-12)).astype(np.float32), np.arange(len(w), dtype=np.int64)


# ------------------------------------------------------------------ UMAP
def umap_layout(ctx: JobContext, x: np.ndarray, ids: np.ndarray, name: str,
                n_neighbors: int = 15, min_dist: float = 0.1, n_epochs: int | None = None,
                frames: int = 10, seed: int = 0, init: np.ndarray | None = None) -> Layout:
    """A progressive UMAP of ``x``: ``frames`` non-final partial Layouts while it moves, then
    the final one, equal to an uninterrupted run (see the module docstring)."""
    configure_numba_cache()
    await_warming(ctx)
    ids = np.asarray(ids, np.int64)
    random_state = np.random.RandomState(seed)
    graph, xy = _umap_inputs(ctx, x, n_neighbors, min_dist, n_epochs, random_state, init)
    if graph is None:  # too few points for a neighbour graph
        return Layout(name, xy, ids, True)
    ctx.check_cancelled()
    sgd = UmapSGD(xy, graph, random_state.randint(INT32_MIN, INT32_MAX, 3).astype(np.int64))
    stops = np.unique(np.linspace(0, graph.n_epochs, max(int(frames), 1) + 1).round().astype(int))
    if len(stops) > 2 and stops[1] > 2 * FIRST_FRAME_EPOCHS:  # an early first frame: the layout
        stops = np.unique(np.r_[stops[:1], FIRST_FRAME_EPOCHS, stops[1:]])  # is on screen while it moves
    for stop in stops[1:]:
        sgd.run_to(int(stop))
        ctx.partial(Layout(name, xy.copy(), ids, final=False))
        ctx.progress(int(stop), graph.n_epochs, "UMAP")
        ctx.check_cancelled()
    return Layout(name, xy, ids, True)


def _umap_inputs(ctx: JobContext, x: np.ndarray, n_neighbors: int, min_dist: float,
                 n_epochs: int | None, random_state: np.random.RandomState,
                 init: np.ndarray | None = None) -> tuple[UmapGraph | None, np.ndarray]:
    """The fuzzy graph (None below 4 points) and the scaled init, both from one covariance
    (``umap_moments``): the kNN searches in its principal axes, the init is the first two."""
    ctx.progress(0, 3, "UMAP: principal axes")
    mean, cov = umap_moments(x)
    graph = None
    if len(x) >= 4:
        graph = umap_graph(ctx, x, (mean, cov), n_neighbors, min_dist, n_epochs, random_state)
    if init is None:
        w = top_components(cov, 2).astype(np.float32)
        init = x @ w - mean.astype(np.float32) @ w
    return graph, scaled_init(init, random_state)


# ------------------------------------------------------------------ the job and its cache
def project(ctx: JobContext, store_path: str | os.PathLike | None, hook: str, method: str = "pca",
            what: str = "rows", sae_path: str | os.PathLike | None = None,
            cache_dir: str | os.PathLike | None = None, max_rows: int | None = 200_000,
            seed: int = 0, **umap_params: Any) -> Layout:
    """The ``f"{what}/{method}"`` layout of a store's rows or an SAE's latents, loaded from
    ``cache_dir`` when the same inputs were laid out before, else computed and saved."""
    _check_args(method, what, sae_path, umap_params)
    name = f"{what}/{method}"
    params = {"method": method, "seed": int(seed),
              **({k: umap_params.get(k) for k in UMAP_PARAMS if k != "frames"}
                 if method == "umap" else {})}
    if what == "rows":
        with ActivationStore.open(store_path) as store:
            key = {**_store_key(store, hook, max_rows, cache_dir), "params": params}
            record = _record(store_path, hook, what, max_rows, params, store.meta)
            cached = _cache_load(cache_dir, name, key)
            if cached is not None:
                return cached._replace(provenance=record)
            x, ids, _ = row_matrix(store, hook, max_rows, seed, ctx=ctx)
    else:
        key = {**_sae_key(Path(sae_path), cache_dir), "params": params}
        record = _record(sae_path, hook, what, max_rows, params, None)
        cached = _cache_load(cache_dir, name, key)
        if cached is not None:
            return cached._replace(provenance=record)
        from engine.sae.io import load_sae
        x, ids = latent_matrix(load_sae(sae_path))
    layout = _compute(ctx, x, ids, name, method, seed, umap_params)
    _cache_save(cache_dir, name, key, layout)
    return layout._replace(provenance=record)


def _record(source: Any, hook: str, what: str, max_rows: int | None, params: dict[str, Any],
            meta: Any) -> dict[str, Any]:
    """The layout's provenance: its store (rows) or SAE (latents), the model, and the
    arguments ``project`` takes again to lay it out anew (``main.py render`` does)."""
    rows = what == "rows"
    return provenance_record(
        "projection", inputs=[("store" if rows else "sae", source)],
        model_id=meta.model_id if rows else None, model_hash=meta.model_hash if rows else None,
        sae=None if rows else source, seed=params["seed"],
        params={"what": what, "hook": hook, "max_rows": max_rows, **params})


def _check_args(method: str, what: str, sae_path: Any, umap_params: dict[str, Any]) -> None:
    if method not in METHODS:
        raise LatentLabError(f"projection method {method!r} is not one of {list(METHODS)}")
    if what not in WHATS:
        raise LatentLabError(f"projection of {what!r}: choose one of {list(WHATS)}")
    if what == "latents" and sae_path is None:
        raise LatentLabError("a projection of latents needs an SAE folder (sae_path)")
    unknown = sorted(set(umap_params) - set(UMAP_PARAMS))
    if unknown:
        raise LatentLabError(f"unknown UMAP settings {unknown}; known: {list(UMAP_PARAMS)}")


def _compute(ctx: JobContext, x: np.ndarray, ids: np.ndarray, name: str, method: str,
             seed: int, umap_params: dict[str, Any]) -> Layout:
    """Run the chosen method (UMAP starts from the PCA of the same points)."""
    if method == "umap":
        return umap_layout(ctx, x, ids, name, seed=seed, **umap_params)
    ctx.progress(0, 1, "PCA")
    layout = pca_layout(x, ids, name)
    ctx.progress(1, 1, "PCA")
    return layout


def _source_path(path: str | os.PathLike, cache_dir: Any) -> str:
    """A source's path as the cache names it: relative to the workspace holding the cache
    (``cache_dir``'s parent) when inside it, so a copied workspace finds its layouts."""
    return portable_path(Path(path).resolve(), None if cache_dir is None else Path(cache_dir).resolve().parent)


def _store_key(store: ActivationStore, hook: str, max_rows: int | None, cache_dir: Any = None) -> dict[str, Any]:
    """What a row layout depends on: which store and hook (source), its content hash and how
    full it is (state)."""
    return {"source": {"store": _source_path(store.path, cache_dir), "hook": hook},
            "state": {"sha256": file_digest(store.path), "n_committed": store.n_rows,
                      "model_hash": store.meta.model_hash, "max_rows": max_rows, "outlier_factor": 10.0,
                      "version": CACHE_VERSION}}


def _sae_key(folder: Path, cache_dir: Any = None) -> dict[str, Any]:
    """What a latent layout depends on: the SAE folder (source) and its weights' hash (state),
    in whichever library's format it is (``sae_files``: its config files are not weights)."""
    from engine.sae.formats.detect import sae_files
    weights = [f for f in sae_files(folder) if f.suffix != ".json"]
    if not weights or not all(f.is_file() for f in weights):
        raise LatentLabError(f"SAE folder {folder}: its weights file is missing")
    digest = file_digest(weights[0]) if len(weights) == 1 else [file_digest(f) for f in weights]
    return {"source": {"sae": _source_path(folder, cache_dir)},
            "state": {"sha256": digest, "version": CACHE_VERSION}}


def _digest(obj: Any, n: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def _cache_file(cache_dir: Path, name: str, key: dict[str, Any]) -> Path:
    """``<what>-<method>-<source hash>-<key hash>.npz``: one family per source, so a newer
    state of the same source replaces the stale file."""
    return cache_dir / f"{name.replace('/', '-')}-{_digest(key['source'], 10)}-{_digest(key, 16)}.npz"


def _cache_load(cache_dir: Any, name: str, key: dict[str, Any]) -> Layout | None:
    """The cached layout for ``key``, or None (no cache, no file, unreadable or other key)."""
    if cache_dir is None:
        return None
    path = _cache_file(Path(cache_dir), name, key)
    try:
        with np.load(path, allow_pickle=False) as f:
            if json.loads(str(f["key"])) != json.loads(json.dumps(key)):
                return None
            return Layout(name, f["xy"].astype(np.float32), f["ids"].astype(np.int64), True)
    except (OSError, KeyError, ValueError):
        return None


def _cache_save(cache_dir: Any, name: str, key: dict[str, Any], layout: Layout) -> None:
    """Write the layout atomically and remove stale files of the same source."""
    if cache_dir is None:
        return
    path = _cache_file(Path(cache_dir), name, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, xy=layout.xy, ids=layout.ids, key=np.array(json.dumps(key, sort_keys=True)))
    os.replace(tmp, path)
    family = path.name.rsplit("-", 1)[0]
    for old in path.parent.glob(f"{family}-*.npz"):
        if old != path:
            old.unlink(missing_ok=True)
