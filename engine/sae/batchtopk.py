"""BatchTopK SAE (Bussmann et al. 2024): at training the batch keeps its k * batch largest
(ReLU'd) pre-activations, so rows may use more or fewer than k latents; at inference a learnt
global threshold (an EMA of the smallest kept activation) replaces the batch-wide top-k."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from engine.sae.base import Codes, SAEConfig, SparseAutoencoder, TrainState, TrainStep, register
from engine.sae.saelens import SAEFileError, SAELensFile, fold_decoder_norms
from engine.sae.sparse_grad import Active
from engine.sae.topk import topk_family_step

CANDIDATES_PER_K = 2  # each row's top (2 k) are the candidates; rows that need more get all


def batch_topk(pre: torch.Tensor, n_keep: int, per_row: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows, latents and values (n_keep,) each of the n_keep largest entries of pre (batch, d_sae)
    overall. Exact without a top-k over the whole matrix: each row's top ``per_row`` are the
    candidates, and a row whose smallest candidate beats the candidates' n_keep-th largest
    (it may hide more winners) joins with all its entries."""
    batch, d_sae = pre.shape
    values, cols = pre.topk(min(per_row, d_sae), dim=1, sorted=False)  # (batch, per_row)
    rows = torch.arange(batch, device=pre.device)[:, None].expand_as(cols)
    kth = values.flatten().topk(min(n_keep, values.numel()), sorted=False).values.min()
    full = values.min(1).values > kth  # (batch,) rows that may hold more than per_row winners
    if per_row < d_sae and bool(full.any()):
        whole = full.nonzero().squeeze(1)
        keep = ~full
        values = torch.cat([values[keep].flatten(), pre[whole].flatten()])
        cols = torch.cat([cols[keep].flatten(), torch.arange(d_sae, device=pre.device).repeat(len(whole))])
        rows = torch.cat([rows[keep].flatten(), whole.repeat_interleave(d_sae)])
    kept, pick = values.flatten().topk(min(n_keep, values.numel()), sorted=False)
    return rows.flatten()[pick], cols.flatten()[pick], kept


@register("batchtopk", summary="k per row on average over a batch", order=2,
          saelens="jumprelu",  # as SAELens saves a trained BatchTopK: one shared threshold
          reads={"batchtopk": 0, "jumprelu": 1})  # before JumpReLU's reader
class BatchTopKSAE(SparseAutoencoder):
    """Training: top k * batch of ReLU(pre) across the batch; inference: ReLU(pre) above ``threshold``."""

    threshold_lr: ClassVar[float] = 0.01  # EMA rate of the threshold estimate
    takes_k = True
    elementwise = True  # at inference
    file_threshold = True

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros(()))  # saved with the weights

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) codes: ReLU(pre) where pre exceeds the learnt threshold."""
        return self.activation(self.pre_acts(x))

    def activation(self, pre: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """ReLU(pre) where pre exceeds the threshold (one for all latents)."""
        return torch.relu(pre) * (pre > self.threshold)

    def training_step(self, x: torch.Tensor, state: TrainState) -> TrainStep:
        """mse of the batch-wide top-k reconstruction plus AuxK on dead latents; the sparse
        backward is TopK's, only the selection differs."""
        with torch.no_grad():
            pre = self.pre_acts(x, state.buffer("pre", (len(x), self.d_sae), self.W_enc))  # (batch, d_sae)
            rows, cols, kept = batch_topk(pre, self.cfg.k * len(x), CANDIDATES_PER_K * self.cfg.k)
            active = Active.from_entries(rows, cols, kept, len(x), self.d_sae)
        step = topk_family_step(self, x, pre, active, state)
        step.parts["threshold"] = self.threshold.detach().clone()
        return step

    @torch.no_grad()
    def after_step(self, codes: Codes, state: TrainState) -> None:
        """Move ``threshold`` toward this batch's smallest kept positive activation (EMA)."""
        positive = codes.nonzero_values()
        positive = positive[positive > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().to(self.threshold.dtype)
        if self.threshold <= 0:  # first update: start at the observed value, not at zero
            self.threshold.copy_(smallest)
        else:
            self.threshold.lerp_(smallest, self.threshold_lr)

    # ------------------------------------------------------------ files
    def saelens_metadata(self) -> dict[str, Any]:
        return {"training_architecture": "batchtopk", "training_architecture_details": {"k": self.cfg.k}}

    def threshold_for_file(self) -> torch.Tensor:
        """The shared threshold repeated for every latent, in b_enc's dtype."""
        thr = self.threshold.detach().to("cpu").contiguous()
        return thr.to(self.b_enc.dtype).expand(self.d_sae).clone()

    @classmethod
    def threshold_from_file(cls, threshold: torch.Tensor, where: Path) -> dict[str, torch.Tensor]:
        if not bool((threshold == threshold[0]).all()):
            raise SAEFileError(f"{where}: tensor 'threshold' varies across latents, "
                               f"but a 'batchtopk' SAE has one shared threshold")
        return {"threshold": threshold[0].clone()}

    @classmethod
    def from_saelens(cls, file: SAELensFile) -> tuple[SAEConfig, dict[str, torch.Tensor]] | None:
        """A SAELens BatchTopK training checkpoint ("batchtopk": one scalar topk_threshold), or
        a trained one ("jumprelu" whose metadata names batchtopk and k, one shared threshold);
        another jumprelu folder is declined."""
        if file.arch == "jumprelu":
            thr = file.tensors.get("threshold")
            details = file.meta.get("training_architecture_details")
            details = details if isinstance(details, dict) else {}
            shared = thr is not None and thr.numel() > 0 and bool((thr == thr.flatten()[0]).all())
            if not (file.meta.get("training_architecture") == "batchtopk" and shared and "k" in details):
                return None
            tensors = file.centred()
            return SAEConfig(arch=cls.architecture, k=file.k(details["k"]), **file.common), tensors
        tensors = file.centred()
        if file.raw.get("rescale_acts_by_decoder_norm", False):
            fold_decoder_norms(tensors)
        file.require("topk_threshold")
        thr = tensors.pop("topk_threshold").to(tensors["b_enc"].dtype)
        tensors["threshold"] = thr.reshape(()).expand(file.common["d_sae"]).clone()
        return SAEConfig(arch=cls.architecture, k=file.k(), **file.common), tensors
