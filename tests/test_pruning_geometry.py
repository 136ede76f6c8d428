"""Pruning comparison: corruptions, the per-sample loss geometry against brute-force
formulas, and the dense-vs-pruned job on a real (small) zoo model and its pruned variants."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import LatentLabError, ModelError, SourceError
from engine.geometry.pruning import (
    PruningComparison,
    SampleGeometry,
    class_centroids,
    compare_pruned,
    corrupt,
    geometry_of,
    load_comparison,
    save_comparison,
)
from engine.jobs import Cancelled, JobContext
from engine.models.digits_zoo import DigitsZooModel, ZooConfig, prune, prune_zoo, save, train
from engine.sources.digits import digits_arrays

DENSE = ZooConfig(arch="mlp", width=32, depth=2, seed=0, epochs=10)
NAMES = ["dense", "magnitude50", "magnitude90", "random50", "random90",
         "structured50", "structured90"]
CORRS = ["none", "noise:0.3", "blur:1", "dropout:0.3"]
SPECS = [("none", 0.0), ("noise", 0.3), ("blur", 1.0), ("dropout", 0.3)]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("zoo")
    module, metrics = train(DENSE)
    dense = save(module, DENSE, metrics, root / DENSE.name)
    pruned = prune_zoo(JobContext(), str(dense), str(root / "pruned"), sparsities=(0.5, 0.9))
    return dense, pruned


@pytest.fixture(scope="module")
def run(family: tuple[Path, list[str]]) -> tuple[PruningComparison, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    ctx = JobContext(device=torch.device("cpu"), on_progress=lambda d, t, m: seen.append((d, t)))
    return compare_pruned(ctx, family[0], family[1], SPECS), seen


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray]:
    return digits_arrays("test")


def _angle_ref(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kahan's angle formula 2 atan2(|a^ - b^|, |a^ + b^|): no arccos, no clipping."""
    ua = a / np.linalg.norm(a, axis=1, keepdims=True)
    ub = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 2 * np.arctan2(np.linalg.norm(ua - ub, axis=1), np.linalg.norm(ua + ub, axis=1))


def _last_hidden(model: DigitsZooModel, x: np.ndarray) -> np.ndarray:
    hook = model.hook_points()[-2]
    return model.forward(model.make_batch(list(x)), [hook])[hook].double().numpy()


# ------------------------------------------------------------------------ corruptions
def test_corruptions_are_deterministic_per_seed(test_set) -> None:
    x = test_set[0]
    for kind, s in SPECS[1:]:
        np.testing.assert_array_equal(corrupt(x, kind, s, 3), corrupt(x, kind, s, 3))
        assert corrupt(x, kind, s, 3).dtype == np.float32
    assert not np.array_equal(corrupt(x, "noise", 0.3, 3), corrupt(x, "noise", 0.3, 4))
    assert not np.array_equal(corrupt(x, "dropout", 0.3, 3), corrupt(x, "dropout", 0.3, 4))
    clean = corrupt(x, "none", 0, 3)
    np.testing.assert_array_equal(clean, x)
    assert clean is not x


def test_noise_adds_gaussian_of_the_requested_std(test_set) -> None:
    x = test_set[0]
    delta = corrupt(x, "noise", 0.3, 0) - x  # (450, 8, 8): 28,800 draws
    assert abs(delta.std() - 0.3) < 0.01 and abs(delta.mean()) < 0.01
    assert abs((corrupt(x, "noise", 0.05, 0) - x).std() - 0.05) < 0.002


def test_dropout_zeroes_the_requested_share(test_set) -> None:
    x = test_set[0]
    out = corrupt(x, "dropout", 0.3, 0)
    assert np.all((out == x) | (out == 0))
    lit = x != 0
    assert abs((out[lit] == 0).mean() - 0.3) < 0.02
    assert np.array_equal(corrupt(x, "dropout", 1.0, 0), np.zeros_like(x))
    np.testing.assert_array_equal(corrupt(x, "dropout", 0.0, 0), x)


