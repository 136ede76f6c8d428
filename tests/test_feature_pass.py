"""Feature statistics in one pass of the model (engine.features.one_pass) against capture then
feature_stats on the same tokens of the tiny llama; the running accumulators' fast paths
(sparse top-k merge with ties, TopK codes without a dense matrix, the two-stage row top-k,
quantile-interval examples) against the straightforward computation; the store the pass
writes, with and without activation rows; the cache of weight-only tables (used on a second
run, never for other weights or a damaged file); the CLI."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from engine.capture import capture
from engine.errors import LatentLabError, StoreError
from engine.features.encode import latent_values, latents_on_rows, shaded_contexts
from engine.features.one_pass import feature_pass
from engine.features.running import RunningStats, interval_examples
from engine.features.stats import (
    feature_stats,
    find_stats,
    load_feature_stats,
    read_stats,
    top_contexts,
)
from engine.features.weights import row_top, tables_cache_dir, weight_tables
from engine.jobs import Cancelled, JobContext
from engine.models import load_model
from engine.sae.base import Codes, SAEConfig, build_sae
from engine.sae.io import save_sae
from engine.store.activations import ActivationStore
from tests.conftest import run_main

HOOK = "blocks.1.hook_resid_post"
N_TOKENS = 1500
CPU = torch.device("cpu")
EXACT = ("count", "density", "hist", "hist_edges", "quantile_levels", "top_rows", "top_tokens",
         "label_counts", "label_totals", "neighbours", "logit_top_ids", "logit_bottom_ids",
         "code_ptr", "code_latent", "interval_rows")
CLOSE = ("mean", "max", "quantiles", "top_values", "neighbour_cos", "logit_top_values",
         "logit_bottom_values", "code_value", "interval_values")


@pytest.fixture(scope="module", autouse=True)
def own_cache(tmp_path_factory):
    """This module's own cache folder, so the first run of each SAE computes its tables."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LATENTLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def topk_sae(d_in: int = 32, d_sae: int = 96, k: int = 6, seed: int = 1, arch: str = "topk"):
    """A random TopK (or ``arch``) SAE on the tiny llama's residual width."""
    torch.manual_seed(seed)
    sae = build_sae(SAEConfig(arch, d_in, d_sae, k=k, hook_name=HOOK))
    with torch.no_grad():
        sae.b_enc.normal_(-0.2, 0.3)
    return sae.eval()


def group(path: Path, sae_id: str) -> tuple[dict[str, np.ndarray], dict]:
    with ActivationStore.open(path) as store:
        return read_stats(store, sae_id)


def centred(sae, store_path: Path):
    """``sae`` with b_dec at the mean row of the store and the encoder scaled to the rows'
    spread, so many latents take turns firing."""
    with ActivationStore.open(store_path) as store, torch.no_grad():
        x = torch.from_numpy(store.acts(HOOK).astype(np.float32))
        sae.b_dec.copy_(x.mean(0))
        sae.W_enc.mul_(1 / (x - x.mean(0)).norm(dim=1).median())
        sae.b_enc.mul_(0.1)
    return sae


@pytest.fixture(scope="module", params=["topk", "relu"])
def both(request, llama, tmp_path_factory):
    """The same SAE's statistics from one pass and from capture + feature_stats."""
    root = tmp_path_factory.mktemp(f"pass-{request.param}")
    ctx = JobContext(device=CPU)
    capture(ctx, model=llama, source="demo", hooks=[HOOK], out=root / "cap.h5",
            max_tokens=N_TOKENS, ctx_len=64, batch_size=4)
    sae = centred(topk_sae(arch=request.param, seed=4), root / "cap.h5")
    one = feature_pass(ctx, llama, "demo", sae, HOOK, "s", root / "pass.h5", max_tokens=N_TOKENS,
                       batch_size=4, ctx_len=64, top_n=12)
    two = feature_stats(ctx, root / "cap.h5", sae, HOOK, "s", batch_size=700, top_n=12, adapter=llama)
    assert two.cached_tables == ("neighbours", "logit effects")  # the pass cached them
    return one, root / "pass.h5", root / "cap.h5", sae


