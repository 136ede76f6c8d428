"""The SAE trainer and the train-sae job on real stores: schedule, b_dec initialisation,
checkpoints with exact resume (after SIGKILL too), refusal of bad stores, DDP under torchrun."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import StoreError
from engine.jobs import Cancelled, JobContext
from engine.sae.train_job import train_sae
from engine.sae.trainer import TrainConfig, geometric_median
from engine.store.activations import ActivationStore, StoreMeta

ROOT = Path(__file__).resolve().parents[1]
HOOK = "blocks.0.hook_resid_post"


def make_store(path: Path, rows: np.ndarray, hook: str = HOOK) -> Path:
    """A store holding ``rows`` at ``hook`` (synthetic activations, real HDF5)."""
    meta = StoreMeta("synthetic", "0" * 16, "synthetic:test", (hook,), {hook: rows.shape[1]}, "float32")
    with ActivationStore.create(path, meta) as store:
        for lo in range(0, len(rows), 5000):
            part = rows[lo:lo + 5000]
            n = len(part)
            store.append({hook: part}, np.zeros(n, np.int32), np.arange(lo, lo + n, dtype=np.int32),
                         np.zeros(n, np.int32))
    return path


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory) -> Path:
    from engine.sae.synthetic import synthetic_dictionary
    x, _, _ = synthetic_dictionary(d_in=32, n_atoms=64, k_active=4, n_rows=24_000, noise=0.01, seed=0)
    return make_store(tmp_path_factory.mktemp("sae") / "syn.h5", x.numpy())


def run(store, out, **kw):
    params = dict(hook=HOOK, arch="topk", expansion=4, k=4, batch_size=512, steps=120, lr=3e-3,
                  checkpoint_every=40, holdout=2000)
    params.update(kw)
    return train_sae(JobContext(device=torch.device("cpu")), store=store, out=out, **params)


def test_lr_schedule():
    cfg = TrainConfig(lr=1.0, total_steps=100, warmup_steps=10, decay_start=0.8)
    assert cfg.lr_at(0) == pytest.approx(0.1) and cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(50) == 1.0 and cfg.lr_at(90) == pytest.approx(0.5) and cfg.lr_at(99) == pytest.approx(0.05)


def test_geometric_median_is_stationary():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 5, generator=g, dtype=torch.float64) + torch.tensor([3.0, 0, 0, 0, 0], dtype=torch.float64)
    x[:50] += 100  # outliers pull the mean, not the median
    m = geometric_median(x, iters=1000, tol=1e-12)
    unit = (x - m) / (x - m).norm(dim=1, keepdim=True)
    assert unit.sum(0).norm() < 1e-3 * len(x)  # the sum of unit vectors vanishes at the median
    assert (m - x.mean(0)).norm() > 5


def test_train_job_writes_a_good_sae(synthetic_store, tmp_path):
    from engine.sae.io import load_sae
    result = run(synthetic_store, tmp_path / "sae")
    assert result.steps == 120
    files = {p.name for p in (tmp_path / "sae").iterdir()}
    assert {"cfg.json", "sae_weights.safetensors", "training_log.json", "metrics.json"} <= files
    assert "checkpoint" not in files
    assert result.metrics["fvu"] < 0.2 and result.metrics["l0"] <= 4
    log = json.loads((tmp_path / "sae" / "training_log.json").read_text())
    assert log[-1]["step"] == 120 and log[-1]["loss"] < log[0]["loss"]
    sae = load_sae(tmp_path / "sae")
    assert sae.cfg.hook_name == HOOK and sae.d_sae == 128
    with pytest.raises(Exception, match="already holds a trained SAE"):
        run(synthetic_store, tmp_path / "sae")


def test_partials_stream_curves(synthetic_store, tmp_path):
    points = []
    ctx = JobContext(device=torch.device("cpu"), on_partial=points.append)
    train_sae(ctx, store=synthetic_store, out=tmp_path / "s", hook=HOOK, arch="topk", expansion=2, k=4,
              batch_size=512, steps=30, holdout=2000)
    assert [p["step"] for p in points] == [10, 20, 30]
    assert {"loss", "mse", "lr", "tokens_per_s", "dead_frac"} <= set(points[0])


def test_cancel_then_resume_is_exact(synthetic_store, tmp_path):
    whole = run(synthetic_store, tmp_path / "whole")
    ctx = JobContext(device=torch.device("cpu"))
    ctx.on_progress = lambda done, total, msg: ctx.cancel() if "loss" in msg and done >= 90 else None
    with pytest.raises(Cancelled):
        train_sae(ctx, store=synthetic_store, out=tmp_path / "part", hook=HOOK, arch="topk", expansion=4, k=4,
                  batch_size=512, steps=120, lr=3e-3, checkpoint_every=40, holdout=2000)
    assert (tmp_path / "part" / "checkpoint").is_dir()
    with pytest.raises(Exception, match="pass --resume"):
        run(synthetic_store, tmp_path / "part")
    resumed = run(synthetic_store, tmp_path / "part", resume=True)
    for key in ("mse", "fvu", "l0"):
        assert resumed.metrics[key] == pytest.approx(whole.metrics[key], rel=1e-5, abs=1e-7), key


def test_sigkill_then_resume(synthetic_store, tmp_path):
    base = [sys.executable, str(ROOT / "main.py"), "train-sae", "--store", str(synthetic_store), "--hook", HOOK,
            "--arch", "topk", "--expansion", "4", "--k", "4", "--batch-size", "256", "--steps", "400",
            "--lr", "0.003", "--checkpoint-every", "50", "--holdout", "2000", "--quiet", "--device", "cpu"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([*base, "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out / "checkpoint").is_dir():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run([*base, "--out", str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    whole = subprocess.run([*base, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    a = json.loads((out / "metrics.json").read_text())
    b = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    for key in ("mse", "fvu", "l0"):
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_refuses_nan_rows_and_wrong_width(synthetic_store, tmp_path):
    rows = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    rows[1234, 5] = np.nan
    bad = make_store(tmp_path / "nan.h5", rows)
    with pytest.raises(StoreError, match=r"nan\.h5: /acts/blocks\.0\.hook_resid_post row 1234 holds NaN"):
        run(bad, tmp_path / "x", batch_size=256)
    rows[1234, 5] = 0
    narrow = make_store(tmp_path / "narrow.h5", rows)
    ctx = JobContext(device=torch.device("cpu"))
    ctx.on_progress = lambda done, total, msg: ctx.cancel() if "loss" in msg and done >= 45 else None
    with pytest.raises(Cancelled):
        train_sae(ctx, store=synthetic_store, out=tmp_path / "w", hook=HOOK, arch="topk", expansion=2, k=4,
                  batch_size=512, steps=100, checkpoint_every=40, holdout=2000)
    with pytest.raises(StoreError, match="width 16, but the SAE .* expects d_in = 32"):
        run(narrow, tmp_path / "w", resume=True, batch_size=256)
    with pytest.raises(StoreError, match="no hook point 'nope'"):
        run(narrow, tmp_path / "y", hook="nope")


def test_ddp_two_ranks(synthetic_store, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           str(ROOT / "main.py"), "train-sae", "--store", str(synthetic_store), "--hook", HOOK, "--arch", "topk",
           "--expansion", "4", "--k", "4", "--batch-size", "256", "--epochs", "2", "--lr", "0.003",
           "--holdout", "2000", "--out", str(tmp_path / "ddp"), "--quiet", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["steps"] == math.ceil(2 * 22_000 / 256 / 2)  # each step: one batch per rank
    assert metrics["fvu"] < 0.3


def test_gradients_match_finite_differences(tiny_llama):
    import torch.nn.functional as F

    from engine.hooks import replacing
    from engine.models import load_model
    from engine.sae.gradients import activations_and_grads
    model = load_model(str(tiny_llama))
    model.module.double()
    hook = "blocks.1.hook_resid_post"
    windows = [model.tokenize("for item in items: total += item"), model.tokenize("x = 1")]
    x, g = activations_and_grads(model, windows, hook)
    batch = model.make_batch(windows)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss_with(delta: float) -> float:
        def shift(t):
            t = t.clone()
            t[batch.keep] += delta * v.to(t.dtype)
            return t
        with torch.no_grad(), replacing(model.hook_sites()[hook], shift):
            logits = model.run(batch).logits
        pairs = batch.keep[:, :-1] & batch.keep[:, 1:]
        return float(F.cross_entropy(logits[:, :-1][pairs], batch.inputs["input_ids"][:, 1:][pairs], reduction="sum"))

    eps = 1e-4
    numeric = (loss_with(eps) - loss_with(-eps)) / (2 * eps)
    assert float((g.double() * v).sum()) == pytest.approx(numeric, rel=1e-4)
    assert x.shape == (sum(len(w) for w in windows), 32)


def test_gtopk_job_on_a_language_model_store(tiny_llama, tmp_path):
    from engine.capture import capture
    store = tmp_path / "lm.h5"
    capture(JobContext(device=torch.device("cpu")), model=str(tiny_llama), source="demo", hooks=[HOOK],
            out=store, max_tokens=3000, ctx_len=64)
    result = run(store, tmp_path / "g", arch="gtopk", expansion=2, k=4, batch_size=256, steps=20,
                 holdout=300, checkpoint_every=10)
    assert result.steps == 20 and result.metrics["l0"] <= 4
