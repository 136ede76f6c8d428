"""Capture into stores: values against the model's own outputs, resume after cancel and
after SIGKILL, refusal to mix models or hook sets, text sources with labels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.capture import capture
from engine.errors import LatentLabError, SourceError, StoreError
from engine.jobs import Cancelled, JobContext
from engine.models import load_model
from engine.sources import load_source
from engine.store.activations import ActivationStore

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]


def run_capture(model, out, **kw):
    params = dict(source="demo", hooks=HOOKS, max_tokens=3000, batch_size=4, ctx_len=64)
    params.update(kw)
    return capture(JobContext(device=torch.device("cpu")), model=model, out=out, **params)


def test_capture_rows_match_model(tiny_llama, tmp_path):
    model = load_model(str(tiny_llama))
    result = run_capture(model, tmp_path / "s.h5", dtype="float32")
    assert result.rows == result.added == 3000
    with ActivationStore.open(tmp_path / "s.h5") as store:
        assert store.n_rows == 3000 and store.hooks == tuple(HOOKS)
        assert store.meta.model_hash == model.weight_hash()
        tokens, sample, pos = (store.index(n) for n in ("tokens", "sample", "position"))
        topic = store.index("topic")
        first_doc = store.document(0)
        ids = model.tokenize(first_doc)
        n0 = int((sample == 0).sum())
        assert tokens[:n0].tolist() == ids[:n0]
        assert pos[:n0].tolist() == list(range(n0))
        assert np.array_equal(topic, sample)  # the demo corpus labels each topic by its index
        # the first window (63 document tokens after <s>) against HF's hidden states
        batch = model.make_batch([ids[:63]])
        with torch.no_grad():
            ref = model.module(**batch.inputs, output_hidden_states=True).hidden_states[1][0, 1:]
        np.testing.assert_allclose(store.acts(HOOKS[0], 0, 63), ref.numpy(), rtol=1e-5, atol=1e-5)
        assert np.isfinite(store.acts(HOOKS[1])).all()


def test_cancel_then_resume_equals_uninterrupted(tiny_llama, tmp_path):
    model = load_model(str(tiny_llama))
    whole = tmp_path / "whole.h5"
    run_capture(model, whole)
    ctx = JobContext(device=torch.device("cpu"))
    ctx.on_progress = lambda done, total, msg: ctx.cancel() if done >= 1000 else None
    part = tmp_path / "part.h5"
    with pytest.raises(Cancelled):
        capture(ctx, model=model, out=part, source="demo", hooks=HOOKS, max_tokens=3000,
                batch_size=4, ctx_len=64)
    with ActivationStore.open(part) as store:
        assert 1000 <= store.n_rows < 3000
    run_capture(model, part, resume=True, batch_size=3)  # a different batch size is fine
    _assert_same_store(whole, part)


def test_a_cancel_stops_the_running_batch_after_its_block(tiny_llama, tmp_path):
    """Cancelled while block 0 runs the second batch: block 1 never runs for it, only the first
    batch is committed, and a resume then equals an uninterrupted capture."""
    model = load_model(str(tiny_llama))
    assert len(model.blocks()) == 3
    ctx, runs = JobContext(device=torch.device("cpu")), {0: 0, 1: 0}

    def count(i):
        def hook(module, *_):
            runs[i] += 1
            if i == 0 and runs[0] == 3:  # the hook-width probe, batch 1, then batch 2
                ctx.cancel()
        return hook
    first, second = model.blocks()[:2]
    handles = [first.register_forward_hook(count(0)), second.register_forward_pre_hook(count(1))]
    part = tmp_path / "part.h5"
    try:
        with pytest.raises(Cancelled):
            capture(ctx, model=model, out=part, source="demo", hooks=HOOKS, max_tokens=3000,
                    batch_size=4, ctx_len=64)
    finally:
        for handle in handles:
            handle.remove()
    assert runs == {0: 3, 1: 2}  # block 1 (where the capture's last hook is) never started batch 2
    with ActivationStore.open(part) as store:
        assert 0 < store.n_rows <= 4 * 64  # the first batch of four windows only
    whole = tmp_path / "whole.h5"
    run_capture(model, whole)
    run_capture(model, part, resume=True)
    _assert_same_store(whole, part)


def test_resume_extends_mid_window(tiny_llama, tmp_path):
    model = load_model(str(tiny_llama))
    run_capture(model, tmp_path / "a.h5", max_tokens=1000)  # 1000 is not a window boundary
    result = run_capture(model, tmp_path / "a.h5", max_tokens=3000, resume=True)
    assert result.added == 2000
    run_capture(model, tmp_path / "b.h5", max_tokens=3000)
    _assert_same_store(tmp_path / "b.h5", tmp_path / "a.h5")


def _assert_same_store(a: Path, b: Path) -> None:
    with ActivationStore.open(a) as x, ActivationStore.open(b) as y:
        assert x.n_rows == y.n_rows
        for name in ("tokens", "sample", "position"):
            assert np.array_equal(x.index(name), y.index(name)), name
        for hook in x.hooks:
            np.testing.assert_allclose(x.acts(hook).astype(np.float32), y.acts(hook).astype(np.float32),
                                       rtol=2e-3, atol=2e-3)
        assert x.n_documents == y.n_documents
        assert all(x.document(i) == y.document(i) for i in range(x.n_documents))


def test_sigkill_then_resume(tiny_llama, tmp_path):
    out = tmp_path / "killed.h5"
    cmd = [sys.executable, str(ROOT / "main.py"), "capture", "--model", str(tiny_llama), "--source", "demo",
           "--hooks", ",".join(HOOKS), "--max-tokens", "4000", "--batch-size", "1", "--ctx-len", "16",
           "--out", str(out), "--quiet", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        seen = 0
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if out.exists():
                try:
                    with ActivationStore.open(out) as store:
                        seen = store.n_rows
                except StoreError:
                    pass
            if seen >= 1000:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"capture ended before it could be killed: {proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    with ActivationStore.open(out) as store:
        assert 1000 <= store.n_rows < 4000
    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole = subprocess.run([*cmd[:-7], "--out", str(tmp_path / "whole.h5"), "--quiet", "--device", "cpu",
                            "--batch-size", "1", "--ctx-len", "16"], cwd=tmp_path, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    _assert_same_store(tmp_path / "whole.h5", out)
    with ActivationStore.open(out) as store:
        assert store.n_rows == 4000
        keys = store.index("sample").astype(np.int64) * 1_000_000 + store.index("position")
        assert len(np.unique(keys)) == 4000  # no row duplicated


def test_refuses_other_model_or_hooks(tiny_models, tmp_path):
    out = tmp_path / "s.h5"
    run_capture(str(tiny_models["llama"]), out, max_tokens=200)
    with pytest.raises(StoreError, match="already exists; pass --resume"):
        run_capture(str(tiny_models["llama"]), out, max_tokens=400)
    with pytest.raises(StoreError, match="refusing to append.*model_id"):
        run_capture(str(tiny_models["gpt2"]), out, max_tokens=400, resume=True)
    with pytest.raises(StoreError, match="refusing to append.*hook points"):
        run_capture(str(tiny_models["llama"]), out, max_tokens=400, resume=True, hooks=HOOKS[:1])
    with pytest.raises(StoreError, match="refusing to append.*ctx_len"):
        run_capture(str(tiny_models["llama"]), out, max_tokens=400, resume=True, ctx_len=32)


def test_capture_stops_at_the_deepest_hook(tiny_models, tmp_path):
    model = load_model(str(tiny_models["gpt_neox"]))
    calls = []
    handle = model.module.gpt_neox.layers[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        run_capture(model, tmp_path / "s.h5", max_tokens=500)
    finally:
        handle.remove()
    assert calls == []


def test_pooled_encoder_one_row_per_window(tiny_models, tmp_path):
    spec = f"hf-encoder:{tiny_models['bert']}?pooling=mean"
    result = run_capture(spec, tmp_path / "s.h5", hooks=["blocks.1.hook_resid_post"], max_tokens=None)
    model = load_model(spec)
    windows = sum(-(-len(model.tokenize(e.text)) // 62) for e in load_source("demo"))
    assert result.rows == windows
    with ActivationStore.open(tmp_path / "s.h5") as store:
        assert (store.index("tokens") == -1).all()
        assert store.meta.params["pooling"] == "mean"


def test_text_sources_and_labels(tiny_models, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"text": f"document number {i} says " + "spam " * (i % 5), "lang": ["en", "fr"][i % 2], "score": i}
            for i in range(12)]
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "s.h5"
    run_capture(str(tiny_models["gpt2"]), out, source=f"{corpus}?labels=lang,score", max_tokens=None,
                hooks=["blocks.0.hook_resid_post"])
    with ActivationStore.open(out) as store:
        sample = store.index("sample")
        assert store.n_documents == 12 and set(sample) == set(range(12))
        assert np.array_equal(store.index("score"), sample)
        assert np.array_equal(store.index("lang"), sample % 2)
        assert store.meta.params["label_classes"]["lang"] == ["en", "fr"]
        assert store.document(3) == rows[3]["text"]
    folder = tmp_path / "docs"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text("first block\n\nsecond block\n")
    (folder / "b" / "c.txt").write_text("third")
    src = load_source(str(folder))
    assert [e.text for e in src] == ["first block", "second block", "third"]
    assert [e.labels["file"] for e in src] == [0, 0, 1]


def test_bad_sources(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        load_source(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(SourceError, match=r"bad\.jsonl:2: no string field 'text'"):
        load_source(str(bad))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(SourceError, match="expected a .txt or .jsonl"):
        load_source(str(tmp_path / "x.csv"))


def test_capture_argument_errors(tiny_llama, tmp_path):
    with pytest.raises(LatentLabError, match="no hook points"):
        run_capture(str(tiny_llama), tmp_path / "s.h5", hooks=[])
    with pytest.raises(LatentLabError, match="unknown hook point 'blocks.7.hook_resid_post'"):
        run_capture(str(tiny_llama), tmp_path / "s.h5", hooks=["blocks.7.hook_resid_post"])
    assert not (tmp_path / "s.h5").exists()


def test_digits_zoo_capture_with_labels(tmp_path):
    from engine.models.digits_zoo import ZooConfig, save, train
    module, metrics = train(ZooConfig(arch="mlp", width=32, depth=2, seed=0, epochs=10))
    folder = save(module, ZooConfig(arch="mlp", width=32, depth=2, seed=0, epochs=10), metrics, tmp_path / "m")
    out = tmp_path / "d.h5"
    result = run_capture(str(folder), out, source="digits:test", hooks=["blocks.1.hook_post", "logits"],
                         max_tokens=None, batch_size=64, dtype="float32")
    src = load_source("digits:test")
    assert result.rows == len(src)
    with ActivationStore.open(out) as store:
        assert store.dim("blocks.1.hook_post") == 32 and store.dim("logits") == 10
        labels = store.index("digit")
        assert np.array_equal(labels, [e.labels["digit"] for e in src])
        accuracy = (store.acts("logits").argmax(1) == labels).mean()
        assert accuracy == pytest.approx(metrics["test_acc"], abs=1e-6)
        assert np.array_equal(store.image(5), list(src)[5].image)
    with pytest.raises(LatentLabError, match="takes images"):
        run_capture(str(folder), tmp_path / "t.h5", source="demo", hooks=["logits"])
