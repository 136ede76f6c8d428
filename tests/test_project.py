"""Projections (engine/projection/layouts.py): PCA against scikit-learn, row and latent matrices from
real stores and SAEs, the progressive UMAP against one uninterrupted umap-learn
``optimize_layout_euclidean`` run, cancellation, and the project() job's cache.

The first UMAP in a process compiles numba code (seconds with a warm NUMBA_CACHE_DIR, about
a minute cold), so the UMAP runs share one module fixture; later runs cost milliseconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

import engine.projection.layouts as P
import engine.projection.pca as pca
import engine.projection.umap_warm as W
from engine.errors import LatentLabError
from engine.jobs import Cancelled, JobContext
from engine.projection.layouts import (
    Layout,
    configure_numba_cache,
    latent_matrix,
    pca_layout,
    project,
    row_matrix,
    umap_layout,
)
from engine.sae.base import SAEConfig
from engine.sae.io import WEIGHTS_FILENAME, save_sae
from engine.sae.relu import ReLUSAE
from engine.store.activations import ActivationStore, StoreMeta

HOOK = "blocks.0.out"
D = 8


# ------------------------------------------------------------------ helpers
class Recorder(JobContext):
    """A JobContext that keeps every partial and progress call."""

    def __init__(self, cancel_at_partial: int | None = None) -> None:
        super().__init__(device=torch.device("cpu"))
        self.partials: list[Layout] = []
        self.progresses: list[tuple[int, int, str]] = []
        self.on_partial = self._partial
        self.on_progress = lambda done, total, msg: self.progresses.append((done, total, msg))
        self.cancel_at_partial = cancel_at_partial

    def _partial(self, obj: Layout) -> None:
        self.partials.append(obj)
        if self.cancel_at_partial is not None and len(self.partials) >= self.cancel_at_partial:
            self.cancel()


def make_store(path, acts: np.ndarray) -> None:
    """A closed float32 store of one hook holding ``acts`` (n, D), in two appends."""
    meta = StoreMeta(model_id="tiny", model_hash="h0", source_id="synthetic", hooks=(HOOK,),
                     dims={HOOK: acts.shape[1]}, dtype="float32")
    with ActivationStore.create(path, meta) as store:
        half = len(acts) // 2
        append(store, acts[:half], 0)
        append(store, acts[half:], half)


def append(store: ActivationStore, acts: np.ndarray, first: int) -> None:
    r = np.arange(first, first + len(acts))
    store.append({HOOK: acts}, tokens=(r % 50).astype(np.int32), sample=(r // 10).astype(np.int32),
                 position=(r % 10).astype(np.int32))


def make_sae(folder, d_in: int = D, d_sae: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    sae = ReLUSAE(SAEConfig("relu", d_in, d_sae))
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(d_sae, 1) * 3 + 0.1)  # rows of varied norms
    save_sae(sae, folder)
    return sae


def blobs(n: int = 600, d: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian blobs (labels 0, 1, 2)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, d)) * 10
    labels = np.repeat(np.arange(3), n // 3)
    return (centers[labels] + rng.standard_normal((n, d))).astype(np.float32), labels


def anisotropic(n: int = 3000, d: int = 12, seed: int = 0) -> np.ndarray:
    """Rows with a known covariance: distinct variances 12^2..1 along a random rotation,
    offset by a large mean (as activations' massive dimensions are)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    scales = np.arange(d, 0, -1, dtype=np.float64)
    return (rng.standard_normal((n, d)) * scales @ q.T + 50.0).astype(np.float32)


# ------------------------------------------------------------------ PCA
def test_pca_matches_sklearn(monkeypatch):
    x = anisotropic()
    ref = PCA(2, svd_solver="full").fit(x.astype(np.float64))
    want = ref.transform(x.astype(np.float64))
    layout = pca_layout(x, np.arange(len(x)), "rows/pca")
    assert layout.name == "rows/pca" and layout.final
    assert layout.xy.dtype == np.float32 and layout.xy.shape == (len(x), 2)
    assert layout.ids.dtype == np.int64
    np.testing.assert_allclose(np.abs(layout.xy), np.abs(want), atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(layout.xy, want, atol=1e-5 * np.abs(want).max())  # same sign rule
    monkeypatch.setattr(pca, "BLOCK_BYTES", 8 * D * 100)  # stream in 30-odd blocks
    np.testing.assert_allclose(pca_layout(x, np.arange(len(x)), "p").xy, layout.xy, atol=1e-4)


def test_pca_sign_is_largest_loading_positive():
    x = anisotropic(seed=1)
    xy = pca_layout(x, np.arange(len(x)), "p").xy.astype(np.float64)
    centered = x - x.mean(axis=0)
    loadings, *_ = np.linalg.lstsq(centered, xy, rcond=None)  # (d, 2)
    assert np.all(loadings[np.abs(loadings).argmax(axis=0), [0, 1]] > 0)
    flipped = pca_layout(-x, np.arange(len(x)), "p").xy  # same axes, so the same signs
    np.testing.assert_allclose(flipped, -xy, atol=1e-3)


@pytest.mark.parametrize("shape", [(0, 5), (1, 5), (7, 1)])
def test_pca_degenerate_inputs(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    layout = pca_layout(x, np.arange(shape[0]), "p")
    assert layout.xy.shape == (shape[0], 2) and np.isfinite(layout.xy).all()
    if shape == (7, 1):  # one dimension: the first axis is it (centred), the second is 0
        np.testing.assert_allclose(np.abs(layout.xy[:, 0]), np.abs(x[:, 0] - x[:, 0].mean()), atol=1e-6)
        assert not layout.xy[:, 1].any()


# ------------------------------------------------------------------ inputs
@pytest.fixture
def planted(tmp_path):
    """A 500-row store whose rows 3 and 250 are 100x larger and row 77 holds a NaN."""
    acts = np.random.default_rng(0).standard_normal((500, D)).astype(np.float32)
    acts[[3, 250]] *= 100
    acts[77, 2] = np.nan
    make_store(tmp_path / "s.h5", acts)
    return tmp_path / "s.h5", acts


def test_row_matrix_drops_outliers(planted, monkeypatch):
    path, acts = planted
    monkeypatch.setattr(P, "READ_BYTES", 4 * D * 64)  # read in 8 blocks
    ctx = Recorder()
    with ActivationStore.open(path) as store:
        x, ids, dropped = row_matrix(store, HOOK, ctx=ctx)
    assert dropped == 3
    np.testing.assert_array_equal(ids, np.setdiff1d(np.arange(500), [3, 77, 250]))
    assert x.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(x, acts[ids])
    assert ctx.progresses[-1][:2] == (500, 500) and len(ctx.progresses) == 8


def test_row_matrix_subsamples_deterministically(planted):
    path, acts = planted
    with ActivationStore.open(path) as store:
        x, ids, dropped = row_matrix(store, HOOK, max_rows=100, seed=1)
        x2, ids2, _ = row_matrix(store, HOOK, max_rows=100, seed=1)
        _, ids3, _ = row_matrix(store, HOOK, max_rows=100, seed=2)
        _, _, none_dropped = row_matrix(store, HOOK, outlier_factor=1e6)
    assert len(ids) + dropped == 100 and np.all(np.diff(ids) > 0)
    np.testing.assert_array_equal(ids, ids2)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(x, acts[ids])
    assert not np.array_equal(ids, ids3)
    assert ids.min() < 100 and ids.max() > 400  # spread over the whole store
    assert none_dropped == 1  # the NaN row goes whatever the factor


def test_latent_matrix_unit_rows(tmp_path):
    sae = make_sae(tmp_path / "sae")
    x, ids = latent_matrix(sae)
    w = sae.W_dec.detach().numpy()
    assert x.shape == (40, D) and x.dtype == np.float32
    np.testing.assert_array_equal(ids, np.arange(40))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(x * np.linalg.norm(w, axis=1, keepdims=True), w, atol=1e-6)


# ------------------------------------------------------------------ UMAP
@pytest.fixture(scope="module")
def umap_run():
    x, labels = blobs()
    ctx = Recorder()
    layout = umap_layout(ctx, x, np.arange(100, 700), "rows/umap", n_epochs=60, frames=4, seed=0)
    return x, labels, ctx, layout


def test_umap_streams_partials_then_final(umap_run):
    x, _, ctx, layout = umap_run
    assert [p.final for p in ctx.partials] == [False] * 5 and layout.final  # an early frame, then 4
    assert all(p.name == "rows/umap" and p.xy.shape == (600, 2) for p in ctx.partials)
    np.testing.assert_array_equal(layout.ids, np.arange(100, 700))
    assert layout.xy.dtype == np.float32 and np.isfinite(layout.xy).all()
    np.testing.assert_array_equal(ctx.partials[-1].xy, layout.xy)
    assert not np.array_equal(ctx.partials[0].xy, layout.xy)  # it moved between frames
    umap_steps = [(d, t) for d, t, m in ctx.progresses if m == "UMAP"]
    assert umap_steps == [(P.FIRST_FRAME_EPOCHS, 60), (15, 60), (30, 60), (45, 60), (60, 60)]


def test_umap_keeps_blobs_apart(umap_run):
    _, labels, _, layout = umap_run
    score = cross_val_score(KNeighborsClassifier(5), layout.xy, labels, cv=5).mean()
    assert score > 0.95


def test_umap_reproducible_and_frames_do_not_change_it(umap_run):
    x, _, _, layout = umap_run
    again = umap_layout(JobContext(), x, np.arange(100, 700), "rows/umap", n_epochs=60, frames=1)
    np.testing.assert_array_equal(again.xy, layout.xy)
    other = umap_layout(JobContext(), x, np.arange(600), "u", n_epochs=60, frames=4, seed=1)
    assert not np.allclose(other.xy, layout.xy)


def test_umap_equals_one_uninterrupted_umap_learn_run(umap_run):
    """The chunked SGD ends where umap-learn's optimize_layout_euclidean ends in one call
    from the same graph, init and RNG state, bit for bit."""
    from umap.layouts import optimize_layout_euclidean
    x, _, _, layout = umap_run
    rs = np.random.RandomState(0)
    g, xy = P._umap_inputs(JobContext(), x, 15, 0.1, 60, rs)
    rng_state = rs.randint(P.INT32_MIN, P.INT32_MAX, 3).astype(np.int64)
    ref = optimize_layout_euclidean(xy, xy, g.head, g.tail, 60, len(x), g.epochs_per_sample,
                                    g.a, g.b, rng_state, 1.0, 1.0, 5.0, move_other=True)
    np.testing.assert_array_equal(layout.xy, ref)


def test_umap_cancel_from_partial(umap_run):
    x = umap_run[0]
    ctx = Recorder(cancel_at_partial=1)
    with pytest.raises(Cancelled):
        umap_layout(ctx, x, np.arange(600), "u", n_epochs=60, frames=4)
    assert len(ctx.partials) == 1


def test_umap_init_and_tiny_inputs(umap_run):
    x = umap_run[0]
    init = np.stack([np.arange(600.0), np.zeros(600)], axis=1)
    layout = umap_layout(JobContext(), x, np.arange(600), "u", n_epochs=11, frames=1, init=init)
    default = umap_layout(JobContext(), x, np.arange(600), "u", n_epochs=11, frames=1)
    assert layout.xy.shape == (600, 2) and np.isfinite(layout.xy).all()
    assert not np.allclose(layout.xy, default.xy)
    for n in (0, 1, 3):
        tiny = umap_layout(JobContext(), x[:n], np.arange(n), "u")
        assert tiny.final and tiny.xy.shape == (n, 2) and tiny.ids.shape == (n,)


def test_configure_numba_cache(tmp_path, monkeypatch):
    from numba.core import config as numba_config  # imported before the environment changes
    monkeypatch.setattr(numba_config, "CACHE_DIR", "")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert configure_numba_cache() == tmp_path / "mine"
    assert numba_config.CACHE_DIR == ""  # set by the user: left alone
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("LATENTLAB_CACHE", str(tmp_path / "cache"))
    assert configure_numba_cache() == tmp_path / "cache" / "numba"
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path / "cache" / "numba")
    assert (tmp_path / "cache" / "numba").is_dir()
    assert numba_config.CACHE_DIR == str(tmp_path / "cache" / "numba")  # numba was loaded


# ------------------------------------------------------------------ the job and its cache
def test_project_rows_cache_and_growth(tmp_path, monkeypatch):
    acts = np.random.default_rng(1).standard_normal((400, D)).astype(np.float32)
    store_path, cache = tmp_path / "s.h5", tmp_path / "cache"
    make_store(store_path, acts)
    first = project(Recorder(), store_path, HOOK, "pca", cache_dir=cache, max_rows=300)
    assert first.name == "rows/pca" and len(first.ids) == 300
    np.testing.assert_allclose(first.xy, pca_layout(acts[first.ids], first.ids, "x").xy, atol=1e-5)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")
    with monkeypatch.context() as m:
        for name in ("row_matrix", "pca_layout", "umap_layout"):
            m.setattr(P, name, fail)
        hit = project(Recorder(), store_path, HOOK, "pca", cache_dir=cache, max_rows=300)
        with pytest.raises(AssertionError):  # another setting is another layout
            project(Recorder(), store_path, HOOK, "pca", cache_dir=cache, max_rows=200)
    assert hit.final and hit.name == first.name
    np.testing.assert_array_equal(hit.xy, first.xy)
    np.testing.assert_array_equal(hit.ids, first.ids)

    with ActivationStore.open_append(store_path) as store:  # the store grows
        append(store, acts[:100] + 1, 400)
    grown = project(Recorder(), store_path, HOOK, "pca", cache_dir=cache, max_rows=None)
    assert len(grown.ids) == 500 and grown.ids.max() == 499
    assert len(list(cache.glob("rows-pca-*.npz"))) == 1  # the stale file was replaced


def test_project_latents_pca_and_umap(tmp_path, monkeypatch, umap_run):
    folder, cache = tmp_path / "sae", tmp_path / "cache"
    make_sae(folder)
    pca = project(Recorder(), tmp_path / "none.h5", HOOK, "pca", "latents", sae_path=folder,
                  cache_dir=cache)
    assert pca.name == "latents/pca"
    np.testing.assert_array_equal(pca.ids, np.arange(40))
    ctx = Recorder()
    umap = project(ctx, None, HOOK, "umap", "latents", sae_path=folder, cache_dir=cache,
                   n_neighbors=5, n_epochs=20, frames=2)
    assert umap.name == "latents/umap" and umap.final and len(ctx.partials) == 2
    with monkeypatch.context() as m:
        m.setattr(P, "latent_matrix", lambda sae: 1 / 0)
        again = project(Recorder(), None, HOOK, "umap", "latents", sae_path=folder,
                        cache_dir=cache, n_neighbors=5, n_epochs=20, frames=5)
    np.testing.assert_array_equal(again.xy, umap.xy)  # frames only change the display

    make_sae(folder, seed=1)  # new weights: same size, so the mtime has to tell
    stat = (folder / WEIGHTS_FILENAME).stat()
    os.utime(folder / WEIGHTS_FILENAME, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    fresh = project(Recorder(), None, HOOK, "pca", "latents", sae_path=folder, cache_dir=cache)
    assert not np.allclose(fresh.xy, pca.xy)


def test_project_without_cache_and_bad_arguments(tmp_path):
    acts = np.random.default_rng(2).standard_normal((50, D)).astype(np.float32)
    make_store(tmp_path / "s.h5", acts)
    layout = project(Recorder(), tmp_path / "s.h5", HOOK)
    assert layout.name == "rows/pca" and len(layout.ids) == 50
    assert not any(tmp_path.glob("**/*.npz"))
    make_store(tmp_path / "empty.h5", acts[:0])
    for method in ("pca", "umap"):
        empty = project(Recorder(), tmp_path / "empty.h5", HOOK, method, cache_dir=tmp_path / "c")
        assert empty.xy.shape == (0, 2) and empty.ids.shape == (0,)
    with pytest.raises(LatentLabError, match="method"):
        project(JobContext(), tmp_path / "s.h5", HOOK, method="tsne")
    with pytest.raises(LatentLabError, match="sae_path"):
        project(JobContext(), tmp_path / "s.h5", HOOK, what="latents")
    with pytest.raises(LatentLabError, match="unknown UMAP"):
        project(JobContext(), tmp_path / "s.h5", HOOK, method="umap", perplexity=30)


def test_umap_init_is_the_pca_of_the_rows(umap_run):
    """Without ``init`` the layout starts from the PCA axes (pca_layout's), scaled as umap
    scales its PCA init."""
    x = umap_run[0]
    _, xy = P._umap_inputs(JobContext(), x, 15, 0.1, 60, np.random.RandomState(0))
    pca = pca_layout(x, np.arange(600), "p").xy
    for axis in range(2):
        assert abs(np.corrcoef(xy[:, axis], pca[:, axis])[0, 1]) > 0.99999
    np.testing.assert_allclose(xy.min(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(xy.max(axis=0), 10.0, atol=1e-5)


def test_kernels_warm_into_the_persistent_cache(tmp_path, monkeypatch):
    """warm_kernels leaves the marker that stops later launches from compiling again; a
    launch without the marker starts the compiling process, which a UMAP request waits
    for (cancellably) instead of compiling the same kernels again."""
    W.warm_kernels()  # the kernels are in this session's cache already: quick
    assert W._warm_marker().exists() and W.warm_in_background() is None
    code = ("import sys, threading; from engine.projection.umap_warm import warm_in_background; "
            "before = 'umap.umap_' in sys.modules; proc = warm_in_background(); "
            "[t.join(120) for t in threading.enumerate() if t.name == 'umap-preload']; "
            "print(before, proc is None, 'umap.umap_' in sys.modules, 'umap.layouts' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(P.__file__).parents[2], timeout=180)
    assert out.stdout.split() == ["False", "True", "True", "True"]  # imported in the background
    monkeypatch.setattr(W, "_warm_marker", lambda: tmp_path / "missing.ok")
    proc = W.warm_in_background()
    try:
        assert proc is not None and proc.poll() is None and "warm_kernels" in " ".join(proc.args)
        ctx = Recorder()
        ctx.cancel()
        with pytest.raises(Cancelled):
            umap_layout(ctx, np.zeros((10, 3), np.float32), np.arange(10), "u")
        assert ctx.progresses[-1][2].startswith("UMAP: compiling")
    finally:
        proc.terminate()
        proc.wait(10)
        W._warming = None


def test_warm_marker_follows_the_kernel_source(monkeypatch, tmp_path):
    """Editing engine/projection/knn_kernel.py (numba then drops its cached kernel) changes the
    marker's name."""
    from engine.projection import knn_kernel
    before = W._warm_marker().name
    copy = tmp_path / "knn_kernel.py"
    copy.write_text(open(knn_kernel.__file__).read() + "\n")
    monkeypatch.setattr(knn_kernel, "__file__", str(copy))
    assert W._warm_marker().name != before
