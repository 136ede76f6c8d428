"""Similarity over activation stores: exact linear CKA streamed in one pass (memory
O(d^2), any n), the layer x layer matrix, and the ``compare`` job on two
"STORE.h5[:HOOK]" specs with any measures of ``engine.geometry.measures.MEASURES``.

Two stores compared must be row-aligned: the same number of rows and, row for row, the
same /tokens and /sample (captured from the same source with the same settings). A store
compared with itself is opened and read once."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from engine.errors import LatentLabError, StoreError
from engine.geometry.measures import (
    GRAM_MAX_ROWS,
    MEASURES,
    Array,
    CrossGram,
    GeometryNote,
    KernelCurve,
    check_measures,
    kernel_analysis,
    pair,
    sample_ids,
)
from engine.jobs import JobContext
from engine.provenance import provenance_record
from engine.store.activations import ActivationStore

BLOCK_ROWS = 4096
Group = tuple[ActivationStore, str]  # one hook point of one store: a column group


class LayerMatrix(NamedTuple):
    """Similarity of every hook of store A (rows) with every hook of store B (columns)."""

    values: np.ndarray  # (len(hooks_a), len(hooks_b)) float64
    hooks_a: list[str]
    hooks_b: list[str]
    measure: str
    n_rows: int  # rows the values were computed on
    provenance: dict[str, Any] | None = None  # engine.provenance record (layer_matrix fills it)


class Comparison(NamedTuple):
    """Several measures between two hook points; ``notes`` say what was subsampled."""

    values: dict[str, float]
    n_rows: int  # rows of the (aligned) stores, or of the ``rows`` asked for
    a: str
    b: str
    notes: list[str]
    provenance: dict[str, Any] | None = None  # engine.provenance record (compare fills it)


# ------------------------------------------------------------------ streamed CKA
def streamed_cka(ctx: JobContext, batches: Iterable[tuple[Array, Array]]) -> float:
    """Exact linear CKA over row-aligned blocks (x (b, d1), y (b, d2)) in one pass:
    float64 sums of X^T X, Y^T Y, X^T Y and column sums, centred at the end."""
    cg: CrossGram | None = None
    widths: tuple[int, int] = (0, 0)
    for x, y in batches:
        ctx.check_cancelled()
        tx, ty = pair(x, y, min_rows=1, finite=False)  # NaN shows in the sums, checked at the end
        if cg is None:
            widths = (tx.shape[1], ty.shape[1])
            cg = CrossGram(widths, [(0, 1)], ctx.device)
        elif (tx.shape[1], ty.shape[1]) != widths:
            raise LatentLabError(f"block widths changed from {widths} to {(tx.shape[1], ty.shape[1])}")
        cg.add([tx, ty])
        ctx.progress(cg.n, 0, "linear CKA")
    if cg is None or cg.n < 2:
        raise LatentLabError("streamed CKA needs at least 2 rows")
    for g, name in enumerate("xy"):
        if not cg.finite(g):
            raise LatentLabError(f"{name} holds NaN or inf values")
    return cg.cka(0, 1)


def store_cka(ctx: JobContext, store_a: str | Path, hook_a: str, store_b: str | Path, hook_b: str,
              max_rows: int | None = None, block_rows: int = BLOCK_ROWS) -> float:
    """Exact linear CKA between one hook of each of two row-aligned stores, streamed."""
    return float(layer_matrix(ctx, Path(store_a), [hook_a], Path(store_b), [hook_b],
                              max_rows=max_rows, block_rows=block_rows).values[0, 0])


# ------------------------------------------------------------------ stores
def check_aligned(sa: ActivationStore, sb: ActivationStore) -> None:
    """Raise LatentLabError naming both files unless their rows correspond one to one."""
    if sa.n_rows != sb.n_rows:
        raise LatentLabError(f"{sa.path} ({sa.n_rows:,} rows) and {sb.path} ({sb.n_rows:,} rows) "
                             "are not row-aligned: capture both from the same source and settings")
    for name in ("tokens", "sample"):
        try:
            ia, ib = sa.index(name), sb.index(name)
        except StoreError:
            continue
        if not np.array_equal(ia, ib):
            row = int(np.flatnonzero(ia != ib)[0])
            raise LatentLabError(f"{sa.path} and {sb.path} are not row-aligned: /{name} differs "
                                 f"first at row {row} ({ia[row]} vs {ib[row]})")


@contextmanager
def open_aligned(path_a: str | Path, path_b: str | Path) -> Iterator[tuple[ActivationStore, ActivationStore]]:
    """Both stores open for reading, checked row-aligned; the same file is opened once."""
    same = Path(path_a).resolve() == Path(path_b).resolve()
    with ActivationStore.open(path_a) as sa:
        if same:
            yield sa, sa
            return
        with ActivationStore.open(path_b) as sb:
            check_aligned(sa, sb)
            yield sa, sb


def _groups(sa: ActivationStore, hooks_a: Sequence[str], sb: ActivationStore,
            hooks_b: Sequence[str]) -> tuple[list[Group], list[int], list[int]]:
    """Distinct (store, hook) column groups and each requested hook's group index."""
    groups: list[Group] = []
    where: dict[tuple[int, str], int] = {}

    def index(store: ActivationStore, hook: str) -> int:
        store.dim(hook)  # StoreError listing the store's hooks when unknown
        key = (id(store), hook)
        if key not in where:
            where[key] = len(groups)
            groups.append((store, hook))
        return where[key]

    ga = [index(sa, h) for h in hooks_a]
    gb = [index(sb, h) for h in hooks_b]
    return groups, ga, gb


