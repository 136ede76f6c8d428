"""Model stitching on the digits zoo (two seeds of one CNN, an MLP into a CNN) and on the
tiny random llama: accuracy and loss against independent computations, self-stitches
equal to the model itself, fine-tuning, and clear errors."""

from __future__ import annotations

import pytest
import torch

from engine.errors import HookError, LatentLabError
from engine.geometry.stitching import stitch
from engine.jobs import Cancelled, JobContext
from engine.models.digits_zoo import DigitsZooModel, ZooConfig, train
from engine.sources.digits import digits_arrays

HOOKS = ("blocks.0.hook_post", "blocks.1.hook_post")
LM_HOOK = "blocks.1.hook_resid_post"


def _zoo(cfg: ZooConfig) -> DigitsZooModel:
    module, metrics = train(cfg)
    return DigitsZooModel(module, cfg, metrics)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These nets are tiny: one thread is faster, and on a busy machine two OpenMP threads
    waiting on each other make a CNN's training 5-40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cnns() -> tuple[DigitsZooModel, DigitsZooModel]:
    """Seeds 0 and 1 of the same small CNN (about a second each)."""
    return tuple(_zoo(ZooConfig(arch="cnn", width=8, depth=2, seed=s, epochs=10)) for s in (0, 1))


@pytest.fixture(scope="module")
def ctx() -> JobContext:
    return JobContext(device=torch.device("cpu"))


def _own_scores(model: DigitsZooModel) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy computed straight from the module."""
    x, y = digits_arrays("test")
    with torch.inference_mode():
        logits = model.module(torch.from_numpy(x).unsqueeze(1)).double()
    y = torch.from_numpy(y)
    return float((logits.argmax(1) == y).double().mean()), float(torch.nn.functional.cross_entropy(logits, y))


# ---------------------------------------------------------------- digits zoo
@pytest.mark.parametrize("hook", HOOKS)
def test_stitching_two_seeds_keeps_accuracy(cnns, ctx, hook: str) -> None:
    """The issue's must-show: seed 0 -> seed 1 at the same block stays within 2 points."""
    a, b = cnns
    r = stitch(ctx, a, hook, b, hook)
    acc_b, loss_b = _own_scores(b)
    acc_a, _ = _own_scores(a)
    assert r.accuracy_b == pytest.approx(acc_b, abs=1e-12) and r.accuracy_a == pytest.approx(acc_a, abs=1e-12)
    assert r.loss_b == pytest.approx(loss_b, rel=1e-6)
    assert abs(r.accuracy_stitched - r.accuracy_b) <= 0.02
    assert (r.n_train, r.n_eval, r.hook_a, r.hook_b) == (1347, 450, hook, hook)
    assert 0.9 < r.fit_r2 < 1.0  # another seed's units are not a copy


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_self_stitch_equals_the_model(cnns, ctx, ridge: float) -> None:
    model = cnns[0]
    r = stitch(ctx, model, HOOKS[1], model, HOOKS[1], ridge=ridge)
    assert r.accuracy_stitched == r.accuracy_b == r.accuracy_a
    assert r.loss_b == r.loss_a
    # the pseudo-inverse map is exact; the default ridge shrinks the map a little (measured
    # 3e-4 nats on this 512-wide hook)
    assert r.loss_stitched == pytest.approx(r.loss_b, rel=1e-6 if ridge == 0 else 5e-3)
    assert r.fit_r2 == pytest.approx(1.0, abs=1e-9 if ridge == 0 else 1e-3)


def test_channel_map_and_finetuning(cnns, ctx) -> None:
    """Bansal et al.'s 1x1-conv stitching layer: least squares, then Adam on B's loss."""
    a, b = cnns
    self_map = stitch(ctx, a, HOOKS[0], a, HOOKS[0], ridge=0.0, per_position=True)
    assert self_map.loss_stitched == pytest.approx(self_map.loss_b, rel=1e-6)
    plain = stitch(ctx, a, HOOKS[1], b, HOOKS[1], per_position=True)
    tuned = stitch(ctx, a, HOOKS[1], b, HOOKS[1], per_position=True, finetune_steps=60, lr=3e-3)
    assert tuned.fit_r2 == plain.fit_r2  # fine-tuning starts from the least-squares map
    assert tuned.loss_stitched < plain.loss_stitched
    assert tuned.accuracy_b == plain.accuracy_b and tuned.loss_b == plain.loss_b  # B stayed frozen


