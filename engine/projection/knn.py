"""Euclidean k-nearest neighbours for UMAP's fuzzy graph (each point its own first
neighbour): exact up to TORCH_KNN_UP_TO rows, an inverted-file search with exact re-ranking
above (recall >= 0.95); why and how: docs/architecture.md, "UMAP's nearest neighbours"."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from engine.projection.knn_kernel import rerank_kernel
from engine.projection.parallel import BLOCK, concat_blocks, workers

EXACT_KNN_BELOW = 4096  # as umap-learn: smaller sets get exact neighbours (float64)
TORCH_KNN_UP_TO = 12_000  # exact float32 neighbours with torch up to here, then the cell search
KNN_DIMS = 96  # principal axes the cell search clusters and scores in (more if needed)
CELLS = 4.0  # CELLS x sqrt(n) k-means cells
CLUSTER_DIMS = 64  # leading principal axes the k-means cells are found in
CELL_PROBES = 4  # a row's nearest cells that its cell searches, at least
NEAR_CELLS = 8  # each row's nearest cells found up front (more when the self-check asks)
CELL_RECALL = 0.97  # share of a sample's exact neighbours its cells must hold (else more probes)
RANK_RECALL = 0.98  # share of those the re-ranking must keep (else more scoring axes)
CHECK_ROWS = 96  # rows sampled for these checks
RERANK = 48  # best-scored candidates of a point whose exact distances are taken


def knn(x: np.ndarray, k: int, random_state: np.random.RandomState,
        moments: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour indices (n, k) int32 and distances (n, k) float32 of the rows of ``x``; above
    TORCH_KNN_UP_TO rows, given ``moments`` (the rows' mean and covariance), the cell search."""
    if len(x) < EXACT_KNN_BELOW:
        return exact_knn(x, k)
    if len(x) <= TORCH_KNN_UP_TO or moments is None:
        return torch_knn(x, k)
    return cell_knn(x, *moments, k, random_state)


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
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


