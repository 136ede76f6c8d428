"""The demo workspace's pipeline (capture -> SAE -> feature statistics -> projections ->
digits zoo), each stage resumable and skipped once complete, so a second launch only reads
what the first one built.

The first picture comes within seconds: the capture runs in steps (``growth_steps``: a
first slice of ``first_tokens`` rows, then x4, then the whole), and after each step but the
last a copy of the store as it stands (``stores/growing/``, never the file being written:
the window reads stores while the engine writes them) is announced with the PCA of its
rows. The whole store then replaces it with its own PCA; the copies go when the pipeline
ends. The store holds several hook points (``DEMO_HOOKS``, rows aligned) for the layer x
layer comparisons; the SAE, statistics and layouts use one (``hook``). An older demo store
of one hook point keeps its SAE and statistics: the other hook points are captured into a
store beside it (``demo_layers``), in a low-priority process when the app asks for it."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from engine.errors import StoreError
from engine.jobs import JobContext
from engine.models.registry import ModelSpec
from engine.projection.layouts import UMAP_ROWS
from engine.specs import CaptureSpec, Count, Name, PositiveInt, Spec, TrainSpec
from engine.startup import wait_first_slice
from engine.store.activations import ActivationStore
from engine.workspace import Workspace

DEMO_HOOK = "blocks.15.hook_resid_post"
DEMO_HOOKS = tuple(f"blocks.{i}.hook_resid_post" for i in (3, 7, 11, 15))  # SmolLM2-135M has 30 blocks
FIRST_TOKENS = 2048  # rows of the first picture: seconds of capture on two CPU cores
GROWING = "growing"  # under stores/: copies of the store shown while it is captured
LAYERS = "_layers"  # demo_<model>_layers.h5: an older one-hook demo store's other hook points


class DemoSpec(Spec):
    """What the demo workspace holds; tests shrink it (a tiny model, a few thousand rows).
    The capture and training defaults are CaptureSpec's and TrainSpec's."""

    what: ClassVar[str] = "demo"
    model: Name = "smollm2"
    source: Name = "demo"
    hook: Name = DEMO_HOOK  # the SAE's, the statistics' and the layouts' hook point
    hooks: list[Name] = list(DEMO_HOOKS)  # captured together (``hook`` is added when missing)
    max_tokens: PositiveInt = 50_000
    first_tokens: Count = FIRST_TOKENS  # rows of the first picture (0, or max_tokens or more: none)
    layers: Literal["inline", "background"] = "inline"  # how an older one-hook store gets the others
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

    @property
    def capture_hooks(self) -> list[str]:
        """The hook points a new demo store holds: ``hooks`` and ``hook``."""
        return list(dict.fromkeys([*self.hooks, self.hook]))

    def capture_spec(self, out: Path, hooks: Sequence[str] | None = None,
                     max_tokens: int | None = None) -> CaptureSpec:
        """The demo's capture of ``hooks`` (default ``capture_hooks``) into ``out`` up to
        ``max_tokens`` rows (default all), continued when ``out`` exists."""
        return CaptureSpec.parse(dict(model=self.model, source=self.source, hooks=list(hooks or self.capture_hooks),
                                      out=out, max_tokens=max_tokens or self.max_tokens, resume=out.exists(),
                                      batch_size=self.capture_batch, ctx_len=self.ctx_len), "demo capture")

    def train_spec(self, store: Path, out: Path) -> TrainSpec:
        """The demo's SAE on ``store``, into ``out`` (continued when it exists)."""
        return TrainSpec.parse(dict(store=store, hook=self.hook, out=out, arch=self.arch, expansion=self.expansion,
                                    k=self.k, batch_size=self.sae_batch, epochs=self.sae_epochs,
                                    resume=out.exists()), "demo SAE")


class Stage(NamedTuple):
    """A partial result of ``build_demo``: a stage finished and the workspace now has it
    ("store" also while the store grows: a copy of it, see the module docstring)."""

    stage: str  # "store", "sae", "stats", "projection", "zoo"
    workspace: Workspace