def test_mlp_into_cnn(cnns, ctx) -> None:
    """Different architectures: the MLP's 32 units map onto the CNN's 8 x 8 x 8 map."""
    mlp = _zoo(ZooConfig(arch="mlp", width=32, depth=2, seed=3, epochs=5))
    r = stitch(ctx, mlp, HOOKS[1], cnns[1], HOOKS[1])
    assert r.accuracy_stitched > 0.85 and r.accuracy_a == pytest.approx(_own_scores(mlp)[0])


def test_unknown_hook_lists_the_hook_points(cnns, ctx) -> None:
    a, b = cnns
    with pytest.raises(HookError, match=r"'blocks\.7\.hook_post'.*blocks\.0\.hook_post, blocks\.1\.hook_post, logits"):
        stitch(ctx, a, "blocks.7.hook_post", b, HOOKS[0])
    with pytest.raises(HookError, match="resid"):
        stitch(ctx, a, HOOKS[0], b, "blocks.0.hook_resid_post")


def test_wrong_source_and_empty_eval(cnns, ctx) -> None:
    a, b = cnns
    with pytest.raises(LatentLabError, match="takes image inputs.*text"):
        stitch(ctx, a, HOOKS[0], b, HOOKS[0], train_source="demo")
    with pytest.raises(LatentLabError, match="max_tokens"):
        stitch(ctx, a, HOOKS[0], b, HOOKS[0], train_source="digits", eval_source="digits")
    r = stitch(ctx, a, HOOKS[0], b, HOOKS[0], "digits", "digits", max_tokens=600)
    assert (r.n_train, r.n_eval) == (600, 600)  # evaluation starts after the training images


def test_stitch_checks_cancellation(cnns) -> None:
    ctx = JobContext(device=torch.device("cpu"))
    ctx.cancel()
    with pytest.raises(Cancelled):
        stitch(ctx, cnns[0], HOOKS[0], cnns[1], HOOKS[0])


# ---------------------------------------------------------------- causal LM
def _lm_own_loss(model, windows: list[list[int]]) -> float:
    """Next-token cross-entropy over the document tokens, computed window by window."""
    total, count = 0.0, 0
    for w in windows:
        ids = torch.tensor([[*model._prefix, *w]])
        with torch.inference_mode():
            logits = model.module(input_ids=ids).logits[0].double()
        start = len(model._prefix)
        pred, target = logits[start:-1], ids[0, start + 1:]  # nothing for a 1-token window
        total += float(torch.nn.functional.cross_entropy(pred, target, reduction="sum"))
        count += len(target)
    return total / count


def test_llama_self_stitch_equals_its_own_loss(llama, ctx) -> None:
    """The best affine map from a layer to itself is the identity: loss equal to 1e-4."""
    r = stitch(ctx, llama, LM_HOOK, llama, LM_HOOK, "demo", "demo", max_tokens=1200, ctx_len=64)
    assert abs(r.loss_stitched - r.loss_b) < 1e-4
    assert r.accuracy_stitched == r.accuracy_b
    assert r.n_train == 1200 and 1100 < r.n_eval < 1200  # each window's last token predicts nothing
    windows = _eval_windows(llama, 1200, 64 - llama.n_special)  # B's own loss, window by window
    assert r.loss_b == pytest.approx(_lm_own_loss(llama, windows), rel=1e-5)


def _eval_windows(llama, skip: int, span: int) -> list[list[int]]:
    """The evaluation windows stitch uses: documents cut in ``span`` windows, after the
    first ``skip`` tokens, 1200 tokens in all."""
    from engine.sources import load_source
    out, seen, given = [], 0, 0
    for ex in load_source("demo"):
        doc = llama.tokenize(ex.text)
        lo, seen = max(0, skip - seen), seen + len(doc)
        for i in range(lo, len(doc), span):
            w = doc[i:i + min(span, 1200 - given)]
            given += len(w)
            out.append(w)
            if given >= 1200:
                return out
    return out


