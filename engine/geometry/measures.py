"""Similarity of two representations of the same inputs: row-aligned matrices X (n, d1)
and Y (n, d2), numpy or torch.

- Linear CKA (Kornblith et al. 2019) in the feature-space form from d x d cross-products,
  accumulated over row blocks in float64 (``CrossGram``), or the Gram form on n x n
  matrices; RBF CKA (bandwidth a fraction of the median pairwise distance); debiased CKA
  from the unbiased HSIC estimator (Song et al. 2012, Nguyen et al. 2021).
- SVCCA (Raghu et al. 2017) and PWCCA (Morcos et al. 2018); orthogonal Procrustes shape
  distances (Williams et al. 2021); RSA; mutual k-nearest-neighbour alignment (Huh et al.
  2024); kernel analysis (Montavon et al. 2011).
- ``MEASURES``: name -> f(x, y) -> float. Streamed CKA over stores, the layer matrix and
  the ``compare`` job live in ``engine.geometry.streams``.

A measure that subsamples says so with a ``GeometryNote`` warning (``compare`` records them).
No n x n matrix is built above ``GRAM_MAX_ROWS`` rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg
import torch
from scipy.stats import rankdata

from engine.errors import LatentLabError

GRAM_MAX_ROWS = 10_000  # largest n for which an n x n matrix is ever built
RSA_MAX_ROWS = 2_000
BLOCK_ROWS = 4096  # rows per block of the feature-space accumulation
RANK_RTOL = 1e-6  # singular values below this share of the largest count as zero (CCA)

Array = np.ndarray | torch.Tensor


class GeometryNote(UserWarning):
    """A measure ran on fewer rows than it was given (subsampled) or fell back to another form."""


class KernelCurve(NamedTuple):
    """Kernel analysis: classification error using the top ``components`` kernel PCs."""

    components: list[int]
    errors: np.ndarray  # (len(components),) training error of the least-squares classifier


# ------------------------------------------------------------------ inputs
def as_tensor(x: Array, name: str = "x", device: torch.device | None = None,
              finite: bool = True) -> torch.Tensor:
    """A 2-D floating torch view of ``x`` (numpy or torch), refusing NaN and inf (``finite``)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    if device is not None:
        t = t.to(device)
    if t.ndim != 2:
        raise LatentLabError(f"{name} must be a 2-D (rows, features) matrix, not shape {tuple(t.shape)}")
    if finite and not bool(torch.isfinite(t).all()):
        raise LatentLabError(f"{name} holds NaN or inf values")
    return t


def pair(x: Array, y: Array, min_rows: int = 2, finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Both matrices as tensors on x's device, checked to have the same number of rows."""
    tx = as_tensor(x, "x", finite=finite)
    ty = as_tensor(y, "y", tx.device, finite)
    if tx.shape[0] != ty.shape[0]:
        raise LatentLabError(f"x and y must be row-aligned: x has {tx.shape[0]} rows, y has {ty.shape[0]}")
    if tx.shape[0] < min_rows:
        raise LatentLabError(f"this measure needs at least {min_rows} rows, got {tx.shape[0]}")
    return tx, ty


def sample_ids(n: int, max_rows: int | None, seed: int,
               rows: np.ndarray | None = None) -> np.ndarray | None:
    """None (all ``n`` rows) or sorted row ids: ``rows`` (a selection; checked to lie in
    0..n-1) or all rows, ``max_rows`` of them drawn at random with ``seed`` when more."""
    if rows is not None:
        ids = np.unique(np.asarray(rows, np.int64).ravel())
        if ids.size and (ids[0] < 0 or ids[-1] >= n):
            bad = ids[0] if ids[0] < 0 else ids[-1]
            raise LatentLabError(f"row {bad} is outside the store's {n:,} rows")
        if ids.size < 2:
            raise LatentLabError(f"comparing needs at least 2 rows, the selection holds {ids.size}")
        if max_rows is None or len(ids) <= max_rows:
            return ids
        return np.sort(np.random.default_rng(seed).choice(ids, size=int(max_rows), replace=False))
    if max_rows is None or n <= max_rows:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_rows), replace=False))