def _blocks(n: int, ids: np.ndarray | None, block_rows: int) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """Store row ranges [lo, hi) to read and which of their rows to keep (None: all)."""
    for lo in range(0, n, block_rows):
        hi = min(n, lo + block_rows)
        if ids is None:
            yield lo, hi, None
            continue
        sel = ids[np.searchsorted(ids, lo):np.searchsorted(ids, hi)] - lo
        if sel.size:
            yield lo, hi, sel


def _read(group: Group, lo: int, hi: int, sel: np.ndarray | None) -> np.ndarray:
    rows = group[0].acts(group[1], lo, hi)  # (hi - lo, d) as stored
    return rows if sel is None else rows[sel]


def _linear_matrix(ctx: JobContext, groups: list[Group], ga: list[int], gb: list[int],
                   ids: np.ndarray | None, block_rows: int) -> np.ndarray:
    """Linear CKA for every (ga[i], gb[j]) in one pass: each block of every group is read
    once, the groups side by side, and the needed blocks of its cross-product accumulated."""
    n = groups[0][0].n_rows
    total = n if ids is None else len(ids)
    cg = CrossGram([g[0].dim(g[1]) for g in groups], [(p, q) for p in ga for q in gb], ctx.device)
    for lo, hi, sel in _blocks(n, ids, block_rows):
        ctx.check_cancelled()
        cg.add([torch.from_numpy(_read(g, lo, hi, sel)) for g in groups])
        ctx.progress(cg.n, total, "linear CKA")
    if cg.n < 2:
        raise LatentLabError(f"linear CKA needs at least 2 rows, the stores hold {cg.n}")
    _check_finite(cg, groups)
    return np.array([[cg.cka(p, q) for q in gb] for p in ga], dtype=np.float64)


def _check_finite(cg: CrossGram, groups: list[Group]) -> None:
    """Name the store and hook whose rows hold NaN or inf."""
    for i, (store, hook) in enumerate(groups):
        if not cg.finite(i):
            raise LatentLabError(f"{store.path}: hook point {hook!r} holds NaN or inf rows")


def _load(ctx: JobContext, groups: list[Group], ids: np.ndarray | None,
          block_rows: int) -> list[torch.Tensor]:
    """Rows ``ids`` (or all) of every group as float32 tensors, reading each block once."""
    n = groups[0][0].n_rows
    total = n if ids is None else len(ids)
    out = [np.empty((total, store.dim(hook)), np.float32) for store, hook in groups]
    at = 0
    for lo, hi, sel in _blocks(n, ids, block_rows):
        ctx.check_cancelled()
        for g, arr in zip(groups, out, strict=True):
            rows = _read(g, lo, hi, sel)
            arr[at:at + len(rows)] = rows
        at += hi - lo if sel is None else len(sel)
        ctx.progress(at, total, "reading rows")
    return [torch.from_numpy(a).to(ctx.device) for a in out]


