"""Training you can watch (issue 18, item 2): the SAE trainer streams TrainingPoints (loss,
batch FVU, L0, dead share) that the jobs panel draws as live curves and sums up on its strip,
the finished run's held-out metrics (metrics.json) beside them; a capture names its pace and
what float16 storage costs against float32."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from desktop_app.bridge import DONE
from desktop_app.capture_dialog import capture_summary
from desktop_app.sae_dialog import TrainRequest
from desktop_app.training_curves import figures, heldout_figures
from engine.api import TrainingPoint
from engine.capture import capture
from engine.jobs import Cancelled, JobContext
from engine.sae.base import SAEConfig, TrainState, build_sae
from engine.sae.train_job import train_sae
from engine.sae.trainer import TrainConfig, training_point
from engine.store.activations import ActivationStore
from tests.conftest import wait_until

CPU = torch.device("cpu")


def test_training_curve_point_figures_against_a_plain_recomputation():
    """A point's batch FVU is metrics.py's definition on the step's batch; L0 counts the
    codes; dead is the share unfired over min(dead_after_tokens, tokens seen)."""
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch="topk", d_in=16, d_sae=64, k=4, dead_after_tokens=1000))
    x = torch.randn(200, 16) * torch.linspace(0.5, 3, 16) + 2.0
    state = TrainState(step=7, tokens_since_fired=torch.zeros(64, dtype=torch.long))
    state.tokens_since_fired[:8] = 1400  # tokens seen: 1400, window min(1000, 1400): dead
    state.tokens_since_fired[8:12] = 999  # not yet
    out = sae.training_step(x, state)
    point = training_point(sae, state, TrainConfig(total_steps=20), x, out, tokens=1400, tokens_per_s=5.0)
    xd, xh = x.double().numpy(), out.x_hat.double().numpy()
    want = ((xh - xd) ** 2).sum() / ((xd - xd.mean(0)) ** 2).sum()
    assert point.fvu == pytest.approx(want, rel=1e-5)
    assert point.l0 == pytest.approx(float((out.codes != 0).sum(1).float().mean()))
    assert point.dead_frac == 8 / 64 and point.loss == pytest.approx(out.loss.item())
    assert (point.step, point.total_steps, point.tokens, point.final) == (7, 20, 1400, False)
    state.tokens_since_fired[:] = 300  # early on (300 tokens seen): dead means never fired yet
    state.tokens_since_fired[:5] = 100
    assert training_point(sae, state, TrainConfig(total_steps=20), x, out, 300, 1.0).dead_frac == 59 / 64
    row = point.row()  # the Mapping a log row is
    assert dict(point) == row and point["fvu"] == point.fvu and {"mse", "auxk"} <= set(point)
    assert TrainingPoint.from_row(json.loads(json.dumps(row)), 20) == point


def test_training_curve_resumed_run_replays_its_points_and_ends_on_the_metrics(small_workspace, tmp_path):
    """Cancelled after its step-10 checkpoint and resumed, a run's points still come once per
    logged step, in order; the last carries metrics.json; the log holds the same rows."""
    params = dict(store=small_workspace.store, hook=small_workspace.hook, out=tmp_path / "sae", arch="topk",
                  expansion=2, k=4, batch_size=256, steps=25, checkpoint_every=10, holdout=500)
    first: list[TrainingPoint] = []
    ctx = JobContext(device=CPU, on_partial=first.append)
    ctx.on_progress = lambda done, total, msg: ctx.cancel() if "loss" in msg and done >= 15 else None
    with pytest.raises(Cancelled):
        train_sae(ctx, **params)
    points: list[TrainingPoint] = []
    result = train_sae(JobContext(device=CPU, on_partial=points.append), resume=True, **params)
    assert [p.step for p in first] == [10] and [p.step for p in points] == [10, 20, 25]
    assert [p.final for p in points] == [False, False, True] and {p.total_steps for p in points} == {25}
    assert [p.tokens for p in points] == [2560, 5120, 6400]
    metrics = json.loads((tmp_path / "sae" / "metrics.json").read_text())
    assert points[-1].heldout == metrics == result.metrics
    log = json.loads((tmp_path / "sae" / "training_log.json").read_text())
    assert log == [p.row() for p in points]
    again: list[TrainingPoint] = []  # finished already: the curves and metrics, nothing trained
    train_sae(JobContext(device=CPU, on_partial=again.append), resume=True, **params)
    assert again == points


def test_training_curve_follows_a_train_sae_job_in_the_jobs_panel(open_window, qtbot, small_workspace,
                                                                   tiny_llama, tmp_path):
    """Jobs > Train SAE's job (MainWindow.start_training): every point reaches the curves in
    step order, the strip names the latest figures, and the end shows metrics.json's."""
    window = open_window([], size=None)
    window.state.set_workspace(tmp_path)
    panel, out = window.jobs, tmp_path / "saes" / "watched"
    strip_at_point: list[tuple[TrainingPoint, str]] = []  # connected after the panel: sees it updated
    window.bridge.partial.connect(lambda job_id, obj: isinstance(obj, TrainingPoint)
                                  and strip_at_point.append((obj, panel.summary.text())))
    request = TrainRequest(store=small_workspace.store, hook=small_workspace.hook, out=out, arch="topk",
                           expansion=2, k=4, batch_size=256, steps=25, holdout=500,
                           eval_model=str(tiny_llama), model=str(tiny_llama), stats=False)
    job_id = window.start_training(request)
    job = window.bridge.jobs[job_id]
    wait_until(qtbot, lambda: job.state == DONE, 120)
    title = f"Train SAE {out.name}"
    log = json.loads((out / "training_log.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    curves = panel.curves
    assert curves.job_id == job_id and [p.step for p in curves.points] == [r["step"] for r in log] == [10, 20, 25]
    for key, _ in (("loss", 0), ("fvu", 0), ("l0", 0)):
        steps, values = curves.series(key)
        assert steps.tolist() == [10, 20, 25] and values.tolist() == [r[key] for r in log]
    assert curves.series("dead_frac")[1].tolist() == [100 * r["dead_frac"] for r in log]
    assert curves.final is curves.points[-1] and curves.final.heldout["fvu"] == metrics["fvu"]
    assert math.isfinite(metrics["loss_recovered"])  # measured: the tiny llama was spliced
    shown = curves.metrics.text()
    assert shown == heldout_figures(metrics) and f"FVU {metrics['fvu']:.3g}" in shown and "loss recovered" in shown
    live = [(p, text) for p, text in strip_at_point if not p.final]
    assert [p.step for p, _ in live] == [10, 20]
    for p, text in live:  # e.g. "Train SAE watched: SAE 10/25 steps · FVU 0.52 · L0 4 · dead 0.0%"
        assert text == f"{title}: {figures(p)}" and f"SAE {p.step}/25 steps \u00b7 FVU {p.fvu:.3g}" in text
    row_text = panel.rows[job_id].message.text()
    assert row_text.startswith("done in") and row_text.endswith(heldout_figures(metrics))
    assert f"{title}: SAE trained, {heldout_figures(metrics)}" in panel.log.toPlainText()
    assert not panel.expanded()  # the strip stays one line; Details shows the curves
    panel.set_expanded(True)
    assert curves.isVisible() and all(plot.isVisible() for plot in curves.plots.values())
    assert window.state.sae == out and curves.job_id == job_id  # made current: still the run just drawn
    window.bridge.cancel_all()  # the projections the new SAE asked for are not this test's
    window.state.set_sae(small_workspace.sae)  # another current SAE: the curves and metrics it recorded
    recorded = json.loads((small_workspace.sae / "training_log.json").read_text())
    assert curves.job_id is None and [p.step for p in curves.points] == [r["step"] for r in recorded]
    assert curves.series("fvu")[1].tolist() == [r["fvu"] for r in recorded]
    assert curves.final.heldout == json.loads((small_workspace.sae / "metrics.json").read_text())
    assert curves.title.text().startswith(f"SAE {small_workspace.sae.name}: ")


def test_capture_summary_names_tokens_per_s_and_the_float32_cosine(tiny_llama, tmp_path):
    """A float32 model into a float16 store: progress and summary give tokens/s, and the
    summary the stored rows' cosine to the float32 rows (checked against a float32 store)."""
    hook = "blocks.1.hook_resid_post"
    messages: list[str] = []
    params = dict(model=str(tiny_llama), source="demo", hooks=[hook], max_tokens=300, batch_size=4, ctx_len=64)
    ctx = JobContext(device=CPU, on_progress=lambda done, total, msg: messages.append(msg))
    half = capture(ctx, out=tmp_path / "h.h5", **params)
    full = capture(JobContext(device=CPU), out=tmp_path / "f.h5", dtype="float32", **params)
    assert full.stored_cosine is None and half.row_unit == "tokens" and half.rows_per_s > 0
    assert any(m.startswith("h.h5: ") and m.endswith(" tokens/s") for m in messages)
    c = half.stored_cosine[hook]
    with ActivationStore.open(half.path) as a, ActivationStore.open(full.path) as b:
        rows16, rows32 = a.acts(hook, 0, c["rows"]).astype(np.float64), b.acts(hook, 0, c["rows"]).astype(np.float64)
    cos = (rows16 * rows32).sum(1) / np.linalg.norm(rows16, axis=1) / np.linalg.norm(rows32, axis=1)
    assert c["rows"] == 4 * 63 and c["mean"] == pytest.approx(cos.mean(), abs=1e-9)
    assert c["min"] == pytest.approx(cos.min(), abs=1e-9) and 0.999 < c["min"] < 1.0
    text = capture_summary(half)
    assert text.startswith(f"captured 300 rows into {half.path} (300 in the store, ")
    assert f"{half.rows_per_s:,.0f} tokens/s)" in text
    assert f"; float16 rows at {hook}: cosine to the float32 rows mean {c['mean']:.6f}" in text
    assert "cosine" not in capture_summary(full) and "tokens/s" in capture_summary(full)
