"""Workspaces: a folder holding stores, SAEs, projections and session files, described by
``workspace.json``: the active model, store, hook point and SAE, and the stores, SAEs and
models opened or trained in it (paths relative to the folder when under it, absolute
otherwise). The demo workspace's pipeline is ``engine.demo``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_serializer, model_validator

from engine.errors import LatentLabError
from engine.models.registry import ModelSpec
from engine.specs import SpecFile, read_json
from engine.store.activations import ActivationStore

MANIFEST = "workspace.json"
PATH_FIELDS = ("store", "sae", "stats")  # relative to the folder in workspace.json when under it
LIST_FIELDS = {"stores": "opened_stores", "saes": "opened_saes", "models": "opened_models"}
MAX_OPENED = 32  # entries kept per list, newest first


class Workspace(SpecFile):
    """A workspace folder, its active model, store, hook point and SAE, and what was opened
    or trained in it. Format 1 still: the lists are optional fields an older reader skips."""

    model_config = ConfigDict(extra="ignore", frozen=False)
    what: ClassVar[str] = "workspace"
    FORMAT: ClassVar[int] = 1
    root: Path = Field(exclude=True)
    name: str = ""
    model: str | None = None
    store: Path | None = None  # absolute here; relative to root in workspace.json
    hook: str | None = None
    sae: Path | None = None
    sae_id: str | None = None  # the SAE's feature statistics are found by this id (see stats_file)
    stats: Path | None = None  # the file of those statistics, as the demo's stats stage wrote it
    chosen: bool = False  # the active items were opened or trained in the app: the demo's rebuild keeps them
    opened_stores: list[Path] = []  # newest first, each once (``remember``)
    opened_saes: list[Path] = []
    opened_models: list[str] = []  # model specs; a file or folder in one is relative like the paths

    @model_validator(mode="after")
    def _under_root(self) -> Workspace:
        for key in PATH_FIELDS:
            if getattr(self, key) is not None:
                setattr(self, key, self.root / getattr(self, key))
        self.opened_stores = [self.root / p for p in self.opened_stores]
        self.opened_saes = [self.root / p for p in self.opened_saes]
        return self

    @field_serializer(*PATH_FIELDS)
    def _relative(self, value: Path | None) -> str | None:
        return None if value is None else path_text(value, self.root)

    @field_serializer("opened_stores", "opened_saes")
    def _relative_list(self, value: list[Path]) -> list[str]:
        return [path_text(p, self.root) for p in value]

    @field_serializer("model")
    def _model_text(self, value: str | None) -> str | None:
        return None if value is None else model_text(value, self.root)

    @field_serializer("opened_models")
    def _model_texts(self, value: list[str]) -> list[str]:
        return [model_text(m, self.root) for m in value]

    @classmethod
    def open(cls, root: str | os.PathLike) -> Workspace:
        """Read ``root/workspace.json``; a clear error names what is missing or wrong."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise LatentLabError(f"workspace folder {root} does not exist")
        path = root / MANIFEST
        if not path.is_file():
            raise LatentLabError(f"{root} is not a LatentLab workspace (it has no {MANIFEST})")
        data = read_json(path)
        if isinstance(data, dict):  # null: not set
            data = {**{k: v for k, v in data.items() if v is not None}, "root": root}
            if isinstance(data.get("model"), str):  # a model file or folder in the workspace
                data["model"] = model_at(data["model"], root)
            if isinstance(data.get("opened_models"), list):
                data["opened_models"] = [model_at(m, root) if isinstance(m, str) else m
                                         for m in data["opened_models"]]
        return cls.parse(data, str(path))

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
        return cls.open(root) if cls.holds(root) else cls.create(root)

    @staticmethod
    def holds(folder: str | os.PathLike) -> bool:
        """Whether ``folder`` is a workspace (it has a manifest)."""
        return (Path(folder).expanduser() / MANIFEST).is_file()

    def save(self) -> None:
        self.write(self.root / MANIFEST)

    def opened(self, kind: str) -> list[str]:
        """The stores, saes or models opened or trained in this workspace, newest first
        (absolute paths, model specs with absolute files)."""
        return [str(item) for item in getattr(self, LIST_FIELDS[kind])]

    def remember(self, kind: str, item: str | os.PathLike) -> None:
        """Put a store or SAE path (absolute) or a model spec first in its list, once."""
        field = LIST_FIELDS[kind]
        value = item if kind == "models" else Path(os.path.normpath(Path(item).expanduser().absolute()))
        kept = [value, *(x for x in getattr(self, field) if x != value)]
        setattr(self, field, kept[:MAX_OPENED])

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

    def with_sae(self, folder: str | os.PathLike, sae_id: str | None = None) -> Workspace:
        """A copy with the SAE in ``folder`` active (its statistics found by ``sae_id``,
        default the folder's name, as feature-stats names them): on the SAE's own hook point
        when the active store has it, else on the active hook point, whose width must be the
        SAE's d_in (LatentLabError naming the folder and both widths); ``stats`` is the file
        of its statistics over the store when they exist, else None. It loads the SAE: run
        it in a job."""
        from engine.features.stats import find_stats
        from engine.models.base import weight_fingerprint
        from engine.sae.io import load_sae
        folder = Path(os.path.normpath(Path(folder).expanduser().absolute()))
        sae = load_sae(folder)  # SAEFileError names the folder or its file
        sae_id, hook, stats = sae_id or folder.name, self.hook or sae.cfg.hook_name or None, None
        if self.store is not None:
            with ActivationStore.open(self.store) as store:
                hook = sae.cfg.hook_name if sae.cfg.hook_name in store.hooks else self.hook
                if hook is None or hook not in store.hooks:
                    raise LatentLabError(f"SAE folder {folder} cannot be used: hook point {hook} is not in "
                                         f"the active store {self.store.name}")
                width = store.dim(hook)
                if width != sae.cfg.d_in:
                    raise LatentLabError(f"SAE folder {folder} reads rows of width {sae.cfg.d_in} (d_in), but "
                                         f"hook point {hook} of the active store {self.store.name} is "
                                         f"{width} wide")
                found = find_stats(store, sae_id, weight_fingerprint(sae))
                if found is not None and found == find_stats(store, sae_id):  # what the views will read
                    stats = found.path
        return self.model_copy(update=dict(hook=hook, sae=folder, sae_id=sae_id, stats=stats))

    def has_stats(self) -> bool:
        """True once the active SAE's feature statistics over the active store exist."""
        return self.stats_file() is not None


