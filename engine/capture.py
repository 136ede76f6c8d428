"""Capture: run a model over a source and write activations at chosen hook points into an
HDF5 store, in one pass that stops at the deepest hook point, resumable after a kill."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from engine.errors import LatentLabError, SourceError, StoreError
from engine.hooks import check_hooks, checking
from engine.jobs import JobContext
from engine.models.base import ModelAdapter
from engine.models.registry import cached_model
from engine.sources import Source, load_source
from engine.store.activations import COSINE_ATTR, ActivationStore, StoreMeta
from engine.store.shards import join_shards


class CaptureResult(NamedTuple):
    path: str
    rows: int  # committed rows in the store
    added: int  # rows this run wrote
    seconds: float
    rows_per_s: float = 0.0  # this run's rows over the time its forward passes and writes took
    row_unit: str = "tokens"  # what a row is: "tokens", or "examples" (images, pooled encoders)
    stored_cosine: dict[str, dict[str, float]] | None = None  # float32 model into a float16 store:
    # per hook, mean/min/rows of the cosine of the stored rows to the float32 ones (first batch)


class CaptureRun(NamedTuple):
    """How a run of ``run_capture`` went: its pace and, for a float32 model writing a
    lower-precision store, what the rounding cost on its first batch."""

    rows: int
    seconds: float
    row_unit: str
    stored_cosine: dict[str, dict[str, float]] | None


@dataclass
class Unit:
    """One forward-pass input (a token window or an image) and the rows it contributes:
    kept positions ``lo:hi`` of its window (a resumed or capped window stores a slice)."""

    sample: int
    start: int  # position of the window's first token in its document
    item: object  # token ids or an image
    lo: int
    hi: int
    labels: dict[str, int]

    @property
    def rows(self) -> int:
        return self.hi - self.lo


def iter_units(model: ModelAdapter, source: Source, ctx_len: int, rank: int = 0,
               world: int = 1) -> Iterator[tuple[Unit, str | None, np.ndarray | None]]:
    """Every unit of this rank's share of the source, in a fixed order, with the document
    text or image of the unit's sample when the unit is the sample's first."""
    span = ctx_len - model.n_special
    if source.kind == "text" and span < 1:
        raise LatentLabError(f"--ctx-len {ctx_len} leaves no room beside {model.n_special} special tokens")
    for sample, ex in enumerate(source):
        if sample % world != rank:
            continue
        if source.kind == "image":
            yield Unit(sample, 0, ex.image, 0, 1, ex.labels), None, ex.image
            continue
        ids = model.tokenize(ex.text)
        for k, start in enumerate(range(0, len(ids), span)):
            window = ids[start:start + span]
            n = 1 if model.pooling == "mean" else len(window)
            yield Unit(sample, start, window, 0, n, ex.labels), ex.text if k == 0 else None, None


def plan_units(units: Iterator, skip: int, quota: int | None) -> Iterator:
    """Drop the first ``skip`` rows (already committed) and stop after ``quota`` rows."""
    seen = 0
    for unit, text, image in units:
        if quota is not None and seen >= quota:
            return
        begin, end = seen, seen + unit.rows
        seen = end
        if end <= skip:
            continue
        unit.lo += max(0, skip - begin)
        if quota is not None and end > quota:
            unit.hi -= end - quota
        yield unit, text, image


def _rows_of(model: ModelAdapter, batch, units: Sequence[Unit], hooks: Sequence[str]):
    """Forward a batch; return stored rows per hook with tokens, sample and position."""
    if batch.keep is not None and model.pooling != "mean":
        keep = batch.keep.clone()
        for i, u in enumerate(units):  # keep only positions lo:hi of each window
            cols = torch.nonzero(keep[i]).flatten()
            keep[i] = False
            keep[i, cols[u.lo:u.hi]] = True
        batch.keep = keep
    acts = model.forward(batch, hooks)
    if batch.keep is None or model.pooling == "mean":
        tokens = np.full(len(units), -1, np.int32)
        sample = np.array([u.sample for u in units], np.int32)
        position = np.array([u.start for u in units], np.int32)
        return acts, tokens, sample, position, [u.labels for u in units]
    tokens = np.concatenate([np.asarray(u.item[u.lo:u.hi], np.int32) for u in units])
    sample = np.concatenate([np.full(u.rows, u.sample, np.int32) for u in units])
    position = np.concatenate([np.arange(u.start + u.lo, u.start + u.hi, dtype=np.int32) for u in units])
    labels = [lab for u in units for lab in [u.labels] * u.rows]
    return acts, tokens, sample, position, labels


def check_capture_args(max_tokens: int | None, batch_size: int, ctx_len: int) -> None:
    """Refuse counts no capture can run with, naming the option and its value (before any
    model is loaded or file written)."""
    if max_tokens is not None and max_tokens < 1:
        raise LatentLabError(f"--max-tokens {max_tokens}: give a positive number of rows to capture "
                             "(or leave it out for the whole source)")
    if batch_size < 1:
        raise LatentLabError(f"--batch-size {batch_size}: give a positive number of windows per batch")
    if ctx_len < 1:
        raise LatentLabError(f"--ctx-len {ctx_len}: give a positive number of tokens per window")


def _discard_if_empty(out: Path) -> None:
    """Remove the store ``out`` when it holds no committed row (it can be opened and is empty)."""
    try:
        with ActivationStore.open(out) as store:
            empty = store.n_rows == 0
    except StoreError:
        return
    if empty:
        out.unlink(missing_ok=True)


@contextmanager
def no_empty_store(out: Path, source: Source) -> Iterator[None]:
    """Around a run that writes the store ``out``: when the run created it and ends without
    a committed row, normally or by an error or a cancel, remove it, so no empty store is
    left behind; a normal end then raises SourceError (the source gave no rows)."""
    created = not out.exists()
    try:
        yield
    except BaseException:
        if created:
            _discard_if_empty(out)
        raise
    if created and out.exists():
        _discard_if_empty(out)
        if not out.exists():
            raise SourceError(f"source {source.source_id}: gave no rows to capture (no tokens or "
                              f"images), so {out} was not written")


def open_capture_store(out: Path, meta: StoreMeta, source: Source, resume: bool,
                attrs: Mapping[str, object] | None = None) -> ActivationStore:
    """Open ``out`` to append (``resume``, same identity only) or create it with ``attrs``
    as extra root attributes."""
    if out.exists():
        if not resume:
            raise StoreError(f"{out}: already exists; pass --resume to continue it or choose another --out")
        store = ActivationStore.open_append(out)
        why = store.meta.mismatch(meta)
        if why:
            store.close()
            raise StoreError(f"{out}: refusing to append: the store's {why} asked for now")
        return store
    return ActivationStore.create(out, meta, labels=source.label_names, images_shape=source.image_shape,
                                  attrs=attrs)


class CapturePlan(NamedTuple):
    """What a capture runs: the loaded model, the source, the identity of the store it
    writes and the window length actually used."""

    adapter: ModelAdapter
    source: Source
    meta: StoreMeta
    ctx_len: int


def _adapter(model: str | ModelAdapter, model_dtype: str | None) -> ModelAdapter:
    """The model to run: a spec loaded in ``model_dtype`` (default float32), or an adapter
    as it is (``model_dtype``, when given, must be the precision it already runs in)."""
    if isinstance(model, str):
        return cached_model(model, model_dtype or "float32")
    if model_dtype is not None and model_dtype != model.model_dtype:
        raise LatentLabError(f"model {model.model_id} runs in {model.model_dtype}, not the {model_dtype} "
                             f"asked for; load it with load_model(spec, dtype={model_dtype!r})")
    return model


def plan_capture(ctx: JobContext, model: str | ModelAdapter, source: str | Source,
                 hooks: Sequence[str], ctx_len: int = 128, dtype: str = "float16",
                 rank: int = 0, world: int = 1, stored: Sequence[str] | None = None,
                 model_dtype: str | None = None) -> CapturePlan:
    """Load the model onto ``ctx.device`` (in ``model_dtype``, see ``_adapter``) and check
    the hook points and the source; the store's identity names the hook points in
    ``stored`` (default: all of ``hooks``) and the precision the model runs in."""
    ctx.progress(0, 0, "loading model")
    adapter = _adapter(model, model_dtype)
    adapter.to(ctx.device)
    hooks = list(dict.fromkeys(hooks))
    if not hooks:
        raise LatentLabError("no hook points given (--hooks)")
    check_hooks(hooks, adapter.hook_points(), adapter.model_id)
    src = load_source(source) if isinstance(source, str) else source
    if src.kind == "text" and adapter.kind in ("classifier", "module"):
        raise LatentLabError(f"model {adapter.model_id} takes images, but source {src.source_id} is text")
    if src.kind == "image" and adapter.kind in ("causal-lm", "encoder"):
        raise LatentLabError(f"model {adapter.model_id} takes text, but source {src.source_id} holds images")
    ctx_len = min(ctx_len, adapter.max_context)
    params = {"ctx_len": ctx_len, "pooling": adapter.pooling or "none", "world": world}
    if world > 1:
        params["rank"] = rank
    if getattr(src, "label_classes", None):
        params["label_classes"] = src.label_classes
    stored = hooks if stored is None else list(dict.fromkeys(stored))
    meta = StoreMeta(adapter.model_id, adapter.weight_hash(), src.source_id, tuple(stored),
                     adapter.hook_dims(stored) if stored else {}, dtype, params, adapter.model_dtype)
    return CapturePlan(adapter, src, meta, ctx_len)


def capture(ctx: JobContext, model: str | ModelAdapter, source: str | Source, hooks: Sequence[str],
            out: str | os.PathLike, max_tokens: int | None = None, resume: bool = False,
            batch_size: int = 8, ctx_len: int = 128, dtype: str = "float16",
            rank: int = 0, world: int = 1, model_dtype: str | None = None) -> CaptureResult:
    """Capture ``hooks`` of ``model`` over ``source`` into the store ``out``.

    ``max_tokens`` caps the rows (tokens, or examples for image models and pooled
    encoders); with ``resume`` an existing store continues from its committed rows.
    ``model_dtype`` (float32, bfloat16, float16) is the precision the model runs in (``dtype``
    is the stored rows'); below float32 the first batch is also run by the float32 model
    and the per-row cosines are recorded in the store's ``float32_cosine`` attribute.
    Bad counts are refused before the model loads (``check_capture_args``), and a run that
    creates ``out`` but commits no row leaves no file behind (``no_empty_store``)."""
    t0 = time.perf_counter()
    out = Path(out)
    check_capture_args(max_tokens, batch_size, ctx_len)
    plan = plan_capture(ctx, model, source, hooks, ctx_len, dtype, rank, world, model_dtype=model_dtype)
    reduced = plan.meta.model_dtype != "float32"
    extra = {COSINE_ATTR: "{}"} if reduced else None
    with no_empty_store(out, plan.source), open_capture_store(out, plan.meta, plan.source, resume, extra) as store:
        start = store.n_rows
        reference = float32_reference(ctx, plan.adapter) if reduced and start == 0 else None
        run = run_capture(ctx, plan, store, list(plan.meta.hooks), batch_size, max_tokens, rank, world,
                          reference=reference)
        result = CaptureResult(str(out), store.n_rows, store.n_rows - start, time.perf_counter() - t0,
                               run.rows / run.seconds if run.seconds > 0 else 0.0, run.row_unit,
                               run.stored_cosine)
    return result


def float32_reference(ctx: JobContext, adapter: ModelAdapter) -> ModelAdapter:
    """The float32 model a reduced-precision ``adapter`` was cast from, loaded again from
    its spec (the process's model cache keeps it), on ``ctx.device``."""
    if adapter.spec is None:
        raise LatentLabError(f"model {adapter.model_id} runs in {adapter.model_dtype} but was not loaded "
                             "by load_model, so no float32 copy can be loaded to compare it with")
    ctx.progress(0, 0, "loading the float32 model to compare with")
    return cached_model(adapter.spec).to(ctx.device)


def row_cosines(rows: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (n,) of each row of ``rows`` to the same row of ``ref`` (n, d), in
    float64; two all-zero rows count as equal (1.0), one all-zero row as 0."""
    a, b = rows.double(), ref.double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(1) / (na * nb).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.where((na == 0) & (nb == 0), torch.ones_like(cos), cos)


def precision_cosines(acts: Mapping[str, torch.Tensor], reference: ModelAdapter, batch,
                      hooks: Sequence[str]) -> dict[str, dict[str, float]]:
    """Run ``batch`` (as the capture kept its rows) through the float32 ``reference`` and
    summarise, per hook point, the per-row cosine of ``acts`` to its rows: mean and min."""
    ref = reference.forward(batch, hooks)
    out = {}
    for h in hooks:
        cos = row_cosines(acts[h].to(ref[h].device), ref[h])
        out[h] = {"mean": float(cos.mean()), "min": float(cos.min()), "rows": int(cos.numel())}
    return out


RowsConsumer = Callable[[dict[str, torch.Tensor], int, dict[str, np.ndarray]], None]


def run_capture(ctx: JobContext, plan: CapturePlan, store: ActivationStore, hooks: Sequence[str],
                batch_size: int, max_tokens: int | None = None, rank: int = 0, world: int = 1,
                consume: RowsConsumer | None = None, reference: ModelAdapter | None = None) -> CaptureRun:
    """Run the model over this rank's share of the source from the store's committed rows
    on, stopping after the deepest of ``hooks``, and append each batch's rows of the
    store's hook points; ``consume(acts, first_row, labels)`` then gets every batch's rows
    of ``hooks`` (on the model's device) and its per-row labels. With a float32
    ``reference`` model the first batch is run by it too and ``precision_cosines`` of the
    store's hook points go into the store's ``float32_cosine`` attribute. Progress names
    the rows per second; the CaptureRun returned says how the run went."""
    quota = None if max_tokens is None else max_tokens // world + (rank < max_tokens % world)
    units = plan_units(iter_units(plan.adapter, plan.source, plan.ctx_len, rank, world), store.n_rows, quota)
    return _capture_into(ctx, plan.adapter, store, units, hooks, batch_size, quota, consume, reference)


def stored_cosines(rows: Mapping[str, np.ndarray], acts: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per hook, mean/min/rows of the cosine of the rows as stored (rounded to the store's
    dtype) to the model's rows ``acts`` they were rounded from."""
    out = {}
    for h, stored in rows.items():
        cos = row_cosines(torch.from_numpy(stored), acts[h].detach().to("cpu", torch.float32))
        out[h] = {"mean": float(cos.mean()), "min": float(cos.min()), "rows": int(cos.numel())}
    return out


def _capture_into(ctx: JobContext, adapter: ModelAdapter, store: ActivationStore, plan: Iterator,
                  hooks: Sequence[str], batch_size: int, quota: int | None,
                  consume: RowsConsumer | None = None, reference: ModelAdapter | None = None) -> CaptureRun:
    np_dtype = np.dtype(store.meta.dtype)
    label_names = store.label_names
    total = quota or 0
    pending: list[Unit] = []
    started, start_rows = time.perf_counter(), store.n_rows
    run: dict[str, Any] = {"unit": "tokens", "cosine": None}  # set by the first flush
    measure = np_dtype != np.float32 and adapter.model_dtype == "float32"  # what storing rounds away

    def flush() -> None:
        batch = adapter.make_batch([u.item for u in pending])
        acts, tokens, sample, position, labels = _rows_of(adapter, batch, pending, hooks)
        rows = {h: acts[h].to("cpu", torch.float32).numpy().astype(np_dtype, copy=False)
                for h in store.hooks}
        lab = {n: np.array([d.get(n, -1) for d in labels], np.int32) for n in label_names}
        first = store.n_rows
        if reference is not None and first == 0:
            cosines = precision_cosines(acts, reference, batch, store.hooks)
            store.set_attr(COSINE_ATTR, json.dumps(cosines, sort_keys=True))
        if first == start_rows:
            run["unit"] = "tokens" if len(tokens) and tokens[0] >= 0 else "examples"
            if measure and rows:
                run["cosine"] = stored_cosines(rows, acts)
        done = store.append(rows, tokens, sample, position, lab)
        if consume is not None:
            consume(acts, first, lab)
        rate = (done - start_rows) / max(time.perf_counter() - started, 1e-9)
        ctx.progress(done, max(total, done), f"{store.path.name}: {rate:,.0f} {run['unit']}/s")
        pending.clear()

    with checking(adapter.blocks(), ctx.check_cancelled):  # a cancel stops a batch after its running block
        for unit, text, image in plan:
            if text is not None:
                store.put_documents(unit.sample, [text])
            if image is not None:
                store.put_images(unit.sample, np.asarray(image, np.float32)[None])
            pending.append(unit)
            if len(pending) == batch_size:
                ctx.check_cancelled()
                flush()
        if pending:
            ctx.check_cancelled()
            flush()
    return CaptureRun(store.n_rows - start_rows, time.perf_counter() - started, run["unit"], run["cosine"])


def shard_path(out: Path, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` writes its shard of the store ``out``."""
    return out.with_name(f"{out.stem}.rank{rank}-of-{world}{out.suffix or '.h5'}")


def capture_distributed(ctx: JobContext, out: str | os.PathLike, **params) -> CaptureResult:
    """Capture under ``torchrun``: each rank writes its shard of the source, then rank 0
    joins the shards into ``out`` (HDF5 virtual datasets), which reads like one store."""
    import torch.distributed as dist
    out = Path(out)
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        if ctx.device.type == "cuda":
            ctx.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        shard = shard_path(out, rank, world)
        failure = None
        try:
            result = capture(ctx, out=shard, rank=rank, world=world, **params)
        except Exception as exc:  # every rank must reach the barrier, or the others hang
            failure, result = exc, None
        flags = [None] * world
        dist.all_gather_object(flags, failure is None)
        if failure is not None:
            raise failure
        if not all(flags):
            raise LatentLabError(f"another rank failed; shard {shard} keeps its committed rows")
        if rank == 0:
            joined = join_shards(out, [shard_path(out, r, world) for r in range(world)])
            rows = joined.n_rows
            joined.close()
        dist.barrier()
        return result._replace(path=str(out), rows=rows if rank == 0 else result.rows)
    finally:
        dist.destroy_process_group()
