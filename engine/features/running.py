"""The running accumulators of feature statistics, shared by both ways of feeding them
(rows read from a store, or rows straight from the model in ``engine.features.one_pass``).

A batch enters as its nonzero codes, row-major (row, latent, value) triplets, so its cost
is its L0, not d_sae, per row: counts, sums, maxima and log10 histogram bins by bincounts
and scatters, label counts, the sparse codes themselves (CSR), and the top activating rows
as a running top-n per latent that only looks at candidates beating a latent's current
n-th best. SAEs that pick their latents (TopK) hand them over without a dense (batch, d_sae)
matrix (``SparseAutoencoder.encode_codes``).

Shapes: codes (batch, d_sae); triplets (nnz,); top tables (d_sae, top_n)."""

from __future__ import annotations

import numpy as np
import torch

from engine.sae.base import Codes, SparseAutoencoder

HIST_RANGE = (-5.0, 5.0)  # log10 |activation|; values outside land in the end bins
HIST_BINS = 100  # 0.1 decade per bin
SLICE_ELEMENTS = 1 << 22  # dense codes per nonzero() slice (bounds the index lists)
MAX_STORED_CODES = 1 << 26  # nonzero codes kept as CSR in the statistics (about 0.5 GB at most)
MAX_LABEL_CELLS = 1 << 24  # bound on d_sae * n_classes: a label field with more is not counted
N_INTERVAL_EXAMPLES = 5  # example rows per quantile interval


