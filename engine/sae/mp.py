"""Matching-pursuit SAE (MP-SAE, Costa et al. 2025): the encoder is k greedy steps of
matching pursuit over the decoder's rows, so sparsity can be changed at inference
(``encode(x, n_steps)``) and more steps never worsen the reconstruction.

Each step picks the row with the largest normalised correlation with the residual, adds
ReLU(<r, W_dec_i>) / ||W_dec_i||^2 to its coefficient (an atom may be picked again) and
removes that projection from r, so ||r||^2 drops by ReLU(<r, w_i>)^2 / ||w_i||^2 >= 0.
Training backpropagates the mse through the unrolled steps: the selections are constants,
the coefficients and residuals depend on W_dec and b_dec. W_enc is unused by the encoder
and kept equal to W_dec.T (in ``after_step``) so the common interface stays meaningful."""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.sae.base import ForwardOutput, SparseAutoencoder, TrainState, TrainStep, mse, register
from engine.sae.relu import mean_l0
from engine.sae.topk import sparse_decode


class Pursuit(NamedTuple):
    indices: torch.Tensor  # (batch, n_steps) atom picked at each step
    coefs: torch.Tensor  # (batch, n_steps) coefficient added at each step, >= 0
    residual: torch.Tensor  # (batch, d_in) x - b_dec - sum of the picked atoms' parts


def pursuit_step(r: torch.Tensor, W_dec: torch.Tensor,
                 sq_norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One greedy step on residual r (batch, d_in): index (batch,), coef (batch,), new r."""
    with torch.no_grad():
        idx = ((r @ W_dec.t()) / sq_norms.sqrt()).argmax(-1)  # (batch,) best normalised match
    atom = W_dec[idx]  # (batch, d_in)
    coef = torch.relu((r * atom).sum(-1)) / sq_norms[idx]  # (batch,)
    return idx, coef, r - coef[:, None] * atom


def pursue(x: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor, n_steps: int) -> Pursuit:
    """n_steps of matching pursuit of x - b_dec over W_dec's rows."""
    r = x - b_dec
    sq_norms = W_dec.pow(2).sum(1).clamp_min(1e-12)  # (d_sae,)
    indices, coefs = [], []
    for _ in range(n_steps):
        idx, coef, r = pursuit_step(r, W_dec, sq_norms)
        indices.append(idx)
        coefs.append(coef)
    if not indices:
        empty = x.new_zeros(len(x), 0)
        return Pursuit(empty.long(), empty, r)
    return Pursuit(torch.stack(indices, 1), torch.stack(coefs, 1), r)


@register("mp")
class MatchingPursuitSAE(SparseAutoencoder):
    """codes = cfg.k (or n_steps) greedy matching-pursuit steps over W_dec; decode as usual."""

    def pursue(self, x: torch.Tensor, n_steps: int | None = None) -> Pursuit:
        """The greedy steps for x (batch, d_in); cfg.k steps unless n_steps is given."""
        return pursue(x, self.W_dec, self.b_dec, self.cfg.k if n_steps is None else n_steps)

    def encode(self, x: torch.Tensor, n_steps: int | None = None) -> torch.Tensor:
        """(batch, d_sae) nonnegative codes after n_steps (default cfg.k) greedy steps."""
        return self._dense(self.pursue(x, n_steps))

    def forward(self, x: torch.Tensor, n_steps: int | None = None) -> ForwardOutput:
        """ForwardOutput(x_hat, codes), decoding the picked atoms sparsely."""
        p = self.pursue(x, n_steps)
        return ForwardOutput(sparse_decode(p.coefs, p.indices, self.W_dec) + self.b_dec, self._dense(p))

    def training_step(self, x: torch.Tensor, state: TrainState) -> TrainStep:
        """mse through the unrolled pursuit (gradients reach W_dec via coefficients and atoms)."""
        p = self.pursue(x)
        x_hat = sparse_decode(p.coefs, p.indices, self.W_dec) + self.b_dec  # (batch, d_in)
        codes = self._dense(p)
        rec = mse(x_hat, x)
        return TrainStep(rec, x_hat, codes, {"mse": rec.detach(), "l0": mean_l0(codes)})

    @torch.no_grad()
    def after_step(self, codes: torch.Tensor, state: TrainState) -> None:
        """Keep the unused encoder tied to the decoder: W_enc = W_dec.T."""
        self.W_enc.copy_(self.W_dec.t())

    def _dense(self, p: Pursuit) -> torch.Tensor:
        """(batch, d_sae) codes, summing the coefficients of atoms picked more than once."""
        codes = p.coefs.new_zeros(len(p.coefs), self.d_sae)
        return codes.scatter_add(1, p.indices, p.coefs)