def test_llama_across_layers_and_tokenizers(llama, tiny_models, ctx) -> None:
    r = stitch(ctx, llama, "blocks.0.hook_resid_post", llama, LM_HOOK, "demo", "demo", max_tokens=600)
    assert r.loss_stitched < r.loss_b + 0.05 and 0.5 < r.fit_r2 < 1.0
    from engine.models import load_model
    gpt2 = load_model(str(tiny_models["gpt2"]))  # same BPE, but no <s> in front
    with pytest.raises(LatentLabError, match="same token ids"):
        stitch(ctx, gpt2, "blocks.0.hook_resid_post", llama, LM_HOOK, "demo", "demo", max_tokens=200)
    with pytest.raises(LatentLabError, match="cannot stitch a classifier"):
        stitch(ctx, _zoo(ZooConfig(width=8, depth=1, epochs=1)), "blocks.0.hook_post", llama,
               LM_HOOK, "demo", "demo", max_tokens=200)


# ---------------------------------------------------------------- from stored rows
STORE_HOOKS = ["blocks.0.hook_resid_post", LM_HOOK]


@pytest.fixture(scope="module")
def lm_store(tiny_llama, tmp_path_factory, ctx):
    """The tiny llama's rows at two layers over 1,500 demo tokens (float32)."""
    from engine.capture import capture
    path = tmp_path_factory.mktemp("store_stitch") / "llama.h5"
    capture(ctx, str(tiny_llama), "demo", STORE_HOOKS, path, max_tokens=1500, ctx_len=64, dtype="float32")
    return path


def test_store_stitch_of_a_layer_into_itself_is_the_identity(lm_store, ctx) -> None:
    """Ridge 0 maps a layer onto itself exactly: held-out R^2 1 and B's own next-token loss,
    which only holds if the mapped rows go back to the tokens they came from."""
    from engine.geometry import stitch_stores
    spec = f"{lm_store}:{LM_HOOK}"
    r = stitch_stores(ctx, spec, spec, ridge=0.0)
    assert r.r2_eval == pytest.approx(1.0, abs=1e-6) and r.n_train + r.n_eval == 1500
    assert r.n_tokens > 100 and r.note == ""
    assert r.loss_stitched == pytest.approx(r.loss_b, abs=1e-4) and r.accuracy_stitched == r.accuracy_b
    assert r.loss_mean > r.loss_b and r.loss_recovered == pytest.approx(1.0, abs=1e-3)


def test_store_stitch_across_layers_matches_least_squares(lm_store, ctx) -> None:
    """Layer 0 -> layer 1 of one LM: the held-out R^2 equals numpy's least squares fitted
    on the training documents; the stitched loss stays near B's own."""
    import numpy as np

    from engine.geometry import stitch_stores
    from engine.geometry.store_stitching import split_rows
    from engine.store.activations import ActivationStore
    r = stitch_stores(ctx, f"{lm_store}:{STORE_HOOKS[0]}", f"{lm_store}:{LM_HOOK}", ridge=0.0)
    with ActivationStore.open(lm_store) as s:
        x, y = (s.acts(h).astype(np.float64) for h in STORE_HOOKS)
        train, test = split_rows(s.index("sample"))
    ones = np.ones((len(x), 1))
    w = np.linalg.lstsq(np.hstack([x, ones])[train], y[train], rcond=None)[0]
    resid = np.hstack([x, ones])[test] @ w - y[test]
    expected = 1 - (resid ** 2).sum() / ((y[test] - y[test].mean(0)) ** 2).sum()
    assert r.r2_eval == pytest.approx(expected, abs=1e-6) and 0.3 < r.r2_eval < 1.0
    assert r.n_tokens > 100 and abs(r.loss_stitched - r.loss_b) < 0.05


def test_store_stitch_refuses_unaligned_stores(lm_store, tiny_llama, tmp_path, ctx) -> None:
    from engine.capture import capture
    from engine.geometry import stitch_stores
    other = tmp_path / "short.h5"
    capture(ctx, str(tiny_llama), "demo", [LM_HOOK], other, max_tokens=300, ctx_len=64, dtype="float32")
    with pytest.raises(LatentLabError, match="not row-aligned"):
        stitch_stores(ctx, f"{lm_store}:{LM_HOOK}", f"{other}:{LM_HOOK}")
