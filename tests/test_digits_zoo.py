"""The digits source and model zoo: real training, saving, hooks, pruning and the jobs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from engine.errors import ModelError, SourceError
from engine.jobs import Cancelled, JobContext
from engine.models.digits_zoo import (
    DigitsZooModel,
    ZooConfig,
    build,
    prune,
    prune_zoo,
    save,
    train,
    train_zoo,
)
from engine.sources.digits import DigitsSource, digits_arrays

MLP = ZooConfig(arch="mlp", width=64, depth=2, seed=0)
CNN = ZooConfig(arch="cnn", width=8, depth=2, seed=0, epochs=10)
TINY = ZooConfig(arch="mlp", width=16, depth=1, seed=0, epochs=2)


@pytest.fixture(scope="module")
def mlp() -> DigitsZooModel:
    module, metrics = train(MLP)
    return DigitsZooModel(module, MLP, metrics)


@pytest.fixture(scope="module")
def cnn() -> DigitsZooModel:
    module, metrics = train(CNN)
    return DigitsZooModel(module, CNN, metrics)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------ source
def test_source_all_is_dataset_order_with_labels() -> None:
    ref = load_digits()
    examples = list(DigitsSource("all"))
    assert len(examples) == 1797
    for i in (0, 1, 500, 1796):
        assert examples[i].image.dtype == np.float32 and examples[i].image.shape == (8, 8)
        np.testing.assert_allclose(examples[i].image, ref.images[i] / 16, rtol=1e-6)
        assert examples[i].labels == {"digit": int(ref.target[i])}
    pixels = np.stack([e.image for e in examples])
    assert pixels.min() == 0.0 and pixels.max() == 1.0


def test_source_attributes_and_repeatable_order() -> None:
    src = DigitsSource("test")
    assert (src.kind, src.image_shape, src.label_names) == ("image", (8, 8), ("digit",))
    first = [e.labels["digit"] for e in src]
    assert first == [e.labels["digit"] for e in src]
    assert src.source_id.startswith("digits:test:")
    assert src.source_id == DigitsSource("test").source_id
    assert src.source_id != DigitsSource("test", seed=1).source_id
    assert DigitsSource("all").source_id != DigitsSource("train").source_id


def test_splits_are_disjoint_stratified_and_seeded() -> None:
    x_all, y_all = digits_arrays("all")
    x_tr, y_tr = digits_arrays("train", seed=0)
    x_te, y_te = digits_arrays("test", seed=0)
    assert len(y_tr) + len(y_te) == len(y_all) and len(y_te) == 450
    assert x_all.shape == (1797, 8, 8)
    assert (np.bincount(y_te, minlength=10) >= 40).all()  # stratified: every digit ~45 times
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    np.testing.assert_array_equal(digits_arrays("test", seed=0)[1], y_te)
    assert not np.array_equal(digits_arrays("test", seed=1)[0], x_te)


def test_split_indices_partition_the_dataset() -> None:
    from engine.sources.digits import split_indices
    train_idx, test_idx = split_indices("train", 3), split_indices("test", 3)
    assert not set(train_idx) & set(test_idx)
    assert sorted([*train_idx, *test_idx]) == list(range(1797))
    assert list(train_idx) == sorted(train_idx)


def test_bad_split_names_the_value() -> None:
    with pytest.raises(SourceError, match="validation"):
        DigitsSource("validation")


# ------------------------------------------------------------------------ training
def test_mlp_and_cnn_reach_good_accuracy(mlp: DigitsZooModel, cnn: DigitsZooModel) -> None:
    assert mlp.metrics["test_acc"] >= 0.93 and cnn.metrics["test_acc"] >= 0.93
    assert mlp.metrics["train_acc"] >= mlp.metrics["test_acc"] - 0.05
    assert mlp.accuracy("test") == pytest.approx(mlp.metrics["test_acc"])


def test_training_is_deterministic_per_seed() -> None:
    a, _ = train(TINY)
    b, _ = train(TINY)
    c, _ = train(ZooConfig(arch="mlp", width=16, depth=1, seed=1, epochs=2))
    assert _same_state(_state(a), _state(b))
    assert not _same_state(_state(a), _state(c))


def test_cnn_training_is_deterministic() -> None:
    cfg = ZooConfig(arch="cnn", width=4, depth=1, seed=2, epochs=1)
    assert _same_state(_state(train(cfg)[0]), _state(train(cfg)[0]))


def test_config_name_and_bad_arch() -> None:
    assert MLP.name == "mlp-w64-d2-s0"
    pruned = ZooConfig(method="magnitude", sparsity=0.5)
    assert pruned.name == "mlp-w64-d2-s0-magnitude50"
    with pytest.raises(ModelError, match="rnn"):
        build(ZooConfig(arch="rnn"))


def test_build_module_layout() -> None:
    module = build(ZooConfig(arch="cnn", width=5, depth=3))
    names = [n for n, _ in module.named_modules()]
    assert {"blocks.0", "blocks.1", "blocks.2", "head"} <= set(names)
    out = module.blocks[0](torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 5, 8, 8)
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_train_checks_cancellation_and_reports_progress() -> None:
    seen: list[tuple[int, int]] = []
    ctx = JobContext(on_progress=lambda d, t, m: seen.append((d, t)))
    train(TINY, ctx)
    assert seen == [(1, 2), (2, 2)]
    ctx.cancel()
    with pytest.raises(Cancelled):
        train(TINY, ctx)


# ------------------------------------------------------------------------ files
def test_save_load_round_trip(mlp: DigitsZooModel, tmp_path: Path) -> None:
    save(mlp.module, mlp.cfg, mlp.metrics, tmp_path / "m")
    info = json.loads((tmp_path / "m" / "latentlab_model.json").read_text())
    assert info["kind"] == "digits-zoo" and info["config"]["width"] == 64
    loaded = DigitsZooModel.load(tmp_path / "m")
    x, _ = digits_arrays("test")
    np.testing.assert_array_equal(loaded.predict(x), mlp.predict(x))
    assert loaded.weight_hash() == mlp.weight_hash()
    assert loaded.cfg == mlp.cfg and loaded.metrics == mlp.metrics
    assert loaded.model_id == "digits-zoo:mlp-w64-d2-s0"


def test_cnn_round_trip(cnn: DigitsZooModel, tmp_path: Path) -> None:
    loaded = DigitsZooModel.load(cnn.save(tmp_path / "c"))
    x, _ = digits_arrays("test")
    np.testing.assert_array_equal(loaded.predict(x), cnn.predict(x))
    assert loaded.weight_hash() == cnn.weight_hash()


def test_load_errors_name_the_path(mlp: DigitsZooModel, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nowhere"):
        DigitsZooModel.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="empty"):
        DigitsZooModel.load(tmp_path / "empty")
    folder = mlp.save(tmp_path / "bad")
    (folder / "latentlab_model.json").write_text("{not json")
    with pytest.raises(ModelError, match="latentlab_model.json"):
        DigitsZooModel.load(folder)
    (folder / "latentlab_model.json").write_text(json.dumps({"kind": "other"}))
    with pytest.raises(ModelError, match="kind"):
        DigitsZooModel.load(folder)
    (folder / "latentlab_model.json").write_text(json.dumps({"kind": "digits-zoo", "config": {"colour": 1}}))
    with pytest.raises(ModelError, match="config"):
        DigitsZooModel.load(folder)
    folder = mlp.save(tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="model.safetensors"):
        DigitsZooModel.load(folder)


# ------------------------------------------------------------------------ hooks
def test_hook_points_in_forward_order(mlp: DigitsZooModel, cnn: DigitsZooModel) -> None:
    assert mlp.hook_points() == ["blocks.0.hook_post", "blocks.1.hook_post", "logits"]
    assert cnn.hook_points() == ["blocks.0.hook_post", "blocks.1.hook_post", "logits"]
    assert mlp.kind == "classifier"


def test_forward_rows_shapes(mlp: DigitsZooModel, cnn: DigitsZooModel) -> None:
    x, _ = digits_arrays("test")
    batch = mlp.make_batch(list(x[:7]))
    assert batch.inputs["x"].shape == (7, 1, 8, 8) and batch.keep is None
    rows = mlp.forward(batch, ["blocks.0.hook_post", "blocks.1.hook_post", "logits"])
    assert rows["blocks.0.hook_post"].shape == (7, 64)
    assert (rows["blocks.1.hook_post"] >= 0).all()
    with torch.inference_mode():
        torch.testing.assert_close(rows["logits"], mlp.module(batch.inputs["x"]))
    cnn_rows = cnn.forward(batch, ["blocks.1.hook_post", "logits"])
    assert cnn_rows["blocks.1.hook_post"].shape == (7, 8 * 64)
    with torch.inference_mode():
        torch.testing.assert_close(cnn_rows["logits"], cnn.module(batch.inputs["x"]))
    assert cnn.hook_dims(["blocks.0.hook_post", "logits"]) == {"blocks.0.hook_post": 512, "logits": 10}


def test_forward_stops_after_the_deepest_hook(mlp: DigitsZooModel) -> None:
    calls = []
    handle = mlp.module.head.register_forward_hook(lambda *args: calls.append(1))
    try:
        mlp.forward(mlp.example_batch(), ["blocks.0.hook_post"])
        assert calls == []
        mlp.forward(mlp.example_batch(), ["logits"])
        assert calls == [1]
    finally:
        handle.remove()


# ------------------------------------------------------------------------ pruning
def _zero_fraction(tensors: list[torch.Tensor]) -> float:
    return sum(int((t == 0).sum()) for t in tensors) / sum(t.numel() for t in tensors)


def _prunable(model: DigitsZooModel) -> list[torch.Tensor]:
    return [b[0].weight for b in model.module.blocks] + [model.module.head.weight]


def test_magnitude_pruning_is_exact_and_global(mlp: DigitsZooModel) -> None:
    before = _state(mlp.module)
    pruned = prune(mlp, "magnitude", 0.8)
    weights = _prunable(pruned)
    n = sum(w.numel() for w in weights)
    assert _zero_fraction(weights) == round(0.8 * n) / n
    kept = torch.cat([w[w != 0].abs() for w in weights]).min()
    removed = torch.cat([o[p == 0].abs() for o, p in zip(_prunable(mlp), weights, strict=True)]).max()
    assert removed <= kept
    assert _same_state(before, _state(mlp.module))
    assert pruned.weight_hash() != mlp.weight_hash()
    assert pruned.cfg.parent_hash == mlp.weight_hash()
    assert pruned.model_id == "digits-zoo:mlp-w64-d2-s0-magnitude80"


def test_random_pruning_per_tensor_fraction(mlp: DigitsZooModel) -> None:
    pruned = prune(mlp, "random", 0.5, seed=3)
    for w in _prunable(pruned):
        assert int((w == 0).sum()) == round(0.5 * w.numel())
    again = prune(mlp, "random", 0.5, seed=3)
    assert again.weight_hash() == pruned.weight_hash()
    assert prune(mlp, "random", 0.5, seed=4).weight_hash() != pruned.weight_hash()
    assert pruned.cfg.name.endswith("-random50-p3")


def test_structured_pruning_zeros_whole_units(mlp: DigitsZooModel, cnn: DigitsZooModel) -> None:
    for model in (mlp, cnn):
        pruned = prune(model, "structured", 0.5)
        for block, orig in zip(pruned.module.blocks, model.module.blocks, strict=True):
            w, b = block[0].weight, block[0].bias
            dead = (w.reshape(w.shape[0], -1) == 0).all(1)
            assert int(dead.sum()) == round(0.5 * w.shape[0])
            assert (b[dead] == 0).all()
            norms = orig[0].weight.reshape(w.shape[0], -1).norm(dim=1)
            assert norms[dead].max() <= norms[~dead].min()
        assert torch.equal(pruned.module.head.weight, model.module.head.weight)


def test_magnitude_accuracy_drops_with_sparsity(mlp: DigitsZooModel) -> None:
    accs = [prune(mlp, "magnitude", s).accuracy("test") for s in (0.0, 0.5, 0.8, 0.9)]
    assert accs[0] == pytest.approx(mlp.metrics["test_acc"])
    assert accs[0] >= accs[1] - 0.01 and accs[1] >= accs[2] >= accs[3]
    assert accs[3] < mlp.metrics["test_acc"]


def test_prune_validates_method_and_sparsity(mlp: DigitsZooModel) -> None:
    with pytest.raises(ModelError, match="magnitude, random, structured"):
        prune(mlp, "lottery", 0.5)
    for bad in (1.0, -0.1):
        with pytest.raises(ModelError, match="sparsity"):
            prune(mlp, "magnitude", bad)


# ------------------------------------------------------------------------ jobs
def test_train_zoo_and_prune_zoo_jobs(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    ctx = JobContext(on_progress=lambda d, t, m: seen.append((d, t)))
    folders = train_zoo(ctx, str(tmp_path / "zoo"), widths=(8, 16), depths=(1,), epochs=2)
    assert [Path(f).name for f in folders] == ["mlp-w8-d1-s0", "mlp-w16-d1-s0"]
    assert all((Path(f) / "model.safetensors").is_file() for f in folders)
    assert seen[-1] == (4, 4)
    pruned = prune_zoo(JobContext(), folders[1], str(tmp_path / "pruned"),
                       methods=("magnitude", "structured"), sparsities=(0.5, 0.9))
    assert [Path(f).name for f in pruned] == [
        "mlp-w16-d1-s0-magnitude50", "mlp-w16-d1-s0-magnitude90",
        "mlp-w16-d1-s0-structured50", "mlp-w16-d1-s0-structured90"]
    loaded = DigitsZooModel.load(pruned[0])
    assert loaded.cfg.method == "magnitude" and loaded.cfg.sparsity == 0.5
    assert loaded.metrics["test_acc"] == pytest.approx(loaded.accuracy("test"))
    assert loaded.cfg.parent_hash == DigitsZooModel.load(folders[1]).weight_hash()


def test_jobs_stop_when_cancelled(tmp_path: Path) -> None:
    ctx = JobContext()
    ctx.cancel()
    with pytest.raises(Cancelled):
        train_zoo(ctx, str(tmp_path / "zoo"), epochs=1)
    assert not (tmp_path / "zoo").exists()
    with pytest.raises(ModelError, match="lottery"):
        prune_zoo(JobContext(), str(tmp_path / "none"), str(tmp_path / "p"), methods=("lottery",))
