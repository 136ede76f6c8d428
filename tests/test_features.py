"""Feature statistics on a real store of a tiny random llama: every number against a
brute-force computation over all codes, the written group read back, contexts of the top
rows, label counts and auto-labels, and a cancelled pass that leaves the store as it was."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch

from engine.capture import capture
from engine.errors import StoreError
from engine.features import stats as features
from engine.features.stats import (
    HIST_RANGE,
    auto_label,
    feature_stats,
    label_association,
    load_feature_stats,
    read_stats,
    row_labels,
    top_contexts,
)
from engine.jobs import Cancelled, JobContext
from engine.models.tokens import load_vocab
from engine.store.activations import ActivationStore
from tests.test_sae_metrics import random_sae

HOOK = "blocks.1.hook_resid_post"
N_TOKENS = 3000
BATCH = 500
TOP_N = 16
D_SAE = 96
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def store_path(llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("features") / "llama.h5"
    capture(JobContext(device=CPU), model=llama, source="demo", hooks=[HOOK], out=path,
            max_tokens=N_TOKENS, ctx_len=64, batch_size=8)
    return path


@pytest.fixture(scope="module")
def sae(store_path):
    """Biases set from the data: latent j fires on a fraction in 1%..70% of the rows,
    latent 0 never, latent 1 on exactly 5 rows (fewer than TOP_N)."""
    sae = random_sae(32, D_SAE, seed=3)
    with ActivationStore.open(store_path) as store, torch.no_grad():
        sae.b_enc.zero_()
        pre = sae.pre_acts(torch.from_numpy(store.acts(HOOK).astype(np.float32))).numpy()
        levels = np.random.default_rng(0).uniform(0.3, 0.99, D_SAE)
        bias = -np.array([np.quantile(pre[:, j], q) for j, q in enumerate(levels)])
        top = np.sort(pre[:, 1])
        bias[0], bias[1] = -top[-1] - 1.0, -(top[-6] + top[-5]) / 2
        sae.b_enc.copy_(torch.from_numpy(bias.astype(np.float32)))
    return sae


@pytest.fixture(scope="module")
def computed(store_path, sae, llama):
    result = feature_stats(JobContext(device=CPU), store_path, sae, HOOK, "relu-test",
                           batch_size=BATCH, top_n=TOP_N, adapter=llama)
    with ActivationStore.open(store_path) as store:
        yield result, load_feature_stats(store, "relu-test"), store


@pytest.fixture(scope="module")
def codes(store_path, sae) -> np.ndarray:
    """All codes, encoded in the same row batches the pass uses."""
    with ActivationStore.open(store_path) as store:
        x = torch.from_numpy(store.acts(HOOK).astype(np.float32))
    with torch.no_grad():
        return torch.cat([sae.encode(x[i:i + BATCH]) for i in range(0, len(x), BATCH)]).numpy()


def test_counts_density_mean_max_match_brute_force(computed, codes):
    result, stats, _ = computed
    assert result.n_rows == stats.n_rows == N_TOKENS and result.d_sae == D_SAE
    count = (codes != 0).sum(0)
    assert count[0] == 0 and 0 < count[1] < TOP_N and (count > 0.5 * N_TOKENS).any()
    np.testing.assert_array_equal(stats.count, count)
    np.testing.assert_array_equal(stats.density, (count / N_TOKENS).astype(np.float32))
    np.testing.assert_array_equal(stats.max, codes.max(0))
    mean = codes.astype(np.float64).sum(0) / np.maximum(count, 1)
    np.testing.assert_allclose(stats.mean, mean.astype(np.float32), rtol=1e-6)


def test_top_rows_match_brute_force(computed, codes):
    _, stats, _ = computed
    assert stats.top_values.shape == stats.top_rows.shape == (D_SAE, TOP_N)
    for j in range(D_SAE):
        col = codes[:, j]
        m = min(TOP_N, int((col > 0).sum()))
        np.testing.assert_array_equal(stats.top_values[j, :m], np.sort(col)[::-1][:m])
        rows = stats.top_rows[j, :m]
        assert len(set(rows.tolist())) == m  # distinct rows, each holding its value
        np.testing.assert_array_equal(col[rows], stats.top_values[j, :m])
        assert (stats.top_rows[j, m:] == -1).all() and (stats.top_values[j, m:] == 0).all()


def test_histogram_and_quantiles(computed, codes):
    _, stats, _ = computed
    np.testing.assert_array_equal(stats.hist.sum(1), stats.count)
    assert stats.hist_edges[0] == HIST_RANGE[0] and stats.hist_edges[-1] == HIST_RANGE[1]
    width = stats.hist_edges[1] - stats.hist_edges[0]
    for j in np.flatnonzero(stats.count >= 50):
        fired = codes[:, j][codes[:, j] != 0]
        bins = np.floor((np.log10(fired.astype(np.float64)) - HIST_RANGE[0]) / width)
        n_bins = stats.hist.shape[1]
        want = np.bincount(np.clip(bins, 0, n_bins - 1).astype(int), minlength=n_bins)
        assert np.abs(want - stats.hist[j]).sum() <= 2  # rounding at a bin edge, at most
        q = stats.quantiles[j]
        assert (np.diff(q) >= 0).all() and q[-1] <= stats.max[j]
        median = np.quantile(fired, 0.5)
        assert abs(np.log10(q[5]) - np.log10(median)) <= width + 1e-6
    assert (stats.quantiles[0] == 0).all()


def test_neighbours_and_logit_effects_match_brute_force(computed, sae, llama):
    _, stats, _ = computed
    w = sae.W_dec.detach().double().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = w @ w.T
    np.fill_diagonal(cos, -np.inf)
    order = np.argsort(-cos, axis=1)[:, :10]
    np.testing.assert_array_equal(stats.neighbours, order)
    np.testing.assert_allclose(stats.neighbour_cos, np.take_along_axis(cos, order, 1), rtol=1e-5)
    # the decoder directions through the final RMSNorm's weight, then the unembedding
    gain = llama.module.model.norm.weight.detach().double().numpy()
    w_u = llama.module.lm_head.weight.detach().double().numpy()
    eff = (sae.W_dec.detach().double().numpy() * gain) @ w_u.T
    top, bottom = np.argsort(-eff, axis=1)[:, :10], np.argsort(eff, axis=1)[:, :10]
    np.testing.assert_array_equal(stats.logit_top_ids, top)
    np.testing.assert_array_equal(stats.logit_bottom_ids, bottom)
    np.testing.assert_allclose(stats.logit_top_values, np.take_along_axis(eff, top, 1), rtol=1e-5)
    np.testing.assert_allclose(stats.logit_bottom_values, np.take_along_axis(eff, bottom, 1),
                               rtol=1e-5)


def test_group_reads_back_and_top_contexts(computed):
    _, stats, store = computed
    arrays, attrs = read_stats(store, "relu-test")
    assert attrs["hook"] == HOOK and int(attrs["n_rows"]) == N_TOKENS
    assert stats.sae_cfg["d_sae"] == D_SAE and stats.sae_cfg["arch"] == "test-relu"
    for name in ("density", "mean", "max", "hist", "hist_edges", "quantiles", "top_values",
                 "top_rows", "logit_top_ids", "logit_top_values", "logit_bottom_ids",
                 "logit_bottom_values", "neighbours", "neighbour_cos"):
        np.testing.assert_array_equal(arrays[name], getattr(stats, name))
    tokens = store.index("tokens")
    got = top_contexts(store, stats, 2, 5)
    assert len(got) == 5
    for ctx, row, value in zip(got, stats.top_rows[2], stats.top_values[2], strict=False):
        assert ctx.row == row and ctx.value == value and ctx.tokens[ctx.at] == tokens[row]
    assert len(top_contexts(store, stats, 1)) == stats.count[1]
    assert top_contexts(store, stats, 0) == []
    with pytest.raises(StoreError, match="no statistics named 'missing'"):
        load_feature_stats(store, "missing")


def test_cancelled_pass_leaves_the_store_as_it_was(computed, store_path, sae):
    _, before, _ = computed
    ctx = JobContext(device=CPU)
    seen = []

    def on_progress(done, total, message):
        seen.append(done)
        if done >= 2 * BATCH:
            ctx.cancel()
    ctx.on_progress = on_progress
    with pytest.raises(Cancelled):
        feature_stats(ctx, store_path, random_sae(32, D_SAE, seed=9), HOOK, "relu-test",
                      batch_size=BATCH, top_n=TOP_N)
    assert max(seen) == 2 * BATCH
    with ActivationStore.open(store_path) as store:
        assert store.n_rows == N_TOKENS
        after = load_feature_stats(store, "relu-test")
    np.testing.assert_array_equal(after.top_rows, before.top_rows)
    np.testing.assert_array_equal(after.count, before.count)


# ---------------------------------------------------------------- labels and auto-labels
def test_label_counts_match_brute_force(computed, codes):
    _, stats, store = computed
    labels = store.index("topic").astype(np.int64)
    classes = store.meta.params["label_classes"]["topic"]
    assert stats.label_name == "topic" and stats.label_classes == classes
    fired = codes != 0
    want = np.stack([fired[labels == c].sum(0) for c in range(len(classes))], 1)
    assert stats.label_counts.shape == (D_SAE, len(classes)) and want.sum() > 0
    np.testing.assert_array_equal(stats.label_counts, want)
    np.testing.assert_array_equal(stats.label_totals, np.bincount(labels, minlength=len(classes)))
    tokens = store.index("tokens")
    np.testing.assert_array_equal(stats.top_tokens, np.where(stats.top_rows >= 0,
                                                             tokens[stats.top_rows], -1))


def test_label_association_matches_brute_force(computed, codes):
    _, stats, store = computed
    labels = store.index("topic").astype(np.int64)
    best, precision, lift = label_association(stats)
    assert best[0] == -1 and precision[0] == 0 and lift[0] == 0  # dead latent 0
    for j in range(1, D_SAE):
        on = labels[codes[:, j] != 0]
        per_class = np.bincount(on, minlength=len(stats.label_classes))
        c = int(np.argmax(per_class))
        assert best[j] == c
        assert precision[j] == pytest.approx(per_class[c] / len(on), rel=1e-6)
        assert lift[j] == pytest.approx((per_class[c] / len(on)) / np.mean(labels == c), rel=1e-5)
    assert lift.max() > 2  # some latent concentrates on a topic of this small store
    unlabelled = dataclasses.replace(stats, label_counts=None, label_totals=None)
    best, precision, lift = label_association(unlabelled)
    assert (best == -1).all() and not precision.any() and not lift.any()


def test_row_labels_skips_a_field_too_wide_to_count(computed, monkeypatch):
    _, _, store = computed
    assert row_labels(store, D_SAE).name == "topic"
    monkeypatch.setattr(features, "MAX_LABEL_CELLS", D_SAE)
    assert row_labels(store, D_SAE) is None and row_labels(store) is not None


def test_auto_label_from_logits_then_top_tokens(computed, store_path, sae, tiny_llama, tmp_path):
    _, stats, store = computed
    vocab = load_vocab(str(tiny_llama))
    assert vocab is not None
    assert auto_label(stats, vocab, 0) == "dead"
    for j in (1, 2, 50):  # promoted tokens first: the logit table's top 3, in order
        label = auto_label(stats, vocab, j)
        want = [vocab.visible(vocab.token(t)).strip() for t in stats.logit_top_ids[j][:3]]
        assert label.startswith("\u2192 ") and [w[:11] for w in want] == \
            [p.rstrip("\u2026")[:11] for p in label[2:].split(", ")]
    copy = shutil.copy(store_path, tmp_path / "copy.h5")  # ``computed`` holds the store open
    feature_stats(JobContext(device=CPU), copy, sae, HOOK, "no-logits",
                  batch_size=BATCH, top_n=TOP_N)
    with ActivationStore.open(copy) as fresh:
        plain = load_feature_stats(fresh, "no-logits")
        tokens = fresh.index("tokens")
    assert plain.logit_top_ids is None
    for j in range(1, D_SAE):  # then the most frequent tokens among the top rows
        label = auto_label(plain, vocab, j)
        ids, counts = np.unique(tokens[plain.top_rows[j][plain.top_rows[j] >= 0]],
                                return_counts=True)
        text = {int(i): (vocab.visible(vocab.token(i)).strip() or f"#{i}")[:11] for i in ids}
        named = [n.rstrip("\u2026")[:11] for n in label.removeprefix("on ").split(", ")]
        assert label.startswith("on ") and len(named) == min(3, len(ids))
        got = sorted(max(c for i, c in zip(ids, counts, strict=True) if text[int(i)] == n)
                     for n in named)
        assert got == sorted(counts)[-len(named):]  # the most frequent ones
    bare = dataclasses.replace(plain, top_tokens=None)
    assert auto_label(bare, None, 2).endswith("%)")  # the best class and its precision
    assert auto_label(dataclasses.replace(bare, label_counts=None), None, 2).startswith("fires on")
