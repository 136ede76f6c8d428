"""TopK SAE (Gao et al. 2024): each row keeps its k largest pre-activations (ReLU after the
top-k), decoded sparsely with ``embedding_bag``; plus the AuxK loss and the sparse helpers the
rest of the TopK family (batchtopk, gtopk) shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.sae.base import (
    ForwardOutput,
    SAEConfig,
    SparseAutoencoder,
    TrainState,
    TrainStep,
    mse,
    register,
)
from engine.sae.relu import mean_l0
from engine.sae.sparse_grad import gather_pre


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


def dead_latents(state: TrainState, cfg: SAEConfig) -> torch.Tensor | None:
    """(d_sae,) bool mask of latents unfired for more than cfg.dead_after_tokens, or None."""
    if state.tokens_since_fired is None:
        return None
    return state.tokens_since_fired > cfg.dead_after_tokens


def auxk_loss(sae: SparseAutoencoder, pre: torch.Tensor, residual: torch.Tensor,
              state: TrainState, x: torch.Tensor | None = None) -> torch.Tensor:
    """aux_coeff * mse of the residual (detached) rebuilt from the top aux_k dead latents only;
    zero when none is dead (Gao et al. 2024, appendix A.2). With ``x`` the chosen
    pre-activations are re-gathered with sparse gradients (``pre`` then carries none)."""
    dead = dead_latents(state, sae.cfg)
    n_dead = 0 if dead is None else int(dead.sum())
    if n_dead == 0:
        return pre.new_zeros(())
    aux_k = min(sae.cfg.aux_k or sae.d_in // 2, n_dead)
    values, indices = topk_relu(pre.masked_fill(~dead, float("-inf")), aux_k)  # (batch, aux_k)
    if x is not None:
        values = torch.relu(gather_pre(pre, x, sae.W_enc, sae.b_enc, sae.b_dec, indices))
    aux_recon = sparse_decode(values, indices, sae.W_dec)  # (batch, d_in), no bias: a residual
    return sae.cfg.aux_coeff * mse(aux_recon, residual.detach())


def topk_step(sae: SparseAutoencoder, x: torch.Tensor, pre: torch.Tensor, values: torch.Tensor,
              indices: torch.Tensor, state: TrainState) -> TrainStep:
    """Loss (mse + AuxK) for a row-wise sparse selection (values, indices), each (batch, k)."""
    x_hat = sparse_decode(values, indices, sae.W_dec) + sae.b_dec  # (batch, d_in)
    codes = scatter_codes(values.detach(), indices, sae.d_sae)  # (batch, d_sae), for statistics
    rec = mse(x_hat, x)
    aux = auxk_loss(sae, pre, x - x_hat, state, x=None if pre.requires_grad else x)
    parts = {"mse": rec.detach(), "auxk": aux.detach(), "l0": mean_l0(codes)}
    return TrainStep(rec + aux, x_hat, codes, parts)


@register("topk")
class TopKSAE(SparseAutoencoder):
    """codes = ReLU(TopK_k(pre-activations)); loss = mse + AuxK on dead latents."""

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """values (batch, k) and indices (batch, k) of the active latents."""
        return topk_relu(self.pre_acts(x), self.cfg.k)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) dense codes, zero outside each row's top k."""
        values, indices = self.encode_sparse(x)
        return scatter_codes(values, indices, self.d_sae)

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) reconstruction from (batch, k) values and indices."""
        return sparse_decode(values, indices, self.W_dec) + self.b_dec

    def forward(self, x: torch.Tensor) -> ForwardOutput:
        """ForwardOutput(x_hat, dense codes), decoding sparsely."""
        values, indices = self.encode_sparse(x)
        return ForwardOutput(self.decode_sparse(values, indices), scatter_codes(values, indices, self.d_sae))

    def select(self, pre: torch.Tensor, state: TrainState) -> torch.Tensor:
        """Training-time choice of each row's k latents: indices (batch, k)."""
        return pre.topk(min(self.cfg.k, self.d_sae), dim=-1, sorted=False).indices

    def training_step(self, x: torch.Tensor, state: TrainState) -> TrainStep:
        """mse of the sparse TopK reconstruction plus AuxK. The dense pre-activations are
        computed without autograd; only the k chosen per row carry gradients (sparse_grad),
        which saves the second dense GEMM that autograd would spend on dW_enc."""
        with torch.no_grad():
            pre = self.pre_acts(x)  # (batch, d_sae)
            indices = self.select(pre, state)
        values = torch.relu(gather_pre(pre, x, self.W_enc, self.b_enc, self.b_dec, indices))
        return topk_step(self, x, pre, values, indices, state)