def test_blur_spreads_a_point_by_sigma_and_keeps_the_mean(test_set) -> None:
    delta = np.zeros((33, 33), np.float32)
    delta[16, 16] = 1.0
    out = corrupt(delta, "blur", 2.0, 0).astype(np.float64)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    r = np.arange(33) - 16
    var_rows = (out.sum(1) * r**2).sum()
    assert var_rows == pytest.approx(4.0, rel=0.02)
    assert out[16, 16] == out.max() and out[16, 14] == pytest.approx(out[14, 16])
    x = test_set[0]
    blurred = corrupt(x, "blur", 1.0, 0)
    assert abs(blurred.mean() - x.mean()) < 0.02 * x.mean()  # edge effects only
    assert blurred.std() < x.std()
    np.testing.assert_array_equal(corrupt(x, "blur", 0.0, 0), x)
    np.testing.assert_allclose(corrupt(x[:3], "blur", 1.0, 0)[1], corrupt(x[1], "blur", 1.0, 0))


def test_corruption_errors_name_the_value(test_set) -> None:
    x = test_set[0][:2]
    with pytest.raises(LatentLabError, match="'fog'"):
        corrupt(x, "fog", 0.1, 0)
    for kind, bad in (("dropout", 1.5), ("noise", -0.1), ("blur", float("nan")), ("none", 0.3)):
        with pytest.raises(LatentLabError, match=kind):
            corrupt(x, kind, bad, 0)
    with pytest.raises(LatentLabError, match="shape"):
        corrupt(np.zeros(5), "noise", 0.1, 0)


# ------------------------------------------------------------------------ geometry
def _check_geometry(model: DigitsZooModel, x: np.ndarray, y: np.ndarray) -> SampleGeometry:
    g = geometry_of(model, x, y)
    W = model.module.head.weight.detach().double().numpy()
    b = model.module.head.bias.detach().double().numpy()
    # the decomposition identity, from the returned quantities alone
    ident = np.linalg.norm(W[y], axis=1) * g.norm * np.cos(g.angle_weight) + b[y]
    np.testing.assert_allclose(g.logit_true, ident, rtol=0, atol=1e-5)
    # against the network's own float32 forward pass
    with torch.inference_mode():
        logits = model.module(torch.from_numpy(x).unsqueeze(1)).double()
    np.testing.assert_allclose(g.logit_true, logits[np.arange(len(y)), y].numpy(), atol=1e-5)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="none")
    np.testing.assert_allclose(g.loss, loss.numpy(), atol=1e-5)
    others = logits.clone()
    others[np.arange(len(y)), y] = -torch.inf
    np.testing.assert_allclose(g.margin, g.logit_true - others.max(1).values.numpy(), atol=1e-5)
    np.testing.assert_array_equal(g.predicted, model.predict(x))
    np.testing.assert_array_equal(g.correct, g.predicted == y)
    assert np.array_equal(g.correct, g.margin > 0)
    h = _last_hidden(model, x)
    np.testing.assert_allclose(g.norm, np.linalg.norm(h, axis=1), rtol=1e-6)
    live = (g.norm > 0) & (np.abs(W[y]).sum(1) > 0)  # else the angle is pi/2 by convention
    assert np.all(g.angle_weight[~live] == np.pi / 2)
    np.testing.assert_allclose(g.angle_weight[live], _angle_ref(h[live], W[y][live]), atol=1e-6)
    return g


def test_decomposition_matches_the_network(family, test_set) -> None:
    x, y = test_set
    for folder in (family[0], *family[1]):
        g = _check_geometry(DigitsZooModel.load(folder), x, y)
        assert all(len(v) == len(y) for v in g)
        assert g.norm.dtype == np.float64 and g.predicted.dtype == np.int64


def test_decomposition_on_a_cnn(test_set) -> None:
    cfg = ZooConfig(arch="cnn", width=4, depth=1, seed=0, epochs=1)
    cnn = DigitsZooModel(train(cfg)[0], cfg)
    x, y = test_set
    g = _check_geometry(cnn, x[:100], y[:100])
    assert cnn.module.head.in_features == 4 * 64 and g.norm.shape == (100,)


def test_angle_to_centroid_by_brute_force(family, test_set) -> None:
    model = DigitsZooModel.load(family[0])
    xt, yt = digits_arrays("train")
    h_train = _last_hidden(model, xt)
    ref = np.stack([h_train[yt == c].mean(0) for c in range(10)])
    np.testing.assert_allclose(class_centroids(model), ref, rtol=1e-9, atol=1e-9)
    x, y = test_set
    g = geometry_of(model, x, y)
    np.testing.assert_allclose(g.angle_centroid, _angle_ref(_last_hidden(model, x), ref[y]),
                               atol=1e-6)
    other = geometry_of(model, x, y, centroids=np.roll(ref, 1, axis=0))
    assert not np.allclose(other.angle_centroid, g.angle_centroid)
    np.testing.assert_array_equal(other.angle_weight, g.angle_weight)