class RunningStats:
    """Accumulators of one pass over the rows, on one device; rows arrive in order."""

    def __init__(self, d_sae: int, top_n: int, device: torch.device, n_classes: int = 0,
                 count_labels: bool = False) -> None:
        self.d_sae, self.device = d_sae, device
        self.count = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.max_fired = torch.full((d_sae,), -torch.inf, device=device)
        self.hist = torch.zeros(d_sae * HIST_BINS, dtype=torch.int64, device=device)
        self.top_values = torch.full((d_sae, top_n), -torch.inf, device=device)
        self.top_rows = torch.full((d_sae, top_n), -1, dtype=torch.int64, device=device)
        self.label_counts: torch.Tensor | None = None  # (d_sae, n_classes) int64
        if count_labels or n_classes:
            self._grow_classes(n_classes)
        self.n = 0
        self.nnz_per_row: list[np.ndarray] = []  # the sparse codes, batch by batch (CSR parts)
        self.code_latent: list[np.ndarray] = []
        self.code_value: list[np.ndarray] = []
        self.stored = 0  # nonzero codes kept so far; -1 once past MAX_STORED_CODES

    # ------------------------------------------------------------ feeding
    def encode_and_add(self, sae: SparseAutoencoder, x: torch.Tensor,
                       labels: torch.Tensor | None = None) -> None:
        """Encode x (batch, d_in) with ``sae`` and fold the codes in (sparsely where it encodes so)."""
        codes = sae.encode_codes(x)
        if codes.is_dense:
            self.add_dense(codes.values, labels)
        else:
            self.add(codes, labels)

    def add_dense(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Fold in dense codes (batch, d_sae), in row slices that bound the index lists."""
        step = max(1, SLICE_ELEMENTS // codes.shape[1])
        for s in range(0, len(codes), step):
            self.add(Codes.nonzero(codes[s:s + step]), None if labels is None else labels[s:s + step])

    def add(self, codes: Codes, labels: torch.Tensor | None = None) -> None:
        """Fold in a batch's codes in the canonical sparse form (``Codes.nonzero``); its rows
        are the next ``codes.n_rows`` rows. ``labels`` (n_rows,) int64 is each row's class
        (-1 none) when classes are counted."""
        latent, value = codes.cols, codes.values
        self._keep_codes(codes)
        self.count += torch.bincount(latent, minlength=self.d_sae)
        self.sum.index_add_(0, latent, value.double())
        self.max_fired.scatter_reduce_(0, latent, value, "amax")
        lo, hi = HIST_RANGE
        bins = ((value.abs().log10() - lo) / ((hi - lo) / HIST_BINS)).floor_()
        bins = bins.clamp_(0, HIST_BINS - 1).long()
        self.hist.index_add_(0, latent * HIST_BINS + bins, torch.ones_like(bins))
        if labels is not None and self.label_counts is not None:
            self._count_labels(latent, labels[codes.rows])
        self._merge_top(latent, value, codes.rows + self.n)
        self.n += codes.n_rows

    def _grow_classes(self, n_classes: int) -> None:
        """Widen the label counts to ``n_classes`` (stop counting past MAX_LABEL_CELLS)."""
        if self.d_sae * n_classes > MAX_LABEL_CELLS:
            self.label_counts = None
            return
        wider = torch.zeros(self.d_sae, n_classes, dtype=torch.int64, device=self.device)
        if self.label_counts is not None:
            wider[:, :self.label_counts.shape[1]] = self.label_counts
        self.label_counts = wider

    def _count_labels(self, latent: torch.Tensor, lab: torch.Tensor) -> None:
        keep = lab >= 0
        latent, lab = latent[keep], lab[keep]
        if len(lab) and int(lab.max()) >= self.label_counts.shape[1]:
            self._grow_classes(int(lab.max()) + 1)
            if self.label_counts is None:
                return
        cells = self.label_counts.view(-1)
        cells.index_add_(0, latent * self.label_counts.shape[1] + lab, torch.ones_like(lab))

    def _keep_codes(self, codes: Codes) -> None:
        """Keep the nonzero codes (CSR) so views can read any latent's activation on every
        row without encoding again; given up once they would exceed MAX_STORED_CODES."""
        if self.stored < 0:
            return
        self.stored += len(codes.cols)
        if self.stored > MAX_STORED_CODES:
            self.stored = -1
            self.nnz_per_row, self.code_latent, self.code_value = [], [], []
            return
        self.nnz_per_row.append(torch.bincount(codes.rows, minlength=codes.n_rows).cpu().numpy())
        self.code_latent.append(codes.cols.to(torch.int32).cpu().numpy())
        self.code_value.append(codes.values.cpu().numpy())

    def _merge_top(self, latent: torch.Tensor, value: torch.Tensor, row: torch.Tensor) -> None:
        """Merge candidates (row-major, rows ascending) into the top tables, ordered by value
        descending, then row ascending. Only candidates beating their latent's current n-th
        value can enter (a tie loses: its row is later), so after the first batches few do."""
        n = self.top_values.shape[1]
        beat = value > self.top_values[latent, -1]
        latent, value, row = latent[beat], value[beat], row[beat]
        if not len(latent):
            return
        order = torch.sort(value, descending=True, stable=True).indices  # ties keep row order
        order = order[torch.sort(latent[order], stable=True).indices]
        latent, value, row = latent[order], value[order], row[order]
        ids, counts = torch.unique_consecutive(latent, return_counts=True)
        group = torch.repeat_interleave(torch.arange(len(ids), device=latent.device), counts)
        rank = torch.arange(len(latent), device=latent.device) - (counts.cumsum(0) - counts)[group]
        take = rank < n
        new_values = torch.full((len(ids), n), -torch.inf, device=latent.device)
        new_rows = torch.full((len(ids), n), -1, dtype=torch.int64, device=latent.device)
        new_values[group[take], rank[take]] = value[take]
        new_rows[group[take], rank[take]] = row[take]
        values = torch.cat([self.top_values[ids], new_values], 1)  # old rows precede new rows
        rows = torch.cat([self.top_rows[ids], new_rows], 1)
        values, pick = values.sort(dim=1, descending=True, stable=True)
        self.top_values[ids] = values[:, :n]
        self.top_rows[ids] = rows.gather(1, pick[:, :n])

    # ------------------------------------------------------------ results
    def code_arrays(self) -> dict[str, np.ndarray]:
        """code_ptr (n + 1,), code_latent (nnz,) int32, code_value (nnz,) float32: row r's
        codes are entries code_ptr[r]:code_ptr[r + 1]. Empty when too many to keep."""
        if self.stored < 0 or not self.nnz_per_row:
            return {}
        ptr = np.concatenate([[0], np.cumsum(np.concatenate(self.nnz_per_row))]).astype(np.int64)
        return {"code_ptr": ptr, "code_latent": np.concatenate(self.code_latent),
                "code_value": np.concatenate(self.code_value).astype(np.float32)}

    def arrays(self, levels: np.ndarray, n_classes: int | None = None) -> dict[str, np.ndarray]:
        """The statistics as numpy arrays; label counts padded to ``n_classes`` columns
        (None: no label counts)."""
        count = self.count.cpu().numpy()
        hist = self.hist.view(-1, HIST_BINS).cpu().numpy()
        top_values = self.top_values.cpu().numpy()
        fired = top_values > 0  # rows beyond a latent's firing rows are not examples
        mx = self.max_fired.cpu().numpy()  # a latent silent on some row also has max >= 0
        mx = np.where(count < self.n, np.maximum(mx, 0), mx) if self.n else np.zeros_like(mx)
        edges = np.linspace(*HIST_RANGE, HIST_BINS + 1)
        out = {"count": count, "density": (count / max(self.n, 1)).astype(np.float32),
               "mean": (self.sum.cpu().numpy() / np.maximum(count, 1)).astype(np.float32),
               "max": mx.astype(np.float32), "hist": hist, "hist_edges": edges,
               "quantile_levels": levels, "quantiles": hist_quantiles(hist, edges, levels, mx),
               "top_values": np.where(fired, top_values, 0).astype(np.float32),
               "top_rows": np.where(fired, self.top_rows.cpu().numpy(), -1)}
        if n_classes is not None and self.label_counts is not None:
            counts = np.zeros((self.d_sae, n_classes), np.int64)
            got = self.label_counts.cpu().numpy()[:, :n_classes]
            counts[:, :got.shape[1]] = got
            out["label_counts"] = counts
        return out


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


def interval_examples(codes: dict[str, np.ndarray], quantiles: np.ndarray,
                      n: int = N_INTERVAL_EXAMPLES) -> dict[str, np.ndarray]:
    """Up to ``n`` example rows of each latent from each interval between consecutive
    quantiles (so each interval holds about the same share of its firing rows), read from
    the CSR codes: interval_rows (d_sae, q - 1, n) int64 (-1 none) and interval_values,
    strongest first in a cell. The picks are a fixed pseudo-random function of (row,
    latent), so the same codes give the same examples."""
    ptr, latent, value = codes["code_ptr"], codes["code_latent"].astype(np.int64), codes["code_value"]
    d_sae, n_int = len(quantiles), max(quantiles.shape[1] - 1, 1)
    row = np.repeat(np.arange(len(ptr) - 1, dtype=np.int64), np.diff(ptr))
    inner = quantiles[:, 1:-1]  # (d_sae, q - 2) edges between intervals
    interval = (value[:, None] >= inner[latent]).sum(1) if inner.shape[1] else np.zeros_like(row)
    mixed = (row * d_sae + latent).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # a hash
    cell = latent * n_int + interval
    order = np.argsort((cell.astype(np.uint64) << np.uint64(32)) | (mixed >> np.uint64(32)))
    cell = cell[order]  # grouped by cell, pseudo-random inside one
    rank = np.arange(len(cell)) - np.searchsorted(cell, cell, side="left")
    take = order[rank < n]
    at = (cell[rank < n], rank[rank < n])
    rows = np.full((d_sae * n_int, n), -1, np.int64)
    values = np.zeros((d_sae * n_int, n), np.float32)
    rows[at], values[at] = row[take], value[take]
    by_value = np.argsort(-values, axis=1, kind="stable")
    rows, values = np.take_along_axis(rows, by_value, 1), np.take_along_axis(values, by_value, 1)
    return {"interval_rows": rows.reshape(d_sae, n_int, n),
            "interval_values": values.reshape(d_sae, n_int, n)}
