"""The numba kernel of the cell kNN (engine/projection/knn.py): per row, keep the best-scored
candidates and re-rank them by exact distance. Compiled lazily (GIL-free) into the
persistent numba cache, so that the first search of a process loads it instead."""

from __future__ import annotations

import functools
import types
from typing import Any

import numpy as np


def _rerank_rows(score, cand, rows, self_at, start, xo, k, rerank):  # noqa: ANN001, ANN202 (numba)
    """For each of ``rows`` (positions in ``xo``) with its ``score`` row over the candidates
    ``cand``: keep the ``rerank`` lowest scores (itself, at ``self_at``, always), take their
    exact squared distances and return the k nearest as (idx, dist) (n_rows, k), self first
    at 0, fewer candidates than k repeating the farthest. The scan starts at ``start`` (the
    rows' own cell: near candidates first keep the kept set small). Compiled by
    ``rerank_kernel``; the scores of the rows themselves are overwritten."""
    n_rows, n_cand = score.shape
    keep = min(rerank, n_cand)
    picks = _lowest_scores(score, self_at, start, keep)  # (n_rows, keep) into cand, -1 empty
    exact = _exact_sq_dists(picks, cand, rows, self_at, xo)
    idx = np.empty((n_rows, k), np.int64)
    dist = np.empty((n_rows, k), np.float32)
    for i in range(n_rows):
        ranked = np.argsort(exact[i])
        for t in range(k):
            best = ranked[min(t, keep - 1)]
            j = picks[i, best]
            idx[i, t] = cand[j] if j >= 0 else rows[i]
            dist[i, t] = np.sqrt(max(exact[i, best], np.float32(0.0)))
    return idx, dist


def _lowest_scores(score, self_at, start, keep):  # noqa: ANN001, ANN202 (numba)
    """Per row, the indices of its ``keep`` lowest scores, scanning from ``start`` round
    (a max-heap of the kept ones; the row's own column set to -inf first); slots that NaN
    scores leave empty stay -1."""
    n_rows, n_cand = score.shape
    picks = np.full((n_rows, keep), -1, np.int64)
    heap = np.empty(keep, np.float32)  # the kept scores, largest at 0
    for i in range(n_rows):
        row, pick = score[i], picks[i]
        row[self_at[i]] = -np.inf
        heap[:] = np.inf
        for jj in range(n_cand):
            j = jj + start if jj + start < n_cand else jj + start - n_cand
            if row[j] < heap[0]:  # replace the largest kept score, then sift it down
                heap[0], pick[0], pos = row[j], j, 0
                while 2 * pos + 1 < keep:
                    child = 2 * pos + 1
                    if child + 1 < keep and heap[child + 1] > heap[child]:
                        child += 1
                    if heap[child] <= heap[pos]:
                        break
                    heap[pos], heap[child] = heap[child], heap[pos]
                    pick[pos], pick[child] = pick[child], pick[pos]
                    pos = child
    return picks


def _exact_sq_dists(picks, cand, rows, self_at, xo):  # noqa: ANN001, ANN202 (numba)
    """Squared distances (n_rows, keep) of each row to its picked candidates (-1 for itself,
    inf for an empty slot), four candidates at a time: four independent sums keep the
    vector units busy where one sum waits on its own latency (2.4x)."""
    n_rows, keep = picks.shape
    exact = np.full((n_rows, keep), np.inf, np.float32)
    for i in range(n_rows):
        a, p, t = xo[rows[i]], picks[i], 0
        while t < keep:
            if t + 4 <= keep and min(p[t], p[t + 1], p[t + 2], p[t + 3]) >= 0:
                b0, b1, b2, b3 = xo[cand[p[t]]], xo[cand[p[t + 1]]], xo[cand[p[t + 2]]], xo[cand[p[t + 3]]]
                s0 = s1 = s2 = s3 = np.float32(0.0)
                for u in range(a.shape[0]):
                    e0, e1, e2, e3 = a[u] - b0[u], a[u] - b1[u], a[u] - b2[u], a[u] - b3[u]
                    s0 += e0 * e0
                    s1 += e1 * e1
                    s2 += e2 * e2
                    s3 += e3 * e3
                exact[i, t], exact[i, t + 1], exact[i, t + 2], exact[i, t + 3] = s0, s1, s2, s3
                t += 4
                continue
            if p[t] >= 0:
                b, s = xo[cand[p[t]]], np.float32(0.0)
                for u in range(a.shape[0]):
                    s += (a[u] - b[u]) * (a[u] - b[u])
                exact[i, t] = s
            t += 1
        for t in range(keep):
            if p[t] == self_at[i]:
                exact[i, t] = -1.0
    return exact


@functools.cache
def rerank_kernel() -> Any:
    """``_rerank_rows`` compiled by numba (GIL-free, vectorised sums) into the persistent
    cache that ``engine.projection.numba_cache.configure_numba_cache`` sets up. Compiled here, not by
    decorators at import, because numba fixes a function's cache folder when decorated."""
    from engine.projection.numba_cache import configure_numba_cache
    configure_numba_cache()
    import numba
    fast = {"reassoc", "contract", "nsz", "arcp"}  # no "ninf": the score uses -inf for self
    jit = functools.partial(numba.njit, cache=True, nogil=True, fastmath=fast)
    helpers = {"_lowest_scores": jit(_lowest_scores), "_exact_sq_dists": jit(_exact_sq_dists)}
    # the compiled kernel calls the compiled helpers: its globals bind their names to them
    return jit(types.FunctionType(_rerank_rows.__code__, {**globals(), **helpers}, "_rerank_rows"))


def warm() -> None:
    """Load (or compile) the re-ranking kernel: one call on a tiny input."""
    x = np.zeros((3, 4), np.float32)
    rerank_kernel()(np.zeros((1, 3), np.float32), np.arange(3), np.zeros(1, np.int64),
                     np.zeros(1, np.int64), 0, x, 2, 2)
