"""Workspaces: a folder holding stores, SAEs, projections and session files, described by
``workspace.json``. The demo workspace's pipeline is ``engine.demo``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_serializer, model_validator

from engine.errors import LatentLabError
from engine.specs import SpecFile, read_json
from engine.store.activations import ActivationStore

MANIFEST = "workspace.json"
PATH_FIELDS = ("store", "sae", "stats")  # relative to the folder in workspace.json


def default_workspace() -> Path:
    """$LATENTLAB_WORKSPACE, else ``demo`` in the user data folder."""
    from platformdirs import user_data_dir
    return Path(os.environ.get("LATENTLAB_WORKSPACE") or Path(user_data_dir("latentlab")) / "demo")


class Workspace(SpecFile):
    """A workspace folder and its active model, store, hook point and SAE."""

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

    @model_validator(mode="after")
    def _under_root(self) -> Workspace:
        for key in PATH_FIELDS:
            if getattr(self, key) is not None:
                setattr(self, key, self.root / getattr(self, key))
        return self

    @field_serializer(*PATH_FIELDS)
    def _relative(self, value: Path | None) -> str | None:
        return None if value is None else os.path.relpath(value, self.root)

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
        return cls.open(root) if (root / MANIFEST).is_file() else cls.create(root)

    def save(self) -> None:
        self.write(self.root / MANIFEST)

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