def test_one_pass_equals_capture_then_feature_stats(both):
    result, pass_path, cap_path, _ = both
    assert result.n_rows == N_TOKENS and 0 < result.pass_seconds <= result.seconds
    got, got_attrs = group(pass_path, "s")
    want, want_attrs = group(cap_path, "s")
    assert set(got) == set(want) and {*EXACT, *CLOSE} <= set(want)
    assert (want["count"] > 0).sum() > 20 and (want["top_rows"] >= 0).sum() > 100
    for name in EXACT:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in CLOSE:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)
    for key in ("hook", "n_rows", "top_n", "sae_fingerprint", "label_name", "label_classes"):
        assert got_attrs[key] == want_attrs[key], key


def test_the_pass_writes_the_store_a_capture_writes(both):
    _, pass_path, cap_path, _ = both
    with ActivationStore.open(pass_path) as a, ActivationStore.open(cap_path) as b:
        assert a.n_rows == b.n_rows == N_TOKENS and a.meta == b.meta
        for name in ("tokens", "sample", "position", "topic"):
            np.testing.assert_array_equal(a.index(name), b.index(name))
        np.testing.assert_array_equal(a.acts(HOOK), b.acts(HOOK))
        assert a.n_documents == b.n_documents and a.document(0) == b.document(0)
        stats = load_feature_stats(a, "s")
        latent = int(np.argmax(stats.count))
        assert [c.row for c in top_contexts(a, stats, latent, 3)] == stats.top_rows[latent, :3].tolist()


def test_stored_codes_are_the_codes_of_the_stored_rows(both):
    _, pass_path, _, sae = both
    folder = save_sae(sae, pass_path.parent / "sae")
    ctx = JobContext(device=CPU)
    stored = latent_values(ctx, pass_path, HOOK, folder, [0, 5, 17], stats_id="s")
    with ActivationStore.open(pass_path) as store:
        x = torch.from_numpy(store.acts(HOOK).astype(np.float32))
    with torch.no_grad():
        np.testing.assert_allclose(stored, sae.encode(x)[:, [0, 5, 17]].numpy(), rtol=1e-5, atol=1e-6)


def test_a_pass_without_rows_keeps_tokens_contexts_and_codes(llama, tmp_path):
    sae = topk_sae()
    out = tmp_path / "codes.h5"
    feature_pass(JobContext(device=CPU), llama, "demo", sae, HOOK, "s", out, max_tokens=300,
                 ctx_len=64, write_acts=False, logits=False)
    with ActivationStore.open(out) as store:
        assert store.hooks == () and store.n_rows == 300 and store.n_documents >= 1
        stats = load_feature_stats(store, "s")
        assert stats.logit_top_ids is None and stats.top_tokens is not None
        latent = int(np.argmax(stats.count))
        assert len(top_contexts(store, stats, latent, 2)) == 2
        found = find_stats(store, "s")
    with h5py.File(out, "r") as f:
        assert "acts" not in f or not len(f["acts"])
    with h5py.File(found.path, "r") as f:
        assert f["code_ptr"][-1] == len(f["code_latent"]) > 0


@pytest.fixture(scope="module")
def rowless(llama, tmp_path_factory):
    """One SAE's one-pass statistics over the same tokens, with rows (rows.h5) and without
    (codes.h5, --no-acts), and the SAE's folder."""
    root = tmp_path_factory.mktemp("rowless")
    sae = topk_sae(seed=5)
    folder = save_sae(sae, root / "sae")
    for name, acts in (("rows.h5", True), ("codes.h5", False)):
        feature_pass(JobContext(device=CPU), llama, "demo", sae, HOOK, "s", root / name,
                     max_tokens=400, ctx_len=64, write_acts=acts, logits=False)
    return root / "rows.h5", root / "codes.h5", folder