def _subsample(what: str, max_rows: int, seed: int, *arrays: torch.Tensor) -> list[torch.Tensor]:
    """The same random rows of every array when there are more than ``max_rows``; warns."""
    n = arrays[0].shape[0]
    ids = sample_ids(n, max_rows, seed)
    if ids is None:
        return list(arrays)
    warnings.warn(GeometryNote(f"{what}: {max_rows:,} of {n:,} rows drawn at random (seed {seed})"),
                  stacklevel=3)
    index = torch.from_numpy(ids).to(arrays[0].device)
    return [a[index] for a in arrays]


def _gram_rows(n: int, what: str) -> None:
    if n > GRAM_MAX_ROWS:
        raise LatentLabError(f"{what} builds an n x n matrix; {n:,} rows is above {GRAM_MAX_ROWS:,} "
                             "(use the feature form or subsample with max_rows)")


def _centre64(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    return x - x.mean(0, keepdim=True)  # (n, d)


# ------------------------------------------------------------------ cross-products
class CrossGram:
    """Running float64 sums of chosen blocks of Z^T Z over row blocks of Z = [Z_1 | .. | Z_G].

    Only the blocks (p, q), p <= q, asked for (plus every diagonal block) are computed, as
    one GEMM per run of adjacent groups; rows are shifted by the first block's mean (or
    ``shift``) so that centring at the end does not cancel. Memory: the kept blocks, one
    row block and one product, reused (fresh buffers per block cost page faults)."""

    def __init__(self, widths: Sequence[int], pairs: Iterable[tuple[int, int]],
                 device: torch.device | str = "cpu", shift: torch.Tensor | None = None) -> None:
        self.offsets = np.cumsum([0, *widths]).tolist()
        self.device = torch.device(device)
        wanted = {(min(p, q), max(p, q)) for p, q in pairs} | {(g, g) for g in range(len(widths))}
        self.runs: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
        for p in range(len(widths)):
            qs = sorted(q for pp, q in wanted if pp == p)
            for first, last in _runs(qs):
                acc = torch.zeros(widths[p], self.offsets[last + 1] - self.offsets[first],
                                  dtype=torch.float64, device=self.device)
                self.runs.setdefault(p, []).append((first, last, acc))
        self.col_sum = torch.zeros(self.offsets[-1], dtype=torch.float64, device=self.device)
        self.shift = None if shift is None else shift.to(self.device, torch.float64)
        self.n = 0
        self._z = torch.empty(0)  # (rows, D) scratch for a centred block
        self._prod = torch.empty(0)  # flat scratch for one GEMM's product

    def cols(self, g: int) -> slice:
        """The columns of group g in Z."""
        return slice(self.offsets[g], self.offsets[g + 1])

    def _scratch(self, rows: int, dtype: torch.dtype) -> torch.Tensor:
        if self._z.dtype != dtype or self._z.shape[0] < rows:
            self._z = torch.empty(rows, self.offsets[-1], dtype=dtype, device=self.device)
            size = max(acc.numel() for runs in self.runs.values() for *_, acc in runs)
            self._prod = torch.empty(size, dtype=dtype, device=self.device)
        return self._z[:rows]

    def add(self, parts: Sequence[torch.Tensor]) -> None:
        """Accumulate one row block given as its groups' parts, (b, w_g) each: float64 GEMMs
        when a part is float64, else float32 (float16 rows are converted)."""
        work = torch.float64 if any(p.dtype == torch.float64 for p in parts) else torch.float32
        z = self._scratch(parts[0].shape[0], work)  # (b, D)
        for g, part in enumerate(parts):
            z[:, self.cols(g)].copy_(part)
        if self.shift is None:
            self.shift = z.mean(0, dtype=torch.float64)
        z.sub_(self.shift.to(work))
        for p, runs in self.runs.items():
            left = z[:, self.cols(p)].T  # (w_p, b)
            for first, last, acc in runs:
                right = z[:, self.offsets[first]:self.offsets[last + 1]]
                prod = self._prod[:acc.numel()].view(acc.shape)
                acc.add_(torch.matmul(left, right, out=prod))
        self.col_sum += z.sum(0).to(torch.float64)
        self.n += z.shape[0]

    def block(self, p: int, q: int) -> torch.Tensor:
        """The centred cross-product X_p^T X_q (w_p, w_q) in float64 (n times the covariance)."""
        if p > q:
            return self.block(q, p).T
        for first, last, acc in self.runs[p]:
            if first <= q <= last:
                lo = self.offsets[q] - self.offsets[first]
                raw = acc[:, lo:lo + self.offsets[q + 1] - self.offsets[q]]
                return raw - torch.outer(self.col_sum[self.cols(p)], self.col_sum[self.cols(q)]) / self.n
        raise KeyError(f"block ({p}, {q}) was not accumulated")

    def finite(self, g: int) -> bool:
        """Whether group g's rows held no NaN or inf (they would poison its column sums)."""
        return bool(torch.isfinite(self.col_sum[self.cols(g)]).all())

    def cka(self, p: int, q: int) -> float:
        """Linear CKA between groups p and q: ||C_pq||^2 / (||C_pp|| ||C_qq||); NaN if one is constant."""
        cross = float(self.block(p, q).square().sum())
        norms = float(self.block(p, p).norm()) * float(self.block(q, q).norm())
        return cross / norms if norms > 0 else math.nan


def _runs(values: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive integers in a sorted list: [0,1,2,5] -> [(0,2),(5,5)]."""
    out: list[tuple[int, int]] = []
    for v in values:
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


# ------------------------------------------------------------------ CKA
def linear_cka(x: Array, y: Array, form: str = "auto") -> float:
    """Linear CKA; ``form`` "feature" (d x d cross-products, any n), "gram" (n x n, n <= 10k)
    or "auto" (the cheaper of the two, never a Gram above 10k rows)."""
    tx, ty = pair(x, y, finite=form == "gram")  # the feature form checks its sums instead
    n, d1, d2 = tx.shape[0], tx.shape[1], ty.shape[1]
    if form == "auto":
        form = "gram" if n <= GRAM_MAX_ROWS and n * (d1 + d2) < d1 * d1 + d2 * d2 + d1 * d2 else "feature"
    if form == "feature":
        return _linear_cka_feature(tx, ty)
    if form == "gram":
        _gram_rows(n, "linear CKA in the Gram form")
        tx, ty = pair(tx, ty)  # NaN and inf checks
        cx, cy = _centre64(tx), _centre64(ty)  # centred columns: the Grams are centred too
        return _cka_gram(cx @ cx.T, cy @ cy.T)
    raise LatentLabError(f"CKA form {form!r} is not one of auto, feature, gram")


def _linear_cka_feature(x: torch.Tensor, y: torch.Tensor) -> float:
    """Feature-space linear CKA over row blocks: exact mean first, then float64 sums of GEMMs
    (float64 GEMMs for float64 input, else float32)."""
    work = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    shift = torch.cat([x.mean(0, dtype=work), y.mean(0, dtype=work)])  # any shift is exact; the mean is accurate
    cg = CrossGram([x.shape[1], y.shape[1]], [(0, 1)], x.device, shift)
    for s in range(0, x.shape[0], BLOCK_ROWS):
        cg.add([x[s:s + BLOCK_ROWS], y[s:s + BLOCK_ROWS]])
    for g, name in enumerate("xy"):
        if not cg.finite(g):
            raise LatentLabError(f"{name} holds NaN or inf values")
    return cg.cka(0, 1)


def _centre_gram(k: torch.Tensor) -> torch.Tensor:
    """H K H for the centring matrix H = I - 11^T/n, in place."""
    means = k.mean(0)  # (n,) K is symmetric: row means = column means
    k -= means[None, :]
    k -= (means - means.mean())[:, None]
    return k


def _cka_gram(kc: torch.Tensor, lc: torch.Tensor) -> float:
    """CKA from centred Gram matrices: <Kc, Lc> / (||Kc|| ||Lc||)."""
    norms = float(kc.norm()) * float(lc.norm())
    return float((kc * lc).sum()) / norms if norms > 0 else math.nan


def rbf_gram(x: torch.Tensor, sigma_frac: float = 0.8) -> torch.Tensor:
    """RBF kernel exp(-|xi - xj|^2 / (2 sigma^2)), sigma = ``sigma_frac`` x the median
    distance between distinct rows (i < j); float64 (n, n)."""
    x = _centre64(x)
    sq_norm = x.square().sum(1)
    sq = (sq_norm[:, None] + sq_norm[None, :] - 2 * (x @ x.T)).clamp_min_(0)  # (n, n)
    sq.fill_diagonal_(0)
    upper = torch.triu(torch.ones_like(sq, dtype=torch.bool), diagonal=1)
    median = float(np.median(sq[upper].sqrt().cpu().numpy())) if sq.shape[0] > 1 else 0.0
    if median <= 0:
        raise LatentLabError("RBF bandwidth is zero: at least half of the row pairs are identical")
    return sq.mul_(-1.0 / (2 * (sigma_frac * median) ** 2)).exp_()


def rbf_cka(x: Array, y: Array, sigma_frac: float = 0.8, max_rows: int = GRAM_MAX_ROWS,
            seed: int = 0) -> float:
    """RBF-kernel CKA (Gram form); above ``max_rows`` (<= 10k) rows a seeded subsample."""
    _gram_rows(max_rows, "RBF CKA")
    tx, ty = _subsample("rbf_cka", max_rows, seed, *pair(x, y))
    return _cka_gram(_centre_gram(rbf_gram(tx, sigma_frac)), _centre_gram(rbf_gram(ty, sigma_frac)))


def hsic1(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
    """Unbiased HSIC (Song et al. 2012) of two n x n Gram matrices (n >= 4)."""
    n = k.shape[0]
    kt, lt = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    trace = float((kt * lt).sum())
    middle = float(kt.sum()) * float(lt.sum()) / ((n - 1) * (n - 2))
    last = 2.0 / (n - 2) * float(kt.sum(0) @ lt.sum(0))
    return (trace + middle - last) / (n * (n - 3))


def _hsic1_linear(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased HSIC of the linear kernels XX^T and YY^T without an n x n matrix (float64)."""
    n = x.shape[0]
    qx, qy = x.square().sum(1), y.square().sum(1)  # (n,) the Grams' diagonals
    sx, sy = x.sum(0), y.sum(0)
    trace = float((x.T @ y).square().sum() - qx @ qy)
    middle = float(sx @ sx - qx.sum()) * float(sy @ sy - qy.sum()) / ((n - 1) * (n - 2))
    last = 2.0 / (n - 2) * float((x @ sx - qx) @ (y @ sy - qy))
    return (trace + middle - last) / (n * (n - 3))


def _debiased(hxy: float, hxx: float, hyy: float) -> float:
    norms = hxx * hyy
    return hxy / math.sqrt(norms) if norms > 0 else math.nan


def debiased_cka(x: Array, y: Array, kernel: str = "linear", sigma_frac: float = 0.8,
                 max_rows: int = GRAM_MAX_ROWS, seed: int = 0) -> float:
    """CKA from the unbiased HSIC estimator: near 0 for independent inputs at any n/d.
    Linear: feature-space form on all rows; RBF: Gram form, seeded subsample above max_rows."""
    tx, ty = pair(x, y, min_rows=4)
    if kernel == "linear":
        cx, cy = _centre64(tx), _centre64(ty)  # HSIC_1 is invariant to shifts; centring keeps it exact
        return _debiased(_hsic1_linear(cx, cy), _hsic1_linear(cx, cx), _hsic1_linear(cy, cy))
    if kernel != "rbf":
        raise LatentLabError(f"kernel {kernel!r} is not one of linear, rbf")
    _gram_rows(max_rows, "debiased RBF CKA")
    tx, ty = _subsample("debiased_cka", max_rows, seed, tx, ty)
    k, l = rbf_gram(tx, sigma_frac), rbf_gram(ty, sigma_frac)  # noqa: E741
    return _debiased(hsic1(k, l), hsic1(k, k), hsic1(l, l))


# ------------------------------------------------------------------ CCA family
def _basis(xc: torch.Tensor, keep_variance: float | None) -> torch.Tensor:
    """Orthonormal basis (n, k) of the column space of centred ``xc``: the leading singular
    directions holding ``keep_variance`` of the variance, or all above RANK_RTOL."""
    q, r = torch.linalg.qr(xc)  # (n, m), (m, d)
    ur, s, _ = torch.linalg.svd(r)
    if s.numel() == 0 or float(s[0]) == 0:
        return xc.new_zeros(xc.shape[0], 0)
    k = int((s > s[0] * RANK_RTOL).sum())
    if keep_variance is not None:
        share = torch.cumsum(s.square(), 0) / s.square().sum()
        k = min(k, int((share < keep_variance - 1e-12).sum()) + 1)
    return q @ ur[:, :k]


def _cca(x: Array, y: Array, keep_variance: float | None):
    """Canonical correlations (k,), the centred inputs, their bases and the CCA rotations."""
    cx, cy = (_centre64(t) for t in pair(x, y))
    ux, uy = _basis(cx, keep_variance), _basis(cy, keep_variance)  # (n, kx), (n, ky)
    a, rho, bt = torch.linalg.svd(ux.T @ uy, full_matrices=False)
    return rho.clamp(0, 1), (cx, ux, a), (cy, uy, bt.T)


def svcca(x: Array, y: Array, keep_variance: float = 0.99) -> float:
    """SVCCA: keep the singular directions holding 99% of each side's variance, then the
    mean canonical correlation between them."""
    rho = _cca(x, y, keep_variance)[0]
    return float(rho.mean()) if rho.numel() else math.nan


def pwcca(x: Array, y: Array) -> float:
    """PWCCA: canonical correlations weighted by how much of the narrower side's neurons
    each canonical variate accounts for (sum of |projections|, Morcos et al. 2018)."""
    rho, side_x, side_y = _cca(x, y, None)
    if not rho.numel():
        return math.nan
    acts, basis, rot = side_x if side_x[1].shape[1] <= side_y[1].shape[1] else side_y
    variates = basis @ rot[:, :rho.numel()]  # (n, k) orthonormal canonical variates
    alpha = (variates.T @ acts).abs().sum(1)  # (k,)
    return float((alpha * rho).sum() / alpha.sum())


# ------------------------------------------------------------------ shape metrics, RSA, kNN
def _nuclear_alignment(x: Array, y: Array) -> float:
    """Nuclear norm of X^T Y after centring and unit Frobenius norm (zero-padding the
    narrower side changes no singular value); NaN if one side is constant."""
    cx, cy = (_centre64(t) for t in pair(x, y))
    nx, ny = float(cx.norm()), float(cy.norm())
    if nx == 0 or ny == 0:
        return math.nan
    return min(1.0, float(torch.linalg.svdvals((cx / nx).T @ (cy / ny)).sum()))


def procrustes(x: Array, y: Array) -> float:
    """Orthogonal Procrustes distance sqrt(2 - 2 ||X^T Y||_*) (0 = same shape)."""
    return math.sqrt(max(0.0, 2.0 - 2.0 * _nuclear_alignment(x, y)))


def procrustes_angular(x: Array, y: Array) -> float:
    """Angular Procrustes distance arccos(||X^T Y||_*) in radians (0 = same shape)."""
    return math.acos(max(-1.0, _nuclear_alignment(x, y)))


def _rdm(x: torch.Tensor, dissimilarity: str) -> np.ndarray:
    """Upper triangle (i < j) of the representational dissimilarity matrix, float64."""
    x = x.to(torch.float64)
    if dissimilarity == "correlation":
        z = x - x.mean(1, keepdim=True)
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)  # constant rows: distance 1
        d = 1.0 - z @ z.T
    elif dissimilarity == "euclidean":
        d = torch.cdist(x, x)
    else:
        raise LatentLabError(f"dissimilarity {dissimilarity!r} is not one of correlation, euclidean")
    i, j = np.triu_indices(x.shape[0], 1)
    return d.cpu().numpy()[i, j]


def rsa(x: Array, y: Array, dissimilarity: str = "correlation", compare: str = "pearson",
        max_rows: int = RSA_MAX_ROWS, seed: int = 0) -> float:
    """Correlation (Pearson or Spearman) of the two RDMs' upper triangles; seeded
    subsample to ``max_rows``."""
    if compare not in ("pearson", "spearman"):
        raise LatentLabError(f"RSA comparison {compare!r} is not one of pearson, spearman")
    _gram_rows(max_rows, "RSA")
    tx, ty = _subsample("rsa", max_rows, seed, *pair(x, y, min_rows=3))
    dx, dy = _rdm(tx, dissimilarity), _rdm(ty, dissimilarity)
    if compare == "spearman":
        dx, dy = rankdata(dx), rankdata(dy)
    dx, dy = dx - dx.mean(), dy - dy.mean()
    norms = float(np.linalg.norm(dx) * np.linalg.norm(dy))
    return float(dx @ dy) / norms if norms > 0 else math.nan


def rsa_pearson(x: Array, y: Array) -> float:
    """RSA with 1 - Pearson correlation dissimilarities, compared by Pearson correlation."""
    return rsa(x, y, compare="pearson")


def rsa_spearman(x: Array, y: Array) -> float:
    """RSA with 1 - Pearson correlation dissimilarities, compared by Spearman correlation."""
    return rsa(x, y, compare="spearman")


def knn_cosine(x: torch.Tensor, k: int, block: int = 1024) -> torch.Tensor:
    """Indices (n, k) of each row's k nearest rows by cosine similarity, self excluded."""
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
    out = []
    for s in range(0, x.shape[0], block):
        sims = xn[s:s + block] @ xn.T  # (b, n)
        rows = torch.arange(sims.shape[0], device=x.device)
        sims[rows, rows + s] = -math.inf
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def mutual_knn(x: Array, y: Array, k: int = 10, max_rows: int = GRAM_MAX_ROWS, seed: int = 0) -> float:
    """Mean over rows of |kNN_X(i) & kNN_Y(i)| / k (cosine neighbours, self excluded)."""
    tx, ty = _subsample("mutual_knn", max_rows, seed, *pair(x, y))
    if tx.shape[0] <= k:
        raise LatentLabError(f"mutual k-NN with k={k} needs more than {k} rows, got {tx.shape[0]}")
    nx, ny = knn_cosine(tx, k), knn_cosine(ty, k)
    shared = (nx[:, :, None] == ny[:, None, :]).any(2).sum(1)  # (n,)
    return float(shared.double().mean()) / k


# ------------------------------------------------------------------ kernel analysis
def kernel_analysis(x: Array, labels: Any, components: list[int] | None = None,
                    max_rows: int = 2000, seed: int = 0, sigma_frac: float = 1.0) -> KernelCurve:
    """Montavon et al. 2011: how many leading kernel PCs a linear (least-squares, one-hot)
    classifier needs. RBF kernel (sigma = median distance), centred; training error per d'."""
    tx = as_tensor(x)
    y = np.asarray(labels).reshape(-1)
    if len(y) != tx.shape[0]:
        raise LatentLabError(f"labels has {len(y)} entries for {tx.shape[0]} rows")
    _gram_rows(max_rows, "kernel analysis")
    ids = sample_ids(len(y), max_rows, seed)
    if ids is not None:
        tx, y = tx[torch.from_numpy(ids).to(tx.device)], y[ids]
    n = len(y)
    components = components or list(range(1, min(100, n - 1) + 1))
    top = max(components)
    if min(components) < 1 or top >= n:
        raise LatentLabError(f"components must lie in 1..{n - 1}, got {min(components)}..{top}")
    k = _centre_gram(rbf_gram(tx, sigma_frac)).cpu().numpy()
    _, vecs = scipy.linalg.eigh(k, subset_by_index=[n - top, n - 1])
    vecs = vecs[:, ::-1]  # (n, top) leading eigenvectors first
    classes, codes = np.unique(y, return_inverse=True)
    onehot = np.eye(len(classes))[codes]
    mean = onehot.mean(0)
    coef = vecs.T @ (onehot - mean)  # (top, C)
    errors = [float(np.mean((mean + vecs[:, :d] @ coef[:d]).argmax(1) != codes)) for d in components]
    return KernelCurve(list(components), np.asarray(errors))


# ------------------------------------------------------------------ registry
MEASURES: dict[str, Callable[[Array, Array], float]] = {
    "linear_cka": linear_cka,
    "rbf_cka": rbf_cka,
    "debiased_cka": debiased_cka,
    "svcca": svcca,
    "pwcca": pwcca,
    "procrustes": procrustes,
    "procrustes_angular": procrustes_angular,
    "rsa_pearson": rsa_pearson,
    "rsa_spearman": rsa_spearman,
    "mutual_knn": mutual_knn,
}
DISTANCES = ("procrustes", "procrustes_angular")  # 0 = identical; the rest: 1 = identical


def check_measures(measures: Iterable[str]) -> list[str]:
    """The names as a list, or LatentLabError naming an unknown one and the valid ones."""
    names = list(measures)
    for name in names:
        if name not in MEASURES:
            raise LatentLabError(f"unknown similarity measure {name!r}; valid: {', '.join(MEASURES)}")
    return names

