"""Exact PCA from the covariance accumulated in float64 row blocks: the scatter's PCA layout,
the principal axes UMAP's kNN searches in and its layout starts from."""

from __future__ import annotations

import numpy as np

from engine.projection.layout import Layout
from engine.projection.parallel import row_blocks, single_threaded, workers

BLOCK_BYTES = 64 << 20  # float64 working block of the streamed PCA
COV_BLOCK = 4096  # rows per float32 cross product of the PCA covariance


def pca_layout(x: np.ndarray, ids: np.ndarray, name: str) -> Layout:
    """The first two principal components of ``x`` (n, d): exact, from the d x d covariance
    accumulated in float64 blocks; each axis signed so its largest |loading| is positive."""
    mean, cov = mean_cov(x)
    w = top_components(cov, 2)  # (d, 2)
    return Layout(name, project_onto(x, mean, w), np.asarray(ids, np.int64), True)


def _blocks(n: int, d: int) -> range:
    return range(0, n, max(1, BLOCK_BYTES // (8 * max(d, 1))))


def mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    with single_threaded():  # LAPACK's threads stall on a busy core (engine/projection/parallel.py)
        vals, vecs = np.linalg.eigh(cov)
    top = np.argsort(vals)[::-1][:k]
    w[:, :len(top)] = vecs[:, top]
    pivot = w[np.abs(w).argmax(axis=0), np.arange(k)]
    return w * np.where(pivot < 0, -1.0, 1.0)


def project_onto(x: np.ndarray, mean: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(x - mean) @ w in float64 blocks, as float32 (n, k)."""
    n, d = x.shape
    out = np.empty((n, w.shape[1]), np.float32)
    step = _blocks(n, d).step
    for lo in _blocks(n, d):
        out[lo:lo + step] = (x[lo:lo + step].astype(np.float64) - mean) @ w
    return out
