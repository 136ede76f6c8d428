"""Training SAEs: a generic loop over an iterator of batches (``fit``) and the job that
trains on an activation store with warm-up/decay, checkpoints, ``--resume``, live curves,
autocast on GPU and data parallelism under ``torchrun`` (DistributedDataParallel)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from engine.jobs import JobContext
from engine.sae.base import Codes, SparseAutoencoder, TrainState, TrainStep


@dataclass(frozen=True)
class TrainingPoint(Mapping[str, Any]):
    """One point of a training run's live curves, sent with ``ctx.partial`` every
    ``log_every`` steps and at the last one. ``fvu`` and ``l0`` are the step's batch's (from
    values the step computed); ``dead_frac`` is the share of latents that have not fired in
    the last min(dead_after_tokens, tokens) training rows (so, early on, never yet). The
    train-sae job sends its last point once the held-out rows are measured, with
    ``heldout``: what metrics.json holds (fvu, l0, dead_frac, and loss_recovered when a
    model was spliced). As a Mapping it reads as its row of training_log.json (the
    architecture's loss ``parts`` such as mse and auxk included)."""

    step: int
    total_steps: int
    tokens: int  # training rows seen so far, every rank's
    loss: float
    fvu: float
    l0: float
    dead_frac: float
    lr: float
    tokens_per_s: float
    parts: Mapping[str, float] = field(default_factory=dict)  # mse, auxk, l1, l0_penalty, ...
    heldout: Mapping[str, float] | None = None  # the last point of a finished train-sae job

    @property
    def final(self) -> bool:
        """Whether this is the finished run's last point (its held-out metrics measured)."""
        return self.heldout is not None

    def row(self) -> dict[str, float]:
        """The training_log.json row: the curves' figures and the loss parts."""
        return {**self.parts, **{f: getattr(self, f) for f in _ROW_FIELDS}}

    def __getitem__(self, key: str) -> Any:
        return self.row()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.row())

    def __len__(self) -> int:
        return len(self.row())

    @classmethod
    def from_row(cls, row: Mapping[str, Any], total_steps: int,
                 heldout: Mapping[str, float] | None = None) -> TrainingPoint:
        """The point a training_log.json row records (older rows lack fvu, l0 and tokens: NaN, 0)."""
        known = {f: row[f] for f in _ROW_FIELDS if f in row}
        known.setdefault("total_steps", total_steps)
        for name in ("fvu", "l0"):
            known.setdefault(name, row.get(name, math.nan))
        known.setdefault("tokens", 0)
        for name in ("loss", "dead_frac", "lr", "tokens_per_s"):
            known.setdefault(name, math.nan)
        parts = {k: float(v) for k, v in row.items() if k not in _ROW_FIELDS}
        return cls(**known, parts=parts, heldout=None if heldout is None else dict(heldout))


_ROW_FIELDS = tuple(f.name for f in fields(TrainingPoint) if f.name not in ("parts", "heldout"))


@dataclass
class TrainConfig:
    """Optimiser, schedule and bookkeeping for one training run."""

    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 4096
    total_steps: int = 1000
    warmup_steps: int = 50
    decay_start: float = 0.8  # fraction of total_steps after which the lr decays linearly to 0
    b_dec_init: str = "geometric_median"  # or "mean", "none"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200
    autocast: str = "auto"  # "auto" (bf16/fp16 on GPU, none on CPU), "bf16", "fp16", "none"
    extra: dict[str, Any] = field(default_factory=dict)

    def lr_at(self, step: int) -> float:
        """Linear warm-up, constant, then linear decay to zero."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        start = int(self.decay_start * self.total_steps)
        if step >= start and self.total_steps > start:
            return self.lr * max(0.0, (self.total_steps - step) / (self.total_steps - start))
        return self.lr


class _Stepper(nn.Module):
    """Routes DDP's forward to the SAE's training step, so gradients are all-reduced."""

    def __init__(self, sae: SparseAutoencoder) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, x: torch.Tensor, state: TrainState):
        return self.sae.training_step(x, state)


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed Euclidean distance to rows."""
    z = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - z).norm(dim=1).clamp_min(1e-8)
        z_new = (w[:, None] * x).sum(0) / w.sum()
        if (z_new - z).norm() < tol * (1 + z.norm()):
            return z_new
        z = z_new
    return z


def init_b_dec(sae: SparseAutoencoder, sample: torch.Tensor, how: str) -> None:
    """Start b_dec at the data's geometric median or mean (centring the codes' job)."""
    if how == "none":
        return
    centre = geometric_median(sample.float()) if how == "geometric_median" else sample.float().mean(0)
    with torch.no_grad():
        sae.b_dec.copy_(centre.to(sae.b_dec.dtype))


def _autocast(cfg: TrainConfig, device: torch.device):
    mode = cfg.autocast
    if mode == "auto":
        mode = "none" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if mode == "none":
        return torch.autocast(device.type, enabled=False), None
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return torch.autocast(device.type, dtype=dtype), scaler


