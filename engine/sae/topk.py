"""TopK SAE (Gao et al. 2024): each row keeps its k largest pre-activations (ReLU after the
top-k), decoded sparsely with ``embedding_bag``; plus the AuxK loss and the training step the
rest of the TopK family (batchtopk, gtopk) shares: one dense encoder GEMM without autograd,
then everything sparse in both directions (``sparse_grad``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine.sae import base
from engine.sae.saelens import SAELensFile, fold_decoder_norms
from engine.sae.sparse_grad import Active, aux_selection, dead_decode_train, sparse_decode_train


def topk_relu(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest entries per row, ReLU'd: values (batch, k), indices (batch, k)."""
    values, indices = pre.topk(min(k, pre.shape[-1]), dim=-1, sorted=False)
    return torch.relu(values), indices


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """(batch, d_in) = sum_j values[:, j] * W_dec[indices[:, j]] without building dense codes."""
    if indices.shape[-1] == 0:  # no active latent (e.g. zero pursuit steps)
        return W_dec.new_zeros(indices.shape[0], W_dec.shape[1])
    return F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")


def scatter_codes(values: torch.Tensor, indices: torch.Tensor, d_sae: int) -> torch.Tensor:
    """Dense (batch, d_sae) codes from sparse (batch, k) values and indices."""
    return values.new_zeros(values.shape[0], d_sae).scatter(1, indices, values)


def dead_latents(state: base.TrainState, cfg: base.SAEConfig) -> torch.Tensor | None:
    """(d_sae,) bool mask of latents unfired for more than cfg.dead_after_tokens, or None."""
    if state.tokens_since_fired is None:
        return None
    return state.tokens_since_fired > cfg.dead_after_tokens


def topk_family_step(sae: base.SparseAutoencoder, x: torch.Tensor, pre: torch.Tensor, active: Active,
                     state: base.TrainState) -> base.TrainStep:
    """mse of the sparse reconstruction from ``active`` plus AuxK on the dead latents (their
    top aux_k per row, from the same ``pre``, computed without autograd); zero AuxK when none
    is dead (Gao et al. 2024, appendix A.2)."""
    weights = (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, x)
    x_hat = sparse_decode_train(*weights, active)  # (batch, d_in)
    rec = base.mse(x_hat, x)
    aux = aux_selection(pre, dead_latents(state, sae.cfg), sae.cfg.aux_k or sae.d_in // 2)
    auxk = rec.new_zeros(())
    if aux is not None:  # the residual is detached: AuxK trains only the dead latents' weights
        auxk = sae.cfg.aux_coeff * base.mse(dead_decode_train(*weights, aux), (x - x_hat).detach())
    codes = base.Codes(active.rows, active.cols, torch.relu(active.pre).to(x_hat.dtype), len(x), sae.d_sae)
    parts = {"mse": rec.detach(), "auxk": auxk.detach(), "l0": codes.l0()}
    return base.TrainStep(rec + auxk, x_hat.detach(), codes, parts)


@base.register("topk", summary="k largest latents per row", order=1, saelens="topk")
class TopKSAE(base.SparseAutoencoder):
    """codes = ReLU(TopK_k(pre-activations)); loss = mse + AuxK on dead latents."""

    takes_k = True

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """values (batch, k) and indices (batch, k) of the active latents."""
        return topk_relu(self.pre_acts(x), self.cfg.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) dense codes, zero outside each row's top k."""
        values, indices = self.encode_sparse(x)
        return scatter_codes(values, indices, self.d_sae)

    def encode_codes(self, x: torch.Tensor) -> base.Codes:
        """The codes from each row's k picks, canonical, without a dense (batch, d_sae) matrix."""
        return base.Codes.of_picks(*self.encode_sparse(x), self.d_sae)

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) reconstruction from (batch, k) values and indices."""
        return sparse_decode(values, indices, self.W_dec) + self.b_dec

    def forward(self, x: torch.Tensor) -> base.ForwardOutput:
        """ForwardOutput(x_hat, dense codes), decoding sparsely."""
        values, indices = self.encode_sparse(x)
        return base.ForwardOutput(self.decode_sparse(values, indices), scatter_codes(values, indices, self.d_sae))

    def select(self, pre: torch.Tensor, state: base.TrainState) -> torch.Tensor:
        """Training-time choice of each row's k latents: indices (batch, k)."""
        return pre.topk(min(self.cfg.k, self.d_sae), dim=-1, sorted=False).indices

    def training_step(self, x: torch.Tensor, state: base.TrainState) -> base.TrainStep:
        """mse of the sparse TopK reconstruction plus AuxK; autograd sees only the sparse loss."""
        with torch.no_grad():
            pre = self.pre_acts(x, state.buffer("pre", (len(x), self.d_sae), self.W_enc))  # (batch, d_sae)
            active = Active.per_row(pre, self.select(pre, state))
        return topk_family_step(self, x, pre, active, state)

    def saelens_fields(self) -> dict[str, Any]:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}

    @classmethod
    def from_saelens(cls, file: SAELensFile) -> tuple[base.SAEConfig, dict[str, torch.Tensor]]:
        """SAELens's "topk" SAE (rescale_acts_by_decoder_norm folded into the weights)."""
        tensors = file.centred()
        if file.raw.get("rescale_acts_by_decoder_norm", False):
            fold_decoder_norms(tensors)
        return base.SAEConfig(arch=cls.architecture, k=file.k(), **file.common), tensors
