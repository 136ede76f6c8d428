"""SAE codes on store rows, for views: the activations of a few latents on any rows (to
colour a scatter or shade a context), and the latents most characteristic of a selection.
SAEs are loaded once per folder and kept while their files are unchanged (by mtime).

Shapes: x (batch, d_in); codes (batch, d_sae); values (rows, latents)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import torch

from engine.errors import LatentLabError
from engine.features.stats import CODE_ARRAYS, load_feature_stats, open_stats
from engine.jobs import JobContext
from engine.lru import LockedLRU
from engine.models.base import weight_fingerprint
from engine.sae.base import SparseAutoencoder
from engine.sae.formats import sae_files
from engine.sae.io import load_sae
from engine.store.activations import ActivationStore

CACHE_SIZE = 3  # SAEs kept loaded (per folder and device)
DENSE_ELEMENTS = 1 << 25  # bound on a dense (rows, d_sae) block: fewer rows per batch for wide SAEs
_saes = LockedLRU(CACHE_SIZE)  # (folder, device) -> (file stamp, SAE)


class Context(NamedTuple):
    """A top activating row in its document, with the latent's activation on each token."""

    row: int
    tokens: np.ndarray  # token ids of consecutive store rows of one document
    at: int  # where ``row`` sits in ``tokens``
    values: np.ndarray | None  # (len(tokens),) the latent's activation; None when unknown
    value: float  # the latent's activation on ``row``


class RowLatents(NamedTuple):
    """The latents most characteristic of a set of rows, best first."""

    latents: np.ndarray  # (n,) int64
    mean_on_rows: np.ndarray  # (n,) mean activation over the selected rows (zeros included)
    frac_on_rows: np.ndarray  # (n,) share of the selected rows where the latent fires
    mean_overall: np.ndarray  # (n,) mean activation over all rows of the store
    lift: np.ndarray  # (n,) mean_on_rows / mean_overall (0 for a latent silent on the rows)


# ---------------------------------------------------------------- the SAE cache
def _stamp(folder: Path) -> tuple:
    """(name, mtime_ns, size) of the SAE's files, in any format: a changed file means a reload."""
    try:
        return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sae_files(folder))
    except (OSError, LatentLabError):
        return ()


def cached_sae(sae_path: str | Path, device: torch.device | str = "cpu") -> SparseAutoencoder:
    """The SAE in ``sae_path`` on ``device`` in eval mode, loaded once while its files keep
    their mtime and size (the CACHE_SIZE most recent are kept)."""
    folder = Path(sae_path)
    key = (str(folder.resolve()), str(device))
    stamp = _stamp(folder)
    hit = _saes.get(key)
    if hit is not None and stamp and hit[0] == stamp:
        return hit[1]
    sae = load_sae(folder).to(device).eval()
    _saes.put(key, (stamp, sae))
    return sae


