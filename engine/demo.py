"""The demo workspace's pipeline (capture -> SAE -> feature statistics -> projections ->
digits zoo), each stage resumable and skipped once complete, so a second launch only reads
what the first one built."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from engine.errors import StoreError
from engine.jobs import JobContext
from engine.models.registry import ModelSpec
from engine.projection.layouts import UMAP_ROWS
from engine.specs import CaptureSpec, Name, PositiveInt, Spec, TrainSpec
from engine.store.activations import ActivationStore
from engine.workspace import Workspace

DEMO_HOOK = "blocks.15.hook_resid_post"


class DemoSpec(Spec):
    """What the demo workspace holds; tests shrink it (a tiny model, a few thousand rows).
    The capture and training defaults are CaptureSpec's and TrainSpec's."""

    what: ClassVar[str] = "demo"
    model: Name = "smollm2"
    source: Name = "demo"
    hook: Name = DEMO_HOOK
    max_tokens: PositiveInt = 50_000
    ctx_len: int = CaptureSpec.default("ctx_len")
    capture_batch: int = CaptureSpec.default("batch_size")
    arch: str = TrainSpec.default("arch")
    expansion: int = TrainSpec.default("expansion")
    k: int = TrainSpec.default("k")
    sae_batch: PositiveInt = 1024
    sae_epochs: float = 8.0
    sae_name: Name = "topk"
    umap: bool = True
    umap_rows: PositiveInt = UMAP_ROWS
    zoo: bool = True  # digits-zoo CNNs (two seeds, a pruned family) for the geometry view
    extra: dict[str, Any] = {}  # more train_sae parameters

    def capture_spec(self, out: Path) -> CaptureSpec:
        """The demo's capture into ``out`` (continued when it exists)."""
        return CaptureSpec.parse(dict(model=self.model, source=self.source, hooks=[self.hook], out=out,
                                      max_tokens=self.max_tokens, resume=out.exists(),
                                      batch_size=self.capture_batch, ctx_len=self.ctx_len), "demo capture")

    def train_spec(self, store: Path, out: Path) -> TrainSpec:
        """The demo's SAE on ``store``, into ``out`` (continued when it exists)."""
        return TrainSpec.parse(dict(store=store, hook=self.hook, out=out, arch=self.arch, expansion=self.expansion,
                                    k=self.k, batch_size=self.sae_batch, epochs=self.sae_epochs,
                                    resume=out.exists()), "demo SAE")


class Stage(NamedTuple):
    """A partial result of ``build_demo``: a stage finished and the workspace now has it."""

    stage: str  # "store", "sae", "stats", "projection"
    workspace: Workspace


STAGES = ("capture", "SAE", "feature statistics", "PCA", "UMAP", "digits zoo")
ZOO_HOOKS = ("blocks.0.hook_post", "blocks.1.hook_post", "logits")


def _stage_ctx(ctx: JobContext, i: int, n: int, name: str) -> JobContext:
    """A context for one stage: shares cancellation, device and partials; names the stage."""
    def progress(done: int, total: int, message: str = "") -> None:
        ctx.progress(done, total, f"{i}/{n} {name}" + (f": {message}" if message else ""))
    return JobContext(device=ctx.device, on_progress=progress, on_partial=ctx.partial,
                      cancel_event=ctx.cancel_event)


def _store_complete(path: Path, hook: str, rows: int) -> bool:
    if not path.is_file():
        return False
    try:
        with ActivationStore.open(path) as store:
            return hook in store.hooks and store.n_rows >= rows
    except StoreError:
        return False


def build_demo(ctx: JobContext, root: str | os.PathLike, spec: DemoSpec | None = None) -> Workspace:
    """Job: build (or finish, or just reopen) a demo workspace (``spec`` default: DemoSpec()),
    announcing each stage with ``ctx.partial(Stage(...))`` and each projection frame with
    ``ctx.partial(Layout)``."""
    spec = spec or DemoSpec()
    ws = Workspace.open_or_create(root)
    n = len(STAGES) - (0 if spec.umap else 1) - (0 if spec.zoo else 1)
    store = ws.root / "stores" / f"demo_{ModelSpec.parse(spec.model).short_name}.h5"
    if not _store_complete(store, spec.hook, spec.max_tokens):
        from engine.capture import capture
        capture(_stage_ctx(ctx, 1, n, "capture"), **spec.capture_spec(store).job_params())
    ws.model, ws.store, ws.hook = spec.model, store, spec.hook
    ws.save()
    ctx.partial(Stage("store", ws))

    sae_dir = ws.root / "saes" / spec.sae_name
    if not ((sae_dir / "metrics.json").is_file() and (sae_dir / "cfg.json").is_file()):
        from engine.sae.train_job import train_sae
        train_sae(_stage_ctx(ctx, 2, n, "SAE"), **{**spec.train_spec(store, sae_dir).job_params(), **spec.extra})
    ws.sae, ws.sae_id = sae_dir, spec.sae_name
    ws.save()
    ctx.partial(Stage("sae", ws))

    if not ws.has_stats():
        _demo_stats(_stage_ctx(ctx, 3, n, "feature statistics"), ws)
    ctx.partial(Stage("stats", ws))

    from engine.projection.layouts import project
    methods = ("pca", "umap") if spec.umap else ("pca",)
    for i, method in enumerate(methods, start=4):
        sub = _stage_ctx(ctx, i, n, method.upper())
        for what in ("rows", "latents"):
            layout = project(sub, store, spec.hook, method=method, what=what, sae_path=sae_dir,
                             cache_dir=ws.projections_dir, max_rows=spec.umap_rows if method == "umap" else None)
            ctx.partial(layout)
    ctx.partial(Stage("projection", ws))
    if spec.zoo:
        build_zoo(_stage_ctx(ctx, n, n, "digits zoo"), ws)
        ctx.partial(Stage("zoo", ws))
    return ws


def build_zoo(ctx: JobContext, ws: Workspace, seeds: tuple[int, ...] = (0, 1)) -> list[Path]:
    """Two seeds of a small digits CNN under ``models/``, seed 0's magnitude/random/structured
    pruned family under ``models/pruned/``, and a capture of each seed over ``digits:test``
    under ``stores/`` (rows in source order, so pruning flips select the same images).
    Seconds of work; what exists is kept. Returns the store paths."""
    from engine.capture import capture
    from engine.models.digits_zoo import prune_zoo, train_zoo
    models = ws.root / "models"
    names = [f"cnn-w8-d2-s{seed}" for seed in seeds]
    missing = [s for s, name in zip(seeds, names, strict=True)
               if not (models / name / "latentlab_model.json").is_file()]
    if missing:
        train_zoo(ctx, str(models), arch="cnn", widths=(8,), depths=(2,), seeds=tuple(missing))
    pruned = models / "pruned"
    if not any(pruned.glob("*/latentlab_model.json")):
        prune_zoo(ctx, str(models / names[0]), str(pruned), sparsities=(0.5, 0.9))
    stores = []
    for name in names:
        out = ws.root / "stores" / f"digits_{name}.h5"
        if not _store_complete(out, ZOO_HOOKS[-1], 1):
            capture(ctx, model=str(models / name), source="digits:test", hooks=list(ZOO_HOOKS),
                    out=out, resume=out.exists())
        stores.append(out)
    return stores


def _demo_stats(ctx: JobContext, ws: Workspace) -> None:
    from engine.features.stats import sae_feature_stats
    result = sae_feature_stats(ctx, ws.store, ws.sae, ws.hook, ws.sae_id, model=ws.model,
                               logits=bool(ws.model))
    ws.stats = Path(result.stats_path)
    ws.save()