STAGES = ("capture", "SAE", "feature statistics", "PCA", "UMAP", "digits zoo")
ZOO_HOOKS = ("blocks.0.hook_post", "blocks.1.hook_post", "logits")


def _stage_ctx(ctx: JobContext, i: int, n: int, name: str) -> JobContext:
    """A context for one stage: shares cancellation, device and partials; names the stage."""
    def progress(done: int, total: int, message: str = "") -> None:
        ctx.progress(done, total, f"{i}/{n} {name}" + (f": {message}" if message else ""))
    return JobContext(device=ctx.device, on_progress=progress, on_partial=ctx.partial,
                      cancel_event=ctx.cancel_event)


def _store_rows(path: Path, hooks: Sequence[str] = ()) -> int:
    """Committed rows of the store ``path`` holding every one of ``hooks``; 0 when it is
    missing, unreadable or lacks one of them."""
    if not path.is_file():
        return 0
    try:
        with ActivationStore.open(path) as store:
            return store.n_rows if set(hooks) <= set(store.hooks) else 0
    except StoreError:
        return 0


def _store_hooks(path: Path) -> tuple[str, ...]:
    """The hook points of the store ``path`` (empty when it cannot be read)."""
    try:
        with ActivationStore.open(path) as store:
            return tuple(store.hooks)
    except StoreError:
        return ()


def _store_complete(path: Path, hook: str | Sequence[str], rows: int) -> bool:
    return _store_rows(path, [hook] if isinstance(hook, str) else hook) >= rows


def growth_steps(first: int, total: int) -> list[int]:
    """The row counts the demo capture stops at: ``first``, then x4 while that leaves at
    least half the rest, then ``total`` ([total] alone without a first slice)."""
    steps = []
    step = first
    while 0 < step and 2 * step <= total:
        steps.append(step)
        step *= 4
    return [*steps, total]


def demo_store(ws: Workspace, spec: DemoSpec) -> Path:
    """Where the demo's store lives in ``ws``."""
    return ws.root / "stores" / f"demo_{ModelSpec.parse(spec.model).short_name}.h5"


def build_demo(ctx: JobContext, root: str | os.PathLike, spec: DemoSpec | None = None) -> Workspace:
    """Job: build (or finish, or just reopen) a demo workspace (``spec`` default: DemoSpec()),
    announcing each stage with ``ctx.partial(Stage(...))``, each projection frame with
    ``ctx.partial(Layout)``, and while the store grows a copy of it and its row PCA."""
    from engine.projection.layouts import project
    spec = spec or DemoSpec()
    ws = Workspace.open_or_create(root)
    n = len(STAGES) - (0 if spec.umap else 1) - (0 if spec.zoo else 1)
    store = demo_store(ws, spec)
    grown = False
    if not _store_complete(store, spec.hook, spec.max_tokens):
        grown = _grow(_stage_ctx(ctx, 1, n, "capture"), ws, spec, store)
    # the growing copy's picture gives way to the whole store's at once: its PCA comes first
    rows_pca = project(_stage_ctx(ctx, 1, n, "capture"), store, spec.hook, method="pca", what="rows",
                       cache_dir=ws.projections_dir) if grown else None
    ws.model, ws.store, ws.hook = spec.model, store, spec.hook
    ws.save()
    ctx.partial(Stage("store", ws.model_copy()))
    if rows_pca is not None:
        ctx.partial(rows_pca)

    sae_dir = ws.root / "saes" / spec.sae_name
    if not ((sae_dir / "metrics.json").is_file() and (sae_dir / "cfg.json").is_file()):
        from engine.sae.train_job import train_sae
        train_sae(_stage_ctx(ctx, 2, n, "SAE"), **{**spec.train_spec(store, sae_dir).job_params(), **spec.extra})
    ws.sae, ws.sae_id = sae_dir, spec.sae_name
    ws.save()
    ctx.partial(Stage("sae", ws.model_copy()))

    if not ws.has_stats():
        _demo_stats(_stage_ctx(ctx, 3, n, "feature statistics"), ws)
    ctx.partial(Stage("stats", ws.model_copy()))

    methods = ("pca", "umap") if spec.umap else ("pca",)
    for i, method in enumerate(methods, start=4):
        sub = _stage_ctx(ctx, i, n, method.upper())
        for what in ("rows", "latents"):
            if grown and (method, what) == ("pca", "rows"):
                continue  # sent with the store
            layout = project(sub, store, spec.hook, method=method, what=what, sae_path=sae_dir,
                             cache_dir=ws.projections_dir, max_rows=spec.umap_rows if method == "umap" else None)
            ctx.partial(layout)
    ctx.partial(Stage("projection", ws.model_copy()))
    if spec.zoo:
        build_zoo(_stage_ctx(ctx, n, n, "digits zoo"), ws)
        ctx.partial(Stage("zoo", ws.model_copy()))
    shutil.rmtree(ws.root / "stores" / GROWING, ignore_errors=True)  # the window moved on long ago
    if needs_layers(ws.root, spec):
        if spec.layers == "background":
            start_demo_layers(ws.root, spec)
        else:
            demo_layers(ctx, ws.root, spec)
    return ws


