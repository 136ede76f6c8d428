"""umap-learn's fuzzy graph and its SGD epochs, run from LatentLab's kNN with the SGD state
held between calls so a progressive layout equals one uninterrupted run; and umap-learn's
``transform`` (new points placed against a fixed layout) from given neighbours."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from engine.jobs import JobContext
from engine.projection.numba_cache import cached_jit
from engine.projection.pca import mean_cov

UMAP_AXES_ROWS = 16_384  # rows (evenly strided) whose covariance gives a UMAP's principal axes
INT32_MIN, INT32_MAX = np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1  # as umap_.py
TRANSFORM_SEED = 42  # UMAP's default transform_seed: a placement is the same every time


@dataclass
class UmapGraph:
    """The fuzzy graph as umap's SGD takes it: edges, their sampling periods and a, b."""

    head: np.ndarray  # (n_edges,) int32
    tail: np.ndarray  # (n_edges,) int32
    epochs_per_sample: np.ndarray  # (n_edges,) float64
    a: float
    b: float
    n_epochs: int


def umap_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of every j-th row of ``x``, UMAP_AXES_ROWS rows or all: axes to
    search neighbours and start a layout in, where an estimate serves as the exact PCA."""
    return mean_cov(x[::max(1, -(-len(x) // UMAP_AXES_ROWS))])


def umap_graph(ctx: JobContext, x: np.ndarray, moments: tuple[np.ndarray, np.ndarray],
                n_neighbors: int, min_dist: float, n_epochs: int | None,
                random_state: np.random.RandomState) -> UmapGraph:
    """umap's fuzzy simplicial set of the rows ``x`` (their mean and covariance: ``moments``),
    as the body of ``fuzzy_simplicial_set`` at its defaults, pruned and turned into edge
    sampling periods as ``simplicial_set_embedding`` prepares it."""
    import scipy.sparse

    from engine.projection.knn import knn
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
    return UmapGraph(graph.row, graph.col, umap_.make_epochs_per_sample(graph.data, n_epochs), a, b, n_epochs)


def scaled_init(xy: np.ndarray, random_state: np.random.RandomState) -> np.ndarray:
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


class UmapSGD:
    """umap's ``optimize_layout_euclidean`` loop (umap/layouts.py) with its state held
    between calls, so running epochs 0..a then a..b equals running 0..b in one go. Given
    ``tail`` (a fixed layout), it moves only the points ``xy`` (umap's ``transform``:
    heads are new points, tails layout points, ``move_other`` off)."""

    gamma, initial_alpha, negative_sample_rate = 1.0, 1.0, 5.0  # UMAP's defaults

    def __init__(self, xy: np.ndarray, graph: UmapGraph, rng_state: np.ndarray,
                 tail: np.ndarray | None = None, initial_alpha: float | None = None) -> None:
        from umap import layouts
        self.epoch_fn = cached_jit(layouts._nb_optimize_layout_euclidean_single_epoch)
        self.xy, self.g = xy, graph
        self.tail, self.move_other = (xy, True) if tail is None else (tail, False)
        if initial_alpha is not None:
            self.initial_alpha = initial_alpha
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
            self.epoch_fn(self.xy, self.tail, g.head, g.tail, len(self.tail), g.epochs_per_sample,
                          g.a, g.b, self.rng, self.gamma, self.xy.shape[1], self.move_other, self.alpha,
                          self.per_negative, self.next_negative, self.next_sample, n,
                          *self.densmap_off)
            self.alpha = self.initial_alpha * (1.0 - float(n) / float(g.n_epochs))
        self.epoch = max(self.epoch, stop)


# ------------------------------------------------------------------ transform
@functools.cache
def ab_params(min_dist: float, spread: float = 1.0) -> tuple[float, float]:
    """umap's curve parameters a, b for ``min_dist`` (``find_ab_params``, as a fit takes them)."""
    from umap import umap_
    a, b = umap_.find_ab_params(spread, min_dist)
    return float(a), float(b)


