"""ReLU SAE (Anthropic's April 2024 update): codes = ReLU(pre-activations), sparsity from an
L1 penalty on each code weighted by its decoder row's norm (so shrinking W_dec cannot cheat)."""

from __future__ import annotations

import torch

from engine.sae import base
from engine.sae.saelens import SAELensFile


def weighted_l1(codes: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Mean over rows of sum_i |f_i| * ||W_dec_i||: the decoder-norm-weighted L1 penalty."""
    return (codes.abs() * W_dec.norm(dim=1)).sum(-1).mean()  # codes (batch, d_sae)


def mean_l0(codes: torch.Tensor) -> torch.Tensor:
    """Mean number of nonzero latents per row (detached)."""
    return (codes != 0).sum(-1).float().mean().detach()


@base.register("relu", summary="ReLU with an L1 penalty", order=0, saelens="standard")
class ReLUSAE(base.SparseAutoencoder):
    """codes = ReLU((x - b_dec) @ W_enc + b_enc); loss = mse + l1_coeff * weighted L1."""

    elementwise = True
    options = ("l1_coeff",)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) ReLU codes."""
        return self.activation(self.pre_acts(x))

    def activation(self, pre: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """ReLU(pre)."""
        return torch.relu(pre)

    @classmethod
    def from_saelens(cls, file: SAELensFile) -> tuple[base.SAEConfig, dict[str, torch.Tensor]]:
        """SAELens's "standard" SAE."""
        return base.SAEConfig(arch=cls.architecture, **file.common), file.centred()

    def training_step(self, x: torch.Tensor, state: base.TrainState) -> base.TrainStep:
        """Reconstruction plus the decoder-norm-weighted L1 penalty; parts l1 is unweighted."""
        codes = self.encode(x)  # (batch, d_sae)
        x_hat = self.decode(codes)  # (batch, d_in)
        rec, l1 = base.mse(x_hat, x), weighted_l1(codes, self.W_dec)
        loss = rec + self.cfg.l1_coeff * l1
        parts = {"mse": rec.detach(), "l1": l1.detach(), "l0": mean_l0(codes)}
        return base.TrainStep(loss, x_hat, base.Codes.of_dense(codes), parts)
