"""A toy SAE architecture in one file, as a plugin: ``LATENTLAB_SAE_PLUGINS=<this file>`` makes
"toy" a choice of ``train-sae --arch`` and of the Train SAE dialog (tests/test_sae_registry.py).

It is TopK written densely in a few lines: each row keeps its k largest ReLU'd pre-activations;
loss = mse. Everything else (files, statistics, encoding a few latents) uses the defaults of
``SparseAutoencoder``; its files say "architecture": "toy", which only LatentLab loads."""

from __future__ import annotations

import torch

from engine.sae.base import Codes, SparseAutoencoder, TrainState, TrainStep, mse, register


@register("toy", summary="a test plugin: k largest per row, dense")
class ToySAE(SparseAutoencoder):
    """codes = the k largest of ReLU(pre-activations) per row, dense."""

    takes_k = True

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) codes, zero outside each row's k largest."""
        acts = torch.relu(self.pre_acts(x))
        values, indices = acts.topk(min(self.cfg.k, self.d_sae), dim=-1)
        return torch.zeros_like(acts).scatter(1, indices, values)

    def training_step(self, x: torch.Tensor, state: TrainState) -> TrainStep:
        """mse of the reconstruction from the dense codes."""
        codes = self.encode(x)
        x_hat = self.decode(codes)
        rec, latents = mse(x_hat, x), Codes.of_dense(codes)
        return TrainStep(rec, x_hat.detach(), latents, {"mse": rec.detach(), "l0": latents.l0()})