def _answers_from_codes_match_encoding(store_path, rows_store, folder):
    """What the views ask of ``store_path``'s stored codes (a latent's values, the latents of
    a selection, shaded contexts) equals encoding ``rows_store``'s rows; returns the stats
    and the most frequent latent for further checks."""
    ctx = JobContext(device=CPU)
    with ActivationStore.open(store_path) as store:
        stats = load_feature_stats(store, "s")
    latent = int(np.argmax(stats.count))
    encoded = latent_values(ctx, rows_store, HOOK, folder, [latent, 3])
    np.testing.assert_array_equal(latent_values(ctx, store_path, HOOK, folder, [latent, 3], stats_id="s"),
                                  encoded)
    picked = np.flatnonzero(encoded[:, 0] > 0)[:30]
    a = latents_on_rows(ctx, store_path, HOOK, folder, picked, n=20, stats_id="s")
    b = latents_on_rows(ctx, rows_store, HOOK, folder, picked, n=20)
    np.testing.assert_array_equal(a.latents, b.latents)
    np.testing.assert_allclose(a.mean_on_rows, b.mean_on_rows, rtol=1e-6)
    np.testing.assert_array_equal(a.frac_on_rows, b.frac_on_rows)
    assert a.latents[0] == latent or a.frac_on_rows[0] == 1.0
    top = (latent, stats.top_rows[latent], stats.top_values[latent])
    stored = shaded_contexts(ctx, store_path, HOOK, folder, *top, stats_id="s")[1]
    fresh = shaded_contexts(ctx, rows_store, HOOK, folder, *top)[1]
    assert len(stored) == len(fresh) > 1
    for c, d in zip(stored, fresh, strict=True):
        np.testing.assert_array_equal(c.values, d.values)
    return stats, latent


def test_views_read_stored_codes_exactly_as_encoding_gives(rowless):
    """On a store with rows and codes, the stored codes answer what encoding answers."""
    rows_store, _, folder = rowless
    _answers_from_codes_match_encoding(rows_store, rows_store, folder)


def test_a_store_without_rows_answers_from_its_codes(rowless):
    rows_store, codes_store, folder = rowless
    with ActivationStore.open(codes_store) as store:
        assert store.hooks == ()
    stats, latent = _answers_from_codes_match_encoding(codes_store, rows_store, folder)
    args = (JobContext(device=CPU), codes_store, HOOK, folder, latent, stats.top_rows[latent],
            stats.top_values[latent])
    assert all(c.values is None for c in shaded_contexts(*args)[1])  # nothing to shade with


def test_a_store_without_rows_or_matching_codes_says_what_is_missing(rowless, tmp_path):
    _, codes_store, folder = rowless
    ctx = JobContext(device=CPU)
    with pytest.raises(LatentLabError, match=r"codes\.h5 holds no activation rows of 'blocks\.1\."
                                             r"hook_resid_post'.*no feature statistics were named"):
        latent_values(ctx, codes_store, HOOK, folder, [0])
    other = save_sae(topk_sae(seed=6), tmp_path / "other")  # its codes were never kept
    for job in (lambda: latent_values(ctx, codes_store, HOOK, other, [0], stats_id="s"),
                lambda: latents_on_rows(ctx, codes_store, HOOK, other, np.arange(5), stats_id="s")):
        with pytest.raises(LatentLabError, match="codes.h5 holds no activation rows.*statistics 's' "
                                                 "hold no SAE codes of this SAE"):
            job()


