"""A folder SAELens wrote, as an architecture's ``from_saelens`` reads it: its cfg.json, the
fields every architecture shares, its tensors, and the conversions SAELens's options need
(``apply_b_dec_to_input=False``, ``rescale_acts_by_decoder_norm=True`` are folded into the
weights). ``engine.sae.io`` builds one and asks the architectures that read its name."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import torch

from engine.errors import LatentLabError

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
ENCODER_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec")


class SAEFileError(LatentLabError):
    """An SAE folder is missing, damaged, or holds something LatentLab cannot load."""


class SAELensFile(NamedTuple):
    """One SAELens folder; a reader copies ``tensors`` before changing them (``centred``)."""

    arch: str  # its "architecture" (inferred for SAELens < 6)
    raw: dict[str, Any]  # cfg.json
    meta: dict[str, Any]  # cfg.json's "metadata" ({} when none)
    tensors: dict[str, torch.Tensor]  # by SAELens's names, no-op scaling factors dropped
    common: dict[str, Any]  # SAEConfig fields every architecture takes (d_in, d_sae, hook_name, ...)
    folder: Path

    @property
    def cfg_path(self) -> Path:
        return self.folder / CFG_FILENAME

    def require(self, *names: str) -> None:
        """SAEFileError naming the first of ``names`` the weights file lacks."""
        for name in names:
            if name not in self.tensors:
                raise SAEFileError(f"{self.folder / WEIGHTS_FILENAME} has no tensor {name!r}, which a SAELens "
                                   f"{self.arch!r} SAE needs (cfg.json field 'architecture')")

    def centred(self) -> dict[str, torch.Tensor]:
        """A copy of the tensors, W_enc, W_dec, b_enc and b_dec required, with b_dec applied to
        the input as LatentLab does (folded into b_enc when SAELens's file says it is not)."""
        self.require(*ENCODER_TENSORS)
        tensors = dict(self.tensors)
        if not self.raw.get("apply_b_dec_to_input", True):
            fold_b_dec_into_b_enc(tensors)
        return tensors

    def k(self, value: Any = None) -> int:
        """k from ``value``, else from the field "k" (SAELens's TopKSAEConfig default: 100)."""
        value = self.raw.get("k", 100) if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or not math.isfinite(value):
            raise SAEFileError(f"{self.cfg_path}: field 'k' is {value!r}; it must be a positive number")
        return max(1, round(value))


@torch.no_grad()
def fold_b_dec_into_b_enc(t: dict[str, torch.Tensor]) -> None:
    """SAELens without apply_b_dec_to_input: x @ W_enc + b_enc == (x - b_dec) @ W_enc + b_enc'."""
    b_enc = t["b_enc"].double() + t["b_dec"].double() @ t["W_enc"].double()
    t["b_enc"] = b_enc.to(t["b_enc"].dtype)


@torch.no_grad()
def fold_decoder_norms(t: dict[str, torch.Tensor]) -> None:
    """SAELens's rescale_acts_by_decoder_norm made explicit: scale pre-activations by the decoder
    row norms and use unit decoder rows (SAELens's own _fold_norm_topk)."""
    norms = t["W_dec"].double().norm(dim=1)  # (d_sae,)
    t["W_enc"] = (t["W_enc"].double() * norms).to(t["W_enc"].dtype)
    t["b_enc"] = (t["b_enc"].double() * norms).to(t["b_enc"].dtype)
    t["W_dec"] = (t["W_dec"].double() / norms[:, None]).to(t["W_dec"].dtype)
