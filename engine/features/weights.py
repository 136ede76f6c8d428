"""Feature statistics read from the weights alone (once per SAE, no data): each latent's
nearest latents by decoder cosine and its direct logit effects through the unembedding.
Both are one GEMM in blocks of rows followed by a per-row top-k; over a vocabulary the
top-k looks only inside the column blocks whose maxima rank first (``row_top``).
Since they depend on the weights alone, ``weight_tables`` caches them in the user cache
folder, keyed by the SAE's and the model's weight fingerprints: a second statistics run
for the same SAE reads them instead of multiplying W_dec by the unembedding again.

Shapes: W_dec (d_sae, d_in); W_U (vocab, d_model)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from engine.cache import cache_root
from engine.jobs import JobContext
from engine.models.base import ModelAdapter, weight_fingerprint
from engine.sae.base import SparseAutoencoder

N_LOGITS = 10  # promoted / suppressed tokens kept per latent
N_NEIGHBOURS = 10
BLOCK_ELEMENTS = 1 << 26  # bound on a (rows, d_sae) or (rows, vocab) block
TOP_BLOCK = 128  # columns per block in row_top's first stage
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_norm", "norm_f")
TABLES_VERSION = 1  # part of every cache key, with this file's hash and the torch version
MAX_CACHED_TABLES = 64  # cache files kept (the most recently used)


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


# ---------------------------------------------------------------- the cache
class WeightTables(NamedTuple):
    """The weight-only statistics of an SAE, and which of them came from the cache."""

    arrays: dict[str, np.ndarray]  # neighbours, neighbour_cos; logit_* when computed
    cached: tuple[str, ...]  # tables read from the cache: "neighbours", "logit effects"


def tables_cache_dir() -> Path:
    """Where weight-only tables are cached: <LatentLab's cache>/feature-tables (the cache is
    $LATENTLAB_CACHE, else the platform's user cache dir)."""
    return cache_root() / "feature-tables"


def weight_tables(sae: SparseAutoencoder, adapter: ModelAdapter | None, ctx: JobContext | None = None,
                  cache_dir: str | os.PathLike | None = None,
                  sae_fingerprint: str | None = None) -> WeightTables:
    """``decoder_neighbours`` of ``sae`` and, when ``adapter`` is a causal LM of the SAE's
    width, its ``logit_effects``; each read from the cache (default ``tables_cache_dir()``)
    when a file there holds it for the same weights and settings, else computed and cached.
    ``sae_fingerprint`` is ``weight_fingerprint(sae)`` when the caller has it already."""
    folder = Path(cache_dir) if cache_dir is not None else tables_cache_dir()
    sae_fp = sae_fingerprint or weight_fingerprint(sae)
    d_sae = sae.d_sae
    arrays: dict[str, np.ndarray] = {}
    cached = []
    tables = [("neighbours", {"sae": sae_fp, "k": N_NEIGHBOURS},
               {"neighbours": d_sae, "neighbour_cos": None},
               lambda: dict(zip(("neighbours", "neighbour_cos"), decoder_neighbours(sae.W_dec, ctx=ctx),
                                strict=True)))]
    found = None if adapter is None else unembed_directions(adapter)
    if found is not None and found[0].shape[1] == sae.d_in:
        vocab = len(found[0])
        key = {"sae": sae_fp, "model": adapter.weight_hash(), "n": N_LOGITS,
               "norm": None if found[1] is None else type(found[1]).__name__}
        tables.append(("logit effects", key,
                       {"logit_top_ids": vocab, "logit_top_values": None,
                        "logit_bottom_ids": vocab, "logit_bottom_values": None},
                       lambda: logit_effects(sae, adapter, ctx=ctx)))
    for name, key, spec, compute in tables:
        got, hit = _cached_table(folder, name, key, spec, d_sae, compute, ctx)
        arrays.update(got)
        if hit:
            cached.append(name)
    return WeightTables(arrays, tuple(cached))


def _cached_table(folder: Path, name: str, key: dict, spec: dict[str, int | None], d_sae: int,
                  compute: Callable[[], dict[str, np.ndarray]],
                  ctx: JobContext | None) -> tuple[dict[str, np.ndarray], bool]:
    """One table from its cache file when that holds it, else ``compute()`` and save it."""
    key = {"table": name, "version": _code_version(), **key}
    text = json.dumps(key, sort_keys=True)
    path = folder / f"{name.replace(' ', '-')}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"
    arrays = _load_table(path, text, spec, d_sae)
    if ctx is not None:
        ctx.progress(1, 1, f"{name} (cached)" if arrays is not None else name)
    if arrays is not None:
        return arrays, True
    arrays = compute()
    _save_table(path, text, arrays)
    return arrays, False


def _code_version() -> str:
    """TABLES_VERSION, a hash of this file and the torch version: a cache entry is only
    trusted from the code that computes the tables now (an edit here invalidates it)."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return f"{TABLES_VERSION}-{digest}-torch{torch.__version__}"


def _load_table(path: Path, key_text: str, spec: dict[str, int | None],
                d_sae: int) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file when it is for ``key_text`` and well formed: exactly the
    arrays named in ``spec``, all (d_sae, n) alike; an array whose spec is a bound holds
    ids in 0..bound-1, the others finite values. None for a missing, unreadable, truncated
    or foreign file: it is never trusted."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key_text or set(f.files) != {"key", *spec}:
                return None
            arrays = {k: f[k] for k in spec}
    except Exception:  # noqa: BLE001  (any unreadable file is a miss: zip, zlib, OS, format errors)
        return None
    shapes = {a.shape for a in arrays.values()}
    shape = next(iter(shapes))
    if len(shapes) != 1 or len(shape) != 2 or shape[0] != d_sae:
        return None
    for k, a in arrays.items():
        bound = spec[k]
        ok = (a.dtype.kind in "iu" and a.min(initial=0) >= 0 and a.max(initial=0) < bound
              if bound is not None else a.dtype.kind == "f" and bool(np.isfinite(a).all()))
        if not ok:
            return None
    try:
        os.utime(path)  # most recently used: kept longest
    except OSError:
        pass
    return arrays


def _save_table(path: Path, key_text: str, arrays: dict[str, np.ndarray]) -> None:
    """Write the cache file atomically (a temporary file renamed over it), then keep the
    MAX_CACHED_TABLES most recently used; a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, key=np.array(key_text), **arrays)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        files = sorted(path.parent.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[MAX_CACHED_TABLES:]:
            old.unlink(missing_ok=True)
    except OSError:
        return