def _grow(ctx: JobContext, ws: Workspace, spec: DemoSpec, store: Path) -> bool:
    """Capture the demo store in ``growth_steps``, announcing a copy of it and its row PCA
    after each step but the last (and at once, when a resumed store already has rows).
    True when a copy was announced. An older one-hook store is continued with its hook."""
    from engine.capture import capture
    from engine.projection.layouts import project
    if wait_first_slice(ws.root, ctx.check_cancelled) == 0:  # its rows are in the store now
        ctx.progress(0, 1, "first slice captured by the start-up process")
    _restart_if_broken(store, sorted((ws.root / "stores" / GROWING).glob(f"{store.stem}-*{store.suffix}"),
                                     key=lambda p: int(p.stem.rsplit("-", 1)[1])))
    hooks = _store_hooks(store) if store.is_file() else ()
    hooks = list(hooks) if spec.hook in hooks else spec.capture_hooks
    steps = growth_steps(spec.first_tokens, spec.max_tokens)
    rows, shown = _store_rows(store, hooks), False
    for i, target in enumerate(steps):
        if rows < target:
            rows = capture(ctx, **spec.capture_spec(store, hooks, target).job_params()).rows
        if target == spec.max_tokens or steps[i + 1] <= rows:
            continue  # the last step, or one a resumed capture has passed
        copy = _growing_copy(ws, store, rows)
        ctx.partial(Stage("store", ws.model_copy(update=dict(model=spec.model, store=copy, hook=spec.hook))))
        ctx.partial(project(ctx, copy, spec.hook, method="pca", what="rows", cache_dir=None))
        shown = True
    return shown


def _restart_if_broken(store: Path, copies: Sequence[Path] = ()) -> None:
    """A store that cannot be opened to append (a writer killed while HDF5 had it open and
    not yet in SWMR mode cannot be recovered) is replaced by the last of ``copies`` (clean
    files of its committed rows, smallest first), or removed: the capture goes on from
    there. A store a live process writes is left alone (that error is raised)."""
    if not store.is_file():
        return
    try:
        ActivationStore.open_append(store).close()
        return
    except StoreError as exc:
        if "being written by process" in str(exc):
            raise
    if copies:
        tmp = store.with_name(store.name + f".tmp{os.getpid()}")
        shutil.copyfile(copies[-1], tmp)
        os.replace(tmp, store)
    else:
        store.unlink()


def _growing_copy(ws: Workspace, store: Path, rows: int) -> Path:
    """A copy of the (closed) store as it stands, for the window to read while the store
    grows: ``stores/growing/<stem>-<rows>.h5``, written whole before it appears."""
    copy = ws.root / "stores" / GROWING / f"{store.stem}-{rows}{store.suffix}"
    if not copy.is_file():
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_name(copy.name + f".tmp{os.getpid()}")
        shutil.copyfile(store, tmp)
        os.replace(tmp, copy)
    return copy


