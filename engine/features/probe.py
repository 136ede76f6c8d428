"""The text probe: which SAE latents fire on each token of a text a researcher types. The
model runs to the SAE's hook point (``ModelAdapter.forward``, the capture's forward: the
tokenizer's special tokens are added and are not rows) and each token's row is encoded
by the SAE (``cached_sae``), both kept warm between probes.

Shapes: rows (n_tokens, d_in); codes (n_tokens, d_sae); the answer keeps each token's
nonzero codes only, as CSR (``ptr``, ``latent``, ``value``)."""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import torch

from engine.errors import LatentLabError
from engine.features.encode import cached_sae
from engine.jobs import JobContext
from engine.models.base import ModelAdapter
from engine.models.registry import cached_model

MAX_TOKENS = 256  # tokens of the text probed (the rest is cut off, and the answer says so)


class TextLatents(NamedTuple):
    """A text's tokens and, per token, the latents firing on it, strongest first."""

    tokens: np.ndarray  # (n,) int64 token ids (the tokenizer's special tokens left out)
    texts: list[str]  # (n,) each token as it reads in the text
    ptr: np.ndarray  # (n + 1,) int64: token t's latents are latent[ptr[t]:ptr[t + 1]]
    latent: np.ndarray  # (nnz,) int64, each token's by descending activation
    value: np.ndarray  # (nnz,) float32
    d_sae: int
    truncated: bool  # the text had more than the probed tokens

    def top(self, t: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ``t``'s ``n`` strongest latents (all that fire when None) and their values."""
        lo, hi = int(self.ptr[t]), int(self.ptr[t + 1])
        hi = hi if n is None else min(hi, lo + n)
        return self.latent[lo:hi], self.value[lo:hi]

    def of_latent(self, latent: int) -> np.ndarray:
        """(n,) the activation of one latent on every token (0 where it does not fire)."""
        out = np.zeros(len(self.tokens), np.float32)
        at = np.flatnonzero(self.latent == latent)
        out[np.searchsorted(self.ptr, at, side="right") - 1] = self.value[at]
        return out

    def strongest(self) -> np.ndarray:
        """(n,) each token's largest activation (0 where nothing fires)."""
        return self._first(self.value, 0.0)

    def strongest_latent(self) -> np.ndarray:
        """(n,) each token's strongest latent (-1 where nothing fires)."""
        return self._first(self.latent, -1)

    def _first(self, column: np.ndarray, empty: float) -> np.ndarray:
        """Each token's first entry of ``column`` (its strongest), ``empty`` where it has none."""
        out = np.full(len(self.tokens), empty, column.dtype)
        fires = self.ptr[1:] > self.ptr[:-1]
        out[fires] = column[self.ptr[:-1][fires]]
        return out


def sparse_rows(codes: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ptr, latent, value) of codes (n, d_sae): each row's nonzero entries by descending value."""
    values, order = codes.float().sort(dim=1, descending=True, stable=True)
    on = values != 0
    ptr = np.concatenate([[0], np.cumsum(on.sum(1).cpu().numpy())]).astype(np.int64)
    return ptr, order[on].cpu().numpy().astype(np.int64), values[on].cpu().numpy().astype(np.float32)


def _text_model(model: str, device: torch.device) -> ModelAdapter:
    """The cached model on ``device``; one that reads no text, or pools a text to one row, refused."""
    adapter = cached_model(model)
    if adapter.tokenizer is None or adapter.pooling == "mean":
        why = "reads no text" if adapter.tokenizer is None else "pools a text into one row"
        raise LatentLabError(f"model {adapter.model_id} {why}: the text probe needs a row per token")
    if adapter.device != device:
        adapter.to(device)
    return adapter


@torch.inference_mode()
def text_latents(ctx: JobContext, model: str, hook: str, sae_path: str | os.PathLike, text: str,
                 max_tokens: int = MAX_TOKENS) -> TextLatents:
    """Job: tokenise ``text``, run ``model`` to ``hook`` and encode each token's row with the
    SAE in ``sae_path``: every token's firing latents, strongest first (the first
    ``max_tokens`` tokens, fewer where the model's context is shorter)."""
    if not text.strip():
        raise LatentLabError("the text to probe is empty")
    ctx.progress(0, 2, f"loading {model}")
    adapter = _text_model(model, ctx.device)
    sae = cached_sae(sae_path, ctx.device)
    ids = adapter.tokenize(text)
    span = max(1, min(max_tokens, adapter.max_context - adapter.n_special))
    ctx.check_cancelled()
    ctx.progress(1, 2, "running the model")
    rows = adapter.forward(adapter.make_batch([ids[:span]]), [hook])[hook]
    if rows.shape[-1] != sae.d_in:
        raise LatentLabError(f"the SAE reads {sae.d_in}-wide rows, but {hook!r} of {adapter.model_id} "
                             f"is {rows.shape[-1]} wide")
    codes = sae.encode(rows.to(sae.W_enc.device, sae.W_enc.dtype))
    ptr, latent, value = sparse_rows(codes)
    ctx.progress(2, 2, "encoded")
    tokens = np.asarray(ids[:span], np.int64)
    return TextLatents(tokens, adapter.decode(tokens), ptr, latent, value, sae.d_sae, len(ids) > span)
