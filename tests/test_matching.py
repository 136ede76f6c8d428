"""Unit matching: Hungarian and semi-matching on correlation against brute force, Lasso
support recovery, spectral clusters of planted groups, SAE latent matching (exact and the
sparsified large path), and the store-reading job."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, r2_score

from engine.errors import LatentLabError
from engine.geometry.matching import (
    load_aligned,
    match,
    match_neurons,
    match_saes,
    sparse_prediction,
    unit_clusters,
)
from engine.jobs import Cancelled, JobContext
from engine.sae.base import SAEConfig, build_sae
from engine.sae.io import save_sae
from engine.store.activations import ActivationStore, StoreMeta


def _planted(n: int = 1500, d: int = 40, noise: float = 0.1, seed: int = 0):
    """X with correlated units (a shared factor), Y = X[:, perm] + noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + 0.5 * rng.normal(size=(n, 1))
    perm = rng.permutation(d)
    return x, x[:, perm] + noise * rng.normal(size=(n, d)), perm


# ---------------------------------------------------------------- one-to-one
def test_hungarian_recovers_a_planted_permutation() -> None:
    x, y, perm = _planted()
    m = match_neurons(x, y)
    inverse = np.argsort(perm)  # y[:, j] copies x[:, perm[j]]: unit i of A is unit inverse[i] of B
    np.testing.assert_array_equal(m.a_units, np.arange(40))
    np.testing.assert_array_equal(m.b_units, inverse)
    np.testing.assert_array_equal(m.best_b, inverse)
    assert m.corr.min() > 0.98 and m.corr.dtype == np.float32
    assert m.corr_matrix.shape == (40, 40) and m.corr_matrix.dtype == np.float32


def test_correlations_equal_numpy_corrcoef() -> None:
    x, y, _ = _planted(n=300, d=12, noise=1.0)
    y = np.concatenate([y, 3.0 * y[:, :3] ** 2 - 7.0], axis=1)  # d2 = 15, shifted and scaled
    m = match_neurons(x, y)
    ref = np.corrcoef(x.T, y.T)[:12, 12:]
    np.testing.assert_allclose(m.corr_matrix, ref, atol=1e-6)
    np.testing.assert_allclose(m.best_corr, ref.max(1), atol=1e-6)
    np.testing.assert_allclose(m.corr, ref[m.a_units, m.b_units], atol=1e-6)


def test_hungarian_total_is_the_brute_force_optimum() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 5))
    ref = np.corrcoef(x.T, y.T)[:6, 6:]
    best = max(sum(ref[r, c] for r, c in zip(rows, range(5), strict=True))
               for rows in itertools.permutations(range(6), 5))
    m = match_neurons(x, y)
    assert len(m.a_units) == 5 and len(set(m.b_units)) == 5
    assert float(m.corr.astype(np.float64).sum()) == pytest.approx(best, abs=1e-5)


def test_constant_units_give_zero_not_nan() -> None:
    x, y, _ = _planted(n=200, d=6)
    x[:, 2] = 4.0
    y[:, 0] = 0.0
    m = match_neurons(x, y)
    assert np.isfinite(m.corr_matrix).all() and np.isfinite(m.best_corr).all()
    assert (m.corr_matrix[2] == 0).all() and (m.corr_matrix[:, 0] == 0).all()
    assert np.isfinite(sparse_prediction(x, y).r2).all()
    assert sparse_prediction(x, y).r2[0] == 0 and sparse_prediction(x, y).n_nonzero[0] == 0


def test_unaligned_rows_are_refused() -> None:
    with pytest.raises(LatentLabError, match="row-aligned"):
        match_neurons(np.zeros((10, 3)), np.zeros((9, 3)))


# ---------------------------------------------------------------- one-to-many
def _sparse_map(n: int = 2000, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 30))
    w = np.zeros((8, 30))
    for j in range(8):
        w[j, rng.choice(30, size=1 + j % 3, replace=False)] = rng.choice([-1, 1], 1 + j % 3) * rng.uniform(1, 2, 1 + j % 3)
    return x, x @ w.T + 0.1 * rng.normal(size=(n, 8)) + 5.0, w


def test_sparse_prediction_recovers_the_support() -> None:
    x, y, w = _sparse_map()
    p = sparse_prediction(x, y, alpha=0.01)
    assert p.coef.shape == (8, 30) and p.r2.shape == (8,)
    np.testing.assert_array_equal(np.abs(p.coef) > 0.05, w != 0)
    assert (p.r2 > 0.95).all()
    # held-out R^2 equals sklearn's on the original scale (rows 1600: are the held-out fifth)
    mx, sx, my, sy = x[:1600].mean(0), x[:1600].std(0), y[:1600].mean(0), y[:1600].std(0)
    pred = my + sy * (((x[1600:] - mx) / sx) @ p.coef.T.astype(np.float64))
    ref = r2_score(y[1600:], pred, multioutput="raw_values")
    np.testing.assert_allclose(p.r2, ref, atol=1e-5)