def layer_matrix(ctx: JobContext, store_a: Path, hooks_a: list[str], store_b: Path, hooks_b: list[str],
                 measure: str = "linear_cka", max_rows: int | None = None,
                 block_rows: int = BLOCK_ROWS, rows: np.ndarray | None = None) -> LayerMatrix:
    """``measure`` between every hook of ``store_a`` and every hook of ``store_b``.

    linear_cka: one streamed pass over all rows (or ``max_rows`` drawn with seed 0);
    other measures: each hook's rows loaded once (``max_rows``, default 10,000, drawn with
    seed 0), then every pair computed. ``rows`` (store row ids, e.g. a selection) restricts
    either to those rows."""
    check_measures([measure])
    if not hooks_a or not hooks_b:
        raise LatentLabError("layer_matrix needs at least one hook point on each side")
    with open_aligned(store_a, store_b) as (sa, sb):
        groups, ga, gb = _groups(sa, hooks_a, sb, hooks_b)
        cap = max_rows if measure == "linear_cka" or max_rows is not None else GRAM_MAX_ROWS
        ids = sample_ids(sa.n_rows, cap, seed=0, rows=rows)
        used = sa.n_rows if ids is None else len(ids)
        if measure == "linear_cka":
            values = _linear_matrix(ctx, groups, ga, gb, ids, block_rows)
        else:
            values = _pairwise(ctx, _load(ctx, groups, ids, block_rows), ga, gb, measure)
    record = comparison_record([store_a, store_b], sa.meta, sb.meta, dict(
        hooks_a=list(hooks_a), hooks_b=list(hooks_b), measure=measure, max_rows=max_rows,
        rows=None if rows is None else len(rows)))
    return LayerMatrix(values, list(hooks_a), list(hooks_b), measure, used, record)


def _pairwise(ctx: JobContext, rows: list[torch.Tensor], ga: list[int], gb: list[int],
              measure: str) -> np.ndarray:
    values = np.empty((len(ga), len(gb)), np.float64)
    f = MEASURES[measure]
    for i, p in enumerate(ga):
        for j, q in enumerate(gb):
            ctx.check_cancelled()
            values[i, j] = f(rows[p], rows[q])
            ctx.progress(i * len(gb) + j + 1, values.size, measure)
    return values


def store_kernel_analysis(ctx: JobContext, store: str | Path, hook: str, label: str,
                          components: list[int] | None = None, max_rows: int = 2000,
                          seed: int = 0) -> KernelCurve:
    """Kernel analysis of one hook point against a per-row label of the store (e.g. digit)."""
    with ActivationStore.open(store) as s:
        groups, ga, _ = _groups(s, [hook], s, [])
        ids = sample_ids(s.n_rows, max_rows, seed)
        labels = s.index(label)
        x = _load(ctx, groups, ids, BLOCK_ROWS)[ga[0]]
    return kernel_analysis(x, labels if ids is None else labels[ids], components, max_rows=x.shape[0])


class KernelCurves(NamedTuple):
    """Kernel analysis of several hook points of one store against one label."""

    curves: dict[str, KernelCurve]  # hook -> error per number of kernel components
    label: str
    n_rows: int  # labelled rows the curves were computed on
    n_classes: int
    chance_error: float  # error of always answering the most frequent class


def kernel_curves(ctx: JobContext, store: str | Path, hooks: list[str], label: str,
                  components: list[int] | None = None, max_rows: int = 2000, seed: int = 0,
                  rows: np.ndarray | None = None) -> KernelCurves:
    """Job: kernel analysis (``kernel_analysis``) of each hook point against the store's
    label ``label`` on the same ``max_rows`` labelled rows (of ``rows`` when given), each
    hook's rows read once; rows labelled -1 are left out."""
    if not hooks:
        raise LatentLabError("kernel analysis needs at least one hook point")
    with ActivationStore.open(store) as s:
        if label not in s.label_names:
            raise LatentLabError(f"{s.path} has no label {label!r}; its labels: "
                                 f"{', '.join(s.label_names) or 'none'}")
        labels = s.index(label)
        candidates = np.flatnonzero(labels >= 0) if rows is None else \
            np.asarray(sample_ids(s.n_rows, None, seed, rows))
        candidates = candidates[labels[candidates] >= 0]
        if len(candidates) < 3:
            raise LatentLabError(f"kernel analysis needs at least 3 labelled rows, {s.path.name} "
                                 f"offers {len(candidates)}")
        ids = sample_ids(s.n_rows, max_rows, seed, candidates)
        groups, ga, _ = _groups(s, hooks, s, [])
        loaded = _load(ctx, groups, ids, BLOCK_ROWS)
    y = labels[ids]
    n = len(ids)
    comps = sorted({c for c in (components or _default_components(n)) if 1 <= c < n})
    curves = {}
    for i, hook in enumerate(hooks):
        ctx.check_cancelled()
        ctx.progress(i, len(hooks), f"kernel analysis of {hook}")
        curves[hook] = kernel_analysis(loaded[ga[i]], y, comps, max_rows=n)
    counts = np.unique(y, return_counts=True)[1]
    ctx.progress(len(hooks), len(hooks), "done")
    return KernelCurves(curves, label, n, len(counts), float(1 - counts.max() / n))


