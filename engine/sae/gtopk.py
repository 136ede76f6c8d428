"""Gradient-aware TopK SAE (g-SAE, Olmo et al. 2024): at training each row keeps the k latents
with the largest ReLU(pre_i) * |<W_dec_i, g>|, where g (batch, d_in) is the gradient of the
model's downstream loss wrt the activation x (``state.grad``, supplied by the trainer), so the
latents kept are those that matter for the model's output, not only the largest ones. At
inference, without gradients, ``encode`` is plain TopK."""

from __future__ import annotations

from typing import ClassVar

import torch

from engine.errors import LatentLabError
from engine.sae.base import TrainState, register
from engine.sae.topk import TopKSAE


def gradient_scores(pre: torch.Tensor, W_dec: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """(batch, d_sae) ReLU(pre) * |grad @ W_dec.T|: activation times its effect on the loss."""
    return torch.relu(pre) * (grad @ W_dec.t()).abs()


@register("gtopk", summary="TopK weighted by loss gradients (runs the model)", order=5)
class GradientTopKSAE(TopKSAE):
    """TopK whose training-time selection ranks latents by activation x |decoder . gradient|."""

    needs_grad: ClassVar[bool] = True  # the trainer feeds (x, dLoss/dx) batches
    saelens_reads: ClassVar[dict[str, int]] = {}  # saved as SAELens's topk, which loads as topk

    def select(self, pre: torch.Tensor, state: TrainState) -> torch.Tensor:
        """Per row the indices (batch, k) of the k best-scoring latents."""
        if state.grad is None:
            raise LatentLabError("the g-SAE (gtopk) needs gradients from the model: train it on "
                                 "(activation, dLoss/dactivation) batches, state.grad was None")
        with torch.no_grad():
            scores = gradient_scores(pre, self.W_dec, state.grad.to(pre.dtype))
            return scores.topk(min(self.cfg.k, self.d_sae), dim=-1, sorted=False).indices
