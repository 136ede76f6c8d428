"""Per-latent statistics of an SAE over a store, in one streaming pass that never holds all
codes (the accumulators live in ``engine.features.running``): firing density, mean and max
activation, a histogram of log10 activations and quantiles read from it, the top activating
rows, a few example rows from each quantile interval; then, from the weights alone
(``engine.features.weights``), each latent's logit effects (causal LMs) and its nearest
latents by decoder cosine. When the store has label fields, the pass also counts, per
latent and class of the first field, the firing rows of that class (``label_association``
reads them). ``engine.features.one_pass`` feeds the same accumulators straight from the
model instead.

Where they live: a file of their own beside the store, never inside it (the store is only
read), keyed by the store's content hash and the SAE's weight fingerprint:
``<store stem>.features/<sae id>-<SAE fingerprint[:8]>-<store key[:8]>.h5`` (``stats_path``),
written to a temporary file and renamed (``engine.store.derived``). ``find_stats`` is the one
way to locate them for (store, sae id[, SAE weights]); it falls back to the
``/features/<sae id>/`` group that older versions wrote into the store.

Shapes: codes (batch, d_sae); W_dec (d_sae, d_in); W_U (vocab, d_model)."""

from __future__ import annotations

import glob
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch

from engine.errors import LatentLabError, StoreError
from engine.features.running import (  # noqa: F401  (HIST_*, hist_quantiles: part of this API)
    HIST_BINS,
    HIST_RANGE,
    MAX_LABEL_CELLS,
    RunningStats,
    hist_quantiles,
    interval_examples,
)
from engine.features.weights import weight_tables
from engine.jobs import JobContext
from engine.models.base import ModelAdapter, weight_fingerprint
from engine.provenance import known_record, provenance_record, record_json
from engine.sae.base import SparseAutoencoder
from engine.store.activations import ActivationStore
from engine.store.derived import derived_attrs, open_derived, store_key, write_derived

STATS_FORMAT = 1  # root attribute ``stats_format`` of a statistics file
STATS_FOLDER_SUFFIX = ".features"  # <store stem>.features/ beside the store
CODE_ARRAYS = ("code_ptr", "code_latent", "code_value")  # read in slices, see engine.features.encode


class FeatureStatsResult(NamedTuple):
    path: str  # the store
    sae_id: str
    stats_path: str  # the file the statistics were written to (see ``stats_path``)
    n_rows: int
    d_sae: int
    seconds: float  # the whole job
    pass_seconds: float = 0.0  # the streaming pass alone (no weight-only work, no writing)
    cached_tables: tuple[str, ...] = ()  # weight-only tables read from the cache (feature_weights)


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
    interval_rows: np.ndarray | None = None  # (d_sae, intervals, n) int64 rows per quantile interval; -1 none
    interval_values: np.ndarray | None = None  # (d_sae, intervals, n) their activations
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


# ---------------------------------------------------------------- the job
def check_stats_id(sae_id: str) -> str:
    """``sae_id`` when it can name a statistics file (raises otherwise)."""
    if not sae_id or "/" in sae_id or sae_id in (".", ".."):
        raise LatentLabError(f"SAE id {sae_id!r} must be a non-empty name without '/'")
    return sae_id


# ---------------------------------------------------------------- where statistics live
def stats_folder(store_path: str | os.PathLike) -> Path:
    """The folder beside a store that holds the statistics computed over it:
    ``<store stem>.features``."""
    path = Path(store_path)
    return path.with_name(path.stem + STATS_FOLDER_SUFFIX)


def stats_path(store: ActivationStore, sae_id: str, sae_fingerprint: str) -> Path:
    """The file the statistics ``sae_id`` of the SAE with weights ``sae_fingerprint``
    (``weight_fingerprint(sae)``) over ``store`` as it is now are written to:
    ``<store stem>.features/<sae id>-<fingerprint[:8]>-<store key[:8]>.h5``."""
    return stats_folder(store.path) / f"{check_stats_id(sae_id)}-{sae_fingerprint[:8]}-{store_key(store)[:8]}.h5"


class StatsLocation(NamedTuple):
    """Where ``find_stats`` found statistics."""

    path: Path  # a statistics file, or the store itself for statistics older versions wrote
    group: str  # "/" in a statistics file; "features/<sae id>" inside an older store

    @property
    def legacy(self) -> bool:
        return self.group != "/"


