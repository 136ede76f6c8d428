"""Training SAEs: a generic loop over an iterator of batches (``fit``) and the job that
trains on an activation store with warm-up/decay, checkpoints, ``--resume``, live curves,
autocast on GPU and data parallelism under ``torchrun`` (DistributedDataParallel)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from engine.jobs import JobContext
from engine.sae.base import Codes, SparseAutoencoder, TrainState


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
        ddp: bool = False) -> list[dict[str, float]]:
    """Train ``sae`` on ``batches`` (tensors (b, d_in), or (x, grad) pairs for g-SAE) from
    ``state.step`` to ``cfg.total_steps``; returns the logged curve points."""
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
    history: list[dict[str, float]] = []
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
            point = {"step": state.step, "loss": loss.item(), "lr": cfg.lr_at(state.step - 1),
                     "tokens_per_s": tokens / max(time.perf_counter() - started, 1e-9),
                     "dead_frac": float((state.tokens_since_fired > sae.cfg.dead_after_tokens).float().mean())}
            point.update({k: float(v) for k, v in out.parts.items()})
            history.append(point)
            ctx.partial(point)
        ctx.progress(state.step, cfg.total_steps, f"loss {loss.item():.4g}")
        if on_checkpoint and state.step % cfg.checkpoint_every == 0 and state.step < cfg.total_steps:
            on_checkpoint(state.step, opt, state)
    return history


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