def test_max_units_caps_the_support() -> None:
    x, y, w = _sparse_map()
    p = sparse_prediction(x, y, alpha=0.001, max_units=1)
    assert (p.n_nonzero <= 1).all()
    for j in range(8):  # the kept unit is the planted unit of largest weight
        assert np.flatnonzero(p.coef[j]) == [np.argmax(np.abs(w[j]))]


# ---------------------------------------------------------------- many-to-many
def test_unit_clusters_group_planted_factors() -> None:
    rng = np.random.default_rng(2)
    factors = rng.normal(size=(1000, 3))
    groups_a, groups_b = np.repeat([0, 1, 2], 4), np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    x = factors[:, groups_a] + 0.3 * rng.normal(size=(1000, 12))
    y = -factors[:, groups_b] + 0.3 * rng.normal(size=(1000, 9))  # sign flips do not matter
    c = unit_clusters(x, y, n_clusters=3)
    truth = np.concatenate([groups_a, groups_b])
    assert adjusted_rand_score(truth, np.concatenate([c.labels_a, c.labels_b])) == 1.0
    share = {g: 4 / (4 + int((groups_b == g).sum())) for g in range(3)}
    expected = [share[int(groups_a[np.flatnonzero(c.labels_a == k)[0]])] for k in range(3)]
    np.testing.assert_allclose(c.mixing, expected)


def test_unit_clusters_checks_the_count() -> None:
    with pytest.raises(LatentLabError, match="n_clusters"):
        unit_clusters(np.ones((5, 2)), np.ones((5, 2)), n_clusters=5)


# ---------------------------------------------------------------- SAE latents
def _sae(d_in: int = 32, d_sae: int = 128, seed: int = 0):
    torch.manual_seed(seed)
    return build_sae(SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=4))


def _permuted_copy(sae, seed: int = 5):
    perm = torch.randperm(sae.d_sae, generator=torch.Generator().manual_seed(seed))
    scale = torch.rand(sae.d_sae, 1, generator=torch.Generator().manual_seed(seed)) + 0.5
    return sae.W_dec.detach()[perm] * scale, perm.numpy()  # positive scales keep signs


def test_sae_against_its_permuted_copy(tmp_path: Path) -> None:
    sae = _sae()
    w_b, perm = _permuted_copy(sae)
    inverse = np.argsort(perm)
    folder = save_sae(sae, tmp_path / "a")
    for a in (sae, folder, str(folder)):
        m = match_saes(a, w_b)
        assert m.share_matched == 1.0 and m.share_best == 1.0 and m.exact
        np.testing.assert_array_equal(m.hungarian_b, inverse)
        np.testing.assert_array_equal(m.best_b, inverse)
        np.testing.assert_allclose(m.hungarian_cos, 1.0, atol=1e-5)
    big = match_saes(sae, w_b, exact_limit=0)  # the sparsified path finds it too
    assert not big.exact and big.share_matched == 1.0
    np.testing.assert_array_equal(big.hungarian_b, inverse)
    np.testing.assert_array_equal(big.best_b, inverse)


def test_sae_against_an_independent_sae() -> None:
    m = match_saes(_sae(seed=0), _sae(seed=1))
    assert m.share_matched < 0.02 and m.share_best < 0.02
    assert m.best_cos_a.shape == (128,) and m.best_cos_a.max() < 0.8


def test_best_cosine_is_the_brute_force_maximum() -> None:
    a, b = _sae(d_sae=70, seed=2), _sae(d_sae=90, seed=3)
    wa = a.W_dec.detach().double()
    wb = b.W_dec.detach().double()
    cos = (wa / wa.norm(dim=1, keepdim=True)) @ (wb / wb.norm(dim=1, keepdim=True)).T
    for limit in (4096, 0):
        m = match_saes(a, b, exact_limit=limit)
        np.testing.assert_allclose(m.best_cos_a, cos.max(1).values.numpy(), atol=1e-6)
        np.testing.assert_array_equal(m.best_b, cos.argmax(1).numpy())


