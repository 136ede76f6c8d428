"""The train-sae job: an SAE trained on one hook point of an activation store, streamed in
shuffled batches, with held-out rows for metrics, checkpoints and exact ``--resume``."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from engine.errors import LatentLabError, StoreError
from engine.jobs import JobContext
from engine.provenance import file_digest, known_record, provenance_record
from engine.sae.base import SAEConfig, SparseAutoencoder, TrainState, build_sae
from engine.sae.quality import METRICS_FILE
from engine.sae.trainer import TrainConfig, TrainingPoint, fit, init_b_dec, make_optimizer
from engine.store.activations import ActivationStore

PROVENANCE_FILE = "provenance.json"  # an SAE folder's record (engine.provenance)

CHECKPOINT = "checkpoint"


class TrainResult(NamedTuple):
    out: str
    steps: int
    metrics: dict[str, float]


def check_finite(store: ActivationStore, hook: str, ctx: JobContext, block: int = 65536) -> None:
    """Refuse a store whose rows hold NaN or infinity, naming the first bad row."""
    for lo in range(0, store.n_rows, block):
        ctx.check_cancelled()
        rows = store.acts(hook, lo, lo + block)
        bad = ~np.isfinite(rows).all(axis=1)
        if bad.any():
            row = lo + int(np.flatnonzero(bad)[0])
            raise StoreError(f"{store.path}: /acts/{hook} row {row} holds NaN or infinity; "
                             "an SAE cannot be trained on it")
        ctx.progress(min(lo + block, store.n_rows), store.n_rows, "checking rows")


def store_batches(store: ActivationStore, hook: str, batch_size: int, stop: int, seed: int,
                  skip: int = 0, rank: int = 0, world: int = 1) -> Iterator[torch.Tensor]:
    """Shuffled float32 batches of rows [0, stop), epoch after epoch (a new shuffle each),
    skipping the first ``skip`` batches; rank ``r`` of ``world`` takes every world-th one."""
    i = 0
    epoch = 0
    while True:
        for b in store.iter_batches(hook, batch_size, shuffle=True, seed=seed + epoch, stop=stop,
                                    drop_last=True):
            if i >= skip and i % world == rank:
                yield torch.from_numpy(b)
            i += 1
        if i == 0:
            raise StoreError(f"{store.path}: fewer than {batch_size} training rows at {hook}")
        epoch += 1


def _sae_config(store: ActivationStore, hook: str, arch: str, expansion: int, k: int,
                options: dict[str, Any]) -> SAEConfig:
    d_in = store.dim(hook)
    return SAEConfig(arch=arch, d_in=d_in, d_sae=int(options.pop("d_sae", None) or expansion * d_in), k=k,
                     hook_name=hook, model_id=store.meta.model_id,
                     store_id=f"{store.meta.source_id}@{store.meta.model_hash}", **options)


def _save_checkpoint(out: Path, sae: SparseAutoencoder, opt, state: TrainState, history, tcfg) -> None:
    from engine.sae.io import save_sae
    tmp = out / (CHECKPOINT + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_sae(sae, tmp)
    torch.save({"optimizer": opt.state_dict(), "step": state.step,
                "tokens_since_fired": state.tokens_since_fired, "history": history,
                "train_config": asdict(tcfg)}, tmp / "trainer_state.pt")
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    os.replace(tmp, out / CHECKPOINT)


def _load_checkpoint(out: Path, d_in: int, store: ActivationStore, hook: str):
    from engine.sae.io import load_sae
    folder = out / CHECKPOINT
    sae = load_sae(folder)
    if sae.d_in != d_in:
        raise StoreError(f"{store.path}: {hook} rows have width {d_in}, but the SAE in {folder} "
                         f"expects d_in = {sae.d_in}")
    saved = torch.load(folder / "trainer_state.pt", weights_only=False)
    state = TrainState(step=saved["step"], tokens_since_fired=saved["tokens_since_fired"])
    return sae, saved, state


def train_sae(ctx: JobContext, store: str | os.PathLike, hook: str, out: str | os.PathLike,
              arch: str = "topk", expansion: int = 8, k: int = 32, batch_size: int = 4096,
              steps: int | None = None, epochs: float = 1.0, lr: float = 4e-4, holdout: float = 0.05,
              resume: bool = False, seed: int = 0, checkpoint_every: int = 200, b_dec_init: str = "geometric_median",
              autocast: str = "auto", eval_model: str | None = None, **sae_options: Any) -> TrainResult:
    """Train an SAE of ``arch`` on ``hook`` of ``store``; save it (SAELens layout) to ``out``
    with training_log.json and metrics.json (held-out rows: the last ``holdout`` share).

    The curves go out as ``ctx.partial(TrainingPoint)`` every 10 steps (a resumed run first
    sends the points it had logged); the last one comes once the held-out rows are
    measured, carrying metrics.json's figures in ``heldout``."""
    out = Path(out)
    world, rank = _dist_info()
    if resume and (out / METRICS_FILE).is_file() and not (out / CHECKPOINT).exists():
        metrics = json.loads((out / METRICS_FILE).read_text())  # finished already
        for point in load_training_curves(out):
            ctx.partial(point)
        return TrainResult(str(out), int(metrics.get("steps", 0)), metrics)
    with ActivationStore.open(store) as st:
        if hook not in st.hooks:
            raise StoreError(f"{st.path}: no hook point {hook!r}; it holds {list(st.hooks)}")
        n_hold = max(1, int(holdout * st.n_rows)) if holdout < 1 else int(holdout)
        n_train = st.n_rows - n_hold
        if n_train < batch_size:
            raise StoreError(f"{st.path}: {n_train} training rows, fewer than one batch of {batch_size}")
        total = steps or max(1, math.ceil(epochs * n_train / batch_size / world))
        tcfg = TrainConfig(lr=lr, batch_size=batch_size, total_steps=total, seed=seed,
                           checkpoint_every=checkpoint_every, b_dec_init=b_dec_init, autocast=autocast,
                           warmup_steps=min(50, max(1, total // 20)))
        sae, history, state, opt_state = _start(ctx, st, hook, out, arch, expansion, k, tcfg, resume, n_train,
                                                sae_options)
        sae.to(ctx.device)
        opt = make_optimizer(sae, tcfg)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        if state.tokens_since_fired is not None:
            state.tokens_since_fired = state.tokens_since_fired.to(ctx.device)
        batches = store_batches(st, hook, batch_size, n_train, seed, skip=state.step * world, rank=rank, world=world)
        if sae.needs_grad:
            from engine.sae.gradients import gradient_batches
            batches = gradient_batches(st, hook, batch_size, n_train, seed, eval_model or st.meta.model_id,
                                       device=ctx.device, skip=state.step)

        def checkpoint(step, opt_, state_):
            if rank == 0:
                _save_checkpoint(out, sae, opt_, state_, history, tcfg)

        if rank == 0:
            for point in curve_points(history, total):  # what a resumed run had logged
                ctx.partial(point)
        fit(sae, batches, tcfg, ctx, state, opt, on_checkpoint=checkpoint, ddp=world > 1, hold_last=True,
            log=history)  # the checkpoints save the rows logged so far
        metrics = _finish(ctx, st, hook, out, sae, history, n_train, eval_model) if rank == 0 else {}
        if rank == 0:
            write_provenance(out, st, hook, seed, dict(
                arch=arch, expansion=expansion, k=k, batch_size=batch_size, steps=total, epochs=epochs, lr=lr,
                holdout=holdout, b_dec_init=b_dec_init, autocast=autocast, eval_model=eval_model,
                world=world, **sae_options))
        if rank == 0 and history:
            ctx.partial(curve_points(history[-1:], total, metrics)[-1])  # held back by fit until now
    return TrainResult(str(out), state.step, metrics)


def curve_points(rows: list[dict[str, Any]], total_steps: int,
                 heldout: dict[str, float] | None = None) -> list[TrainingPoint]:
    """TrainingPoints of training_log.json rows (of a run of ``total_steps``, unless a row
    says); the last one carries ``heldout`` (metrics.json) when given."""
    points = [TrainingPoint.from_row(row, total_steps) for row in rows]
    if points and heldout is not None:
        points[-1] = TrainingPoint.from_row(rows[-1], total_steps, heldout)
    return points


def load_training_curves(sae_dir: str | os.PathLike) -> list[TrainingPoint]:
    """A trained SAE's curves as its training_log.json recorded them, the last point with
    metrics.json's held-out figures; none for a folder without a log (an SAE from elsewhere)."""
    folder = Path(sae_dir)
    log, metrics = folder / "training_log.json", folder / METRICS_FILE
    try:
        rows = json.loads(log.read_text()) if log.is_file() else []
        heldout = json.loads(metrics.read_text()) if metrics.is_file() else None
    except (OSError, ValueError) as exc:
        raise LatentLabError(f"{folder}: cannot read its training log and metrics ({exc})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "step" in r for r in rows):
        raise LatentLabError(f"{log}: not a training log (a list of rows with a step each)")
    total = int(heldout.get("steps", 0)) if heldout else 0
    return curve_points(rows, total or (int(rows[-1]["step"]) if rows else 0), heldout)


def _start(ctx, st, hook, out: Path, arch, expansion, k, tcfg, resume, n_train, options):
    """A fresh SAE (seeded, b_dec at the data's centre) or the checkpointed one."""
    if (out / CHECKPOINT / "trainer_state.pt").is_file() and resume:
        sae, saved, state = _load_checkpoint(out, st.dim(hook), st, hook)
        return sae, saved["history"], state, saved["optimizer"]
    if (out / "cfg.json").is_file() and not resume:
        raise LatentLabError(f"{out}: already holds a trained SAE; choose another --out")
    if (out / CHECKPOINT).exists() and not resume:
        raise LatentLabError(f"{out}: holds an unfinished run; pass --resume to continue it")
    check_finite(st, hook, ctx)
    torch.manual_seed(tcfg.seed)
    sae = build_sae(_sae_config(st, hook, arch, expansion, k, dict(options)))
    sample = next(st.iter_batches(hook, 20_000, shuffle=True, seed=tcfg.seed + 10_000, stop=n_train))
    init_b_dec(sae, torch.from_numpy(sample), tcfg.b_dec_init)
    out.mkdir(parents=True, exist_ok=True)
    return sae, [], TrainState(), None


def _finish(ctx, st, hook, out: Path, sae, history, n_train, eval_model) -> dict[str, float]:
    """Save the SAE and its curves, measure it on the held-out rows, drop the checkpoint."""
    from engine.sae.io import save_sae
    from engine.sae.metrics import reconstruction_metrics
    save_sae(sae, out)
    (out / "training_log.json").write_text(json.dumps(history))
    ctx.progress(0, 1, "held-out metrics")
    metrics = reconstruction_metrics(sae, st, hook, start=n_train, device=ctx.device)
    if eval_model:
        from engine.models.registry import cached_model
        from engine.sae.metrics import spliced_loss
        adapter = cached_model(eval_model)
        adapter.to(ctx.device)
        metrics.update(spliced_loss(sae, adapter, st, hook, start=n_train, ctx=ctx))
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["steps"] = float(history[-1]["step"]) if history else 0.0
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    return metrics


def write_provenance(out: Path, st: ActivationStore, hook: str, seed: int, params: dict[str, Any]) -> None:
    """provenance.json in the SAE folder: the store it was trained on (content hash), the
    model, the training settings and seed (engine.provenance)."""
    record = provenance_record("sae", inputs=[("store", st.path)], model_id=st.meta.model_id,
                               model_hash=st.meta.model_hash, params={"hook": hook, **params}, seed=seed)
    (out / PROVENANCE_FILE).write_text(json.dumps(record, indent=2))


def sae_provenance(folder: str | os.PathLike) -> dict[str, Any]:
    """An SAE folder's record: provenance.json, or (an SAE trained before records were kept,
    or elsewhere) what cfg.json and the folder say."""
    folder = Path(folder)
    path = folder / PROVENANCE_FILE
    found = json.loads(path.read_text()) if path.is_file() else None
    cfg = folder / "cfg.json"
    return known_record("sae", found, sae={"id": folder.name, "sha256": file_digest(folder) if folder.is_dir() else None},
                        params=json.loads(cfg.read_text()) if cfg.is_file() else None)


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def train_sae_distributed(ctx: JobContext, **params: Any) -> TrainResult:
    """train_sae under ``torchrun``: one process group (gloo on CPU, NCCL on GPU), each rank
    a disjoint share of every step's batches, gradients all-reduced by DDP."""
    import torch.distributed as dist
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        if ctx.device.type == "cuda":
            ctx.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        return train_sae(ctx, **params)
    finally:
        dist.destroy_process_group()