def test_a_cancelled_pass_leaves_committed_rows_and_no_statistics(llama, tmp_path):
    ctx = JobContext(device=CPU)
    ctx.on_progress = lambda done, total, message: done >= 200 and ctx.cancel()
    out = tmp_path / "cut.h5"
    with pytest.raises(Cancelled):
        feature_pass(ctx, llama, "demo", topk_sae(), HOOK, "s", out, max_tokens=1000,
                     batch_size=2, ctx_len=64)
    with ActivationStore.open(out) as store:
        assert 200 <= store.n_rows < 1000
        with pytest.raises(StoreError, match="no statistics named 's'"):
            read_stats(store, "s")
    with pytest.raises(StoreError, match="already exists"):
        feature_pass(JobContext(device=CPU), llama, "demo", topk_sae(), HOOK, "s", out)


# ---------------------------------------------------------------- the weight-only cache
def _rewrite(path: Path, **changes: np.ndarray) -> None:
    """Rewrite a cache file with some arrays replaced, its key kept."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    with open(path, "wb") as out:
        np.savez(out, **(arrays | changes))


def test_a_second_run_reads_the_tables_from_the_cache(llama, tmp_path):
    sae, ctx = topk_sae(seed=7), JobContext(device=CPU)
    before = set(tables_cache_dir().glob("*.npz"))
    first = feature_pass(ctx, llama, "demo", sae, HOOK, "s", tmp_path / "a.h5", max_tokens=200, ctx_len=64)
    files = sorted(set(tables_cache_dir().glob("*.npz")) - before)  # this SAE's, written by this run
    logits_file = next(f for f in files if f.name.startswith("logit-effects-"))
    assert first.cached_tables == () and logits_file.exists()
    seen = []
    ctx.on_progress = lambda done, total, message: seen.append(message)
    second = feature_stats(ctx, tmp_path / "a.h5", sae, HOOK, "s2", adapter=llama)
    assert second.cached_tables == ("neighbours", "logit effects") and "logit effects (cached)" in seen
    a, b = group(tmp_path / "a.h5", "s")[0], group(tmp_path / "a.h5", "s2")[0]
    for name in ("neighbours", "neighbour_cos", "logit_top_ids", "logit_top_values", "logit_bottom_ids"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    planted = a["logit_top_values"] + 100.0  # only a run that reads the file can write these
    _rewrite(logits_file, logit_top_values=planted)
    third = feature_pass(ctx, llama, "demo", sae, HOOK, "s", tmp_path / "b.h5", max_tokens=100, ctx_len=64)
    assert third.cached_tables == ("neighbours", "logit effects")
    np.testing.assert_array_equal(group(tmp_path / "b.h5", "s")[0]["logit_top_values"], planted)


@pytest.fixture
def cached(llama, tmp_path):
    """An SAE, its tables computed into a fresh cache folder, and that folder's files."""
    sae = topk_sae(seed=8)
    tables = weight_tables(sae, llama, cache_dir=tmp_path)
    files = {f.name.split("-")[0]: f for f in tmp_path.glob("*.npz")}
    assert tables.cached == () and set(files) == {"neighbours", "logit"}
    return sae, tables.arrays, files


def test_tables_of_other_weights_are_not_used(cached, llama, tiny_llama, tmp_path):
    sae, want, files = cached
    other = topk_sae(seed=9)
    assert weight_tables(other, llama, cache_dir=tmp_path).cached == ()  # another SAE: computed
    with torch.no_grad():
        other.W_dec.copy_(sae.W_dec)  # same decoder, other encoder: still other weights
    assert weight_tables(other, llama, cache_dir=tmp_path).cached == ()
    for f in tmp_path.glob("*.npz"):  # every file now renamed to the first SAE's names
        if f not in files.values():
            f.replace(files[f.name.split("-")[0]])
    again = weight_tables(sae, llama, cache_dir=tmp_path)
    assert again.cached == ()  # their keys name other weights: recomputed
    for name, value in want.items():
        np.testing.assert_array_equal(again.arrays[name], value, err_msg=name)
    model = load_model(str(tiny_llama))
    with torch.no_grad():
        model.module.model.norm.weight[0] += 1.0  # the final norm folds into the logit table
    assert weight_tables(sae, model, cache_dir=tmp_path).cached == ("neighbours",)
    assert weight_tables(sae, None, cache_dir=tmp_path).cached == ("neighbours",)