# ---------------------------------------------------------------- encoding columns
def _dense_rows(sae: SparseAutoencoder, batch_size: int) -> int:
    """Rows per batch when whole (batch, d_sae) codes are built."""
    return max(1, min(batch_size, DENSE_ELEMENTS // sae.d_sae))


def column_encoder(sae: SparseAutoencoder,
                   latents: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """x (batch, d_in) -> (batch, len(latents)) codes of those latents from only their
    columns of W_enc, where the architecture's codes depend only on their own pre-activation
    (``SparseAutoencoder.column_encoder``); None where they depend on the whole row (TopK,
    g-SAE, matching pursuit): encode whole rows and pick the columns."""
    return sae.column_encoder(torch.as_tensor(latents, dtype=torch.long, device=sae.W_enc.device))


def _read_sorted(store: ActivationStore, hook: str, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` (sorted) of a hook point: one slab read when they lie close together."""
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    if hi - lo <= 4 * len(idx) + 1024:
        return store.acts(hook, lo, hi)[idx - lo]
    return store.rows(hook, idx)


def _blocks(store: ActivationStore, hook: str, rows: np.ndarray | None,
            batch_size: int) -> Iterator[tuple[np.ndarray | slice, np.ndarray]]:
    """(where in the output, float32 rows) blocks: in store order, rows sorted before reading."""
    if rows is None:
        for s in range(0, store.n_rows, batch_size):
            yield slice(s, s + batch_size), store.acts(hook, s, s + batch_size).astype(np.float32)
        return
    order = np.argsort(rows, kind="stable")
    for s in range(0, len(rows), batch_size):
        pos = order[s:s + batch_size]
        yield pos, _read_sorted(store, hook, rows[pos]).astype(np.float32)


def _check_rows(store: ActivationStore, rows: np.ndarray | None) -> np.ndarray | None:
    """The rows as int64 (None: all), checked against the store's row count."""
    if rows is None:
        return None
    rows = np.asarray(rows, dtype=np.int64).ravel()
    if rows.size and (rows.min() < 0 or rows.max() >= store.n_rows):
        raise LatentLabError(f"row ids must lie in 0..{store.n_rows - 1} ({store.path.name})")
    return rows


def _check_encodable(store: ActivationStore, hook: str, sae: SparseAutoencoder,
                     stats_id: str | None) -> None:
    """Refuse to encode rows the store does not hold (a store made with --no-acts whose
    statistics hold no codes of this SAE), or rows of another width than the SAE's."""
    if hook not in store.hooks:
        codes = (f"its statistics {stats_id!r} hold no SAE codes of this SAE's weights at that hook"
                 if stats_id else "no feature statistics were named to read stored SAE codes from")
        raise LatentLabError(f"{store.path.name} holds no activation rows of {hook!r} (made with "
                             f"--no-acts?) and {codes}: nothing to read the latents from; run "
                             f"feature-stats for this SAE over it, or capture the rows")
    if sae.d_in != store.dim(hook):
        raise LatentLabError(f"the SAE reads {sae.d_in}-wide rows, but {hook!r} in "
                             f"{store.path.name} is {store.dim(hook)} wide")


def _encoded(ctx: JobContext, store: ActivationStore, hook: str, sae: SparseAutoencoder,
             rows: np.ndarray | None, batch_size: int, encode: Callable[[torch.Tensor], torch.Tensor],
             message: str) -> Iterator[tuple[np.ndarray | slice, torch.Tensor]]:
    """(where, codes) per block, with progress and a cancellation check per batch."""
    device, dtype = sae.W_enc.device, sae.W_enc.dtype
    total, done = (store.n_rows if rows is None else len(rows)), 0
    ctx.progress(0, total, message)
    for pos, block in _blocks(store, hook, rows, batch_size):
        ctx.check_cancelled()
        yield pos, encode(torch.from_numpy(block).to(device, dtype))
        done += len(block)
        ctx.progress(done, total, message)


class StoredCodes(NamedTuple):
    """Every row's sparse SAE codes as CSR, as ``feature_stats`` kept them."""

    ptr: np.ndarray  # (n_rows + 1,) int64: row r's entries are ptr[r]:ptr[r + 1]
    latent: np.ndarray  # (nnz,) latent ids
    value: np.ndarray  # (nnz,) activations
    mean: np.ndarray  # (d_sae,) float64 mean code over all rows


CODES_CACHE_SIZE = 2  # stores whose codes stay in memory (a brush asks for them many times)
_codes = LockedLRU(CODES_CACHE_SIZE)


def stored_codes(store: ActivationStore, stats_id: str, sae: SparseAutoencoder, hook: str) -> StoredCodes | None:
    """The codes ``feature_stats`` kept for ``stats_id`` of these SAE weights over the store
    as it is now (located by ``find_stats``), read once per file version and kept in
    memory; None when there are none, or they are for another hook or row count (stale
    codes are never trusted)."""
    fingerprint = weight_fingerprint(sae)
    try:
        with open_stats(store, stats_id, fingerprint) as g:
            if not all(isinstance(g.get(name), h5py.Dataset) for name in CODE_ARRAYS):
                return None
            attrs = dict(g.attrs)
            if attrs.get("hook") != hook or int(attrs.get("n_rows", -1)) != store.n_rows:
                return None
            path = Path(g.file.filename)
            st = path.stat()
            key = (str(path.resolve()), g.name, st.st_mtime_ns, st.st_size, fingerprint)
            hit = _codes.get(key)
            if hit is not None:
                return hit
            ptr, latent, value = (g[name][()] for name in CODE_ARRAYS)
    except LatentLabError:
        return None
    mean = np.bincount(latent, value.astype(np.float64), sae.d_sae) / max(store.n_rows, 1)
    codes = StoredCodes(ptr.astype(np.int64), latent, value, mean)
    _codes.put(key, codes)
    return codes


def stored_values(store: ActivationStore, stats_id: str, sae: SparseAutoencoder, hook: str,
                  cols: np.ndarray, rows: np.ndarray | None) -> np.ndarray | None:
    """The same answer as ``latent_values`` read from the sparse codes ``feature_stats``
    kept, without encoding; None when there are no usable stored codes."""
    codes = stored_codes(store, stats_id, sae, hook)
    if codes is None:
        return None
    full = np.zeros((store.n_rows, len(cols)), np.float32)
    for j, col in enumerate(cols):
        pos = np.flatnonzero(codes.latent == col)
        full[np.searchsorted(codes.ptr, pos, side="right") - 1, j] = codes.value[pos] if len(pos) else 0.0
    return full if rows is None else full[rows]


class _RunningSums:
    """The code sums over the rows last asked about, moved to a new set of rows by adding
    and removing only the rows that changed: a brush moves a little between asks."""

    def __init__(self, codes: StoredCodes, d_sae: int) -> None:
        self.codes, self.d_sae = codes, d_sae
        self.mask = np.zeros(len(codes.ptr) - 1, bool)
        self.total, self.fired = np.zeros(d_sae), np.zeros(d_sae, np.int64)

    def move_to(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new = np.zeros_like(self.mask)
        new[rows] = True
        changed = np.flatnonzero(new != self.mask)
        if len(changed) >= len(rows):  # as much work as starting over: start over (no drift)
            self.total, self.fired = stored_code_sums(self.codes, rows, self.d_sae)
        elif len(changed):
            gained, lost = changed[new[changed]], changed[~new[changed]]
            t_in, f_in = stored_code_sums(self.codes, gained, self.d_sae)
            t_out, f_out = stored_code_sums(self.codes, lost, self.d_sae)
            self.total += t_in - t_out
            self.fired += f_in - f_out
        self.mask = new
        return self.total.copy(), self.fired.copy()


_running: _RunningSums | None = None
_running_lock = threading.Lock()


def selection_code_sums(codes: StoredCodes, rows: np.ndarray, d_sae: int) -> tuple[np.ndarray, np.ndarray]:
    """``stored_code_sums`` over sorted unique ``rows``, updated from the previous call's
    rows when they are of the same codes (the cost follows what changed, not the size)."""
    global _running
    with _running_lock:
        if _running is None or _running.codes is not codes or _running.d_sae != d_sae:
            _running = _RunningSums(codes, d_sae)
        return _running.move_to(rows)


def stored_code_sums(codes: StoredCodes, rows: np.ndarray, d_sae: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of codes (d_sae,) float64 and firing counts (d_sae,) int64 over sorted unique
    ``rows``, from stored codes: a row mask repeated over each row's entries, then two
    bincounts (no encoding, no per-row Python)."""
    n_rows = len(codes.ptr) - 1
    if len(rows) * 8 < n_rows:  # few rows: gather their entry ranges
        starts, ends = codes.ptr[rows], codes.ptr[rows + 1]
        lengths = ends - starts
        entries = np.repeat(ends - np.cumsum(lengths), lengths) + np.arange(int(lengths.sum()))
    else:
        row_mask = np.zeros(n_rows, bool)
        row_mask[rows] = True
        entries = np.repeat(row_mask, np.diff(codes.ptr))
    latent = codes.latent[entries]
    total = np.bincount(latent, codes.value[entries].astype(np.float64), d_sae)
    fired = np.bincount(latent[codes.value[entries] != 0], minlength=d_sae).astype(np.int64)
    return total, fired


@torch.inference_mode()
def latent_values(ctx: JobContext, store_path: Path, hook: str, sae_path: Path,
                  latents: list[int], rows: np.ndarray | None = None,
                  batch_size: int = 8192, stats_id: str | None = None) -> np.ndarray:
    """Job: (len(rows) or n_rows, len(latents)) float32 activations of ``latents`` on the
    store's rows of ``hook`` (all rows, or ``rows`` in their given order). With
    ``stats_id``, read from the codes its feature statistics kept when they match (the
    only way for a store without activation rows); else the rows are encoded."""
    sae = cached_sae(sae_path, ctx.device)
    cols = np.asarray(latents, dtype=np.int64).ravel()
    if cols.size and (cols.min() < 0 or cols.max() >= sae.d_sae):
        raise LatentLabError(f"latent ids must lie in 0..{sae.d_sae - 1}")
    with ActivationStore.open(store_path) as store:
        rows = _check_rows(store, rows)
        if stats_id is not None:
            stored = stored_values(store, stats_id, sae, hook, cols, rows)
            if stored is not None:
                return stored
        _check_encodable(store, hook, sae, stats_id)
        out = np.zeros((store.n_rows if rows is None else len(rows), len(cols)), np.float32)
        encode = column_encoder(sae, cols)
        if encode is None:
            index = torch.as_tensor(cols, device=sae.W_enc.device)
            encode, batch_size = (lambda x: sae.encode(x)[:, index]), _dense_rows(sae, batch_size)
        for pos, codes in _encoded(ctx, store, hook, sae, rows, batch_size, encode,
                                   "latent values"):
            out[pos] = codes.float().cpu().numpy()
    return out


# ---------------------------------------------------------------- characteristic latents
def _code_sums(ctx: JobContext, store: ActivationStore, hook: str, sae: SparseAutoencoder,
               rows: np.ndarray | None, batch_size: int, message: str) -> tuple[np.ndarray, np.ndarray]:
    """Sum of codes (d_sae,) float64 and firing counts (d_sae,) int64 over the rows."""
    total = torch.zeros(sae.d_sae, dtype=torch.float64, device=sae.W_enc.device)
    fired = torch.zeros(sae.d_sae, dtype=torch.int64, device=sae.W_enc.device)
    batch_size = _dense_rows(sae, batch_size)
    for _, codes in _encoded(ctx, store, hook, sae, rows, batch_size, sae.encode, message):
        total += codes.double().sum(0)
        fired += (codes != 0).sum(0)
    return total.cpu().numpy(), fired.cpu().numpy()


def _overall_mean(ctx: JobContext, store: ActivationStore, hook: str, sae: SparseAutoencoder,
                  stats_id: str | None, batch_size: int) -> np.ndarray:
    """(d_sae,) mean code over all rows: count * mean / n_rows from the stored statistics
    when they fit this store and SAE, else one pass over the store."""
    if stats_id:
        stats = load_feature_stats(store, stats_id)
        if stats.n_rows == store.n_rows and len(stats.count) == sae.d_sae and stats.hook == hook:
            return stats.count * stats.mean.astype(np.float64) / max(stats.n_rows, 1)
    total, _ = _code_sums(ctx, store, hook, sae, None, batch_size, "mean over all rows")
    return total / max(store.n_rows, 1)


def rank_latents(mean_on: np.ndarray, frac_on: np.ndarray, mean_overall: np.ndarray,
                 n_selected: int, n_rows: int, n: int) -> RowLatents:
    """The ``n`` best latents by lift x frac_on (so a latent seen on one selected row does
    not outrank one that fires on all of them), ties by mean_on, then by id. Lift is
    mean_on / mean_overall; 0 for a latent silent on the rows (dead ones included); a latent
    active on the rows but not overall (stale statistics) gets the largest possible lift."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(mean_overall > 0, mean_on / mean_overall, 0.0)
    lift = np.where((mean_on > 0) & (mean_overall <= 0), n_rows / max(n_selected, 1), lift)
    score = lift * frac_on
    order = np.lexsort((np.arange(len(score)), -mean_on, -score))[:n]
    return RowLatents(order.astype(np.int64), mean_on[order].astype(np.float32),
                      frac_on[order].astype(np.float32), mean_overall[order].astype(np.float32),
                      lift[order].astype(np.float32))


@torch.inference_mode()
def latents_on_rows(ctx: JobContext, store_path: Path, hook: str, sae_path: Path,
                    rows: np.ndarray, n: int = 50, stats_id: str | None = None,
                    batch_size: int = 8192) -> RowLatents:
    """Job: the ``n`` latents most characteristic of ``rows`` (unique store rows): most
    active there relative to their mean over all rows (see ``rank_latents``). The overall
    mean comes from the feature statistics ``stats_id`` when given, else from a full pass;
    the sums over the rows come from the codes those statistics kept, when they hold them
    (then no row is encoded, and the store needs no activation rows)."""
    sae = cached_sae(sae_path, ctx.device)
    with ActivationStore.open(store_path) as store:
        rows = _check_rows(store, rows)
        if rows.size > 1 and not bool((rows[1:] > rows[:-1]).all()):
            rows = np.unique(rows)
        if not rows.size:
            empty = np.zeros(0, np.float32)
            return RowLatents(np.zeros(0, np.int64), empty, empty, empty, empty)
        codes = stored_codes(store, stats_id, sae, hook) if stats_id else None
        if codes is not None:
            total, fired = selection_code_sums(codes, rows, sae.d_sae)
            overall = codes.mean
        else:
            _check_encodable(store, hook, sae, stats_id)
            total, fired = _code_sums(ctx, store, hook, sae, rows, batch_size, "codes on the selection")
            overall = _overall_mean(ctx, store, hook, sae, stats_id, batch_size)
        n_rows = store.n_rows
    return rank_latents(total / len(rows), fired / len(rows), overall, len(rows), n_rows,
                        min(n, sae.d_sae))


# ---------------------------------------------------------------- shaded contexts
def shaded_contexts(ctx: JobContext, store_path: Path, hook: str, sae_path: Path | None,
                    latent: int, top_rows: np.ndarray, top_values: np.ndarray, n: int = 12,
                    before: int = 12, after: int = 6,
                    stats_id: str | None = None) -> tuple[int, list[Context]]:
    """Job: ``latent`` and its first ``n`` top rows (``top_rows`` -1 = none) in context, with
    its activation on every context token (store.context keeps consecutive rows of one
    document, so the rows of a context are row - at + 0..len-1), read from the codes the
    statistics ``stats_id`` kept when they match the SAE, else encoded (``latent_values``).
    Without an SAE, one that does not fit the store, or neither codes nor rows to encode,
    the values are None (the contexts still come from the store's tokens)."""
    found = []
    with ActivationStore.open(store_path) as store:
        for row, value in zip(top_rows[:n], top_values[:n], strict=True):
            if row >= 0:
                tokens, at = store.context(int(row), before, after)
                found.append((int(row), tokens, at, float(value)))
    values: list[np.ndarray | None] = [None] * len(found)
    if sae_path is not None and found:
        rows = np.concatenate([np.arange(r - at, r - at + len(t)) for r, t, at, _ in found])
        try:
            flat = latent_values(ctx, store_path, hook, sae_path, [latent], rows=rows,
                                 stats_id=stats_id)[:, 0]
            values = np.split(flat, np.cumsum([len(t) for _, t, _, _ in found])[:-1])
        except LatentLabError:
            pass
    return latent, [Context(r, t, at, v, val) for (r, t, at, val), v in zip(found, values, strict=True)]
