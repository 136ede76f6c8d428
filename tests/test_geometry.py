"""Similarity measures (engine/geometry/measures.py, engine/geometry/streams.py): exact invariances,
agreement between forms, and references written differently here (numpy/scipy brute force,
Kornblith et al.'s unbiased centring, covariance-based CCA, scipy's orthogonal Procrustes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr
from sklearn.datasets import load_digits

from engine.errors import LatentLabError, StoreError
from engine.geometry.measures import (
    MEASURES,
    GeometryNote,
    debiased_cka,
    kernel_analysis,
    linear_cka,
    mutual_knn,
    procrustes,
    procrustes_angular,
    pwcca,
    rbf_cka,
    rsa,
    svcca,
)
from engine.geometry.streams import (
    Comparison,
    LayerMatrix,
    compare,
    kernel_curves,
    layer_matrix,
    store_cka,
    store_kernel_analysis,
    streamed_cka,
)
from engine.jobs import Cancelled, JobContext
from engine.store.activations import ActivationStore, StoreMeta

CTX = JobContext(device=torch.device("cpu"))


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def related(n: int = 300, d1: int = 20, d2: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two float64 matrices sharing a linear signal, with noise and offsets."""
    r = rng(seed)
    x = r.standard_normal((n, d1)) * np.linspace(0.5, 3, d1) + 4.0
    y = x @ r.standard_normal((d1, d2)) + r.standard_normal((n, d2)) - 2.0
    return x, y


def rotation(d: int, seed: int = 1) -> np.ndarray:
    q, _ = np.linalg.qr(rng(seed).standard_normal((d, d)))
    return q


# ------------------------------------------------------------------ references
def cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA as HSIC with an explicit centring matrix H (Kornblith et al. eq. 3)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h  # noqa: E741
    return np.trace(k @ l) / np.sqrt(np.trace(k @ k) * np.trace(l @ l))


def unbiased_centre(gram: np.ndarray) -> np.ndarray:
    """Kornblith et al.'s ``center_gram(gram, unbiased=True)``."""
    gram = gram.copy()
    n = len(gram)
    np.fill_diagonal(gram, 0)
    means = gram.sum(0) / (n - 2)
    means -= means.sum() / (2 * (n - 1))
    gram -= means[:, None]
    gram -= means[None, :]
    np.fill_diagonal(gram, 0)
    return gram


def debiased_reference(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    kc, lc = unbiased_centre(k), unbiased_centre(l)
    return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))


def rbf_reference(x: np.ndarray, frac: float) -> np.ndarray:
    d = pdist(x)  # distinct pairs i < j
    sq = pdist(x, "sqeuclidean")
    k = np.exp(-sq / (2 * (frac * np.median(d)) ** 2))
    from scipy.spatial.distance import squareform
    out = squareform(k)
    np.fill_diagonal(out, 1.0)
    return out


def canonical_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sqrt of the eigenvalues of Sxx^-1 Sxy Syy^-1 Syx (full-rank inputs)."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    ev = np.sort(np.linalg.eigvals(m).real)[::-1][:min(x.shape[1], y.shape[1])]
    return np.sqrt(np.clip(ev, 0, 1))