def test_damaged_cache_files_are_recomputed(cached, llama, tmp_path):
    sae, want, files = cached
    logits = files["logit"]
    bad_ids = want["logit_top_ids"].copy()
    bad_ids[0, 0] = 10**6  # an id outside the vocabulary
    damages = [lambda: logits.write_bytes(logits.read_bytes()[:200]),  # truncated
               lambda: logits.write_bytes(b"not a zip file"),
               lambda: _rewrite(logits, logit_top_ids=bad_ids),
               lambda: _rewrite(logits, logit_top_values=np.full_like(want["logit_top_values"], np.nan)),
               lambda: _rewrite(logits, logit_top_ids=want["logit_top_ids"][:3])]  # wrong shape
    for damage in damages:
        damage()
        again = weight_tables(sae, llama, cache_dir=tmp_path)
        assert again.cached == ("neighbours",)
        for name, value in want.items():
            np.testing.assert_array_equal(again.arrays[name], value, err_msg=name)
        assert weight_tables(sae, llama, cache_dir=tmp_path).cached == ("neighbours", "logit effects")


# ---------------------------------------------------------------- fast paths
def brute_top(codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per latent the n firing rows by value descending, then row ascending."""
    d_sae = codes.shape[1]
    rows = np.full((d_sae, n), -1)
    values = np.zeros((d_sae, n), np.float32)
    for j in range(d_sae):
        on = np.flatnonzero(codes[:, j] > 0)
        order = on[np.lexsort((on, -codes[on, j]))][:n]
        rows[j, :len(order)], values[j, :len(order)] = order, codes[order, j]
    return rows, values


def test_running_top_rows_break_ties_by_row_across_batches():
    rng = np.random.default_rng(0)
    codes = rng.choice([0.0, 0.5, 1.0, 2.0], size=(300, 7), p=[0.5, 0.2, 0.2, 0.1]).astype(np.float32)
    codes[:, 6] = 0
    codes[[5, 250], 6] = 3.0  # fewer firing rows than n
    run = RunningStats(7, 10, CPU)
    bounds = [0, 37, 100, 101, 250, 300]  # uneven batches
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        run.add_dense(torch.from_numpy(codes[s:e]))
    arrays = run.arrays(np.linspace(0, 1, 5))
    rows, values = brute_top(codes, 10)
    np.testing.assert_array_equal(arrays["top_rows"], rows)
    np.testing.assert_array_equal(arrays["top_values"], values)
    np.testing.assert_array_equal(arrays["count"], (codes > 0).sum(0))
    np.testing.assert_array_equal(arrays["max"], codes.max(0))


def test_topk_codes_are_the_dense_codes_sparsely():
    sae = topk_sae(16, 64, k=5)
    with torch.no_grad():
        sae.b_enc.fill_(-1.0)
        sae.b_enc[[7, 9]] = 0.5
    x = 3 * torch.randn(40, 16)
    x[3] = sae.b_dec  # pre-activations = b_enc: two positive, so two firing latents
    with torch.no_grad():
        sparse, dense = sae.encode_codes(x), Codes.nonzero(sae.encode(x))
    for a, b in zip(sparse[:3], dense[:3], strict=True):
        assert torch.equal(a, b)
    assert sparse.n_rows == 40 and sparse.cols[sparse.rows == 3].tolist() == [7, 9]


def test_row_top_equals_topk():
    torch.manual_seed(0)
    for cols in (50, 3000, 4099):
        scores = torch.randn(9, cols)
        for largest in (True, False):
            want = scores.topk(10, dim=1, largest=largest)
            got = row_top(scores, 10, largest)
            assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)
    scores = torch.zeros(3, 4096)
    scores[:, 4000:4010] = torch.arange(10.0)  # the best values all in one block
    assert row_top(scores, 10)[0][0].tolist() == list(range(9, -1, -1))


def test_interval_examples_lie_in_their_intervals():
    rng = np.random.default_rng(1)
    codes = np.where(rng.random((400, 6)) < 0.4, rng.gamma(2.0, 1.0, (400, 6)), 0).astype(np.float32)
    sparse = Codes.nonzero(torch.from_numpy(codes))
    ptr = np.concatenate([[0], np.cumsum(np.bincount(sparse.rows.numpy(), minlength=400))])
    csr = {"code_ptr": ptr, "code_latent": sparse.cols.numpy().astype(np.int32),
           "code_value": sparse.values.numpy()}
    q = np.nanquantile(np.where(codes > 0, codes, np.nan), np.linspace(0, 1, 5), axis=0).T.astype(np.float32)
    got = interval_examples(csr, q, n=3)
    assert got["interval_rows"].shape == (6, 4, 3)
    for j in range(6):
        for i in range(4):
            lo, hi = (q[j, i] if i else -np.inf), (q[j, i + 1] if i < 3 else np.inf)
            members = np.flatnonzero((codes[:, j] > 0) & (codes[:, j] >= lo) & (codes[:, j] < hi))
            rows = got["interval_rows"][j, i]
            picked = rows[rows >= 0]
            assert len(members) > 3 and len(picked) == 3 and set(picked) <= set(members)
            np.testing.assert_array_equal(got["interval_values"][j, i, :len(picked)], codes[picked, j])
            assert (np.diff(got["interval_values"][j, i, :len(picked)]) <= 0).all()


def test_sparse_codes_fold_like_their_dense_matrix():
    codes = torch.zeros(4, 5)
    codes[0, 1], codes[2, 1], codes[2, 4], codes[3, 0] = 1.0, 2.0, 0.5, 1e-7
    a, b = RunningStats(5, 2, CPU), RunningStats(5, 2, CPU)
    a.add_dense(codes)
    b.add(Codes(torch.tensor([0, 2, 2, 3]), torch.tensor([1, 1, 4, 0]),
                torch.tensor([1.0, 2.0, 0.5, 1e-7]), 4))
    levels = np.linspace(0, 1, 3)
    for name, value in a.arrays(levels).items():
        np.testing.assert_array_equal(value, b.arrays(levels)[name], err_msg=name)
    assert a.code_arrays()["code_ptr"].tolist() == [0, 1, 1, 3, 4]


# ---------------------------------------------------------------- command line
cli = run_main  # main.py in this process


def test_cli_runs_the_one_pass_and_names_bad_input(tiny_llama, tmp_path):
    folder = save_sae(topk_sae(), tmp_path / "sae")
    out = tmp_path / "one.h5"
    args = ["feature-stats", "--model", str(tiny_llama), "--source", "demo", "--sae", str(folder),
            "--max-tokens", "400", "--ctx-len", "64", "--out", str(out), "--device", "cpu"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    with ActivationStore.open(out) as store:
        written = find_stats(store, "sae").path
    assert f"{written}: sae: 96 latents over 400 rows" in proc.stdout
    assert written.parent == out.with_name("one.features")
    arrays, attrs = group(out, "sae")
    assert attrs["hook"] == HOOK and "logit_top_ids" in arrays
    again = cli(*args)
    assert again.returncode != 0 and "error: " in again.stderr and "already exists" in again.stderr
    both = cli("feature-stats", "--store", str(out), "--source", "demo", "--sae", str(folder))
    assert both.returncode != 0 and "either --store" in both.stderr
    over_store = cli("feature-stats", "--store", str(out), "--sae", str(folder), "--device", "cpu")
    assert over_store.returncode == 0, over_store.stderr  # same SAE and model: the weight tables are reused
    assert "read from the cache: " in over_store.stdout and "logit" in over_store.stdout
