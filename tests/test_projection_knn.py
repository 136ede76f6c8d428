"""UMAP's neighbour search (engine/projection/knn.py): the cell search and its numba re-ranking kernel
against exact kNN, on data whose spectrum falls fast (as activations') and on isotropic
clusters, where scoring in a few principal axes is not enough and more are taken."""

from __future__ import annotations

import numpy as np
import pytest

import engine.projection.knn as K
from engine.projection.knn_kernel import rerank_kernel
from engine.projection.pca import mean_cov


def low_rank(n: int = 8000, d: int = 192, seed: int = 0) -> np.ndarray:
    """Rows near a 24-dimensional subspace with a falling spectrum, plus a few outlier
    dimensions and small isotropic noise: the shape of residual-stream activations."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, 24)))[0]
    x = (rng.standard_normal((n, 24)) * np.linspace(8, 1, 24)) @ basis.T
    x[:, :3] += rng.standard_normal((n, 3)) * 20.0
    return (x + 0.3 * rng.standard_normal((n, d)) + 5.0).astype(np.float32)


def clusters(n: int = 8000, d: int = 192, seed: int = 0) -> np.ndarray:
    """40 Gaussian clusters with isotropic noise: within a cluster only all d dimensions
    rank the neighbours."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(40, d))
    return (centres[rng.integers(0, 40, n)] + rng.normal(size=(n, d))).astype(np.float32)


def recall(idx: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / idx.shape[1] for a, b in zip(idx, want, strict=True)]))


def check_neighbours(x: np.ndarray, idx: np.ndarray, dist: np.ndarray) -> None:
    """Each point first at 0, the distances exact for the returned neighbours, nearest first."""
    assert (idx[:, 0] == np.arange(len(x))).all() and (dist[:, 0] == 0).all()
    exact = np.sqrt(((x[idx] - x[:, None, :]) ** 2).sum(-1))
    np.testing.assert_allclose(dist, exact, rtol=1e-4, atol=1e-3)
    assert (np.diff(dist, axis=1) >= -1e-4).all()


@pytest.fixture
def fits(monkeypatch) -> list[tuple[int, int]]:
    """(scoring axes, probes) that each cell search settled on."""
    found: list[tuple[int, int]] = []
    fit = K._CellSearch.fit

    def spy(self, *args):
        found.append(fit(self, *args))
        return found[-1]
    monkeypatch.setattr(K._CellSearch, "fit", spy)
    return found


@pytest.mark.parametrize("data, more_axes, more_cells", [(low_rank, False, True), (clusters, True, False)])
def test_cell_knn_recall_against_exact_knn(data, more_axes, more_cells, fits):
    """>= 0.95 of the exact 15 nearest found, with exact distances, on both kinds of data:
    the self-check makes the search score the isotropic clusters in more than KNN_DIMS
    axes, and probe more cells than NEAR_CELLS for the 24-dimensional cloud, whose
    neighbourhoods straddle many k-means cells."""
    x = data()
    idx, dist = K.cell_knn(x, *mean_cov(x), 15, np.random.RandomState(0))
    check_neighbours(x, idx, dist)
    assert recall(idx, K.torch_knn(x, 15)[0]) >= 0.95
    assert (fits[0][0] > K.KNN_DIMS) == more_axes
    assert (fits[0][1] > K.NEAR_CELLS) == more_cells


def test_cell_knn_searching_everything_is_exact_knn():
    """Probing every cell and re-ranking every candidate is the straightforward exact kNN."""
    x = clusters(n=1500, d=24)
    idx, dist = K.cell_knn(x, *mean_cov(x), 10, np.random.RandomState(0), dims=4, probes=9,
                           rerank=1500, n_cells=9)
    want, want_dist = K.exact_knn(x, 10)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-4, atol=1e-4)
    assert recall(idx, want) > 0.999  # only ties may differ


def test_rerank_kernel_matches_numpy():
    """The kernel keeps the `rerank` lowest scores (itself always) and returns their k
    nearest by exact distance, as the same steps written in numpy do."""
    rng = np.random.default_rng(1)
    xo = rng.normal(size=(300, 37)).astype(np.float32)
    cand = np.sort(rng.choice(300, 120, replace=False))
    rows = cand[10:30]
    self_at = np.arange(10, 30)
    score = rng.normal(size=(20, 120)).astype(np.float32)
    idx, dist = rerank_kernel()(score.copy(), cand, rows, self_at, 10, xo, 6, 25)
    for i, row in enumerate(rows):
        s = score[i].copy()
        s[self_at[i]] = -np.inf
        kept = cand[np.argsort(s)[:25]]
        d2 = ((xo[kept] - xo[row]) ** 2).sum(1)
        d2[kept == row] = -1.0
        best = np.argsort(d2)[:6]
        np.testing.assert_array_equal(idx[i], kept[best])
        np.testing.assert_allclose(dist[i], np.sqrt(np.maximum(d2[best], 0)), rtol=1e-5)


def test_cell_knn_small_cells_repeat_the_farthest(monkeypatch):
    """A cell whose candidates are fewer than k repeats its farthest neighbour (one point a
    cell, CELL_PROBES cells searched, the self-check off)."""
    x = clusters(n=300, d=6)
    monkeypatch.setattr(K, "CHECK_ROWS", 10)
    monkeypatch.setattr(K, "CELL_RECALL", 0.0)
    idx, dist = K.cell_knn(x, *mean_cov(x), 8, np.random.RandomState(0), n_cells=300)
    check_neighbours(x, idx, dist)
    short = (idx[:, -1] == idx[:, -2]) & (dist[:, -1] == dist[:, -2])
    assert short.any()


def test_knn_dispatch():
    """Exact float64 below EXACT_KNN_BELOW, torch without a covariance, else the cells."""
    x = clusters(n=500, d=5)
    idx, dist = K.knn(x, 5, np.random.RandomState(0))
    want, want_dist = K.torch_knn(x, 5)
    np.testing.assert_allclose(dist, want_dist, atol=1e-4)
    assert recall(idx, want) > 0.999
    assert idx.dtype == np.int32 and dist.dtype == np.float32
