"""umap-learn's fuzzy graph and its SGD epochs, run from LatentLab's kNN with the SGD state
held between calls so a progressive layout equals one uninterrupted run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.jobs import JobContext
from engine.projection.numba_cache import cached_jit
from engine.projection.pca import mean_cov

UMAP_AXES_ROWS = 16_384  # rows (evenly strided) whose covariance gives a UMAP's principal axes
INT32_MIN, INT32_MAX = np.iinfo(np.int32).min + 1, np.iinfo(np.int32).max - 1  # as umap_.py


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
    between calls, so running epochs 0..a then a..b equals running 0..b in one go."""

    gamma, initial_alpha, negative_sample_rate = 1.0, 1.0, 5.0  # UMAP's defaults

    def __init__(self, xy: np.ndarray, graph: UmapGraph, rng_state: np.ndarray) -> None:
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
