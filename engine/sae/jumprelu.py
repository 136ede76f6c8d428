"""JumpReLU SAE (Rajamanoharan et al. 2024): f = pre * H(pre - theta) with a learnt per-latent
threshold theta = exp(log_threshold), trained with mse + l0_coeff * L0, where the gradients
wrt theta come from straight-through estimators with a rectangle kernel of width
cfg.jumprelu_bandwidth (the pre-activations themselves get no gradient from the L0 term).

Initialisation: the base class ties W_enc = W_dec.T (unit directions) and this class keeps
b_enc = 0, so once b_dec sits at the data's centre (the trainer's ``b_dec_init``) each
pre-activation is positive for about half of the rows and almost all of those exceed the
small initial threshold: every latent fires and gets gradient at the start, and the L0
penalty then raises the thresholds. The threshold and bandwidth are in the data's units."""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.sae.base import SAEConfig, SparseAutoencoder, TrainState, TrainStep, mse, register


def rectangle(z: torch.Tensor) -> torch.Tensor:
    """The kernel K(z) = 1 on (-1/2, 1/2), else 0."""
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


class JumpReLUFn(torch.autograd.Function):
    """pre * H(pre - theta); d/dtheta by the STE -(theta / eps) * K((pre - theta) / eps)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold)
        grad_thr = -(threshold / eps) * rectangle((pre - threshold) / eps) * grad_out
        return grad_pre, grad_thr.sum_to_size(threshold.shape), None


class StepFn(torch.autograd.Function):
    """H(pre - theta); no gradient to pre, d/dtheta by the STE -(1 / eps) * K((pre - theta) / eps)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_thr = -(1.0 / eps) * rectangle((pre - threshold) / eps) * grad_out
        return torch.zeros_like(pre), grad_thr.sum_to_size(threshold.shape), None


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """(batch, d_sae) JumpReLU with its straight-through threshold gradient."""
    return JumpReLUFn.apply(pre, threshold, bandwidth)


def heaviside(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """(batch, d_sae) 0/1 step with its straight-through threshold gradient."""
    return StepFn.apply(pre, threshold, bandwidth)


@register("jumprelu")
class JumpReLUSAE(SparseAutoencoder):
    """codes = ReLU(pre) * (pre > theta); loss = mse + l0_coeff * mean L0."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        init = torch.full((cfg.d_sae,), math.log(cfg.jumprelu_init_threshold))
        self.log_threshold = nn.Parameter(init)  # (d_sae,)

    @property
    def threshold(self) -> torch.Tensor:
        """(d_sae,) per-latent threshold theta = exp(log_threshold)."""
        return self.log_threshold.exp()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) codes: pre-activations above their latent's threshold, else 0."""
        pre = torch.relu(self.pre_acts(x))
        return pre * (pre > self.threshold)

    def training_step(self, x: torch.Tensor, state: TrainState) -> TrainStep:
        """mse plus l0_coeff * mean L0, both reaching theta through the STEs."""
        pre = torch.relu(self.pre_acts(x))  # (batch, d_sae)
        theta, eps = self.threshold, self.cfg.jumprelu_bandwidth
        codes = jumprelu(pre, theta, eps)
        x_hat = self.decode(codes)  # (batch, d_in)
        rec, l0 = mse(x_hat, x), heaviside(pre, theta, eps).sum(-1).mean()
        penalty = self.cfg.l0_coeff * l0
        parts = {"mse": rec.detach(), "l0": l0.detach(), "l0_penalty": penalty.detach()}
        return TrainStep(rec + penalty, x_hat, codes, parts)
