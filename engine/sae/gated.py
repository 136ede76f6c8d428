"""Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a magnitude path
how strongly, sharing the encoder directions: with h = (x - b_dec) @ W_enc,
codes = 1[h + b_gate > 0] * ReLU(h * exp(r_mag) + b_mag). Training (the paper's loss, as
SAELens trains it): mse + l1_coeff * sum_i ReLU(pi_gate_i) ||W_dec_i|| + the auxiliary
reconstruction from ReLU(pi_gate) through the frozen decoder, which is what trains the gate
(the Heaviside passes no gradient). ``b_enc`` is the gate's bias (b_gate in SAELens's files).

It is here so that the gated SAEs SAELens and dictionary_learning write open as what they
are; its files use SAELens's "gated" layout (W_enc, W_dec, b_dec, b_gate, b_mag, r_mag)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from engine.sae import base
from engine.sae.relu import mean_l0, weighted_l1
from engine.sae.saelens import SAELensFile

GATED_TENSORS = ("b_gate", "b_mag", "r_mag")


@base.register("gated", summary="gate and magnitude paths, L1 on the gate", order=6, saelens="gated")
class GatedSAE(base.SparseAutoencoder):
    """codes = 1[pi_gate > 0] * ReLU(pi_mag); loss = mse + l1_coeff * weighted L1(ReLU(pi_gate)) + aux."""

    options: ClassVar[tuple[str, ...]] = ("l1_coeff",)

    def __init__(self, cfg: base.SAEConfig) -> None:
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))  # (d_sae,) log scale of the magnitude path
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def paths(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pi_gate, pi_mag), each (batch, d_sae), from one encoder GEMM."""
        h = (x - self.b_dec) @ self.W_enc
        return h + self.b_enc, h * self.r_mag.exp() + self.b_mag

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) codes: the magnitude path's ReLU where the gate is open."""
        gate, mag = self.paths(x)
        return (gate > 0).to(mag.dtype) * torch.relu(mag)

    def training_step(self, x: torch.Tensor, state: base.TrainState) -> base.TrainStep:
        """mse + l1_coeff * decoder-norm-weighted L1 of ReLU(pi_gate) + the auxiliary
        reconstruction of x from ReLU(pi_gate) through the detached decoder."""
        gate, mag = self.paths(x)
        codes = (gate > 0).to(mag.dtype) * torch.relu(mag)
        x_hat = self.decode(codes)
        gate_acts = torch.relu(gate)
        rec, l1 = base.mse(x_hat, x), weighted_l1(gate_acts, self.W_dec)
        aux = base.mse(gate_acts @ self.W_dec.detach() + self.b_dec.detach(), x)
        parts = {"mse": rec.detach(), "l1": l1.detach(), "aux": aux.detach(), "l0": mean_l0(codes)}
        return base.TrainStep(rec + self.cfg.l1_coeff * l1 + aux, x_hat.detach(), base.Codes.of_dense(codes), parts)

    # ------------------------------------------------------------ files (SAELens's "gated")
    def file_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().file_tensors()
        tensors["b_gate"] = tensors.pop("b_enc")
        tensors["b_mag"] = self.b_mag.detach().to("cpu").contiguous()
        tensors["r_mag"] = self.r_mag.detach().to("cpu").contiguous()
        return tensors

    @classmethod
    def file_shapes(cls, cfg: base.SAEConfig) -> dict[str, tuple[int, ...]]:
        shapes = super().file_shapes(cfg)
        del shapes["b_enc"]
        return {**shapes, **{name: (cfg.d_sae,) for name in GATED_TENSORS}}

    @classmethod
    def state_from_file(cls, cfg: base.SAEConfig, tensors: dict[str, torch.Tensor],
                        where: Path) -> dict[str, torch.Tensor]:
        state = {name: tensors[name] for name in ("W_enc", "W_dec", "b_dec", "b_mag", "r_mag")}
        return {**state, "b_enc": tensors["b_gate"]}

    @classmethod
    def from_saelens(cls, file: SAELensFile) -> tuple[base.SAEConfig, dict[str, torch.Tensor]]:
        """SAELens's "gated" SAE; without apply_b_dec_to_input, b_dec @ W_enc is folded into
        both biases (scaled by exp(r_mag) on the magnitude path)."""
        file.require("W_enc", "W_dec", "b_dec", *GATED_TENSORS)
        tensors = dict(file.tensors)
        if not file.raw.get("apply_b_dec_to_input", True):
            fold_b_dec_into_gated(tensors)
        return base.SAEConfig(arch=cls.architecture, **file.common), tensors


@torch.no_grad()
def fold_b_dec_into_gated(t: dict[str, torch.Tensor]) -> None:
    """Biases for an encoder that reads x where LatentLab's reads x - b_dec."""
    shift = t["b_dec"].double() @ t["W_enc"].double()  # (d_sae,)
    t["b_gate"] = (t["b_gate"].double() + shift).to(t["b_gate"].dtype)
    t["b_mag"] = (t["b_mag"].double() + shift * t["r_mag"].double().exp()).to(t["b_mag"].dtype)