def test_zero_features_keep_the_identity(family, test_set) -> None:
    model = DigitsZooModel.load(family[0])
    dead = DigitsZooModel(copy.deepcopy(model.module), model.cfg)
    with torch.no_grad():
        dead.module.blocks[-1][0].weight.zero_()
        dead.module.blocks[-1][0].bias.zero_()
    x, y = test_set
    g = geometry_of(dead, x, y)
    assert (g.norm == 0).all() and np.allclose(g.angle_weight, np.pi / 2)
    np.testing.assert_allclose(g.logit_true, dead.module.head.bias.detach().double().numpy()[y])


def test_geometry_input_errors(family, test_set) -> None:
    model = DigitsZooModel.load(family[0])
    x, y = test_set
    with pytest.raises(LatentLabError, match="labels"):
        geometry_of(model, x, y[:-1])
    with pytest.raises(LatentLabError, match="0..9"):
        geometry_of(model, x[:2], np.array([0, 10]))
    with pytest.raises(LatentLabError, match="centroids"):
        geometry_of(model, x, y, centroids=np.zeros((10, 3)))


# ------------------------------------------------------------------------ the job
def test_job_names_progress_and_dense_accuracy(run, family) -> None:
    result, seen = run
    assert result.models == NAMES and result.corruptions == CORRS
    assert seen == [(i + 1, 28) for i in range(28)]
    assert set(result.geometry) == {(m, c) for m in NAMES for c in CORRS}
    dense = DigitsZooModel.load(family[0])
    assert result.accuracy["dense", "none"] == pytest.approx(dense.accuracy("test"), abs=1e-12)
    assert result.accuracy["dense", "none"] == pytest.approx(dense.metrics["test_acc"], abs=1e-6)
    for folder in family[1]:
        pruned = DigitsZooModel.load(folder)
        name = f"{pruned.cfg.method}{round(100 * pruned.cfg.sparsity)}"
        assert result.accuracy[name, "none"] == pytest.approx(pruned.metrics["test_acc"], abs=1e-6)
    np.testing.assert_array_equal(result.labels, digits_arrays("test")[1])
    assert result.info["source"] == "digits:test" and result.info["centroids"] == "own"


def test_flips_are_the_brute_force_set_difference(run, family, test_set) -> None:
    result, _ = run
    x, y = test_set
    dense = DigitsZooModel.load(family[0])
    for (kind, s), corr in zip(SPECS, CORRS, strict=True):
        xc = corrupt(x, kind, s, 0)
        dense_right = {i for i, (p, t) in enumerate(zip(dense.predict(xc), y, strict=True)) if p == t}
        for folder in family[1]:
            model = DigitsZooModel.load(folder)
            name = f"{model.cfg.method}{round(100 * model.cfg.sparsity)}"
            wrong = {i for i, (p, t) in enumerate(zip(model.predict(xc), y, strict=True)) if p != t}
            assert result.flips[name, corr].tolist() == sorted(dense_right & wrong)
        assert result.flips["dense", corr].size == 0


def test_heavy_random_pruning_breaks_under_noise(run) -> None:
    # measured over 4 training seeds x 3 noise seeds (width 32 and 64): magnitude50 keeps
    # 0.73-0.81 under noise 0.3, random90 falls to chance (0.10-0.16); assert half that gap
    acc = run[0].accuracy
    assert acc["random90", "noise:0.3"] <= acc["magnitude50", "noise:0.3"] - 0.3
    assert acc["dense", "noise:0.3"] < acc["dense", "none"]


def test_summary_means_and_ks(run) -> None:
    result, _ = run
    assert len(result.summary) == len(NAMES) * len(CORRS)
    for row in result.summary:
        g, ref = result.geometry[row.model, row.corruption], result.geometry["dense", row.corruption]
        assert row.accuracy == result.accuracy[row.model, row.corruption]
        assert row.mean_loss == pytest.approx(g.loss.mean())
        assert row.mean_norm == pytest.approx(g.norm.mean())
        assert row.mean_angle_weight == pytest.approx(g.angle_weight.mean())
        assert row.mean_margin == pytest.approx(g.margin.mean())
        for q in ("norm", "angle_weight", "angle_centroid", "margin", "loss"):
            a, b = np.sort(getattr(g, q)), np.sort(getattr(ref, q))
            pooled = np.concatenate([a, b])
            gap = np.abs(np.searchsorted(a, pooled, "right") / len(a)
                         - np.searchsorted(b, pooled, "right") / len(b)).max()
            assert row.ks[q][0] == pytest.approx(gap, abs=1e-12)
            assert 0.0 <= row.ks[q][1] <= 1.0
        if row.model == "dense":
            assert all(v == (0.0, 1.0) for v in row.ks.values())
    worst = next(r for r in result.summary if (r.model, r.corruption) == ("random90", "none"))
    assert worst.ks["loss"][1] < 1e-6