@pytest.mark.parametrize("sizes", [(600, 700), (700, 500)])
def test_sparse_path_matches_exact_total(sizes: tuple[int, int]) -> None:
    """The top-k graph's best full matching is within 0.1% of the exact Hungarian total
    (measured: 1e-4 at worst) on half-shared 600-700 latent dictionaries."""
    g = torch.Generator().manual_seed(0)
    d_a, d_b = sizes
    a = torch.randn(d_a, 64, generator=g)
    shared = a[: min(d_a, d_b) // 2] + 0.3 * torch.randn(min(d_a, d_b) // 2, 64, generator=g)
    b = torch.cat([shared, torch.randn(d_b - len(shared), 64, generator=g)])
    exact, sparse = match_saes(a, b), match_saes(a, b, exact_limit=0)
    assert exact.exact and not sparse.exact
    m = min(d_a, d_b)
    assert len(sparse.hungarian_a) == m and len(np.unique(sparse.hungarian_b)) == m
    total_exact, total_sparse = exact.hungarian_cos.sum(), sparse.hungarian_cos.sum()
    assert total_sparse <= total_exact + 1e-3
    assert total_sparse >= 0.999 * total_exact
    assert abs(sparse.share_matched - exact.share_matched) <= 0.01


def test_sae_width_mismatch_is_refused() -> None:
    with pytest.raises(LatentLabError, match="d_in"):
        match_saes(_sae(d_in=32), _sae(d_in=16))


# ---------------------------------------------------------------- the job
def _store(path: Path, acts: dict[str, np.ndarray], tokens: np.ndarray | None = None) -> str:
    n = len(next(iter(acts.values())))
    meta = StoreMeta("m", "h", "s", tuple(acts), {k: v.shape[1] for k, v in acts.items()}, "float32")
    with ActivationStore.create(path, meta) as store:
        tok = np.arange(n, dtype=np.int32) if tokens is None else tokens
        store.append(acts, tok, np.zeros(n, np.int32), np.arange(n, dtype=np.int32))
    return str(path)


def test_match_job_reads_aligned_stores(tmp_path: Path) -> None:
    x, y, perm = _planted(n=600, d=10)
    a = _store(tmp_path / "a.h5", {"h0": x.astype(np.float32), "h1": x[:, :4].astype(np.float32)})
    b = _store(tmp_path / "b.h5", {"h": y.astype(np.float32)})
    seen: list[str] = []
    ctx = JobContext(device=torch.device("cpu"), on_progress=lambda d, t, msg: seen.append(msg))
    m = match(ctx, f"{a}:h0", b, "hungarian")
    np.testing.assert_array_equal(m.b_units, np.argsort(perm))
    assert any("a.h5:h0" in s for s in seen) and seen[-1] == "done"
    sub_x, sub_y = load_aligned(ctx, f"{a}:h0", b, max_rows=100, seed=4)
    assert sub_x.shape == (100, 10)
    rows = np.flatnonzero(np.isin(x[:, 0].astype(np.float32), sub_x[:, 0]))
    np.testing.assert_array_equal(sub_y, y[rows].astype(np.float32))  # the same rows of both
    assert isinstance(match(ctx, f"{a}:h0", b, "clusters", n_clusters=2).mixing, np.ndarray)
    assert match(ctx, f"{a}:h0", b, "sparse", max_rows=300).r2.shape == (10,)


def test_match_job_errors_name_the_files(tmp_path: Path) -> None:
    x, y, _ = _planted(n=50, d=4)
    a = _store(tmp_path / "a.h5", {"h0": x.astype(np.float32), "h1": x.astype(np.float32)})
    short = _store(tmp_path / "short.h5", {"h": y[:40].astype(np.float32)})
    shuffled = _store(tmp_path / "shuf.h5", {"h": y.astype(np.float32)},
                      tokens=np.arange(50, dtype=np.int32)[::-1].copy())
    ctx = JobContext(device=torch.device("cpu"))
    with pytest.raises(LatentLabError, match=r"a\.h5.*short\.h5.*row-aligned"):
        match(ctx, f"{a}:h0", short)
    with pytest.raises(LatentLabError, match=r"shuf\.h5.*row-aligned.*tokens"):
        match(ctx, f"{a}:h0", shuffled)
    with pytest.raises(LatentLabError, match=r"h0.*h1"):
        match(ctx, a, f"{a}:h1")
    with pytest.raises(LatentLabError, match="procrustes"):
        match(ctx, a, a, "procrustes")
    ctx.cancel()
    with pytest.raises(Cancelled):
        match(ctx, f"{a}:h0", f"{a}:h1")


def test_match_job_on_sae_folders(tmp_path: Path) -> None:
    sae = _sae()
    other = _sae(seed=9)
    result = match(JobContext(device=torch.device("cpu")), str(save_sae(sae, tmp_path / "a")),
                   str(save_sae(other, tmp_path / "b")), "sae", threshold=0.3)
    direct = match_saes(sae, other, threshold=0.3)
    assert result.share_matched == direct.share_matched > 0  # the threshold reached the job
    np.testing.assert_array_equal(result.hungarian_b, direct.hungarian_b)
