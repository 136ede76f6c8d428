"""2-D layouts of activation rows and SAE latents for the embedding scatter.

``pca_layout`` is an exact PCA from the covariance in float64; ``umap_layout`` is umap-learn's
optimisation run in chunks so the scatter can show it moving; ``project`` is the job the GUI
and CLI run, with an on-disk cache keyed by what the layout was computed from.

Where ``umap_layout`` differs from ``umap.UMAP(random_state=seed).fit``:
- kNN: below 4096 points UMAP uses the full distance matrix; here an exact blocked kNN gives
  the same neighbours (self first at distance exactly 0) without the n x n matrix held at
  once; up to TORCH_KNN_UP_TO rows an exact torch kNN; above, where UMAP runs pynndescent
  (about a minute of compilation per process), an inverted-file search (k-means cells,
  exact distances within the nearest cells; recall >= 0.95 tested).
- init: PCA from ``pca_layout`` (or ``init``), then UMAP's own scaling (largest |coord| 10,
  noise 1e-4, per axis min-max to [0, 10]); UMAP's default init is spectral.
- SGD: the same numba epoch function ``optimize_layout_euclidean`` runs, called epoch by
  epoch with its state (next sample epochs, per-point RNG, learning rate) kept across
  chunks, so the final layout equals one uninterrupted ``optimize_layout_euclidean`` call
  bit for bit (restarting that public function per chunk would reset its edge sampling
  and drop every edge sampled less often than once a chunk). No densMAP, no parallel SGD.
- umap's graph and SGD kernels are compiled again with numba's ``cache=True`` (umap itself
  recompiles them in every process, ~10 s), and warmed into that cache at start-up.
- frames: the first one after FIRST_FRAME_EPOCHS epochs, then evenly spaced.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.store import ActivationStore


class Layout(NamedTuple):
    """2-D coordinates of one point set: activation rows or SAE latents (decoder rows)."""

    name: str  # "rows/pca", "rows/umap", "latents/pca", "latents/umap"
    xy: np.ndarray  # (n, 2) float32
    ids: np.ndarray  # (n,) int64 store rows or latent indices the points stand for
    final: bool = True  # False while a progressive layout (UMAP) is still moving


METHODS = ("pca", "umap")
WHATS = ("rows", "latents")
UMAP_PARAMS = ("n_neighbors", "min_dist", "n_epochs", "frames")
CACHE_VERSION = 1
EXACT_KNN_BELOW = 4096  # as umap-learn: smaller sets get exact neighbours (float64)
TORCH_KNN_UP_TO = 12_000  # exact float32 neighbours with torch up to here, then a cell search
FIRST_FRAME_EPOCHS = 5  # a progressive UMAP shows its first frame after this many epochs
KNN_DIMS = 64  # the cell search assigns cells in this many principal components
KNN_PROBE = 12  # cells searched for each cell's points (its own and those with the nearest centres)
BLOCK_BYTES = 64 << 20  # float64 working block of the streamed PCA
COV_BLOCK = 4096  # rows per float32 cross product of the PCA covariance
READ_BYTES = 64 << 20  # float32 rows read from a store at a time
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
            out[at:at + sel.size] = store.acts(hook, lo, hi)[sel - lo]
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
    w = _top_components(cov, 2)  # (d, 2)
    return Layout(name, _project(x, mean, w), np.asarray(ids, np.int64), True)


def _blocks(n: int, d: int) -> range:
    return range(0, n, max(1, BLOCK_BYTES // (8 * max(d, 1))))


def _mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) in one pass, shifted by a first estimate of the mean
    so large offsets (massive activation dimensions) do not cancel. Each block's cross
    product is a float32 GEMM (twice float64's speed) of the shifted rows, summed across
    blocks in float64: the rounding stays that of COV_BLOCK rows, not of all n."""
    n, d = x.shape
    if n == 0:
        return np.zeros(d), np.zeros((d, d))
    shift = x[:1024].mean(axis=0, dtype=np.float64)
    total, scatter = np.zeros(d), np.zeros((d, d))
    step = min(_blocks(n, d).step, COV_BLOCK)
    shift32 = shift.astype(np.float32)
    for lo in range(0, n, step):
        z = np.subtract(x[lo:lo + step], shift32, dtype=np.float32)
        total += z.sum(axis=0, dtype=np.float64)
        scatter += z.T @ z
    m = total / n
    cov = (scatter - n * np.outer(m, m)) / max(n - 1, 1)
    return shift + m, cov