def _split(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch, None


def fit(sae: SparseAutoencoder, batches: Iterable, cfg: TrainConfig, ctx: JobContext | None = None,
        state: TrainState | None = None, optimizer: torch.optim.Optimizer | None = None,
        on_checkpoint: Callable[[int, torch.optim.Optimizer, TrainState], None] | None = None,
        ddp: bool = False, hold_last: bool = False, log: list[dict[str, float]] | None = None,
        ) -> list[dict[str, float]]:
    """Train ``sae`` on ``batches`` (tensors (b, d_in), or (x, grad) pairs for g-SAE) from
    ``state.step`` to ``cfg.total_steps``, sending a TrainingPoint (``ctx.partial``) every
    ``cfg.log_every`` steps and at the last step (unless ``hold_last``: the caller sends
    that one, with its held-out metrics); returns the points' log rows: ``log`` with them
    appended, when given (so a checkpoint taken meanwhile holds the rows so far)."""
    ctx = ctx or JobContext(device=sae.W_dec.device)
    device = sae.W_dec.device
    state = state or TrainState()
    if state.tokens_since_fired is None:
        state.tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
    opt = optimizer or make_optimizer(sae, cfg)
    stepper: nn.Module = _Stepper(sae)
    if ddp:
        stepper = nn.parallel.DistributedDataParallel(stepper, find_unused_parameters=True)
    cast, scaler = _autocast(cfg, device)
    world = _world() if ddp else 1
    history = [] if log is None else log
    started, tokens = time.perf_counter(), 0
    for batch in batches:
        if state.step >= cfg.total_steps:
            break
        ctx.check_cancelled()
        x, grad = _split(batch)
        x = x.to(device, non_blocking=True)
        state.grad = None if grad is None else grad.to(device)
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(state.step)
        with cast:
            out = stepper(x, state)
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(opt)
        sae.remove_parallel_grad()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sae.normalize_decoder()
        sae.after_step(out.latents, state)
        _track_firing(state, out.latents, ddp)
        state.step += 1
        tokens += len(x)
        if state.step % cfg.log_every == 0 or state.step == cfg.total_steps:
            point = training_point(sae, state, cfg, x, out, state.step * len(x) * world,
                                   tokens / max(time.perf_counter() - started, 1e-9))
            history.append(point.row())
            if not (hold_last and state.step == cfg.total_steps):
                ctx.partial(point)
        ctx.progress(state.step, cfg.total_steps, f"loss {loss.item():.4g}")
        if on_checkpoint and state.step % cfg.checkpoint_every == 0 and state.step < cfg.total_steps:
            on_checkpoint(state.step, opt, state)
    return history


def training_point(sae: SparseAutoencoder, state: TrainState, cfg: TrainConfig, x: torch.Tensor,
                   out: TrainStep, tokens: int, tokens_per_s: float) -> TrainingPoint:
    """The curves' point after a step on batch ``x``: from the step's loss, its parts and its
    reconstruction, and the firing counters; no forward pass of its own. The batch's FVU
    is its mse over the rows' mean squared distance to their mean (float64 sums), as
    ``metrics.reconstruction_metrics`` defines it on the held-out rows."""
    with torch.no_grad():
        parts = {k: float(v) for k, v in out.parts.items()}
        mse = parts.get("mse")
        if mse is None:
            mse = float((out.x_hat.float() - x.float()).pow(2).sum(-1).mean())
        n = max(len(x), 1)
        mean = x.mean(0, dtype=torch.float64)
        spread = float(torch.linalg.vector_norm(x, dtype=torch.float64) ** 2 / n - mean.dot(mean))
        l0 = parts.get("l0")
        if l0 is None:
            l0 = float(out.latents.l0())
        window = max(1, min(sae.cfg.dead_after_tokens, tokens))
        dead = float((state.tokens_since_fired >= window).float().mean())
    return TrainingPoint(step=state.step, total_steps=cfg.total_steps, tokens=tokens, loss=out.loss.item(),
                         fvu=mse / spread if spread > 0 else math.nan, l0=l0, dead_frac=dead,
                         lr=cfg.lr_at(state.step - 1), tokens_per_s=tokens_per_s,
                         parts={k: v for k, v in parts.items() if k not in _ROW_FIELDS})


def _world() -> int:
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def make_optimizer(sae: SparseAutoencoder, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over the SAE's parameters; the fused kernel where torch has one (CPU, CUDA): one
    pass over each tensor instead of a dozen."""
    fused = sae.W_dec.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in sae.parameters())
    return torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas, fused=fused or None)


def _track_firing(state: TrainState, codes: Codes, ddp: bool) -> None:
    """Count tokens since each latent last fired (shared across ranks under DDP), from the
    codes' latent indices: no dense code matrix."""
    fired = codes.fired().to(torch.int32)
    n = torch.tensor(codes.n_rows, device=fired.device)
    if ddp:
        import torch.distributed as dist
        dist.all_reduce(fired)
        dist.all_reduce(n)
    state.tokens_since_fired += n
    state.tokens_since_fired[fired > 0] = 0
