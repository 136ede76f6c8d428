"""Per-latent statistics of an SAE over a store, in one streaming pass that never holds all
codes: firing density, mean and max activation, a histogram of log10 activations and
quantiles read from it, the top activating rows (a running top-k merged per batch); then,
from the weights alone, each latent's logit effects (causal LMs) and its nearest latents
by decoder cosine. When the store has label fields, the pass also counts, per latent and
class of the first field, the firing rows of that class (``label_association`` reads them).
Results go into the store file under ``/features/<sae id>/``.

Shapes: codes (batch, d_sae); W_dec (d_sae, d_in); W_U (vocab, d_model)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from engine.errors import LatentLabError
from engine.jobs import JobContext
from engine.models.base import ModelAdapter, weight_fingerprint
from engine.sae.base import SparseAutoencoder
from engine.store import ActivationStore

HIST_RANGE = (-5.0, 5.0)  # log10 |activation|; values outside land in the end bins
HIST_BINS = 100  # 0.1 decade per bin
N_LOGITS = 10  # promoted / suppressed tokens kept per latent
N_NEIGHBOURS = 10
BLOCK_ELEMENTS = 1 << 26  # bound on a (rows, d_sae) or (rows, vocab) block in the weight passes
_SLICE_ELEMENTS = 1 << 22  # codes per histogram slice (bounds the nonzero index list)
CODE_ARRAYS = ("code_ptr", "code_latent", "code_value")  # read in slices, see engine.encode
MAX_STORED_CODES = 1 << 26  # nonzero codes kept as CSR in the statistics (about 0.5 GB at most)
_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_norm", "norm_f")
MAX_LABEL_CELLS = 1 << 24  # bound on d_sae * n_classes: a label field with more is skipped


class FeatureStatsResult(NamedTuple):
    path: str
    sae_id: str
    group: str  # where the statistics live in the store file
    n_rows: int
    d_sae: int
    seconds: float


@dataclass
class FeatureStats:
    """The arrays ``feature_stats`` wrote, one row per latent (d_sae, ...)."""

    sae_id: str
    hook: str
    n_rows: int
    count: np.ndarray  # (d_sae,) int64 rows where the latent is nonzero
    density: np.ndarray  # (d_sae,) count / n_rows
    mean: np.ndarray  # (d_sae,) mean activation over firing rows (0 when dead)
    max: np.ndarray  # (d_sae,) max activation over all rows
    hist: np.ndarray  # (d_sae, bins) int64 counts of log10 |activation| of firing rows
    hist_edges: np.ndarray  # (bins + 1,) log10 bin edges
    quantile_levels: np.ndarray  # (q,)
    quantiles: np.ndarray  # (d_sae, q) activation quantiles of firing rows, from hist
    top_values: np.ndarray  # (d_sae, top_n) descending; 0 where fewer rows fire
    top_rows: np.ndarray  # (d_sae, top_n) int64 store rows; -1 where fewer rows fire
    neighbours: np.ndarray  # (d_sae, k) int64 latents of highest decoder cosine
    neighbour_cos: np.ndarray  # (d_sae, k)
    logit_top_ids: np.ndarray | None = None  # (d_sae, 10) most promoted token ids
    logit_top_values: np.ndarray | None = None
    logit_bottom_ids: np.ndarray | None = None  # (d_sae, 10) most suppressed token ids
    logit_bottom_values: np.ndarray | None = None
    top_tokens: np.ndarray | None = None  # (d_sae, top_n) int32 token ids of top_rows; -1 none
    label_name: str | None = None  # the label field counted in label_counts
    label_classes: list[str] = field(default_factory=list)  # (n_classes,) class names
    label_counts: np.ndarray | None = None  # (d_sae, n_classes) int64 firing rows per class
    label_totals: np.ndarray | None = None  # (n_classes,) int64 rows per class
    sae_cfg: dict[str, Any] = field(default_factory=dict)


class RowLabels(NamedTuple):
    """The label field the pass counts: its name, class names and (n_rows,) values (-1 none)."""

    name: str
    classes: list[str]
    values: np.ndarray


class TopContext(NamedTuple):
    row: int
    tokens: np.ndarray  # token ids around the row, from its document
    at: int  # where the row sits in ``tokens``
    value: float  # the latent's activation on the row


# ---------------------------------------------------------------- the streaming pass
class _Running:
    """Accumulators of the one pass over the rows, kept on the SAE's device."""

    def __init__(self, d_sae: int, top_n: int, device: torch.device, n_classes: int = 0) -> None:
        self.n_classes = n_classes
        self.label_counts = torch.zeros(d_sae * n_classes, dtype=torch.int64, device=device)
        self.count = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.max_fired = torch.full((d_sae,), -torch.inf, device=device)
        self.hist = torch.zeros(d_sae * HIST_BINS, dtype=torch.int64, device=device)
        self.top_values = torch.full((d_sae, top_n), -torch.inf, device=device)
        self.top_rows = torch.full((d_sae, top_n), -1, dtype=torch.int64, device=device)
        self.n = 0
        self.nnz_per_row: list[np.ndarray] = []  # the sparse codes, row by row (CSR parts)
        self.code_latent: list[np.ndarray] = []
        self.code_value: list[np.ndarray] = []
        self.stored = 0  # nonzero codes kept so far; -1 once past MAX_STORED_CODES

    def update(self, codes: torch.Tensor, first_row: int,
               labels: torch.Tensor | None = None) -> None:
        """Fold in a batch of codes (batch, d_sae) whose first row is store row ``first_row``;
        ``labels`` (batch,) int64 class of each row (-1 none) when classes are counted."""
        codes = codes.float()
        step = max(1, _SLICE_ELEMENTS // codes.shape[1])
        for s in range(0, len(codes), step):  # slices bound the nonzero index lists
            self._fold_nonzero(codes[s:s + step], None if labels is None else labels[s:s + step])
        self._update_top(codes, first_row)
        self.n += len(codes)

    def _fold_nonzero(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Counts, sums, maxima and histogram bins from the nonzero codes only (a sparse
        batch costs its l0, not d_sae, per row)."""
        row, latent = torch.nonzero(codes, as_tuple=True)  # row-major: rows ascending
        value = codes[row, latent]
        self._keep_codes(len(codes), row, latent, value)
        self.count += torch.bincount(latent, minlength=len(self.count))
        self.sum.index_add_(0, latent, value.double())
        self.max_fired.scatter_reduce_(0, latent, value, "amax")
        lo, hi = HIST_RANGE
        bins = ((value.abs().log10() - lo) / ((hi - lo) / HIST_BINS)).floor()
        bins = bins.clamp(0, HIST_BINS - 1).long()
        self.hist += torch.bincount(latent * HIST_BINS + bins, minlength=self.hist.numel())
        if labels is not None and self.n_classes:
            lab = labels[row]
            keep = lab >= 0
            cell = latent[keep] * self.n_classes + lab[keep]
            self.label_counts += torch.bincount(cell, minlength=self.label_counts.numel())

    def _keep_codes(self, n_rows: int, row: torch.Tensor, latent: torch.Tensor,
                    value: torch.Tensor) -> None:
        """Keep the nonzero codes (CSR) so views can read any latent's activation on every
        row without encoding again; given up once they would exceed MAX_STORED_CODES."""
        if self.stored < 0:
            return
        self.stored += len(latent)
        if self.stored > MAX_STORED_CODES:
            self.stored = -1
            self.nnz_per_row, self.code_latent, self.code_value = [], [], []
            return
        self.nnz_per_row.append(torch.bincount(row, minlength=n_rows).cpu().numpy())
        self.code_latent.append(latent.to(torch.int32).cpu().numpy())
        self.code_value.append(value.cpu().numpy())

    def code_arrays(self) -> dict[str, np.ndarray]:
        """code_ptr (n + 1,), code_latent (nnz,) int32, code_value (nnz,) float32: row r's
        codes are entries code_ptr[r]:code_ptr[r + 1]. Empty when too many to keep."""
        if self.stored < 0 or not self.nnz_per_row:
            return {}
        ptr = np.concatenate([[0], np.cumsum(np.concatenate(self.nnz_per_row))]).astype(np.int64)
        return {"code_ptr": ptr, "code_latent": np.concatenate(self.code_latent),
                "code_value": np.concatenate(self.code_value).astype(np.float32)}

    def _update_top(self, codes: torch.Tensor, first_row: int) -> None:
        k = min(self.top_values.shape[1], len(codes))
        values, rows = codes.topk(k, dim=0)  # (k, d_sae)
        values = torch.cat([self.top_values, values.t()], 1)
        rows = torch.cat([self.top_rows, rows.t() + first_row], 1)
        self.top_values, pick = values.topk(self.top_values.shape[1], dim=1)
        self.top_rows = rows.gather(1, pick)

    def arrays(self, levels: np.ndarray) -> dict[str, np.ndarray]:
        count = self.count.cpu().numpy()
        hist = self.hist.view(-1, HIST_BINS).cpu().numpy()
        top_values = self.top_values.cpu().numpy()
        fired = top_values > 0  # rows beyond a latent's firing rows are not examples
        mx = self.max_fired.cpu().numpy()  # a latent silent on some row also has max >= 0
        mx = np.where(count < self.n, np.maximum(mx, 0), mx) if self.n else np.zeros_like(mx)
        edges = np.linspace(*HIST_RANGE, HIST_BINS + 1)
        out = {"label_counts": self.label_counts.view(-1, self.n_classes).cpu().numpy()} \
            if self.n_classes else {}
        return out | {"count": count, "density": (count / max(self.n, 1)).astype(np.float32),
                "mean": (self.sum.cpu().numpy() / np.maximum(count, 1)).astype(np.float32),
                "max": mx.astype(np.float32), "hist": hist, "hist_edges": edges,
                "quantile_levels": levels, "quantiles": hist_quantiles(hist, edges, levels, mx),
                "top_values": np.where(fired, top_values, 0).astype(np.float32),
                "top_rows": np.where(fired, self.top_rows.cpu().numpy(), -1)}


def hist_quantiles(hist: np.ndarray, edges: np.ndarray, levels: np.ndarray,
                   mx: np.ndarray | None = None) -> np.ndarray:
    """Quantiles (d_sae, q) of each row's histogram of log10 values, interpolating linearly
    in log10 inside a bin; capped at ``mx`` when given, 0 for an empty histogram."""
    count = hist.sum(1, keepdims=True)
    cum = hist.cumsum(1)
    out = np.zeros((len(hist), len(levels)), np.float64)
    for j, q in enumerate(levels):
        target = np.maximum(q * count, 1e-9)  # (d_sae, 1)
        b = np.minimum((cum < target).sum(1), hist.shape[1] - 1)
        rows = np.arange(len(hist))
        inside = hist[rows, b]
        frac = (target[:, 0] - (cum[rows, b] - inside)) / np.maximum(inside, 1)
        out[:, j] = 10.0 ** (edges[b] + np.clip(frac, 0, 1) * (edges[b + 1] - edges[b]))
    if mx is not None:
        out = np.minimum(out, np.maximum(mx, 0)[:, None])
    out[count[:, 0] == 0] = 0
    return out.astype(np.float32)


# ---------------------------------------------------------------- weights only
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
        values, top = sim.topk(k, dim=1)
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
            values, ids = eff.topk(n, dim=1, largest=largest)
            parts[f"{side}_values"].append(values.cpu())
            parts[f"{side}_ids"].append(ids.cpu())
    return {f"logit_{k}": torch.cat(v).numpy() for k, v in parts.items()}


# ---------------------------------------------------------------- the job
def _check_id(sae_id: str) -> str:
    if not sae_id or "/" in sae_id or sae_id in (".", ".."):
        raise LatentLabError(f"SAE id {sae_id!r} must be a non-empty name without '/'")
    return sae_id


def row_labels(store: ActivationStore, d_sae: int | None = None) -> RowLabels | None:
    """The store's first label field with its class names (from the capture's
    ``label_classes``, else the class numbers); None without labels, or when
    d_sae * n_classes would exceed MAX_LABEL_CELLS."""
    if not store.label_names:
        return None
    name = store.label_names[0]
    values = np.asarray(store.index(name), dtype=np.int64)
    classes = [str(c) for c in (store.meta.params.get("label_classes") or {}).get(name, [])]
    n_classes = max(len(classes), int(values.max(initial=-1)) + 1)
    if n_classes == 0 or (d_sae is not None and d_sae * n_classes > MAX_LABEL_CELLS):
        return None
    classes += [str(i) for i in range(len(classes), n_classes)]
    return RowLabels(name, classes, values)


@torch.inference_mode()
def _stream(ctx: JobContext, store: ActivationStore, sae: SparseAutoencoder, hook: str,
            batch_size: int, top_n: int, labels: RowLabels | None = None) -> _Running:
    """The one pass: encode each batch in row order and fold it into the accumulators."""
    device = next(sae.parameters()).device
    run = _Running(sae.d_sae, top_n, device, len(labels.classes) if labels else 0)
    total = store.n_rows
    values = None if labels is None else torch.from_numpy(labels.values).to(device)
    ctx.progress(0, total, "feature statistics")
    for block in store.iter_batches(hook, batch_size, shuffle=False):
        ctx.check_cancelled()
        lab = None if values is None else values[run.n:run.n + len(block)]
        run.update(sae.encode(torch.from_numpy(block).to(device)), run.n, lab)
        ctx.progress(run.n, total, "feature statistics")
    return run


def _label_arrays(labels: RowLabels | None, n_rows: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """label_totals (n_classes,) and the attributes naming the field and its classes."""
    if labels is None:
        return {}, {}
    values = labels.values[:n_rows]
    totals = np.bincount(values[values >= 0], minlength=len(labels.classes)).astype(np.int64)
    return {"label_totals": totals}, {"label_name": labels.name,
                                      "label_classes": json.dumps(labels.classes)}


def _top_tokens(store: ActivationStore, top_rows: np.ndarray) -> np.ndarray:
    """(d_sae, top_n) int32 token ids of the top rows; -1 where there is no row."""
    tokens = store.index("tokens")
    return np.where(top_rows >= 0, tokens[np.maximum(top_rows, 0)], -1).astype(np.int32)


def feature_stats(ctx: JobContext, store_path: str | os.PathLike, sae: SparseAutoencoder,
                  hook: str, sae_id: str, batch_size: int = 4096, top_n: int = 32,
                  n_quantiles: int = 11, adapter: ModelAdapter | None = None) -> FeatureStatsResult:
    """Job: per-latent statistics of ``sae`` over every row of ``hook`` in the store, written
    into the store under ``/features/<sae_id>/`` (replacing an earlier group of that id).
    Logit effects are computed when ``adapter`` is a causal LM (see ``logit_effects``).
    Nothing is written if the job is cancelled. The SAE is moved to ``ctx.device``."""
    t0 = time.perf_counter()
    path = Path(store_path)
    group = f"features/{_check_id(sae_id)}"
    sae = sae.to(ctx.device).eval()
    with ActivationStore.open(path) as store:
        if sae.d_in != store.dim(hook):
            raise LatentLabError(f"the SAE reads {sae.d_in}-wide rows, but {hook!r} in "
                                 f"{path.name} is {store.dim(hook)} wide")
        labels = row_labels(store, sae.d_sae)
        run = _stream(ctx, store, sae, hook, batch_size, top_n, labels)
        arrays = run.arrays(np.linspace(0.0, 1.0, n_quantiles)) | run.code_arrays()
        arrays["top_tokens"] = _top_tokens(store, arrays["top_rows"])
    label_totals, label_attrs = _label_arrays(labels, run.n)
    arrays.update(label_totals)
    ctx.progress(run.n, run.n, "decoder neighbours")
    arrays["neighbours"], arrays["neighbour_cos"] = decoder_neighbours(sae.W_dec, ctx=ctx)
    if adapter is not None and not hook.endswith("hook_z"):  # hook_z is not in the residual basis
        ctx.progress(run.n, run.n, "logit effects")
        arrays.update(logit_effects(sae, adapter, ctx=ctx))
    ctx.check_cancelled()
    cfg = {"architecture": type(sae).architecture, **sae.cfg.to_dict()}
    attrs = {"hook": hook, "n_rows": run.n, "top_n": top_n, "sae_id": sae_id,
             "sae_fingerprint": weight_fingerprint(sae),
             "sae_cfg": json.dumps(cfg, default=str),
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **label_attrs}
    ActivationStore.write_group(path, group, arrays, attrs)
    return FeatureStatsResult(str(path), sae_id, group, run.n, sae.d_sae, time.perf_counter() - t0)


# ---------------------------------------------------------------- reading
def load_feature_stats(store: ActivationStore, sae_id: str) -> FeatureStats:
    """The statistics ``feature_stats`` wrote for ``sae_id`` (open the store after writing)."""
    arrays, attrs = store.read_group(f"features/{_check_id(sae_id)}", exclude=CODE_ARRAYS)
    known = set(FeatureStats.__dataclass_fields__)
    label_name = attrs.get("label_name")
    return FeatureStats(sae_id=sae_id, hook=str(attrs["hook"]), n_rows=int(attrs["n_rows"]),
                        sae_cfg=json.loads(attrs.get("sae_cfg", "{}")),
                        label_name=None if label_name is None else str(label_name),
                        label_classes=[str(c) for c in json.loads(attrs.get("label_classes", "[]"))],
                        **{k: v for k, v in arrays.items() if k in known})


def top_contexts(store: ActivationStore, stats: FeatureStats, latent: int, n: int | None = None,
                 before: int = 16, after: int = 8) -> list[TopContext]:
    """The top ``n`` (default all kept) activating rows of ``latent`` with their context
    tokens from the same document, strongest first."""
    rows, values = stats.top_rows[latent], stats.top_values[latent]
    out = []
    for row, value in zip(rows[:n], values[:n], strict=True):
        if row < 0:
            break
        tokens, at = store.context(int(row), before, after)
        out.append(TopContext(int(row), tokens, at, float(value)))
    return out


# ---------------------------------------------------------------- labels
def label_association(stats: FeatureStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per latent its best class (d_sae,) int64 (-1 for a dead latent or without labels),
    precision (share of its labelled firing rows in that class) and lift (precision over
    the class's share of all labelled rows); precision and lift are 0 where undefined."""
    d_sae = len(stats.count)
    if stats.label_counts is None or stats.label_totals is None or not stats.label_counts.size:
        return np.full(d_sae, -1, np.int64), np.zeros(d_sae, np.float32), np.zeros(d_sae, np.float32)
    counts = stats.label_counts.astype(np.float64)
    fired = counts.sum(1)
    best = counts.argmax(1)
    precision = counts[np.arange(d_sae), best] / np.maximum(fired, 1)
    share = stats.label_totals / max(int(stats.label_totals.sum()), 1)
    base = share[best]
    lift = np.divide(precision, base, out=np.zeros(d_sae), where=base > 0)
    best = np.where(fired > 0, best, -1)
    return best.astype(np.int64), precision.astype(np.float32), lift.astype(np.float32)


class LatentTable(NamedTuple):
    """Label columns of every latent, for tables."""

    best: np.ndarray  # (d_sae,) best label class, -1 none
    precision: np.ndarray  # (d_sae,)
    association: np.ndarray  # (d_sae,) object str: "class 85%", "" without one
    labels: np.ndarray  # (d_sae,) object str: auto_label of each latent


def latent_table(stats: FeatureStats, vocab: Any, ctx: JobContext | None = None) -> LatentTable:
    """Label association and auto-label of every latent (a few seconds for 100k latents)."""
    best, precision, _ = label_association(stats)
    assoc = np.array([f"{class_name(stats, int(c))} {p:.0%}" if c >= 0 else ""
                      for c, p in zip(best, precision, strict=True)], dtype=object)
    labels = np.empty(len(best), dtype=object)
    for j in range(len(best)):
        if ctx is not None and j % 2048 == 0:
            ctx.check_cancelled()
            ctx.progress(j, len(best), "labelling latents")
        labels[j] = auto_label(stats, vocab, j)
    return LatentTable(best, precision, assoc, labels)


def class_name(stats: FeatureStats, cls: int) -> str:
    """The name of class ``cls`` of the counted label field ("" for -1)."""
    if cls < 0:
        return ""
    return stats.label_classes[cls] if cls < len(stats.label_classes) else str(cls)


def _token_text(vocab: Any, token_id: int, width: int = 12) -> str:
    """A token as a short visible string (whitespace shown), or #id without a vocabulary."""
    if vocab is None:
        return f"#{int(token_id)}"
    text = vocab.visible(vocab.token(int(token_id))).strip() or f"#{int(token_id)}"
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def auto_label(stats: FeatureStats, vocab: Any, latent: int, n: int = 3) -> str:
    """A short name for ``latent``: its top promoted tokens when the stats have logit
    effects, else the most frequent tokens among its top activating rows, else its best
    label class, else its density; "dead" when it never fires. ``vocab`` is an
    engine.tokens.Vocab or None."""
    if stats.count[latent] == 0:
        return "dead"
    if stats.logit_top_ids is not None:
        return "\u2192 " + ", ".join(_token_text(vocab, t) for t in stats.logit_top_ids[latent][:n])
    if stats.top_tokens is not None:
        tokens = stats.top_tokens[latent]
        common = Counter(int(t) for t in tokens[tokens >= 0]).most_common(n)
        if common:
            return "on " + ", ".join(_token_text(vocab, t) for t, _ in common)
    if stats.label_counts is not None and stats.label_counts[latent].sum() > 0:
        counts = stats.label_counts[latent]
        best = int(counts.argmax())
        return f"{class_name(stats, best)} ({counts[best] / counts.sum():.0%})"
    return f"fires on {stats.density[latent]:.2%}"


def suggest_latent(store: ActivationStore, sae_id: str, max_density: float = 0.05) -> int | None:
    """A latent worth showing first: the most often firing one among the specific ones
    (density below ``max_density``); None when every latent is dead or there are no stats."""
    try:
        arrays, _ = store.read_group(f"features/{sae_id}")
    except LatentLabError:
        return None
    density = np.asarray(arrays["density"], np.float64)
    live = (density > 0) & (density < max_density)
    if not live.any():
        live = density > 0
    return int(np.argmax(np.where(live, density, -1.0))) if live.any() else None