def pwcca_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Morcos et al.'s PWCCA via whitening: canonical variates of the narrower side,
    weights = sum over its neurons of |<variate, neuron>|."""
    if x.shape[1] > y.shape[1]:
        x, y = y, x
    xc, yc = x - x.mean(0), y - y.mean(0)
    wx = np.linalg.inv(np.linalg.cholesky(xc.T @ xc)).T  # xc @ wx is orthonormal
    wy = np.linalg.inv(np.linalg.cholesky(yc.T @ yc)).T
    u, rho, _ = np.linalg.svd((xc @ wx).T @ (yc @ wy))
    variates = xc @ wx @ u[:, :len(rho)]
    alpha = np.abs(variates.T @ xc).sum(1)
    return float((alpha * rho).sum() / alpha.sum())


# ------------------------------------------------------------------ stores
HOOKS = ("blocks.0.out", "blocks.1.out", "blocks.2.out")


def write_store(path: Path, acts: dict[str, np.ndarray], sample: np.ndarray | None = None,
                dtype: str = "float32", chunk: int = 97) -> Path:
    """A closed store holding ``acts`` (appended in uneven chunks), tokens = row ids."""
    n = len(next(iter(acts.values())))
    meta = StoreMeta(model_id="m", model_hash="h", source_id="s", hooks=tuple(acts),
                     dims={h: a.shape[1] for h, a in acts.items()}, dtype=dtype)
    sample = np.arange(n, dtype=np.int32) // 10 if sample is None else sample.astype(np.int32)
    with ActivationStore.create(path, meta) as s:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            s.append(acts={h: a[lo:hi].astype(dtype) for h, a in acts.items()},
                     tokens=np.arange(lo, hi, dtype=np.int32), sample=sample[lo:hi],
                     position=(np.arange(lo, hi) % 10).astype(np.int32))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, object]:
    """Store A (3 hooks, 1000 rows), store B (2 hooks, same rows) and their float32 data."""
    root = tmp_path_factory.mktemp("geometry")
    r = rng(5)
    base = r.standard_normal((1000, 12))
    acts_a = {h: (base @ r.standard_normal((12, 16 + 4 * i)) + r.standard_normal((1000, 16 + 4 * i))
                  + 3.0).astype(np.float32) for i, h in enumerate(HOOKS)}
    acts_b = {"layer.a": (base @ r.standard_normal((12, 10))).astype(np.float32),
              "layer.b": r.standard_normal((1000, 24)).astype(np.float32)}
    return {"a": write_store(root / "a.h5", acts_a), "b": write_store(root / "b.h5", acts_b),
            "acts_a": acts_a, "acts_b": acts_b, "root": root}


# ------------------------------------------------------------------ linear CKA
@pytest.mark.parametrize("form", ["feature", "gram", "auto"])
def test_linear_cka_matches_explicit_hsic(form) -> None:
    x, y = related(200, 20, 30)
    assert linear_cka(x, y, form) == pytest.approx(cka_reference(x, y), abs=1e-9)


@pytest.mark.parametrize("shape", [(500, 8, 12), (40, 300, 90), (60, 60, 1)])
def test_feature_and_gram_forms_agree(shape) -> None:
    n, d1, d2 = shape
    x, y = related(n, d1, d2, seed=n)
    assert abs(linear_cka(x, y, "feature") - linear_cka(x, y, "gram")) < 1e-6
    # float32 input runs float32 GEMMs with float64 sums: still within 1e-6
    assert abs(linear_cka(x.astype(np.float32), y.astype(np.float32), "feature")
               - linear_cka(x, y, "gram")) < 1e-6


def test_every_cka_of_x_with_itself_is_one() -> None:
    x, _ = related(150, 12)
    for value in (linear_cka(x, x, "feature"), linear_cka(x, x, "gram"), rbf_cka(x, x),
                  debiased_cka(x, x), debiased_cka(x, x, kernel="rbf"),
                  streamed_cka(CTX, [(x[:70], x[:70]), (x[70:], x[70:])])):
        assert value == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_invariant_to_rotation_scaling_and_shift() -> None:
    x, y = related(250, 16, 24)
    ref = linear_cka(x, y)
    assert linear_cka(x @ rotation(16), y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x, y @ rotation(24, 2)) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(x - 100.0, y + 1e3) == pytest.approx(ref, abs=1e-10)
    # an anisotropic scaling is not an invariance: the test can fail
    assert abs(linear_cka(x * np.linspace(0.1, 10, 16), y) - ref) > 1e-3


def test_large_offset_does_not_cancel_in_float32() -> None:
    x, y = related(500, 10, 10)
    x32, y32 = (x + 1e4).astype(np.float32), (y - 3e3).astype(np.float32)
    exact = cka_reference(x32.astype(np.float64), y32.astype(np.float64))
    assert linear_cka(x32, y32, "feature") == pytest.approx(exact, abs=1e-6)
    blocks = [(x32[i:i + 333], y32[i:i + 333]) for i in range(0, 500, 333)]
    assert streamed_cka(CTX, blocks) == pytest.approx(exact, abs=1e-6)


def test_gram_form_never_built_above_10k_rows() -> None:
    x = np.zeros((10_001, 1))
    x[::2] = 1.0
    with pytest.raises(LatentLabError, match="10,001 rows is above 10,000"):
        linear_cka(x, x, "gram")
    assert linear_cka(x, x, "auto") == pytest.approx(1.0)  # auto takes the feature form
    with pytest.raises(LatentLabError, match="above 10,000"):
        rbf_cka(x, x, max_rows=20_000)
    with pytest.raises(LatentLabError, match="form 'cov'"):
        linear_cka(x, x, "cov")


def test_bad_inputs_are_named() -> None:
    x, y = related(50, 4, 4)
    with pytest.raises(LatentLabError, match="row-aligned: x has 50 rows, y has 49"):
        linear_cka(x, y[:49])
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(LatentLabError, match="y holds NaN"):
        svcca(x, bad)
    with pytest.raises(LatentLabError, match="x holds NaN"):
        linear_cka(bad, y, "feature")
    with pytest.raises(LatentLabError, match="y holds NaN"):
        streamed_cka(CTX, [(x[:20], y[:20]), (x[20:], bad[20:] * np.inf)])
    with pytest.raises(LatentLabError, match="2-D"):
        procrustes(x[:, 0], y)


# ------------------------------------------------------------------ streaming
def test_streamed_equals_in_memory_with_uneven_blocks() -> None:
    x, y = related(1000, 24, 40, seed=3)
    cuts = [0, 1, 7, 300, 301, 777, 1000]
    blocks = [(x[a:b], torch.from_numpy(y[a:b])) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    assert abs(streamed_cka(CTX, blocks) - linear_cka(x, y, "gram")) < 1e-6
    with pytest.raises(LatentLabError, match="at least 2 rows"):
        streamed_cka(CTX, [(x[:1], y[:1])])
    with pytest.raises(LatentLabError, match="widths changed"):
        streamed_cka(CTX, [(x[:5], y[:5]), (x[5:9, :3], y[5:9])])


def test_streamed_cka_stops_when_cancelled() -> None:
    ctx = JobContext(device=torch.device("cpu"))
    x, y = related(100, 4, 4)
    ctx.cancel()
    with pytest.raises(Cancelled):
        streamed_cka(ctx, [(x, y)])


def test_layer_matrix_matches_pairwise_cka_and_reads_each_store_once(stores, monkeypatch) -> None:
    reads: list[tuple[str, str, int, int]] = []
    opened: list[str] = []
    acts, open_ = ActivationStore.acts, ActivationStore.open.__func__

    def counting_acts(self, hook, start=0, stop=None):
        out = acts(self, hook, start, stop)
        reads.append((self.path.name, hook, start, start + len(out)))
        return out

    def counting_open(cls, path):
        opened.append(Path(path).name)
        return open_(cls, path)

    monkeypatch.setattr(ActivationStore, "acts", counting_acts)
    monkeypatch.setattr(ActivationStore, "open", classmethod(counting_open))
    hooks_b = ["layer.b", "layer.a"]
    m = layer_matrix(CTX, stores["a"], list(HOOKS), stores["b"], hooks_b, block_rows=300)
    assert isinstance(m, LayerMatrix) and m.values.shape == (3, 2) and m.n_rows == 1000
    for i, ha in enumerate(HOOKS):
        for j, hb in enumerate(hooks_b):
            assert abs(m.values[i, j] - linear_cka(stores["acts_a"][ha], stores["acts_b"][hb], "gram")) < 1e-6
    assert sorted(opened) == ["a.h5", "b.h5"]
    for store, hook in [("a.h5", h) for h in HOOKS] + [("b.h5", h) for h in hooks_b]:
        spans = sorted((lo, hi) for s, h, lo, hi in reads if (s, h) == (store, hook))
        assert spans[0][0] == 0 and spans[-1][1] == 1000  # every row once, in order, no overlap
        assert all(a[1] == b[0] for a, b in zip(spans[:-1], spans[1:], strict=True))


def test_layer_matrix_of_a_store_with_itself(stores, monkeypatch) -> None:
    rows_read = []
    acts = ActivationStore.acts
    monkeypatch.setattr(ActivationStore, "acts", lambda self, h, lo=0, hi=None:
                        rows_read.append(h) or acts(self, h, lo, hi))
    m = layer_matrix(CTX, stores["a"], list(HOOKS), stores["a"], list(HOOKS), block_rows=256)
    assert rows_read.count(HOOKS[0]) == 4  # 1000 rows in 4 blocks: each hook read once
    np.testing.assert_allclose(np.diag(m.values), 1.0, atol=1e-9)
    np.testing.assert_allclose(m.values, m.values.T, atol=1e-12)
    a = stores["acts_a"]
    assert abs(m.values[0, 2] - linear_cka(a[HOOKS[0]], a[HOOKS[2]], "gram")) < 1e-6
    assert store_cka(CTX, stores["a"], HOOKS[1], stores["a"], HOOKS[2]) == pytest.approx(m.values[1, 2], abs=1e-6)


def test_layer_matrix_other_measure_subsamples_and_matches(stores) -> None:
    m = layer_matrix(CTX, stores["a"], [HOOKS[0]], stores["b"], ["layer.a", "layer.b"],
                     measure="procrustes", max_rows=400)
    assert m.n_rows == 400 and m.measure == "procrustes"
    ids = np.sort(rng(0).choice(1000, 400, replace=False))
    x = stores["acts_a"][HOOKS[0]][ids]
    for j, hb in enumerate(["layer.a", "layer.b"]):
        assert m.values[0, j] == pytest.approx(procrustes(x, stores["acts_b"][hb][ids]), abs=1e-9)
    with pytest.raises(LatentLabError, match="unknown similarity measure 'cca'.*linear_cka, rbf_cka"):
        layer_matrix(CTX, stores["a"], [HOOKS[0]], stores["b"], ["layer.a"], measure="cca")


def test_layer_matrix_and_compare_on_selected_rows(stores) -> None:
    """``rows`` (a selection, unsorted with repeats) gives the CKA of exactly those rows,
    by either job; a row outside the store or a one-row selection is named."""
    sel = rng(3).choice(1000, 300)  # repeats, any order
    ids = np.unique(sel)
    a, b = stores["acts_a"][HOOKS[0]], stores["acts_b"]["layer.a"]
    m = layer_matrix(CTX, stores["a"], [HOOKS[0]], stores["b"], ["layer.a"], rows=sel)
    assert m.n_rows == len(ids)
    assert m.values[0, 0] == pytest.approx(cka_reference(a[ids], b[ids]), abs=1e-6)
    c = compare(CTX, f"{stores['a']}:{HOOKS[0]}", f"{stores['b']}:layer.a", ["linear_cka", "procrustes"],
                rows=sel)
    assert c.n_rows == len(ids) and not c.notes
    assert c.values["linear_cka"] == pytest.approx(m.values[0, 0], abs=1e-12)
    assert c.values["procrustes"] == pytest.approx(procrustes(a[ids], b[ids]), abs=1e-9)
    with pytest.raises(LatentLabError, match="row 1000 is outside the store's 1,000 rows"):
        layer_matrix(CTX, stores["a"], [HOOKS[0]], stores["b"], ["layer.a"], rows=[3, 1000])
    with pytest.raises(LatentLabError, match="at least 2 rows"):
        layer_matrix(CTX, stores["a"], [HOOKS[0]], stores["b"], ["layer.a"], rows=[5])


def test_kernel_curves_equal_kernel_analysis_of_the_labelled_rows(tmp_path) -> None:
    """Each hook's curve is ``kernel_analysis`` of the same rows; rows labelled -1 are left
    out; a missing label is named."""
    r = rng(4)
    y = np.repeat(np.arange(4), 50)
    x0 = (np.eye(4)[y] * 3 + r.standard_normal((200, 4))).astype(np.float32)
    x1 = r.standard_normal((200, 6)).astype(np.float32)
    labels = np.where(np.arange(200) % 10 == 0, -1, y).astype(np.int32)
    path = tmp_path / "k.h5"
    meta = StoreMeta(model_id="m", model_hash="h", source_id="s", hooks=("good", "noise"),
                     dims={"good": 4, "noise": 6}, dtype="float32")
    with ActivationStore.create(path, meta, labels=["topic"]) as s:
        rows = np.arange(200, dtype=np.int32)
        s.append({"good": x0, "noise": x1}, rows, rows // 10, rows % 10, labels={"topic": labels})
    got = kernel_curves(CTX, path, ["good", "noise"], "topic", components=[1, 2, 4, 8])
    keep = labels >= 0
    assert got.n_rows == keep.sum() == 180 and got.n_classes == 4
    assert got.chance_error == pytest.approx(1 - 45 / 180)
    for hook, x in (("good", x0), ("noise", x1)):
        ref = kernel_analysis(x[keep], labels[keep], [1, 2, 4, 8], max_rows=180)
        np.testing.assert_allclose(got.curves[hook].errors, ref.errors)
    assert got.curves["good"].errors[-1] < 0.1 < got.curves["noise"].errors[-1]
    with pytest.raises(LatentLabError, match="has no label 'digit'"):
        kernel_curves(CTX, path, ["good"], "digit")


# ------------------------------------------------------------------ RBF and debiased
def test_rbf_cka_matches_scipy_reference() -> None:
    x, y = related(120, 6, 9)
    k, l = rbf_reference(x, 0.8), rbf_reference(y, 0.8)  # noqa: E741
    h = np.eye(120) - 1 / 120
    kc, lc = h @ k @ h, h @ l @ h
    ref = (kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum())
    assert rbf_cka(x, y) == pytest.approx(ref, abs=1e-9)
    with pytest.warns(GeometryNote, match="60 of 120 rows drawn at random \\(seed 3\\)"):
        rbf_cka(x, y, max_rows=60, seed=3)


def test_debiased_cka_matches_unbiased_centring_reference() -> None:
    x, y = related(90, 7, 11)
    assert debiased_cka(x, y) == pytest.approx(debiased_reference(x @ x.T, y @ y.T), abs=1e-9)
    k, l = rbf_reference(x, 0.8), rbf_reference(y, 0.8)  # noqa: E741
    assert debiased_cka(x, y, kernel="rbf") == pytest.approx(debiased_reference(k, l), abs=1e-9)


def test_debiased_cka_near_zero_for_independent_gaussians() -> None:
    r = rng(11)
    x, y = r.standard_normal((200, 50)), r.standard_normal((200, 50))
    assert linear_cka(x, y) > 0.15  # the biased estimator is far from 0 at n = 4 d
    assert abs(debiased_cka(x, y)) < 0.05
    assert abs(debiased_cka(x, y, kernel="rbf")) < 0.05


# ------------------------------------------------------------------ CCA family
def test_svcca_and_pwcca_are_one_for_an_invertible_map() -> None:
    r = rng(2)
    x = r.standard_normal((400, 10))
    a = np.eye(10) + 0.3 * r.standard_normal((10, 10))  # invertible, well conditioned
    assert svcca(x, x @ a + 5.0) == pytest.approx(1.0, abs=1e-9)
    assert pwcca(x, x @ a) == pytest.approx(1.0, abs=1e-9)
    assert pwcca(x @ a, x) == pytest.approx(1.0, abs=1e-9)


def test_svcca_and_pwcca_match_covariance_references() -> None:
    x, y = related(500, 6, 9, seed=4)
    y = y + 3 * rng(9).standard_normal(y.shape)  # correlations well below 1
    rho = canonical_correlations(x, y)
    assert svcca(x, y, keep_variance=1.0) == pytest.approx(rho.mean(), abs=1e-8)
    assert pwcca(x, y) == pytest.approx(pwcca_reference(x, y), abs=1e-8)
    assert pwcca(y, x) == pytest.approx(pwcca_reference(x, y), abs=1e-8)  # the narrower side weighs
    assert 0.2 < svcca(x, y) < 0.95


def test_svcca_drops_low_variance_directions() -> None:
    r = rng(6)
    x = r.standard_normal((300, 5)) * np.array([10, 10, 10, 10, 0.01])
    y = x.copy()
    y[:, 4] = r.standard_normal(300) * 0.01  # differs only in a direction with 1e-6 of the variance
    assert svcca(x, y) == pytest.approx(1.0, abs=1e-9)
    assert svcca(x, y, keep_variance=1.0) < 0.9


# ------------------------------------------------------------------ Procrustes, RSA, kNN
def test_procrustes_zero_for_rotated_copy() -> None:
    x, _ = related(200, 12)
    y = 3.0 * x @ rotation(12) + 7.0
    assert procrustes(x, y) == pytest.approx(0.0, abs=1e-6)
    assert procrustes_angular(x, y) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("d2", [9, 14])
def test_procrustes_matches_scipy_residual(d2) -> None:
    x, y = related(150, 9, d2)

    def prepare(a: np.ndarray, d: int) -> np.ndarray:
        a = a - a.mean(0)
        return np.pad(a / np.linalg.norm(a), ((0, 0), (0, d - a.shape[1])))

    d = max(9, d2)
    xp, yp = prepare(x, d), prepare(y, d)
    r, _ = orthogonal_procrustes(xp, yp)
    residual = np.linalg.norm(xp @ r - yp)
    assert procrustes(x, y) == pytest.approx(residual, abs=1e-9)
    assert procrustes_angular(x, y) == pytest.approx(np.arccos(np.trace((xp @ r).T @ yp)), abs=1e-9)


def test_rsa_matches_pdist_references() -> None:
    x, y = related(80, 5, 7)
    assert rsa(x, x) == pytest.approx(1.0, abs=1e-12)
    dx, dy = pdist(x, "correlation"), pdist(y, "correlation")
    assert rsa(x, y) == pytest.approx(np.corrcoef(dx, dy)[0, 1], abs=1e-9)
    assert rsa(x, y, compare="spearman") == pytest.approx(spearmanr(dx, dy).statistic, abs=1e-9)
    ex, ey = pdist(x), pdist(y)
    assert rsa(x, y, "euclidean") == pytest.approx(np.corrcoef(ex, ey)[0, 1], abs=1e-9)
    with pytest.warns(GeometryNote, match="rsa: 50 of 80 rows"):
        rsa(x, y, max_rows=50)


def test_mutual_knn_one_for_same_and_matches_brute_force() -> None:
    x, y = related(120, 6, 8)
    assert mutual_knn(x, x) == 1.0
    assert mutual_knn(x, 4.0 * x @ rotation(6)) == 1.0  # cosine neighbours survive rotation

    def neighbours(a: np.ndarray, k: int) -> list[set[int]]:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        s = a @ a.T
        np.fill_diagonal(s, -np.inf)
        return [set(np.argsort(-row)[:k]) for row in s]

    ref = np.mean([len(p & q) / 5 for p, q in zip(neighbours(x, 5), neighbours(y, 5), strict=True)])
    assert mutual_knn(x, y, k=5) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(LatentLabError, match="k=10 needs more than 10 rows"):
        mutual_knn(x[:10], y[:10])


# ------------------------------------------------------------------ kernel analysis
def test_kernel_analysis_error_falls_with_components_on_digits() -> None:
    digits = load_digits()
    curve = kernel_analysis(digits.data, digits.target, [1, 2, 4, 8, 16, 32], max_rows=700, seed=0)
    assert curve.components == [1, 2, 4, 8, 16, 32]
    errors = curve.errors
    assert errors[0] > 0.5 and errors[-1] < 0.1  # 10 classes: one component cannot separate them
    assert np.all(np.diff(errors) < 0)
    shuffled = kernel_analysis(digits.data, rng(1).permutation(digits.target), [32], max_rows=700)
    assert shuffled.errors[0] > 0.5  # labels unrelated to the kernel need far more components
    with pytest.raises(LatentLabError, match="labels has 5 entries"):
        kernel_analysis(digits.data[:10], digits.target[:5])


# ------------------------------------------------------------------ registry and compare
def test_registry_names_and_identical_inputs() -> None:
    assert list(MEASURES) == ["linear_cka", "rbf_cka", "debiased_cka", "svcca", "pwcca", "procrustes",
                              "procrustes_angular", "rsa_pearson", "rsa_spearman", "mutual_knn"]
    x, _ = related(60, 5)
    for name, f in MEASURES.items():
        expected = 0.0 if name.startswith("procrustes") else 1.0
        assert f(x, x) == pytest.approx(expected, abs=1e-6), name


def test_compare_on_stores(stores) -> None:
    a, b = f"{stores['a']}:{HOOKS[1]}", str(stores["b"]) + ":layer.a"
    res = compare(CTX, a, b, ["svcca", "linear_cka", "procrustes"])
    assert isinstance(res, Comparison) and list(res.values) == ["svcca", "linear_cka", "procrustes"]
    x, y = stores["acts_a"][HOOKS[1]], stores["acts_b"]["layer.a"]
    assert res.n_rows == 1000 and res.notes == []
    assert res.values["linear_cka"] == pytest.approx(linear_cka(x, y, "gram"), abs=1e-6)
    assert res.values["svcca"] == pytest.approx(svcca(x, y), abs=1e-9)
    assert res.values["procrustes"] == pytest.approx(procrustes(x, y), abs=1e-9)
    sub = compare(CTX, a, b, ["linear_cka", "rsa_pearson", "rbf_cka"], max_rows=300, seed=2)
    assert sub.notes[0] == "linear_cka: 300 of 1,000 rows drawn at random (seed 2)"
    assert sub.notes[1].startswith("rsa_pearson, rbf_cka: 300 of 1,000")
    ids = np.sort(rng(2).choice(1000, 300, replace=False))
    assert sub.values["rbf_cka"] == pytest.approx(rbf_cka(x[ids], y[ids]), abs=1e-9)
    full = compare(CTX, a, b, ["rsa_spearman"])
    assert full.notes == []  # 1,000 rows: under both the 10,000 and RSA's 2,000 cap


def test_compare_store_with_itself_and_default_hook(stores) -> None:
    single = write_store(stores["root"] / "single.h5", {"only": stores["acts_a"][HOOKS[0]]})
    res = compare(CTX, str(single), str(single) + ":only", ["linear_cka", "mutual_knn", "rsa_pearson"])
    assert res.values == pytest.approx({"linear_cka": 1.0, "mutual_knn": 1.0, "rsa_pearson": 1.0})


def test_compare_errors(stores) -> None:
    root = stores["root"]
    short = write_store(root / "short.h5", {"h": rng(1).standard_normal((999, 4))})
    shuffled_sample = np.arange(1000)[::-1] // 10
    other = write_store(root / "other.h5", {"h": rng(1).standard_normal((1000, 4))}, sample=shuffled_sample)
    a = f"{stores['a']}:{HOOKS[0]}"
    with pytest.raises(LatentLabError, match=r"a\.h5 \(1,000 rows\) and .*short\.h5 \(999 rows\) are not row-aligned"):
        compare(CTX, a, str(short), ["linear_cka"])
    with pytest.raises(LatentLabError, match=r"a\.h5 and .*other\.h5 are not row-aligned: /sample differs first at row 0"):
        compare(CTX, a, str(other), ["svcca"])
    with pytest.raises(StoreError, match="no hook point 'nope'; it holds"):
        compare(CTX, a, f"{stores['b']}:nope", ["linear_cka"])
    with pytest.raises(LatentLabError, match="holds 3 hook points; name one"):
        compare(CTX, str(stores["a"]), a, ["linear_cka"])
    with pytest.raises(LatentLabError, match="unknown similarity measure 'cka'; valid: linear_cka"):
        compare(CTX, a, a, ["cka"])
    with pytest.raises(StoreError, match="no such file"):
        compare(CTX, a, str(root / "missing.h5:h"), ["linear_cka"])


# ------------------------------------------------------------------ a captured model
def test_layer_matrix_on_a_captured_digits_model(tmp_path) -> None:
    from engine.capture import capture
    from engine.models.digits_zoo import DigitsZooModel, ZooConfig, build

    cfg = ZooConfig(arch="mlp", width=24, depth=2, seed=0)
    torch.manual_seed(0)
    module = build(cfg)  # untrained: the geometry of a random network is still a geometry
    hooks = ["blocks.0.hook_post", "blocks.1.hook_post", "logits"]
    out = tmp_path / "zoo.h5"
    capture(CTX, DigitsZooModel(module, cfg), "digits:test", hooks, out, dtype="float32")
    m = layer_matrix(CTX, out, hooks, out, hooks)
    np.testing.assert_allclose(np.diag(m.values), 1.0, atol=1e-9)
    assert m.n_rows == 450 and np.all((m.values > 0) & (m.values <= 1 + 1e-9))
    with ActivationStore.open(out) as s:
        x, y = s.acts(hooks[0]), s.acts("logits")
    assert m.values[0, 2] == pytest.approx(linear_cka(x, y, "gram"), abs=1e-6)
    res = compare(CTX, f"{out}:{hooks[0]}", f"{out}:logits", list(MEASURES))
    assert set(res.values) == set(MEASURES) and all(np.isfinite(v) for v in res.values.values())
    curve = store_kernel_analysis(CTX, out, "logits", "digit", [1, 4, 16], max_rows=300, seed=1)
    with ActivationStore.open(out) as s:
        ids = np.sort(rng(1).choice(450, 300, replace=False))
        ref = kernel_analysis(s.acts("logits")[ids], s.index("digit")[ids], [1, 4, 16])
    np.testing.assert_array_equal(curve.errors, ref.errors)
    with pytest.raises(StoreError, match="no dataset /labels/colour"):
        store_kernel_analysis(CTX, out, "logits", "colour")
