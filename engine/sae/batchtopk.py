"""BatchTopK SAE (Bussmann et al. 2024): at training the batch keeps its k * batch largest
(ReLU'd) pre-activations, so rows may use more or fewer than k latents; at inference a learnt
global threshold (an EMA of the smallest kept activation) replaces the batch-wide top-k."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from engine.sae.base import SAEConfig, SparseAutoencoder, TrainState, TrainStep, mse, register
from engine.sae.relu import mean_l0
from engine.sae.topk import auxk_loss


def batch_topk(acts: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n_keep largest entries of acts (batch, d_sae) overall: values and flat indices
    (n_keep,), sorted by flat index so rows come in order."""
    values, flat = acts.flatten().topk(min(n_keep, acts.numel()), sorted=False)
    flat, order = flat.sort()
    return values[order], flat


def bag_decode(values: torch.Tensor, flat: torch.Tensor, W_dec: torch.Tensor, batch: int) -> torch.Tensor:
    """(batch, d_in) = per row, the sum of values * W_dec rows, from row-sorted flat indices."""
    d_sae = W_dec.shape[0]
    rows, cols = flat // d_sae, flat % d_sae
    offsets = torch.searchsorted(rows, torch.arange(batch, device=rows.device))
    return F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=values.to(W_dec.dtype))


@register("batchtopk")
class BatchTopKSAE(SparseAutoencoder):
    """Training: top k * batch of ReLU(pre) across the batch; inference: ReLU(pre) above ``threshold``."""

    threshold_lr: ClassVar[float] = 0.01  # EMA rate of the threshold estimate

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(()))  # saved with the weights

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) codes: ReLU(pre) where pre exceeds the learnt threshold."""
        pre = self.pre_acts(x)
        return torch.relu(pre) * (pre > self.threshold)

    def training_step(self, x: torch.Tensor, state: TrainState) -> TrainStep:
        """mse of the batch-wide top-k reconstruction plus AuxK on dead latents."""
        pre = self.pre_acts(x)  # (batch, d_sae)
        values, flat = batch_topk(torch.relu(pre), self.cfg.k * len(x))
        x_hat = bag_decode(values, flat, self.W_dec, len(x)) + self.b_dec  # (batch, d_in)
        codes = pre.new_zeros(pre.numel()).scatter(0, flat, values).view_as(pre)
        rec, aux = mse(x_hat, x), auxk_loss(self, pre, x - x_hat, state)
        parts = {"mse": rec.detach(), "auxk": aux.detach(), "l0": mean_l0(codes),
                 "threshold": self.threshold.detach().clone()}
        return TrainStep(rec + aux, x_hat, codes, parts)

    @torch.no_grad()
    def after_step(self, codes: torch.Tensor, state: TrainState) -> None:
        """Move ``threshold`` toward this batch's smallest kept positive activation (EMA)."""
        positive = codes[codes > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().to(self.threshold.dtype)
        if self.threshold <= 0:  # first update: start at the observed value, not at zero
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, self.threshold_lr)