# ------------------------------------------------------------------ an older store's other hook points
def layers_store(root: str | os.PathLike, spec: DemoSpec) -> Path:
    """The store of the demo's hook points beside an older one-hook demo store."""
    store = demo_store(Workspace(root=Path(root)), spec)
    return store.with_name(store.stem + LAYERS + store.suffix)


def needs_layers(root: str | os.PathLike, spec: DemoSpec) -> bool:
    """True when the demo store lacks some of the demo's hook points and no complete
    store of them is beside it (an older demo workspace)."""
    store = demo_store(Workspace(root=Path(root)), spec)
    hooks = _store_hooks(store)
    return (bool(hooks) and not set(spec.capture_hooks) <= set(hooks)
            and not _store_complete(layers_store(root, spec), spec.capture_hooks, spec.max_tokens))


def demo_layers(ctx: JobContext, root: str | os.PathLike, spec: DemoSpec | None = None) -> Path:
    """Job: capture the demo's hook points (all of them, so their rows align with each
    other and with the demo store's) into ``layers_store``; it is written as ``.part`` and
    renamed once complete, so no one opens it half-written. Resumable."""
    from engine.capture import capture
    spec = spec or DemoSpec()
    out = layers_store(root, spec)
    if _store_complete(out, spec.capture_hooks, spec.max_tokens):
        return out
    part = out.with_name(out.name + ".part")
    _restart_if_broken(part)
    capture(ctx, **spec.capture_spec(part, spec.capture_hooks).job_params())
    os.replace(part, out)
    return out


_layers_process: subprocess.Popen | None = None


def start_demo_layers(root: str | os.PathLike, spec: DemoSpec) -> subprocess.Popen | None:
    """Run ``demo_layers`` in a low-priority process (the engine thread stays free for the
    views' jobs); it is ended when this process exits and resumed on the next launch.
    None when one is running already."""
    global _layers_process
    if _layers_process is not None and _layers_process.poll() is None:
        return None
    code = "import os, sys; os.nice(10); from engine.demo import _layers_main; _layers_main(sys.argv[1:])"
    top = Path(__file__).resolve().parents[1]
    _layers_process = subprocess.Popen(
        [sys.executable, "-c", code, str(root), spec.model_dump_json()], cwd=top,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(top), os.environ.get("PYTHONPATH")]))))
    atexit.register(_layers_process.terminate)
    return _layers_process


def _layers_main(argv: list[str]) -> None:
    """The ``start_demo_layers`` process: ``demo_layers`` of argv[0] with the spec argv[1]."""
    import signal

    import torch
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # ended with the app: close the store first
    demo_layers(JobContext(device=torch.device("cpu")), argv[0], DemoSpec.parse(json.loads(argv[1])))


def first_slice_main(argv: list[str]) -> None:
    """The ``engine.startup.start_first_slice`` process: capture the first ``first_tokens`` rows of the
    demo store of workspace argv[0] on device argv[1] (the spec: the JSON argv[2], else
    DemoSpec()), unless that store exists. It touches nothing else in the workspace."""
    import signal

    from engine.capture import capture
    from engine.jobs import resolve_device
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # ended with the app: close the store first
    root, device, spec_json = (argv + ["", ""])[:3]
    spec = DemoSpec.parse(json.loads(spec_json)) if spec_json else DemoSpec()
    store = demo_store(Workspace(root=Path(root)), spec)
    if store.exists() or not 0 < spec.first_tokens < spec.max_tokens:
        return
    store.parent.mkdir(parents=True, exist_ok=True)
    capture(JobContext(device=resolve_device(device or None)),
            **spec.capture_spec(store, spec.capture_hooks, spec.first_tokens).job_params())


# ------------------------------------------------------------------ digits zoo, statistics
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