def _top_components(cov: np.ndarray, k: int) -> np.ndarray:
    """The top-``k`` eigenvectors (d, k) of ``cov`` (zero columns when d < k), signed as
    scikit-learn's PCA signs them (largest |loading| positive)."""
    d = len(cov)
    w = np.zeros((d, k))
    if d == 0:
        return w
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
def configure_numba_cache() -> Path:
    """Point numba's on-disk cache at ``<latentlab cache>/numba`` (unless NUMBA_CACHE_DIR is
    set) so umap's compiled functions survive the process; call before importing umap."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return Path(os.environ["NUMBA_CACHE_DIR"])
    from engine.models.smollm2 import cache_root
    folder = cache_root() / "numba"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    config = getattr(sys.modules.get("numba.core.config"), "CACHE_DIR", None)
    if config == "":  # numba already imported: its config read the environment before
        sys.modules["numba.core.config"].CACHE_DIR = str(folder)
    return folder


def _warm_marker() -> Path:
    """The file that says this cache holds umap's kernels for these library versions."""
    import importlib.metadata as md
    versions = "-".join(md.version(p) for p in ("umap-learn", "numba", "numpy"))
    return configure_numba_cache() / f"warm-{versions}-py{sys.version_info[0]}{sys.version_info[1]}.ok"


def warm_kernels() -> None:
    """Compile every numba kernel a UMAP layout uses into the persistent cache (a tiny
    layout of each kind), then leave the marker. Run by ``warm_in_background``."""
    rng = np.random.default_rng(0)
    for n in (64, TORCH_KNN_UP_TO // 8):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        umap_layout(JobContext(), x, np.arange(n), "warm", n_epochs=2, frames=1)
    _warm_marker().write_text("ok\n")


def warm_in_background() -> subprocess.Popen | None:
    """At start-up: unless the cache is already warm, compile umap's kernels in a separate,
    low-priority process (numba holds the GIL while compiling, which would freeze a GUI),
    so the first UMAP of the session loads them instead of paying ~40 s. None when warm."""
    if _warm_marker().exists():
        return None
    code = "import os; os.nice(10); from engine.project import warm_kernels; warm_kernels()"
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(root)))


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
    ids = np.asarray(ids, np.int64)
    random_state = np.random.RandomState(seed)
    if len(x) < 4:  # too few points for a neighbour graph
        return Layout(name, _scaled_init(x, ids, init, random_state), ids, True)
    ctx.progress(0, 1, "UMAP: neighbour graph")
    graph = _umap_graph(x, n_neighbors, min_dist, n_epochs, random_state)
    ctx.check_cancelled()
    xy = _scaled_init(x, ids, init, random_state)
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


def _umap_graph(x: np.ndarray, n_neighbors: int, min_dist: float, n_epochs: int | None,
                random_state: np.random.RandomState) -> _Graph:
    """umap's fuzzy simplicial set of ``x`` (the body of ``fuzzy_simplicial_set`` at its
    defaults), pruned and turned into edge sampling periods as ``simplicial_set_embedding``
    prepares it."""
    import scipy.sparse
    from umap import umap_
    n = len(x)
    k = n_neighbors if n > n_neighbors else n - 1  # as UMAP.fit
    knn_idx, knn_dist = _knn(x, k, random_state)
    sigmas, rhos = _cached_jit(umap_.smooth_knn_dist)(knn_dist, float(k), local_connectivity=1.0)
    rows, cols, vals, _ = _cached_jit(umap_.compute_membership_strengths)(
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


@functools.cache
def _cached_jit(dispatcher: Any) -> Any:
    """A numba function of umap's compiled again with ``cache=True``: umap compiles these
    (parallel) kernels in every process, about 10 s; from NUMBA_CACHE_DIR they load in 0.1 s."""
    import numba
    options = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}
    options["nogil"] = True  # the GUI thread keeps running while a layout is computed
    return numba.njit(dispatcher.py_func, cache=True, locals=dict(dispatcher.locals), **options)