def _default_components(n: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, ... (about 4 a doubling) up to 256 components, below ``n``."""
    grid = np.unique(np.round(np.geomspace(1, 256, 33)).astype(int))
    return [int(c) for c in grid if c < n]


# ------------------------------------------------------------------ compare job
def parse_spec(spec: str) -> tuple[Path, str | None]:
    """"STORE.h5:HOOK" -> (path, hook); a bare existing path -> (path, None)."""
    path = Path(spec)
    if path.exists() or ":" not in spec:
        return path, None
    head, hook = spec.rsplit(":", 1)
    return Path(head), hook or None


def _hook_of(store: ActivationStore, hook: str | None) -> str:
    """The named hook (checked) or the store's only one."""
    if hook is not None:
        store.dim(hook)
        return hook
    if len(store.hooks) != 1:
        raise LatentLabError(f"{store.path} holds {len(store.hooks)} hook points; name one as "
                             f"{store.path}:HOOK, one of {list(store.hooks)}")
    return store.hooks[0]


def comparison_record(paths: list[Any], meta_a: Any, meta_b: Any, params: dict[str, Any],
                      seed: int = 0) -> dict[str, Any]:
    """A comparison's provenance: both stores (content hashes), their models, the settings."""
    same = Path(paths[0]).resolve() == Path(paths[1]).resolve()
    inputs = [("store A", paths[0])] if same else [("store A", paths[0]), ("store B", paths[1])]
    return provenance_record("comparison", inputs=inputs, model_id=meta_a.model_id, model_hash=meta_a.model_hash,
                             params={**params, "model_b": {"id": meta_b.model_id, "sha256": meta_b.model_hash}},
                             seed=seed)


def compare(ctx: JobContext, a: str, b: str, measures: list[str], max_rows: int | None = None,
            seed: int = 0, rows: np.ndarray | None = None) -> Comparison:
    """``measures`` between hook points ``a`` and ``b`` ("STORE.h5[:HOOK]") of row-aligned
    stores. linear_cka: exact and streamed over all rows (or ``max_rows``); the others on
    ``max_rows`` (default 10,000) rows drawn with ``seed``; ``notes`` record subsampling.
    ``rows`` (store row ids, e.g. a selection) restricts every measure to those rows."""
    names = check_measures(measures)
    if not names:
        raise LatentLabError(f"no similarity measure given; valid: {', '.join(MEASURES)}")
    (path_a, hook_a), (path_b, hook_b) = parse_spec(a), parse_spec(b)
    values: dict[str, float] = {}
    notes: list[str] = []
    with open_aligned(path_a, path_b) as (sa, sb):
        groups, ga, gb = _groups(sa, [_hook_of(sa, hook_a)], sb, [_hook_of(sb, hook_b)])
        n = sa.n_rows if rows is None else len(np.unique(rows))
        if "linear_cka" in names:
            ids = sample_ids(sa.n_rows, max_rows, seed, rows)
            _note_sample(notes, ["linear_cka"], ids, n, seed)
            values["linear_cka"] = float(_linear_matrix(ctx, groups, ga, gb, ids, BLOCK_ROWS)[0, 0])
        others = [m for m in names if m != "linear_cka"]
        if others:
            ids = sample_ids(sa.n_rows, GRAM_MAX_ROWS if max_rows is None else max_rows, seed, rows)
            _note_sample(notes, others, ids, n, seed)
            rows = _load(ctx, groups, ids, BLOCK_ROWS)
            values.update(_run_measures(ctx, others, rows[ga[0]], rows[gb[0]], notes))
    record = comparison_record([path_a, path_b], sa.meta, sb.meta, dict(
        a=a, b=b, measures=names, max_rows=max_rows, rows=None if rows is None else n), seed)
    return Comparison({m: values[m] for m in names}, n, a, b, notes, record)


def _note_sample(notes: list[str], names: list[str], ids: np.ndarray | None, n: int, seed: int) -> None:
    if ids is not None and len(ids) < n:
        notes.append(f"{', '.join(names)}: {len(ids):,} of {n:,} rows drawn at random (seed {seed})")


def _run_measures(ctx: JobContext, names: list[str], x: torch.Tensor, y: torch.Tensor,
                  notes: list[str]) -> dict[str, float]:
    """Each measure on (x, y); the GeometryNote warnings they raise go into ``notes``."""
    out = {}
    for i, name in enumerate(names):
        ctx.check_cancelled()
        ctx.progress(i, len(names), name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GeometryNote)
            out[name] = float(MEASURES[name](x, y))
        notes.extend(str(w.message) for w in caught if issubclass(w.category, GeometryNote))
    ctx.progress(len(names), len(names), "done")
    return out
