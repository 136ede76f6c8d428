"""Feature statistics read from the weights alone (once per SAE, no data): each latent's
nearest latents by decoder cosine and its direct logit effects through the unembedding.
Both are one GEMM in blocks of rows followed by a per-row top-k; over a vocabulary the
top-k looks only inside the column blocks whose maxima rank first (``row_top``).

Shapes: W_dec (d_sae, d_in); W_U (vocab, d_model)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.jobs import JobContext
from engine.models.base import ModelAdapter
from engine.sae.base import SparseAutoencoder

N_LOGITS = 10  # promoted / suppressed tokens kept per latent
N_NEIGHBOURS = 10
BLOCK_ELEMENTS = 1 << 26  # bound on a (rows, d_sae) or (rows, vocab) block
TOP_BLOCK = 128  # columns per block in row_top's first stage
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_norm", "norm_f")


def row_top(scores: torch.Tensor, n: int, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.topk(n, dim=1, largest=largest)`` (values, column ids), sorted, computed in two
    stages when rows are long: the n column blocks with the largest maxima (smallest minima)
    hold the row's n largest (smallest) values, since any block outside them is beaten at
    its best by n block extremes. Over 49k columns this reads the scores once, not per k."""
    rows, cols = scores.shape
    blocks = cols // TOP_BLOCK
    if blocks < 8 * n:
        return scores.topk(n, dim=1, largest=largest)
    main = scores[:, :blocks * TOP_BLOCK].view(rows, blocks, TOP_BLOCK)
    extremes = main.amax(2) if largest else main.amin(2)  # (rows, blocks)
    picked = extremes.topk(n, dim=1, largest=largest, sorted=False).indices  # (rows, n)
    cand = main.gather(1, picked[:, :, None].expand(rows, n, TOP_BLOCK)).reshape(rows, -1)
    cand_cols = (picked[:, :, None] * TOP_BLOCK
                 + torch.arange(TOP_BLOCK, device=scores.device)).reshape(rows, -1)
    tail = torch.arange(blocks * TOP_BLOCK, cols, device=scores.device).expand(rows, -1)
    cand = torch.cat([cand, scores[:, blocks * TOP_BLOCK:]], 1)
    cand_cols = torch.cat([cand_cols, tail], 1)
    values, at = cand.topk(n, dim=1, largest=largest)
    return values, cand_cols.gather(1, at)


def decoder_neighbours(W_dec: torch.Tensor, k: int = N_NEIGHBOURS,
                       ctx: JobContext | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` latents whose decoder rows have the highest cosine with each latent's
    (itself excluded): ids (d_sae, k) int64 and cosines, in blocks of rows (no d_sae^2)."""
    w = W_dec.detach().float()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    d_sae = len(w)
    k = min(k, d_sae - 1)
    step = max(1, min(4096, BLOCK_ELEMENTS // d_sae))
    ids, cos = [], []
    for s in range(0, d_sae, step):
        if ctx is not None:
            ctx.check_cancelled()
        sim = w[s:s + step] @ w.t()  # (block, d_sae)
        idx = torch.arange(len(sim), device=sim.device)
        sim[idx, idx + s] = -torch.inf
        values, top = row_top(sim, k)
        ids.append(top.cpu())
        cos.append(values.cpu())
    return torch.cat(ids).numpy(), torch.cat(cos).numpy()


def _final_norm(module: nn.Module) -> nn.Module | None:
    """The norm applied before the unembedding (llama ``model.norm``, gpt2 ``ln_f``, ...)."""
    base = getattr(module, "base_model", module)
    for name in _FINAL_NORMS:
        norm = getattr(base, name, None)
        if isinstance(norm, nn.Module):
            return norm
    return None


def unembed_directions(adapter: ModelAdapter) -> tuple[torch.Tensor, nn.Module | None] | None:
    """W_U (vocab, d_model) and the final norm of a causal LM; None when it has none."""
    if adapter.kind != "causal-lm" or not hasattr(adapter.module, "get_output_embeddings"):
        return None
    head = adapter.module.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        return None
    return head.weight.detach(), _final_norm(adapter.module)


def fold_norm(dirs: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
    """Decoder directions as the unembedding sees them through the final norm, dropping
    its per-token scale (one positive number per token: it changes no ranking): a
    LayerNorm removes the mean first; then its elementwise weight multiplies
    (Gemma's RMSNorm multiplies by 1 + weight). A bias only shifts every latent alike
    and is left out."""
    if norm is None:
        return dirs
    if isinstance(norm, nn.LayerNorm):
        dirs = dirs - dirs.mean(-1, keepdim=True)
    weight = getattr(norm, "weight", None)
    if isinstance(weight, torch.Tensor):
        gain = weight.detach().float().to(dirs.device)
        dirs = dirs * (1 + gain if "Gemma" in type(norm).__name__ else gain)
    return dirs


def logit_effects(sae: SparseAutoencoder, adapter: ModelAdapter, n: int = N_LOGITS,
                  ctx: JobContext | None = None) -> dict[str, np.ndarray]:
    """Each latent's direct effect on the logits, fold_norm(W_dec) @ W_U^T: the ``n``
    most promoted and most suppressed token ids and values; {} if the model has no
    unembedding of the SAE's width."""
    found = unembed_directions(adapter)
    if found is None or found[0].shape[1] != sae.d_in:
        return {}
    W_U, norm = found
    W_U = W_U.float().to(sae.W_dec.device)
    n = min(n, len(W_U))
    step = max(1, min(4096, BLOCK_ELEMENTS // len(W_U)))
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in
                                            ("top_values", "top_ids", "bottom_values", "bottom_ids")}
    for s in range(0, sae.d_sae, step):
        if ctx is not None:
            ctx.check_cancelled()
        eff = fold_norm(sae.W_dec[s:s + step].detach().float(), norm) @ W_U.t()  # (block, vocab)
        for side, largest in (("top", True), ("bottom", False)):
            values, ids = row_top(eff, n, largest)
            parts[f"{side}_values"].append(values.cpu())
            parts[f"{side}_ids"].append(ids.cpu())
    return {f"logit_{k}": torch.cat(v).numpy() for k, v in parts.items()}