def path_text(path: Path, root: Path) -> str:
    """``path`` as workspace.json keeps it: relative to ``root`` when under it, else absolute."""
    path, root = Path(os.path.normpath(path)), Path(os.path.normpath(root))
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _split_file(spec: str) -> tuple[str, str] | None:
    """A spec naming a file or folder (a folder, ``file.py:factory``) as (that file, the
    rest of the spec), else None (smollm2, ``hf:NAME``, ``package.module:factory``)."""
    parsed = ModelSpec.parse(spec)
    file = parsed.file if parsed.kind in ("path", "factory") else None
    if not file or not parsed.text.startswith(file):
        return None
    return file, parsed.text[len(file):]


def model_text(spec: str, root: Path) -> str:
    """A model spec as workspace.json keeps it: a file or folder it names under ``root``
    relative to it (``./NAME`` when directly in it, so it still reads as a path)."""
    parts = _split_file(spec)
    if parts is None or not os.path.isabs(parts[0]):
        return spec
    text = path_text(Path(parts[0]), root)
    if not os.path.isabs(text) and "/" not in text and os.sep not in text:
        text = f"./{text}"
    return text + parts[1]


def model_at(spec: str, root: Path) -> str:
    """A model spec read from workspace.json, a relative file or folder in it made absolute
    under ``root``."""
    parts = _split_file(spec)
    if parts is None or os.path.isabs(parts[0]) or parts[0].startswith("~"):
        return spec
    return os.path.normpath(Path(root) / parts[0]) + parts[1]
