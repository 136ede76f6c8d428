"""2-D layouts of activation rows and SAE latents for the embedding scatter.

``pca_layout`` is an exact PCA from the covariance in float64; ``umap_layout`` is umap-learn's
optimisation run in chunks so the scatter can show it moving; ``project`` is the job the GUI
and CLI run, with an on-disk cache keyed by what the layout was computed from.

Where ``umap_layout`` differs from ``umap.UMAP(random_state=seed).fit``:
- kNN: ``engine.knn``; exact up to 12,000 rows (below 4096 as UMAP's own exact path),
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
  recompiles them in every process, ~10 s) and warmed at start-up (``engine.umap_warm``).
- frames: the first one after FIRST_FRAME_EPOCHS epochs, then evenly spaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.parallel import row_blocks, single_threaded, workers
from engine.store import ActivationStore
from engine.umap_warm import await_warming, cached_jit, configure_numba_cache


class Layout(NamedTuple):
    """2-D coordinates of one point set: activation rows or SAE latents (decoder rows)."""

    name: str  # "rows/pca", "rows/umap", "latents/pca", "latents/umap"
    xy: np.ndarray  # (n, 2) float32
    ids: np.ndarray  # (n,) int64 store rows or latent indices the points stand for
    final: bool = True  # False while a progressive layout (UMAP) is still moving


METHODS = ("pca", "umap")
WHATS = ("rows", "latents")
UMAP_PARAMS = ("n_neighbors", "min_dist", "n_epochs", "frames")
CACHE_VERSION = 2  # 2: the cell kNN and the init from the shared covariance
FIRST_FRAME_EPOCHS = 5  # a progressive UMAP shows its first frame after this many epochs
BLOCK_BYTES = 64 << 20  # float64 working block of the streamed PCA
COV_BLOCK = 4096  # rows per float32 cross product of the PCA covariance
READ_BYTES = 64 << 20  # float32 rows read from a store at a time
UMAP_ROWS = 50_000  # rows the app's and the demo's UMAP of a store sample (all of the demo's)
UMAP_AXES_ROWS = 16_384  # rows (evenly strided) whose covariance gives a UMAP's principal axes
INT32_MIN, INT32_MAX = np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1  # as umap_.py


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


# ------------------------------------------------------------------ PCA
def pca_layout(x: np.ndarray, ids: np.ndarray, name: str) -> Layout:
    """The first two principal components of ``x`` (n, d): exact, from the d x d covariance
    accumulated in float64 blocks; each axis signed so its largest |loading| is positive."""
    mean, cov = _mean_cov(x)
    w = top_components(cov, 2)  # (d, 2)
    return Layout(name, _project(x, mean, w), np.asarray(ids, np.int64), True)


def _blocks(n: int, d: int) -> range:
    return range(0, n, max(1, BLOCK_BYTES // (8 * max(d, 1))))


def _mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) in one pass, shifted by a first estimate of the mean
    so large offsets (massive activation dimensions) do not cancel. Each block's cross
    product is a float32 GEMM (twice float64's speed) of the shifted rows, summed across
    blocks in float64 in block order: the rounding stays that of COV_BLOCK rows, not of all
    n, and the result does not depend on which worker thread took a block."""
    n, d = x.shape
    if n == 0:
        return np.zeros(d), np.zeros((d, d))
    shift = x[:1024].mean(axis=0, dtype=np.float64)
    shift32 = shift.astype(np.float32)

    def block(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        z = np.subtract(x[lo:hi], shift32, dtype=np.float32)
        return z.sum(axis=0, dtype=np.float64), z.T @ z
    total, scatter = np.zeros(d), np.zeros((d, d))
    with workers() as pool:
        for part_sum, part_scatter in row_blocks(pool, n, block, min(_blocks(n, d).step, COV_BLOCK)):
            total += part_sum
            scatter += part_scatter
    m = total / n
    cov = (scatter - n * np.outer(m, m)) / max(n - 1, 1)
    return shift + m, cov


def top_components(cov: np.ndarray, k: int) -> np.ndarray:
    """The top-``k`` eigenvectors (d, k) of ``cov`` (zero columns when d < k), signed as
    scikit-learn's PCA signs them (largest |loading| positive)."""
    d = len(cov)
    w = np.zeros((d, k))
    if d == 0:
        return w
    with single_threaded():  # LAPACK's threads stall on a busy core (engine/parallel.py)
        vals, vecs = np.linalg.eigh(cov)
    top = np.argsort(vals)[::-1][:k]
    w[:, :len(top)] = vecs[:, top]
    pivot = w[np.abs(w).argmax(axis=0), np.arange(k)]
    return w * np.where(pivot < 0, -1.0, 1.0)


def _project(x: np.ndarray, mean: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(x - mean) @ w in float64 blocks, as float32 (n, k)."""
    n, d = x.shape
    out = np.empty((n, w.shape[1]), np.float32)
    step = _blocks(n, d).step
    for lo in _blocks(n, d):
        out[lo:lo + step] = (x[lo:lo + step].astype(np.float64) - mean) @ w
    return out


# ------------------------------------------------------------------ UMAP
@dataclass
class _Graph:
    """The fuzzy graph as umap's SGD takes it: edges, their sampling periods and a, b."""

    head: np.ndarray  # (n_edges,) int32
    tail: np.ndarray  # (n_edges,) int32
    epochs_per_sample: np.ndarray  # (n_edges,) float64
    a: float
    b: float
    n_epochs: int


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
    sgd = _SGD(xy, graph, random_state.randint(INT32_MIN, INT32_MAX, 3).astype(np.int64))
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
                 init: np.ndarray | None = None) -> tuple[_Graph | None, np.ndarray]:
    """The fuzzy graph (None below 4 points) and the scaled init, both from one covariance
    (``umap_moments``): the kNN searches in its principal axes, the init is the first two."""
    ctx.progress(0, 3, "UMAP: principal axes")
    mean, cov = umap_moments(x)
    graph = None
    if len(x) >= 4:
        graph = _umap_graph(ctx, x, (mean, cov), n_neighbors, min_dist, n_epochs, random_state)
    if init is None:
        w = top_components(cov, 2).astype(np.float32)
        init = x @ w - mean.astype(np.float32) @ w
    return graph, _scaled_init(init, random_state)


def umap_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of every j-th row of ``x``, UMAP_AXES_ROWS rows or all: axes to
    search neighbours and start a layout in, where an estimate serves as the exact PCA."""
    return _mean_cov(x[::max(1, -(-len(x) // UMAP_AXES_ROWS))])


def _umap_graph(ctx: JobContext, x: np.ndarray, moments: tuple[np.ndarray, np.ndarray],
                n_neighbors: int, min_dist: float, n_epochs: int | None,
                random_state: np.random.RandomState) -> _Graph:
    """umap's fuzzy simplicial set of the rows ``x`` (their mean and covariance: ``moments``),
    as the body of ``fuzzy_simplicial_set`` at its defaults, pruned and turned into edge
    sampling periods as ``simplicial_set_embedding`` prepares it."""
    import scipy.sparse

    from engine.knn import knn
    n = len(x)
    k = n_neighbors if n > n_neighbors else n - 1  # as UMAP.fit
    ctx.progress(1, 3, "UMAP: nearest neighbours")
    knn_idx, knn_dist = knn(x, k, random_state, moments)
    ctx.check_cancelled()
    ctx.progress(2, 3, "UMAP: fuzzy graph")
    from umap import umap_  # after the kNN: a start-up import still running overlaps it
    sigmas, rhos = cached_jit(umap_.smooth_knn_dist)(knn_dist, float(k), local_connectivity=1.0)
    rows, cols, vals, _ = cached_jit(umap_.compute_membership_strengths)(
        knn_idx, knn_dist, sigmas, rhos, None)
    graph = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(n, n))
    graph.eliminate_zeros()
    graph = (graph + graph.transpose() - graph.multiply(graph.transpose())).tocoo()  # fuzzy union
    graph.sum_duplicates()
    default_epochs = 500 if n <= 10000 else 200
    n_epochs = int(n_epochs or default_epochs)
    graph.data[graph.data < graph.data.max() / float(n_epochs if n_epochs > 10 else default_epochs)] = 0.0
    graph.eliminate_zeros()
    a, b = umap_.find_ab_params(1.0, min_dist)
    return _Graph(graph.row, graph.col, umap_.make_epochs_per_sample(graph.data, n_epochs), a, b, n_epochs)


def _scaled_init(xy: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
    """Initial coordinates (n, 2) scaled as umap scales its PCA init: largest |coord|
    10 plus noise 1e-4, then each axis min-max to [0, 10]; float32, C order."""
    xy = np.asarray(xy, np.float32)
    if len(xy) == 0:
        return np.zeros((0, 2), np.float32)
    peak = float(np.abs(xy).max())
    xy = (xy * (10.0 / peak if peak > 0 else 1.0)).astype(np.float32)
    xy = xy + random_state.normal(scale=0.0001, size=xy.shape).astype(np.float32)
    span = xy.max(axis=0) - xy.min(axis=0)
    xy = 10.0 * (xy - xy.min(axis=0)) / np.where(span > 0, span, 1.0)
    return np.ascontiguousarray(xy, dtype=np.float32)


class _SGD:
    """umap's ``optimize_layout_euclidean`` loop (umap/layouts.py) with its state held
    between calls, so running epochs 0..a then a..b equals running 0..b in one go."""

    gamma, initial_alpha, negative_sample_rate = 1.0, 1.0, 5.0  # UMAP's defaults

    def __init__(self, xy: np.ndarray, graph: _Graph, rng_state: np.ndarray) -> None:
        from umap import layouts
        self.epoch_fn = cached_jit(layouts._nb_optimize_layout_euclidean_single_epoch)
        self.xy, self.g = xy, graph
        self.per_negative = graph.epochs_per_sample / self.negative_sample_rate
        self.next_negative = self.per_negative.copy()
        self.next_sample = graph.epochs_per_sample.copy()
        self.rng = np.full((len(xy), len(rng_state)), rng_state, dtype=np.int64) + \
            xy[:, 0].astype(np.float64).view(np.int64).reshape(-1, 1)
        self.alpha, self.epoch = self.initial_alpha, 0
        zero = np.zeros(1, dtype=np.float32)
        self.densmap_off = (False, zero, zero, 0, 0, 0, 0, zero, zero, 0)

    def run_to(self, stop: int) -> None:
        """Run epochs self.epoch..stop-1, with umap's linearly decaying learning rate."""
        g = self.g
        for n in range(self.epoch, stop):
            self.epoch_fn(self.xy, self.xy, g.head, g.tail, len(self.xy), g.epochs_per_sample,
                          g.a, g.b, self.rng, self.gamma, self.xy.shape[1], True, self.alpha,
                          self.per_negative, self.next_negative, self.next_sample, n,
                          *self.densmap_off)
            self.alpha = self.initial_alpha * (1.0 - float(n) / float(g.n_epochs))
        self.epoch = max(self.epoch, stop)


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
            key = {**_store_key(store, hook, max_rows), "params": params}
            cached = _cache_load(cache_dir, name, key)
            if cached is not None:
                return cached
            x, ids, _ = row_matrix(store, hook, max_rows, seed, ctx=ctx)
    else:
        key = {**_sae_key(Path(sae_path)), "params": params}
        cached = _cache_load(cache_dir, name, key)
        if cached is not None:
            return cached
        from engine.sae.io import load_sae
        x, ids = latent_matrix(load_sae(sae_path))
    layout = _compute(ctx, x, ids, name, method, seed, umap_params)
    _cache_save(cache_dir, name, key, layout)
    return layout


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


def _store_key(store: ActivationStore, hook: str, max_rows: int | None) -> dict[str, Any]:
    """What a row layout depends on: which store and hook (source), how full it is (state)."""
    return {"source": {"store": str(Path(store.path).resolve()), "hook": hook},
            "state": {"n_committed": store.n_rows, "model_hash": store.meta.model_hash,
                      "max_rows": max_rows, "outlier_factor": 10.0, "version": CACHE_VERSION}}


def _sae_key(folder: Path) -> dict[str, Any]:
    """What a latent layout depends on: the SAE folder and its weights file's size + mtime."""
    from engine.sae.io import WEIGHTS_FILENAME
    weights = folder / WEIGHTS_FILENAME
    if not weights.is_file():
        raise LatentLabError(f"SAE folder {folder} has no {WEIGHTS_FILENAME}")
    st = weights.stat()
    return {"source": {"sae": str(folder.resolve())},
            "state": {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "version": CACHE_VERSION}}


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