def _knn(x: np.ndarray, k: int, random_state: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour indices (n, k) int32 and distances (n, k) float32, each point first at 0."""
    if len(x) < EXACT_KNN_BELOW:
        return _exact_knn(x, k)
    if len(x) <= TORCH_KNN_UP_TO:
        return _torch_knn(x, k)
    return _cell_knn(x, k, random_state)


def _exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact euclidean kNN in blocks of rows (float64), each point its own first neighbour."""
    x64 = x.astype(np.float64)
    sq = (x64 * x64).sum(axis=1)
    n = len(x)
    idx, dist = np.empty((n, k), np.int32), np.empty((n, k), np.float32)
    for lo in range(0, n, 1024):
        hi = min(n, lo + 1024)
        d2 = sq[lo:hi, None] + sq[None, :] - 2.0 * (x64[lo:hi] @ x64.T)
        d2[np.arange(hi - lo), np.arange(lo, hi)] = -1.0  # self first
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
        nb = np.take_along_axis(part, np.take_along_axis(d2, part, 1).argsort(axis=1), 1)
        idx[lo:hi] = nb
        dist[lo:hi] = np.sqrt(np.maximum(np.take_along_axis(d2, nb, 1), 0.0))
    return idx, dist


def _torch_knn(x: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact euclidean kNN with torch in float32 blocks: multi-threaded, GIL-free, and no
    pynndescent compilation (60-90 s holding the GIL on first use in a process)."""
    import torch
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    sq = (xt * xt).sum(1)
    n = len(x)
    idx, dist = np.empty((n, k), np.int32), np.empty((n, k), np.float32)
    with torch.no_grad():
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            d2 = sq[lo:hi, None] + sq[None, :] - 2.0 * (xt[lo:hi] @ xt.T)
            d2[torch.arange(hi - lo), torch.arange(lo, hi)] = -1.0  # self first
            vals, nb = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            idx[lo:hi] = nb.numpy()
            dist[lo:hi] = vals.clamp_min(0.0).sqrt().numpy()
    return idx, dist


def _cell_knn(x: np.ndarray, k: int, random_state: np.random.RandomState,
              dims: int = KNN_DIMS, probe: int = KNN_PROBE) -> tuple[np.ndarray, np.ndarray]:
    """Approximate euclidean kNN for large sets (an inverted-file search, as FAISS's IVF):
    k-means cells of about sqrt(n) points in the top ``dims`` principal components; each
    cell's points are compared, by exact distance in the full space, with the points of the
    ``probe`` cells whose centres are nearest its own. Each point is its own first
    neighbour at distance 0; recall against exact kNN is tested. The many small GEMMs run
    on one thread: on a busy two-core machine that is faster than two."""
    import torch
    n, d = x.shape
    mean, cov = _mean_cov(x)
    w = torch.from_numpy(_top_components(cov, min(dims, d)).astype(np.float32))
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            z = (xt - torch.from_numpy(mean.astype(np.float32))) @ w
            cells, centres = _kmeans(z, max(1, int(round(np.sqrt(n)))), random_state)
            near = torch.cdist(centres, centres).topk(min(probe, len(centres)), largest=False).indices
            order = torch.argsort(cells)
            bounds = torch.searchsorted(cells[order], torch.arange(len(centres) + 1)).tolist()
            sq = (xt * xt).sum(1)
            idx, dist = np.empty((n, k), np.int32), np.empty((n, k), np.float32)
            torch.set_num_threads(1)
            for c in range(len(centres)):
                rows = order[bounds[c]:bounds[c + 1]]
                if len(rows):
                    cand = torch.cat([order[bounds[j]:bounds[j + 1]] for j in near[c].tolist()])
                    _search_cell(xt, sq, rows, cand, k, idx, dist)
    finally:
        torch.set_num_threads(threads)
    return idx, dist


def _search_cell(xt, sq, rows, cand, k: int, idx: np.ndarray, dist: np.ndarray) -> None:
    """Exact kNN of ``rows`` among ``cand`` (one GEMM per block of rows), written into
    ``idx``/``dist``, self first; a neighbourhood smaller than k repeats its farthest."""
    import torch
    xc, sqc = xt[cand], sq[cand]
    for lo in range(0, len(rows), 2048):
        q = rows[lo:lo + 2048]
        d2 = sq[q, None] + sqc[None, :] - 2.0 * (xt[q] @ xc.T)
        d2[cand[None, :] == q[:, None]] = -1.0  # self first
        vals, pos = d2.topk(min(k, len(cand)), largest=False)
        nb, vals = cand[pos], vals.clamp_min(0.0).sqrt()
        if nb.shape[1] < k:
            pad = k - nb.shape[1]
            nb = torch.cat([nb, nb[:, -1:].expand(-1, pad)], 1)
            vals = torch.cat([vals, vals[:, -1:].expand(-1, pad)], 1)
        idx[q.numpy()] = nb.numpy()
        dist[q.numpy()] = vals.numpy()


def _kmeans(z, c: int, random_state: np.random.RandomState, iters: int = 8):
    """Lloyd's k-means of ``z`` (n, r) into ``c`` cells from a seeded sample; (cells, centres)."""
    import torch
    centres = z[torch.from_numpy(random_state.choice(len(z), c, replace=False))].clone()
    for _ in range(iters):
        cells = torch.cdist(z, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, cells, z)
        counts = torch.bincount(cells, minlength=c).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return torch.cdist(z, centres).argmin(1), centres


def _scaled_init(x: np.ndarray, ids: np.ndarray, init: np.ndarray | None,
                 random_state: np.random.RandomState) -> np.ndarray:
    """PCA (or ``init``) coordinates scaled as umap scales its PCA init: largest |coord|
    10 plus noise 1e-4, then each axis min-max to [0, 10]; float32, C order."""
    xy = pca_layout(x, ids, "").xy if init is None else np.asarray(init, np.float32)
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
        self.epoch_fn = _cached_jit(layouts._nb_optimize_layout_euclidean_single_epoch)
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