def transform_epochs(n_new: int, fit_epochs: int | None) -> int:
    """The SGD epochs of ``UMAP.transform``: a third of the fit's n_epochs when it was given,
    else 100 for up to 10,000 new points and 30 above."""
    if fit_epochs is None:
        return 100 if n_new <= 10000 else 30
    return int(fit_epochs // 3.0)


def transform_graph(knn_idx: np.ndarray, knn_dist: np.ndarray, min_dist: float,
                    fit_epochs: int | None) -> tuple[UmapGraph, np.ndarray]:
    """The bipartite fuzzy graph of new points to their k nearest layout points (ascending
    distances, (m, k)) as ``UMAP.transform`` builds it: ``smooth_knn_dist`` with local
    connectivity 0 (the fit's 1, less one), strengths exp(-(d - rho) / sigma) as
    ``compute_membership_strengths(bipartite=True)``, weak edges pruned, then sampling
    periods; also the unpruned strengths (m, k), which ``transform``'s init weighs by."""
    from umap import umap_
    m, k = knn_dist.shape
    dist = np.ascontiguousarray(knn_dist, np.float32)
    sigmas, rhos = cached_jit(umap_.smooth_knn_dist)(dist, float(k), local_connectivity=0.0)
    gap = dist - rhos[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        strength = np.where((gap <= 0) | (sigmas[:, None] == 0), np.float32(1.0),
                            np.exp(-(gap / sigmas[:, None]))).astype(np.float32)
    n_epochs = transform_epochs(m, fit_epochs)
    keep = (strength.ravel() > 0) & (strength.ravel() >= strength.max(initial=0.0) / float(n_epochs))
    head = np.repeat(np.arange(m, dtype=np.int32), k)[keep]
    tail = np.ascontiguousarray(knn_idx, np.int32).ravel()[keep]
    weights = strength.ravel()[keep]
    a, b = ab_params(min_dist)
    return UmapGraph(head, tail, umap_.make_epochs_per_sample(weights, n_epochs), a, b, n_epochs), strength


def transform_init(knn_idx: np.ndarray, strength: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """umap's ``init_graph_transform``: each new point at its first neighbour of strength 1
    (a row equal to a layout row starts on its point), else at the strength-weighted mean of
    its neighbours' coordinates; float32, C order."""
    pts = xy[knn_idx].astype(np.float64)  # (m, k, 2)
    w = strength.astype(np.float64)
    total = w.sum(1, keepdims=True)
    out = np.einsum("mk,mkj->mj", w, pts) / np.where(total > 0, total, np.nan)
    one = strength == 1.0
    hit = one.any(1)
    out[hit] = pts[hit, one[hit].argmax(1)]
    return np.ascontiguousarray(out, np.float32)


def umap_transform(knn_idx: np.ndarray, knn_dist: np.ndarray, layout_xy: np.ndarray,
                   min_dist: float = 0.1, fit_epochs: int | None = None,
                   seed: int = TRANSFORM_SEED) -> np.ndarray:
    """(m, 2) float32 places of new points in a fixed UMAP layout ``layout_xy`` (n, 2), given
    their k nearest layout points (indices and ascending distances, (m, k)): umap-learn's
    ``transform`` from its neighbour search on (graph, init, SGD of the new points only,
    initial learning rate 1/4, negative sampling seeded by ``seed``). The layout never moves."""
    graph, strength = transform_graph(knn_idx, knn_dist, min_dist, fit_epochs)
    tail = np.ascontiguousarray(layout_xy, np.float32).copy()  # the kernel's read-only side, kept apart
    xy = transform_init(knn_idx, strength, tail)
    rng_state = np.random.RandomState(seed).randint(INT32_MIN, INT32_MAX, 3).astype(np.int64)
    UmapSGD(xy, graph, rng_state, tail=tail, initial_alpha=UmapSGD.initial_alpha / 4.0).run_to(graph.n_epochs)
    return xy
