"""Workspaces: a folder holding stores, SAEs, projections and session files, described by
``workspace.json``; and the demo workspace's pipeline (capture -> SAE -> feature
statistics -> projections), each stage resumable and skipped once complete, so a second
launch only reads what the first one built."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from engine.errors import LatentLabError, StoreError
from engine.jobs import JobContext
from engine.projection.layouts import UMAP_ROWS
from engine.store.activations import ActivationStore

MANIFEST = "workspace.json"
FORMAT = 1
DEMO_HOOK = "blocks.15.hook_resid_post"
_PATH_FIELDS = ("store", "sae", "stats")


def default_workspace() -> Path:
    """$LATENTLAB_WORKSPACE, else ``demo`` in the user data folder."""
    from platformdirs import user_data_dir
    return Path(os.environ.get("LATENTLAB_WORKSPACE") or Path(user_data_dir("latentlab")) / "demo")


@dataclass
class Workspace:
    """A workspace folder and its active model, store, hook point and SAE."""

    root: Path
    name: str = ""
    model: str | None = None
    store: Path | None = None  # absolute here; relative to root in workspace.json
    hook: str | None = None
    sae: Path | None = None
    sae_id: str | None = None  # the SAE's feature statistics are found by this id (see stats_file)
    stats: Path | None = None  # the file of those statistics, as the demo's stats stage wrote it

    @classmethod
    def open(cls, root: str | os.PathLike) -> Workspace:
        """Read ``root/workspace.json``; a clear error names what is missing or wrong."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise LatentLabError(f"workspace folder {root} does not exist")
        path = root / MANIFEST
        if not path.is_file():
            raise LatentLabError(f"{root} is not a LatentLab workspace (it has no {MANIFEST})")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LatentLabError(f"{path}: not readable JSON ({exc})") from None
        if not isinstance(data, dict):
            raise LatentLabError(f"{path}: expected a JSON object, found {type(data).__name__}")
        if int(data.get("format", FORMAT)) > FORMAT:
            raise LatentLabError(f"{path}: format {data['format']} is newer than this "
                                 f"LatentLab reads ({FORMAT}); update LatentLab")
        known = {f for f in cls.__dataclass_fields__ if f != "root"}
        fields: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known or value is None:
                continue
            if not isinstance(value, str):
                raise LatentLabError(f"{path}: field {key!r} should be a string, found {value!r}")
            fields[key] = root / value if key in _PATH_FIELDS else value
        return cls(root=root, **fields)

    @classmethod
    def create(cls, root: str | os.PathLike, **fields: Any) -> Workspace:
        """Make the folder (and its sub-folders) and write the manifest."""
        root = Path(root).expanduser()
        ws = cls(root=root, name=fields.pop("name", root.name), **fields)
        for sub in ("stores", "saes", "projections"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        ws.save()
        return ws

    @classmethod
    def open_or_create(cls, root: str | os.PathLike) -> Workspace:
        root = Path(root).expanduser()
        return cls.open(root) if (root / MANIFEST).is_file() else cls.create(root)

    def save(self) -> None:
        data: dict[str, Any] = {"format": FORMAT}
        for key, value in asdict(self).items():
            if key == "root":
                continue
            if key in _PATH_FIELDS and value is not None:
                value = os.path.relpath(value, self.root)
            data[key] = value
        text = json.dumps(data, indent=2) + "\n"
        manifest = self.root / MANIFEST
        if manifest.is_file() and manifest.read_text() == text:
            return  # unchanged: reopening a workspace only reads it
        tmp = self.root / (MANIFEST + ".tmp")
        tmp.write_text(text)
        tmp.replace(manifest)

    @property
    def projections_dir(self) -> Path:
        return self.root / "projections"

    @property
    def session_path(self) -> Path:
        return self.root / "session.json"

    def stores(self) -> list[Path]:
        return sorted((self.root / "stores").glob("*.h5"))

    def saes(self) -> list[Path]:
        return sorted(p.parent for p in (self.root / "saes").glob("*/cfg.json"))

    def stats_file(self) -> Path | None:
        """The file holding the feature statistics ``sae_id`` over the active store as it is
        now: the recorded ``stats`` while it still is such a file, else the newest one
        beside the store (``engine.features.stats.find_stats``; the store itself when an
        older version wrote them into it); None when there are none."""
        if self.store is None or self.sae_id is None or not self.store.is_file():
            return None
        from engine.features.stats import find_stats
        try:
            with ActivationStore.open(self.store) as store:
                found = find_stats(store, self.sae_id, prefer=self.stats)
        except LatentLabError:
            return None
        return None if found is None else found.path

    def has_stats(self) -> bool:
        """True once the active SAE's feature statistics over the active store exist."""
        return self.stats_file() is not None


# ------------------------------------------------------------------ the demo pipeline
@dataclass(frozen=True)
class DemoSpec:
    """What the demo workspace holds; tests shrink it (a tiny model, a few thousand rows)."""

    model: str = "smollm2"
    source: str = "demo"
    hook: str = DEMO_HOOK
    max_tokens: int = 50_000
    ctx_len: int = 128
    capture_batch: int = 8
    arch: str = "topk"
    expansion: int = 8
    k: int = 32
    sae_batch: int = 1024
    sae_epochs: float = 8.0
    sae_name: str = "topk"
    umap: bool = True
    umap_rows: int = UMAP_ROWS
    zoo: bool = True  # digits-zoo CNNs (two seeds, a pruned family) for the geometry view
    extra: dict[str, Any] = field(default_factory=dict)


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


def build_demo(ctx: JobContext, root: str | os.PathLike, spec: DemoSpec = DemoSpec()) -> Workspace:
    """Job: build (or finish, or just reopen) a demo workspace, announcing each stage with
    ``ctx.partial(Stage(...))`` and each projection frame with ``ctx.partial(Layout)``."""
    ws = Workspace.open_or_create(root)
    n = len(STAGES) - (0 if spec.umap else 1) - (0 if spec.zoo else 1)
    store = ws.root / "stores" / f"demo_{_slug(spec.model)}.h5"
    if not _store_complete(store, spec.hook, spec.max_tokens):
        from engine.capture import capture
        capture(_stage_ctx(ctx, 1, n, "capture"), model=spec.model, source=spec.source,
                hooks=[spec.hook], out=store, max_tokens=spec.max_tokens, resume=store.exists(),
                batch_size=spec.capture_batch, ctx_len=spec.ctx_len)
    ws.model, ws.store, ws.hook = spec.model, store, spec.hook
    ws.save()
    ctx.partial(Stage("store", ws))

    sae_dir = ws.root / "saes" / spec.sae_name
    if not ((sae_dir / "metrics.json").is_file() and (sae_dir / "cfg.json").is_file()):
        from engine.sae.train_job import train_sae
        train_sae(_stage_ctx(ctx, 2, n, "SAE"), store=store, hook=spec.hook, out=sae_dir,
                  arch=spec.arch, expansion=spec.expansion, k=spec.k, batch_size=spec.sae_batch,
                  epochs=spec.sae_epochs, resume=sae_dir.exists(), **spec.extra)
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


def _slug(spec: str) -> str:
    name = Path(spec.split("?")[0].rstrip("/")).name or spec
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