def torch_knn(x: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
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


# ------------------------------------------------------------------ the cell search
def cell_knn(x: np.ndarray, mean: np.ndarray, cov: np.ndarray, k: int,
             random_state: np.random.RandomState, dims: int = KNN_DIMS, probes: int = CELL_PROBES,
             rerank: int = RERANK, n_cells: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate kNN of the rows ``x`` (n, d) with mean ``mean`` and covariance ``cov`` (or
    estimates of them: any mean and orthonormal axes keep the score a lower bound): the
    inverted-file search of the module docstring with CELLS x sqrt(n) cells (or
    ``n_cells``), at least ``probes`` nearest cells per point and ``dims`` scoring axes."""
    import torch

    from engine.projection.pca import top_components
    n, d = x.shape
    c = max(1, min(n, n_cells or int(round(CELLS * np.sqrt(n)))))
    with workers() as pool, torch.no_grad():
        w = top_components(cov, min(dims, d)).astype(np.float32)
        z = concat_blocks(pool, n, lambda lo, hi: x[lo:hi] @ w - mean.astype(np.float32) @ w)  # (n, dims)
        zk = torch.from_numpy(np.ascontiguousarray(z[:, :CLUSTER_DIMS]))
        centres = _kmeans(pool, zk, c, random_state)

        def nearest_cells(p: int) -> np.ndarray:  # (n, p) each row's p nearest cells
            return concat_blocks(pool, n, lambda lo, hi: _nearest_centres(zk[lo:hi], centres, min(p, c)))
        search = _CellSearch(pool, x, mean, nearest_cells, c, k, rerank, probes)
        search.fit(torch.from_numpy(z[search.order]), cov, random_state)
        list(pool.map(search.cell, range(c)))
    idx, dist = np.empty((n, k), np.int32), np.empty((n, k), np.float32)
    idx[search.order], dist[search.order] = search.order[search.idx], search.dist
    return idx, dist


def _nearest_centres(z: Any, centres: Any, p: int) -> np.ndarray:
    """(len(z), p) the p nearest centres of each row, nearest first (|c|^2 - 2 z.c ranks them)."""
    import torch
    score = torch.addmm((centres * centres).sum(1)[None, :], z, centres.T, alpha=-2.0)
    return (score.argmin(1)[:, None] if p == 1 else score.topk(p, largest=False).indices).numpy()


def _kmeans(pool: ThreadPoolExecutor, z: Any, c: int, random_state: np.random.RandomState,
            iters: int = 4, per_cell: int = 16) -> Any:
    """Centres (c, m) of Lloyd's k-means on a seeded sample of ``per_cell`` x c rows of z."""
    import torch
    n = len(z)
    sample = z[torch.from_numpy(random_state.choice(n, min(n, per_cell * c), replace=False))]
    centres = sample[:c].clone()  # the sample is random: its first c rows are the seeds
    for _ in range(iters):
        cells = torch.from_numpy(concat_blocks(pool, len(sample), lambda lo, hi, now=centres: _nearest_centres(
            sample[lo:hi], now, 1))[:, 0])
        sums = torch.zeros_like(centres).index_add_(0, cells, sample)
        counts = torch.bincount(cells, minlength=c).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return centres


class _CellSearch:
    """The rows in cell order, their scoring coordinates, and the outputs (positions in
    that order) that ``cell`` fills one cell at a time."""

    def __init__(self, pool: ThreadPoolExecutor, x: np.ndarray, mean: np.ndarray,
                 nearest_cells: Callable[[int], np.ndarray], c: int, k: int, rerank: int,
                 probes: int) -> None:
        import torch
        n = len(x)
        self.pool, self.nearest_cells, self.c = pool, nearest_cells, c
        near = nearest_cells(max(probes, NEAR_CELLS))
        self.order = np.argsort(near[:, 0], kind="stable")  # cell of a row: its nearest centre
        self.bounds = np.searchsorted(near[self.order, 0], np.arange(c + 1))
        self.near = near[self.order]  # (n, p) each row's nearest cells, more found on demand
        self.xo = concat_blocks(pool, n, lambda lo, hi: x[self.order[lo:hi]])  # (n, d) float32
        sq = concat_blocks(pool, n, lambda lo, hi: np.einsum("ij,ij->i", self.xo[lo:hi], self.xo[lo:hi]))
        self.mean = mean.astype(np.float32)
        self.sq = torch.from_numpy(sq)  # |x|^2
        self.sqc = torch.from_numpy(sq - 2.0 * (self.xo @ self.mean) + self.mean @ self.mean)  # |x - mean|^2
        self.k, self.rerank, self.probes = k, rerank, min(probes, near.shape[1])
        self.idx = np.empty((n, k), np.int64)
        self.dist = np.empty((n, k), np.float32)

    def set_dims(self, zo: Any) -> None:
        """Score by the centred coordinates ``zo`` (n, m; cell order) and the norm r outside
        their span: z.z' + |r||r'| >= (x - mean).(x' - mean), so the score bounds distances."""
        import torch
        resid = (self.sqc - (zo * zo).sum(1)).clamp_min(0.0).sqrt()
        self.zo = torch.cat([zo, resid[:, None]], 1).contiguous()

    def fit(self, zo: Any, cov: np.ndarray, random_state: np.random.RandomState) -> tuple[int, int]:
        """Probe more cells until a sample of rows has CELL_RECALL of its exact k nearest
        among its candidates, then score in more principal axes (doubling) until the
        re-ranking keeps RANK_RECALL of the nearest among the candidates: activations' fast
        falling spectrum needs few axes, isotropic clusters all. Returns (axes, probes)."""
        import torch

        from engine.projection.pca import top_components
        n, d = self.xo.shape
        sample = np.sort(random_state.choice(n, min(n, CHECK_ROWS), replace=False))
        nearest = self.exact_nearest(sample)
        while self.probes < self.c and self.within(sample, nearest) < CELL_RECALL:
            self.probes += 1
            if self.probes > self.near.shape[1]:  # each row's next nearest cells
                wider = self.nearest_cells(2 * self.near.shape[1])[self.order]
                self.near = np.concatenate([self.near[:, :1], wider[:, 1:]], 1)  # same cells
        self.set_dims(zo)
        while zo.shape[1] < d and self.rank_recall(sample) < RANK_RECALL:
            w = top_components(cov, min(2 * zo.shape[1], d)).astype(np.float32)
            zo = torch.from_numpy(self.xo @ w - self.mean @ w)
            self.set_dims(zo)
        return zo.shape[1], self.probes

    def exact_nearest(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), k) positions of the exact k nearest of ``rows`` among all rows, from
        the k nearest in each block of rows (one GEMM a block, on the pool)."""
        import torch
        xs, n, k = torch.from_numpy(self.xo[rows]), len(self.xo), min(self.k, len(self.xo))

        def block(lo: int) -> tuple[Any, Any]:
            hi = min(n, lo + 4 * BLOCK)
            d2 = torch.addmm(self.sq[None, lo:hi], xs, torch.from_numpy(self.xo[lo:hi]).T, alpha=-2.0)
            vals, at = d2.topk(min(k, hi - lo), largest=False)
            return vals, at + lo
        vals, at = zip(*self.pool.map(block, range(0, n, 4 * BLOCK)), strict=True)
        best = torch.cat(vals, 1).topk(k, largest=False).indices
        return torch.cat(at, 1).gather(1, best).numpy()

    def within(self, rows: np.ndarray, nearest: np.ndarray) -> float:
        """The share of ``nearest`` (rows' exact neighbours) in the cells ``rows`` search."""
        cell_of = np.searchsorted(self.bounds, np.arange(len(self.xo)), side="right") - 1
        hits = 0
        for row, theirs in zip(rows, nearest, strict=True):
            c = cell_of[row]
            probe = self.probe_cells(int(c))
            hits += int(np.isin(cell_of[theirs], probe).sum())
        return hits / max(nearest.size, 1)

    def rank_recall(self, rows: np.ndarray) -> float:
        """Of the exact k nearest among each of ``rows``' candidates, the share that the
        re-ranking of its ``rerank`` best scores finds (by distance, so ties count)."""
        import torch
        kernel, found = rerank_kernel(), 0.0
        cells = np.searchsorted(self.bounds, rows, side="right") - 1
        for c in np.unique(cells):
            mine = rows[cells == c]
            cand, own = self.candidates(int(c))
            at = own + mine - self.bounds[c]
            score = self.scores(self.zo[torch.from_numpy(mine)], cand)
            _, got = kernel(score, cand, mine, at, own, self.xo, self.k, self.rerank)
            _, want = kernel(score, cand, mine, at, own, self.xo, self.k, len(cand))
            found += float((got <= want[:, -1:] * (1 + 1e-6)).sum()) / self.k
        return found / max(len(rows), 1)

    def probe_cells(self, c: int) -> np.ndarray:
        """The cells cell ``c`` searches: each of its rows' ``probes`` nearest, and itself."""
        lo, hi = int(self.bounds[c]), int(self.bounds[c + 1])
        return np.union1d(self.near[lo:hi, :self.probes], [c])

    def candidates(self, c: int) -> tuple[np.ndarray, int]:
        """Positions of the rows cell ``c`` searches (cells among its rows' nearest, itself
        included) and where its own rows start among them."""
        probe = self.probe_cells(c)
        starts, sizes = self.bounds[probe], self.bounds[probe + 1] - self.bounds[probe]
        at = np.cumsum(sizes) - sizes  # where each cell's rows start in cand
        return np.arange(sizes.sum()) + np.repeat(starts - at, sizes), int(at[probe == c][0])

    def cell(self, c: int) -> None:
        """Score the candidates of cell ``c``'s rows (one GEMM), then re-rank exactly."""
        lo, hi = int(self.bounds[c]), int(self.bounds[c + 1])
        if lo == hi:
            return
        cand, own = self.candidates(c)
        rows = np.arange(lo, hi)
        self.idx[lo:hi], self.dist[lo:hi] = rerank_kernel()(
            self.scores(self.zo[lo:hi], cand), cand, rows, own + rows - lo, own, self.xo, self.k, self.rerank)

    def scores(self, zq: Any, cand: np.ndarray) -> np.ndarray:
        """(len(zq), len(cand)) for queries with scoring coordinates ``zq``: |x_c - mean|^2 -
        2 (z_q.z_c + |r_q||r_c|), the distance's lower bound less |x_q - mean|^2 (the same
        along a row); one GEMM."""
        import torch
        ct = torch.from_numpy(cand)
        with torch.no_grad():
            return torch.addmm(self.sqc[ct][None, :], zq, self.zo[ct].T, alpha=-2.0).numpy()