def test_dense_centroids_option(family, run, test_set) -> None:
    ctx = JobContext(device=torch.device("cpu"))
    res = compare_pruned(ctx, family[0], family[1][:1], [("none", 0)], centroids="dense")
    own = run[0].geometry
    np.testing.assert_allclose(res.geometry["dense", "none"].angle_centroid,
                               own["dense", "none"].angle_centroid, atol=1e-12)
    dense = DigitsZooModel.load(family[0])
    ref = geometry_of(DigitsZooModel.load(family[1][0]), *test_set, class_centroids(dense))
    np.testing.assert_allclose(res.geometry["magnitude50", "none"].angle_centroid,
                               ref.angle_centroid, atol=1e-12)
    with pytest.raises(LatentLabError, match="centroids"):
        compare_pruned(ctx, family[0], [], centroids="mean")


def test_save_load_round_trip(run, tmp_path: Path) -> None:
    result, _ = run
    path = save_comparison(result, tmp_path / "cmp" / "prune.npz")
    assert path == tmp_path / "cmp" / "prune.npz" and path.is_file()
    back = load_comparison(path)
    assert back.models == result.models and back.corruptions == result.corruptions
    assert back.summary == result.summary and back.info == result.info
    assert back.accuracy == result.accuracy
    np.testing.assert_array_equal(back.labels, result.labels)
    for key, g in result.geometry.items():
        for f in SampleGeometry._fields:
            got, want = getattr(back.geometry[key], f), getattr(g, f)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(back.flips[key], result.flips[key])


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(LatentLabError, match="does not exist"):
        load_comparison(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(LatentLabError, match="junk.npz"):
        load_comparison(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(LatentLabError, match="not a pruning comparison"):
        load_comparison(tmp_path / "other.npz")
    np.savez(tmp_path / "newer.npz", meta=np.array(json.dumps(
        {"format": "latentlab-pruning-comparison", "version": 99})))
    with pytest.raises(LatentLabError, match="newer"):
        load_comparison(tmp_path / "newer.npz")


def test_cancellation_stops_the_job(family) -> None:
    seen: list[int] = []
    ctx = JobContext(device=torch.device("cpu"))
    ctx.on_progress = lambda d, t, m: (seen.append(d), ctx.cancel())
    with pytest.raises(Cancelled):
        compare_pruned(ctx, family[0], family[1], SPECS)
    assert seen == [1]


def test_bad_inputs_give_clear_errors(family, tmp_path: Path) -> None:
    dense, pruned = family
    ctx = JobContext(device=torch.device("cpu"))
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(ModelError, match="notamodel"):
        compare_pruned(ctx, dense, [tmp_path / "notamodel"])
    with pytest.raises(ModelError, match="notamodel"):
        compare_pruned(ctx, tmp_path / "notamodel", pruned)
    with pytest.raises(ModelError, match="dense parent"):
        compare_pruned(ctx, pruned[0], pruned[1:])
    with pytest.raises(ModelError, match="repeats"):
        compare_pruned(ctx, dense, [pruned[0], pruned[0]])
    model = DigitsZooModel.load(dense)
    stranger = prune(DigitsZooModel(train(ZooConfig(width=8, depth=1, epochs=1))[0],
                                    ZooConfig(width=8, depth=1, epochs=1)), "magnitude", 0.5)
    with pytest.raises(ModelError, match="not pruned from"):
        compare_pruned(ctx, dense, [stranger.save(tmp_path / "stranger")])
    with pytest.raises(SourceError, match="demo"):
        compare_pruned(ctx, dense, pruned[:1], source="demo")
    with pytest.raises(LatentLabError, match="fog"):
        compare_pruned(ctx, dense, pruned[:1], [("fog", 0.1)])
    with pytest.raises(LatentLabError, match="twice"):
        compare_pruned(ctx, dense, pruned[:1], [("noise", 0.3), ("noise", 0.30)])
    assert model.cfg.method is None
