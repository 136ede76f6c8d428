"""engine.features.encode on a real store of a tiny random llama and SAEs saved in SAELens's layout:
latent values against each architecture's own ``encode``, on all rows and on row subsets,
cancellation, the SAE cache, batches bounded for whole-row encoders, the latents most
characteristic of a planted selection against brute force, and shaded top contexts."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from engine.capture import capture
from engine.errors import LatentLabError
from engine.features import encode
from engine.features.encode import (
    cached_sae,
    column_encoder,
    latent_values,
    latents_on_rows,
    shaded_contexts,
)
from engine.features.stats import feature_stats
from engine.jobs import Cancelled, JobContext
from engine.sae.base import SAEConfig, build_sae
from engine.sae.io import save_sae
from engine.store.activations import ActivationStore

HOOK = "blocks.1.hook_resid_post"
N_TOKENS = 2000
D_SAE = 64
PLANTED, DEAD, N_SELECTED = 5, 0, 40
CPU = torch.device("cpu")
ARCHS = ("relu", "jumprelu", "batchtopk", "topk", "mp")


@pytest.fixture(scope="module")
def store_path(llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("encode") / "llama.h5"
    capture(JobContext(device=CPU), model=llama, source="demo", hooks=[HOOK], out=path,
            max_tokens=N_TOKENS, ctx_len=64, batch_size=8)
    return path


@pytest.fixture(scope="module")
def x(store_path) -> torch.Tensor:
    with ActivationStore.open(store_path) as store:
        return torch.from_numpy(store.acts(HOOK).astype(np.float32))


def _make_sae(arch: str, x: torch.Tensor) -> torch.nn.Module:
    """An SAE of ``arch`` whose latents fire on 1%..60% of the rows."""
    torch.manual_seed(1)
    sae = build_sae(SAEConfig(arch, x.shape[1], D_SAE, k=8))
    with torch.no_grad():
        sae.b_enc.zero_()
        pre = sae.pre_acts(x).numpy()
        levels = np.random.default_rng(0).uniform(0.4, 0.99, D_SAE)
        sae.b_enc.copy_(torch.from_numpy(
            -np.array([np.quantile(pre[:, j], q) for j, q in enumerate(levels)], np.float32)))
        pre = torch.relu(sae.pre_acts(x))
        if arch == "jumprelu":  # thresholds that cut off a third of each latent's firing rows
            cut = [torch.quantile(pre[:, j][pre[:, j] > 0], 0.33) for j in range(D_SAE)]
            sae.log_threshold.copy_(torch.stack(cut).log())
        if arch == "batchtopk":
            sae.threshold.fill_(torch.quantile(pre[pre > 0], 0.33))
    return sae


@pytest.fixture(scope="module")
def saes(x, tmp_path_factory) -> dict[str, tuple[torch.nn.Module, object]]:
    root = tmp_path_factory.mktemp("saes")
    out = {}
    for arch in ARCHS:
        sae = _make_sae(arch, x)
        out[arch] = (sae, save_sae(sae, root / arch))
    return out


@pytest.fixture(scope="module")
def planted(store_path, x, tmp_path_factory):
    """A ReLU SAE where latent PLANTED fires exactly on the selection (its N_SELECTED rows of
    highest pre-activation) and latent DEAD never; statistics written as "planted"."""
    sae = _make_sae("relu", x)
    with torch.no_grad():
        pre = sae.pre_acts(x)[:, PLANTED] - sae.b_enc[PLANTED]
        top = torch.sort(pre, descending=True).values
        sae.b_enc[PLANTED] = -(top[N_SELECTED - 1] + top[N_SELECTED]) / 2
        sae.b_enc[DEAD] = -(sae.pre_acts(x)[:, DEAD].max() + 1)
        rows = torch.nonzero(sae.encode(x)[:, PLANTED] > 0).ravel().numpy()
    assert len(rows) == N_SELECTED
    folder = save_sae(sae, tmp_path_factory.mktemp("planted") / "relu")
    feature_stats(JobContext(device=CPU), store_path, sae, HOOK, "planted", batch_size=512)
    return sae, folder, rows


def _ctx() -> JobContext:
    return JobContext(device=CPU)


@pytest.mark.parametrize("arch", ARCHS)
def test_latent_values_equal_the_saes_encode(arch, saes, store_path, x):
    sae, folder = saes[arch]
    latents = [3, 0, 17, 63, 17]
    with torch.no_grad():
        want = sae.encode(x)[:, latents].numpy()
    got = latent_values(_ctx(), store_path, HOOK, folder, latents, batch_size=300)
    assert got.shape == (N_TOKENS, len(latents)) and got.dtype == np.float32
    assert (want > 0).mean() > 0.01  # the comparison covers firing rows
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ("relu", "topk"))
def test_latent_values_on_row_subsets(arch, saes, store_path, x):
    sae, folder = saes[arch]
    rng = np.random.default_rng(3)
    far = rng.choice(N_TOKENS, 25, replace=False)  # spread out: read row by row
    near = np.array([1010, 1003, 1003, 1007])  # close together, repeated, unsorted: one slab
    with torch.no_grad():
        codes = sae.encode(x).numpy()
    for rows in (far, near, np.array([N_TOKENS - 1]), np.zeros(0, np.int64)):
        got = latent_values(_ctx(), store_path, HOOK, folder, [1, 2], rows=rows, batch_size=7)
        assert got.shape == (len(rows), 2)
        np.testing.assert_allclose(got, codes[rows][:, [1, 2]], rtol=1e-5, atol=1e-6)
    assert latent_values(_ctx(), store_path, HOOK, folder, [], rows=far).shape == (25, 0)


def test_latent_values_rejects_bad_ids(saes, store_path):
    _, folder = saes["relu"]
    with pytest.raises(LatentLabError, match="latent ids"):
        latent_values(_ctx(), store_path, HOOK, folder, [D_SAE])
    with pytest.raises(LatentLabError, match="row ids"):
        latent_values(_ctx(), store_path, HOOK, folder, [0], rows=np.array([N_TOKENS]))


def test_latent_values_cancels_between_batches(saes, store_path):
    _, folder = saes["topk"]
    ctx, seen = _ctx(), []

    def on_progress(done, total, message):
        seen.append(done)
        if done >= 400:
            ctx.cancel()
    ctx.on_progress = on_progress
    with pytest.raises(Cancelled):
        latent_values(ctx, store_path, HOOK, folder, [1], batch_size=200)
    assert max(seen) == 400 and seen[-1] == 400


def test_saes_are_cached_until_their_files_change(saes):
    _, folder = saes["jumprelu"]
    first = cached_sae(folder, CPU)
    assert cached_sae(folder, CPU) is first
    weights = folder / "sae_weights.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    again = cached_sae(folder, CPU)
    assert again is not first and cached_sae(folder, CPU) is again
    torch.testing.assert_close(again.W_enc, first.W_enc)


def test_latents_on_rows_ranks_the_planted_latent_first(planted, store_path, x):
    sae, folder, rows = planted
    got = latents_on_rows(_ctx(), store_path, HOOK, folder, rows, n=D_SAE, stats_id="planted")
    assert got.latents[0] == PLANTED
    assert got.frac_on_rows[0] == 1 and got.lift[0] == pytest.approx(N_TOKENS / N_SELECTED, rel=1e-4)
    assert sorted(got.latents.tolist()) == list(range(D_SAE))
    # every number against brute force over all codes
    with torch.no_grad():
        codes = sae.encode(x).double().numpy()
    order = got.latents
    np.testing.assert_allclose(got.mean_on_rows, codes[rows].mean(0)[order], rtol=1e-5)
    np.testing.assert_allclose(got.frac_on_rows, (codes[rows] > 0).mean(0)[order], rtol=1e-6)
    np.testing.assert_allclose(got.mean_overall, codes.mean(0)[order], rtol=1e-5, atol=1e-9)
    dead = int(np.flatnonzero(order == DEAD)[0])
    assert got.lift[dead] == 0 and got.mean_overall[dead] == 0 and np.isfinite(got.lift).all()
    score = got.lift * got.frac_on_rows
    assert (np.diff(score) <= 1e-5 * score.max()).all()  # best first


def test_latents_on_rows_without_statistics_agrees(planted, store_path):
    _, folder, rows = planted
    with_stats = latents_on_rows(_ctx(), store_path, HOOK, folder, rows, n=10, stats_id="planted")
    shuffled = np.random.default_rng(0).permutation(np.concatenate([rows, rows[:5]]))
    computed = latents_on_rows(_ctx(), store_path, HOOK, folder, shuffled, n=10)
    np.testing.assert_array_equal(computed.latents, with_stats.latents)
    np.testing.assert_allclose(computed.mean_overall, with_stats.mean_overall, rtol=1e-5)
    np.testing.assert_allclose(computed.lift, with_stats.lift, rtol=1e-5)
    empty = latents_on_rows(_ctx(), store_path, HOOK, folder, np.zeros(0, np.int64))
    assert len(empty.latents) == 0 and empty.lift.shape == (0,)


def test_whole_row_encoders_bound_their_batches(saes, store_path, x, monkeypatch):
    assert column_encoder(saes["relu"][0], np.array([1])) is not None  # columns alone
    assert column_encoder(saes["topk"][0], np.array([1])) is None  # needs the whole row
    sae, folder = saes["topk"]
    monkeypatch.setattr(encode, "DENSE_ELEMENTS", 50 * D_SAE)
    steps = []
    ctx = JobContext(device=CPU, on_progress=lambda done, total, msg: steps.append(done))
    got = latent_values(ctx, store_path, HOOK, folder, [4, 9], batch_size=8192)
    assert np.diff(steps).max() == 50  # 50 rows of (50, d_sae) codes at a time
    with torch.no_grad():
        np.testing.assert_allclose(got, sae.encode(x)[:, [4, 9]].numpy(), rtol=1e-5, atol=1e-6)


def test_shaded_contexts_hold_the_latents_values_on_each_token(planted, store_path, x):
    sae, folder, rows = planted
    with torch.no_grad():
        codes = sae.encode(x)[:, PLANTED].numpy()
    top = rows[np.argsort(-codes[rows])][:4]
    tops = np.concatenate([top, [-1, -1]])
    latent, found = shaded_contexts(_ctx(), store_path, HOOK, folder, PLANTED, tops, codes[tops], n=5)
    assert latent == PLANTED and [c.row for c in found] == top.tolist()
    with ActivationStore.open(store_path) as store:
        tokens = store.index("tokens")
        sample = store.index("sample")
    for c in found:
        span = np.arange(c.row - c.at, c.row - c.at + len(c.tokens))
        np.testing.assert_array_equal(c.tokens, tokens[span])
        assert (sample[span] == sample[c.row]).all()
        np.testing.assert_allclose(c.values, codes[span], rtol=1e-5, atol=1e-6)
        assert c.values[c.at] == pytest.approx(c.value, rel=1e-5)
    _, bare = shaded_contexts(_ctx(), store_path, HOOK, None, PLANTED, tops, codes[tops])
    assert all(c.values is None for c in bare) and len(bare) == 4


def test_stored_codes_answer_like_the_sae_and_stale_ones_are_ignored(small_workspace, tmp_path):
    """feature_stats keeps the sparse codes; latent_values reads them (no encoding) with
    the same values as encoding, and ignores them for other SAE weights."""
    import shutil

    import torch

    from engine.features.encode import latent_values, stored_values
    from engine.sae.io import load_sae, save_sae
    ws = small_workspace
    ctx = JobContext(device=torch.device("cpu"))
    cols = [0, 5, 17]
    rows = np.array([7, 3, 2999, 0, 1500])
    encoded = latent_values(ctx, ws.store, ws.hook, ws.sae, cols)
    sae = load_sae(ws.sae)
    with ActivationStore.open(ws.store) as store:
        stored = stored_values(store, ws.sae_id, sae, ws.hook, np.array(cols), None)
        assert stored is not None
        np.testing.assert_allclose(stored, encoded, rtol=1e-5, atol=1e-6)
        subset = stored_values(store, ws.sae_id, sae, ws.hook, np.array(cols), rows)
        np.testing.assert_array_equal(subset, stored[rows])
        assert stored_values(store, ws.sae_id, sae, "embed", np.array(cols), None) is None
        with torch.no_grad():
            sae.W_enc.mul_(1.5)  # other weights: the stored codes are stale
        assert stored_values(store, ws.sae_id, sae, ws.hook, np.array(cols), None) is None
    other = tmp_path / "retrained"
    shutil.copytree(ws.sae, other)
    save_sae(sae, other)
    fresh = latent_values(ctx, ws.store, ws.hook, other, cols, stats_id=ws.sae_id)
    assert not np.allclose(fresh, encoded)  # encoded anew, not read from the stale codes
    fast = latent_values(ctx, ws.store, ws.hook, ws.sae, cols, rows=rows, stats_id=ws.sae_id)
    np.testing.assert_allclose(fast, encoded[rows], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("share", [0.01, 0.5, 1.0])
def test_stored_code_sums_equal_the_dense_codes(planted, store_path, x, share):
    """Sums over a few rows (entry ranges gathered) and over many (a repeated row mask)
    from the stored CSR codes equal the SAE's dense codes."""
    from engine.features.encode import stored_code_sums, stored_codes
    from engine.sae.io import load_sae
    _, folder, _ = planted
    sae = load_sae(folder)
    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(N_TOKENS, max(1, int(share * N_TOKENS)), replace=False))
    with ActivationStore.open(store_path) as store:
        codes = stored_codes(store, "planted", sae, HOOK)
        assert codes is stored_codes(store, "planted", sae, HOOK)  # read once, kept
    with torch.no_grad():
        dense = sae.encode(x).numpy().astype(np.float64)
    total, fired = stored_code_sums(codes, rows, sae.d_sae)
    np.testing.assert_allclose(total, dense[rows].sum(0), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(fired, (dense[rows] != 0).sum(0))
    np.testing.assert_allclose(codes.mean, dense.mean(0), rtol=1e-3, atol=1e-5)


def test_selection_sums_follow_a_moving_selection(planted, store_path):
    """Running sums moved from selection to selection (rows gained and lost) equal sums
    computed afresh, as a brush grows, shrinks and jumps."""
    from engine.features.encode import selection_code_sums, stored_code_sums, stored_codes
    from engine.sae.io import load_sae
    _, folder, _ = planted
    sae = load_sae(folder)
    with ActivationStore.open(store_path) as store:
        codes = stored_codes(store, "planted", sae, HOOK)
    rng = np.random.default_rng(5)
    for lo, hi in [(0, 200), (0, 260), (40, 260), (40, 250), (300, 900), (0, N_TOKENS), (10, 11)]:
        rows = np.arange(lo, hi)
        rows = rows[rng.random(len(rows)) < 0.9]
        total, fired = selection_code_sums(codes, rows, sae.d_sae)
        want_total, want_fired = stored_code_sums(codes, rows, sae.d_sae)
        np.testing.assert_allclose(total, want_total, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(fired, want_fired)