def _stats_files(store: ActivationStore, sae_id: str) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every readable statistics file named for ``sae_id`` beside the store, with its attributes."""
    for path in stats_folder(store.path).glob(f"{glob.escape(sae_id)}-*.h5"):
        attrs = derived_attrs(path)
        if attrs is not None and attrs.get("sae_id") == sae_id and "stats_format" in attrs:
            yield path, attrs


def find_stats(store: ActivationStore, sae_id: str, sae_fingerprint: str | None = None,
               prefer: str | os.PathLike | None = None) -> StatsLocation | None:
    """The statistics ``sae_id`` over ``store`` as it is now (its content hash must match),
    of the SAE with weights ``sae_fingerprint`` when given, else ``prefer`` (a file a
    workspace recorded) when it is one of them, else the newest written for that id;
    failing that, the ``/features/<sae_id>`` group an older version wrote into the store
    (of those weights, when given). None when there are none."""
    check_stats_id(sae_id)
    key, best = store_key(store), None
    preferred = None if prefer is None else Path(prefer).resolve()
    for path, attrs in _stats_files(store, sae_id):
        if attrs.get("store_key") != key:
            continue
        if sae_fingerprint is not None and attrs.get("sae_fingerprint") != sae_fingerprint:
            continue
        if preferred is not None and path.resolve() == preferred:
            return StatsLocation(path, "/")
        mtime = path.stat().st_mtime_ns
        if best is None or mtime > best[0]:
            best = (mtime, path)
    if best is not None:
        return StatsLocation(best[1], "/")
    legacy = f"features/{sae_id}"
    try:
        attrs = store.group(legacy).attrs
    except StoreError:
        return None
    if sae_fingerprint is not None and attrs.get("sae_fingerprint") != sae_fingerprint:
        return None
    return StatsLocation(store.path, legacy)


def _missing(store: ActivationStore, sae_id: str) -> StoreError:
    """The error for statistics ``find_stats`` did not find: stale ones, or none."""
    stale = [attrs for _, attrs in _stats_files(store, sae_id)]
    if stale:
        rows = ", ".join(sorted({str(a.get("n_rows")) for a in stale}))
        return StoreError(f"{store.path}: the feature statistics {sae_id!r} in {stats_folder(store.path)} "
                          f"are of another state of this store ({rows} rows, now {store.n_rows}); "
                          "run feature-stats again")
    return StoreError(f"{store.path}: no statistics named {sae_id!r} (run feature-stats --store "
                      f"{store.path} --sae <SAE folder>)")


@contextmanager
def open_stats(store: ActivationStore, sae_id: str, sae_fingerprint: str | None = None) -> Iterator[h5py.Group]:
    """The HDF5 group holding the statistics ``find_stats`` locates (a statistics file's
    root, or an older store's ``/features/<sae_id>``), open for reading in the block;
    StoreError names the store when there are none."""
    found = find_stats(store, sae_id, sae_fingerprint)
    if found is None:
        raise _missing(store, sae_id)
    if found.legacy:
        yield store.group(found.group)
        return
    with open_derived(found.path) as f:
        yield f


def read_stats(store: ActivationStore, sae_id: str, sae_fingerprint: str | None = None,
               exclude: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays (but those named in ``exclude``) and attributes of the statistics
    ``find_stats`` locates; StoreError when there are none."""
    with open_stats(store, sae_id, sae_fingerprint) as g:
        arrays = {k: v[()] for k, v in g.items() if isinstance(v, h5py.Dataset) and k not in exclude}
        return arrays, dict(g.attrs)


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


def check_sae(sae: SparseAutoencoder, width: int, hook: str, where: str, top_n: int) -> None:
    """Refuse an SAE whose input width is not the hook point's, or a top_n below 1."""
    if sae.d_in != width:
        raise LatentLabError(f"the SAE reads {sae.d_in}-wide rows, but {hook!r} in {where} is "
                             f"{width} wide")
    if top_n < 1:
        raise LatentLabError(f"--top-n must be at least 1, not {top_n}")


def new_running(sae: SparseAutoencoder, top_n: int, n_classes: int = 0,
                count_labels: bool = False) -> RunningStats:
    """Empty accumulators for ``sae`` on its device."""
    return RunningStats(sae.d_sae, top_n, sae.W_dec.device, n_classes, count_labels)


@torch.inference_mode()
def _stream(ctx: JobContext, store: ActivationStore, sae: SparseAutoencoder, hook: str,
            batch_size: int, top_n: int, labels: RowLabels | None = None) -> RunningStats:
    """The one pass: encode each batch in row order and fold it into the accumulators."""
    device = sae.W_dec.device
    run = new_running(sae, top_n, len(labels.classes) if labels else 0)
    total = store.n_rows
    values = None if labels is None else torch.from_numpy(labels.values).to(device)
    ctx.progress(0, total, "feature statistics")
    for block in store.iter_batches(hook, batch_size, shuffle=False):
        ctx.check_cancelled()
        lab = None if values is None else values[run.n:run.n + len(block)]
        run.encode_and_add(sae, torch.from_numpy(block).to(device), lab)
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


def _data_arrays(run: RunningStats, n_quantiles: int, tokens: np.ndarray,
                 labels: RowLabels | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Everything the pass measured, as the arrays and attributes of the group."""
    arrays = run.arrays(np.linspace(0.0, 1.0, n_quantiles),
                        None if labels is None else len(labels.classes)) | run.code_arrays()
    top = arrays["top_rows"]
    arrays["top_tokens"] = np.where(top >= 0, tokens[np.maximum(top, 0)], -1).astype(np.int32)
    if "code_ptr" in arrays:
        arrays.update(interval_examples(arrays, arrays["quantiles"]))
    label_totals, label_attrs = _label_arrays(labels, run.n)
    return arrays | label_totals, label_attrs


class StatsTarget(NamedTuple):
    """Where statistics over a store go, fixed while the store was open: its path, content
    hash (``store_key``) and the file ``stats_path`` names."""

    store: Path
    key: str
    path: Path


def stats_target(store: ActivationStore, sae_id: str, sae: SparseAutoencoder) -> StatsTarget:
    return StatsTarget(Path(store.path), store_key(store), stats_path(store, sae_id, weight_fingerprint(sae)))


def _drop_superseded(target: StatsTarget, sae_id: str, fingerprint: str) -> None:
    """Remove the files of the same SAE id and weights over earlier states of the store
    (fewer rows, an earlier capture into its path): no reader can use them again."""
    folder = target.path.parent
    for path in folder.glob(f"{glob.escape(sae_id)}-{fingerprint[:8]}-*.h5"):
        attrs = derived_attrs(path)
        if (path != target.path and attrs is not None and attrs.get("sae_id") == sae_id
                and attrs.get("sae_fingerprint") == fingerprint and attrs.get("store_key") != target.key):
            path.unlink(missing_ok=True)


def write_feature_stats(ctx: JobContext, target: StatsTarget, run: RunningStats, sae: SparseAutoencoder,
                        hook: str, sae_id: str, top_n: int, n_quantiles: int, tokens: np.ndarray,
                        labels: RowLabels | None, adapter: ModelAdapter | None) -> tuple[str, ...]:
    """The end of either pass: add the weight-only statistics (from the cache when it holds
    them, ``weight_tables``) to what ``run`` measured (``tokens`` (n_rows,) are the store's
    /tokens, ``labels`` the counted field) and write them atomically to ``target.path``, a
    file of their own beside the store (which is not written). Returns the names of the
    tables read from the cache."""
    arrays, label_attrs = _data_arrays(run, n_quantiles, tokens, labels)
    fingerprint = weight_fingerprint(sae)
    if hook.endswith("hook_z"):  # not in the residual basis: no logit effects
        adapter = None
    tables = weight_tables(sae, adapter, ctx, sae_fingerprint=fingerprint)
    arrays.update(tables.arrays)
    ctx.check_cancelled()
    cfg = {"architecture": type(sae).architecture, **sae.cfg.to_dict()}
    attrs = {"stats_format": STATS_FORMAT, "hook": hook, "n_rows": run.n, "top_n": top_n,
             "sae_id": sae_id, "sae_fingerprint": fingerprint, "store_key": target.key,
             "store": target.store.name, "sae_cfg": json.dumps(cfg, default=str),
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **label_attrs}
    record = provenance_record("statistics", inputs=[("store", target.store)], params={
        "hook": hook, "sae_id": sae_id, "n_rows": run.n, "top_n": top_n, "n_quantiles": n_quantiles,
        "logit_model": None if adapter is None else adapter.model_id})
    record["sae"] = {"id": sae_id, "sha256": None, "weights": fingerprint}  # the weights, not a folder, were given
    attrs["provenance"] = record_json(record)
    write_derived(target.path, arrays, attrs)
    _drop_superseded(target, sae_id, fingerprint)
    return tables.cached


def feature_stats(ctx: JobContext, store_path: str | os.PathLike, sae: SparseAutoencoder,
                  hook: str, sae_id: str, batch_size: int = 4096, top_n: int = 32,
                  n_quantiles: int = 11, adapter: ModelAdapter | None = None) -> FeatureStatsResult:
    """Job: per-latent statistics of ``sae`` over every row of ``hook`` in the store, written
    to their own file beside it (``stats_path``; the store is only read), replacing the
    earlier statistics of the same id and weights; ``find_stats(store, sae_id)`` finds them.
    Logit effects are computed when ``adapter`` is a causal LM (see ``logit_effects``);
    decoder neighbours and logit effects are read from the cache of weight-only tables when
    it holds them (``feature_weights.weight_tables``). Nothing is written if the job is cancelled. The SAE is moved to ``ctx.device``."""
    t0 = time.perf_counter()
    path = Path(store_path)
    check_stats_id(sae_id)
    sae = sae.to(ctx.device).eval()
    with ActivationStore.open(path) as store:
        check_sae(sae, store.dim(hook), hook, path.name, top_n)
        labels = row_labels(store, sae.d_sae)
        run = _stream(ctx, store, sae, hook, batch_size, top_n, labels)
        tokens = store.index("tokens")
        target = stats_target(store, sae_id, sae)
    pass_seconds = time.perf_counter() - t0
    cached = write_feature_stats(ctx, target, run, sae, hook, sae_id, top_n, n_quantiles, tokens,
                                 labels, adapter)
    return FeatureStatsResult(str(path), sae_id, str(target.path), run.n, sae.d_sae,
                              time.perf_counter() - t0, pass_seconds, cached)


def logit_model(store_path: str | os.PathLike, model: str | None = None) -> tuple[ModelAdapter | None, str | None]:
    """The model whose unembedding gives the logit effects of statistics over a store:
    ``model``, else the one the store was captured from; (None, a note saying why) when it
    does not load, since statistics without logit effects are still worth having."""
    from engine.errors import ModelError
    from engine.models.registry import cached_model
    if model is None:
        with ActivationStore.open(store_path) as store:
            model = store.meta.model_id
    try:
        return cached_model(model), None
    except ModelError as exc:
        return None, f"note: no logit effects ({exc})"



def sae_feature_stats(ctx: JobContext, store: str | os.PathLike, sae: str | os.PathLike, hook: str,
                      sae_id: str, model: str | None = None, logits: bool = True,
                      batch_size: int = 4096, top_n: int = 32) -> FeatureStatsResult:
    """Job: the statistics of the SAE folder ``sae`` over every stored row, with logit effects
    from ``model`` (default: the store's) when it loads and ``logits`` is set; a note that
    they are missing goes out as a partial. The one path the CLI, the dialog and the demo use."""
    from engine.sae.io import load_sae
    adapter = None
    if logits:
        adapter, note = logit_model(store, model)
        if note:
            ctx.partial(note)
    return feature_stats(ctx, store, load_sae(sae), hook, sae_id, batch_size=batch_size, top_n=top_n,
                         adapter=adapter)

# ---------------------------------------------------------------- reading
def stats_provenance(store: ActivationStore, sae_id: str) -> dict[str, Any]:
    """Where the statistics ``sae_id`` over ``store`` came from (engine.provenance); those
    written before records were kept get one of what their attributes say."""
    found = find_stats(store, sae_id)
    if found is None:
        raise _missing(store, sae_id)
    attrs = derived_attrs(found.path) if found.group == "/" else dict(store.group(found.group).attrs)
    attrs = attrs or {}
    raw = attrs.get("provenance")
    return known_record("statistics", None if raw is None else json.loads(raw),
                        sae={"id": sae_id, "sha256": None, "weights": attrs.get("sae_fingerprint")},
                        params={"hook": attrs.get("hook"), "n_rows": attrs.get("n_rows"), "top_n": attrs.get("top_n")},
                        created=attrs.get("created"))


def load_feature_stats(store: ActivationStore, sae_id: str, sae_fingerprint: str | None = None) -> FeatureStats:
    """The statistics ``feature_stats`` wrote for ``sae_id`` over the store as it is now (of
    the SAE weights ``sae_fingerprint`` when given; see ``find_stats``), without the codes;
    StoreError when there are none."""
    arrays, attrs = read_stats(store, sae_id, sae_fingerprint, exclude=CODE_ARRAYS)
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


def _token_text(vocab: Any, token_id: int, width: int = 16) -> str:
    """A token as a short visible string (whitespace shown), or #id without a vocabulary."""
    if vocab is None:
        return f"#{int(token_id)}"
    text = vocab.visible(vocab.token(int(token_id))).strip() or f"#{int(token_id)}"
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def auto_label(stats: FeatureStats, vocab: Any, latent: int, n: int = 3) -> str:
    """A short name for ``latent``: its top promoted tokens when the stats have logit
    effects, else the most frequent tokens among its top activating rows, else its best
    label class, else its density; "dead" when it never fires. ``vocab`` is an
    engine.models.tokens.Vocab or None."""
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
        with open_stats(store, sae_id) as g:
            density = np.asarray(g["density"][()], np.float64)
    except (LatentLabError, KeyError):
        return None
    live = (density > 0) & (density < max_density)
    if not live.any():
        live = density > 0
    return int(np.argmax(np.where(live, density, -1.0))) if live.any() else None
