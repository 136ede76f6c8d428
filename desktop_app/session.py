"""Session files: the workspace, active store/hook/SAE, window layout, selection, focused
latents, steering recipe and each view's own settings, as one JSON file (a typed, versioned
``SpecFile``: format 1 kept the recipe as a bare list of items, format 2 as the recipe file
``main.py steer --recipe`` reads, format 3 writes paths under the session file's folder
relative to it and records the store's and SAE's content hashes, so a workspace folder
copied to another machine opens there and a changed input is named).

In memory every path is absolute; ``save`` writes those under the file's folder (the
workspace, for its own ``session.json``) as ``./rel`` and ``load`` resolves them again. An
older file's absolute paths under a folder that is gone are read from the same place under
the file's folder when they are there (the workspace was moved), and ``notes`` says so."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import ConfigDict, Field, PrivateAttr

from desktop_app.state import ROWS, AppState, Selection
from engine.api import (
    JobContext,
    Spec,
    SpecFile,
    SteeringRecipe,
    Workspace,
    file_digest,
    input_problems,
    portable_path,
    quick_read,
    resolve_path,
)

INPUTS = ("store", "sae")  # the fields whose files a session records the content hashes of


class SavedSelection(Spec):
    model_config = ConfigDict(extra="ignore")
    kind: str = ROWS
    ids: list[Annotated[int, Field(ge=0)]] = []  # row or latent numbers
    how: str = ""


class SavedInput(Spec):
    """An input file or folder as the session saw it: its role, path and content hash."""

    model_config = ConfigDict(extra="ignore")
    role: str
    path: str
    sha256: str


class Session(SpecFile):
    """What a session file holds; ``layout`` and ``geometry`` are Qt's saved window state."""

    model_config = ConfigDict(extra="ignore", frozen=False)
    what: ClassVar[str] = "session file"
    FORMAT: ClassVar[int] = 3
    workspace: str | None = None
    store: str | None = None
    hook: str | None = None
    sae: str | None = None
    stats: str | None = None
    selection: SavedSelection = SavedSelection()
    focus: list[int] = []
    recipe: SteeringRecipe = Field(default_factory=SteeringRecipe, alias="steering")
    layout: str = ""  # base64 of QMainWindow.saveState()
    geometry: str = ""  # base64 of QMainWindow.saveGeometry()
    views: dict[str, dict[str, Any]] = {}
    inputs: list[SavedInput] = []  # the store's and SAE's hashes when saved (format 3)
    saved_in: str | None = None  # the folder the file was saved in (format 3; older: the workspace)
    _notes: list[str] = PrivateAttr(default_factory=list)

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Formats 1 and 2 wrote absolute paths and no folder: their workspace stands for it."""
        if version < 3 and isinstance(data.get("workspace"), str):
            data.setdefault("saved_in", data["workspace"])
        return data

    @classmethod
    def capture(cls, state: AppState, layout: bytes = b"", geometry: bytes = b"",
                views: dict[str, dict[str, Any]] | None = None) -> Session:
        sel = state.selection
        return cls.parse(dict(
            workspace=_str(state.workspace), store=_str(state.store), hook=state.hook,
            sae=_str(state.sae), stats=state.stats,
            selection={"kind": sel.kind, "ids": sel.ids.tolist(), "how": sel.how},
            focus=list(state.focus), steering=list(state.steering),
            layout=base64.b64encode(layout).decode(), geometry=base64.b64encode(geometry).decode(),
            views=views or {}))

    @classmethod
    def load(cls, path: str | os.PathLike, where: str | None = None) -> Session:
        """Read a session file (any format) with its paths made absolute again (see the module)."""
        session = super().load(path, where)
        session._resolve(_folder(path))
        return session

    def save(self, path: str | os.PathLike) -> Path:
        """Write the file (format 3): the store's and SAE's hashes recorded (``inputs``;
        memoised, so a second save only stats them), paths under its folder relative."""
        folder = _folder(path)
        self.saved_in = str(folder)
        self.inputs = [SavedInput(role=role, path=value, sha256=file_digest(value))
                       for role, value in ((r, getattr(self, r)) for r in INPUTS)
                       if value and Path(value).exists()]
        return self._mapped(lambda p: _portable(p, folder)).write(path)

    @property
    def notes(self) -> list[str]:
        """What loading found moved (the workspace read from another folder), in sentences."""
        return list(self._notes)

    @property
    def steering(self) -> list[dict[str, Any]]:
        """The recipe's items as the dicts AppState carries."""
        return self.recipe.dicts()

    def missing(self, field: str) -> bool:
        """Whether ``field`` (store, sae) names a file or folder that is not there."""
        value = getattr(self, field)
        return bool(value) and not Path(value).exists()

    def selection_value(self) -> Selection:
        s = self.selection
        return Selection(s.kind, np.asarray(s.ids, np.int64), s.how)

    def layout_bytes(self) -> bytes:
        return base64.b64decode(self.layout) if self.layout else b""

    def geometry_bytes(self) -> bytes:
        return base64.b64decode(self.geometry) if self.geometry else b""

    # ------------------------------------------------------------------ paths
    def _resolve(self, folder: Path) -> None:
        """Make ``./rel`` paths absolute under ``folder``; read an absolute path under the
        folder the file was saved in (now gone) from under ``folder`` where it is there."""
        old = Path(self.saved_in) if self.saved_in and os.path.isabs(self.saved_in) else None
        moved = old is not None and old != folder and not old.exists()
        rebased: list[str] = []

        def absolute(text: str) -> str:
            if text.startswith("./"):
                return _norm(resolve_path(text, folder))
            if moved and os.path.isabs(text) and not os.path.exists(text):
                there = _rebased(Path(text), old, folder)
                if there is not None:
                    rebased.append(text)
                    return str(there)
            return text

        def view_path(text: str) -> str:  # a view's text that only looks like a path stays
            out = absolute(text)
            return out if os.path.exists(out) else text

        resolved = self._mapped(absolute, view_path)
        for name in ("workspace", "store", "sae", "inputs", "recipe", "views"):
            setattr(self, name, getattr(resolved, name))
        if moved and rebased:
            self._notes.append(f"session saved in {old}, which is gone: {len(rebased)} of its paths are "
                               f"read from {folder} instead")
        elif old is not None and old != folder and self.inputs:
            self._notes.append(f"session saved in {old}: its files are read from {folder}")

    def _mapped(self, path: Callable[[str], str], view_path: Callable[[str], str] | None = None) -> Session:
        """A copy with ``path`` applied to every path it holds: the workspace, store, SAE,
        the inputs', the recipe's SAE folders, and (``view_path``, default ``path``) the
        views' strings that look like paths."""
        view_path = view_path or path
        opt = lambda v: None if v is None else path(v)  # noqa: E731
        items = [i.model_copy(update={"sae": path(i.sae)}) if i.sae else i for i in self.recipe.items]
        copy = self.model_copy(update=dict(
            workspace=opt(self.workspace), store=opt(self.store), sae=opt(self.sae),
            inputs=[i.model_copy(update={"path": path(i.path)}) for i in self.inputs],
            recipe=self.recipe.model_copy(update={"items": items}),
            views=_strings(self.views, lambda s: view_path(s) if _names_file(s) else s)))
        copy._notes = list(self._notes)
        return copy


@quick_read
def session_input_problems(ctx: JobContext, inputs: list[dict[str, Any]]) -> list[str]:
    """The job that checks a restored session's inputs: a sentence per missing or changed
    file (expected and found hashes); quick once hashed, as hashes are memoised."""
    return input_problems(inputs)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _norm(path: str | os.PathLike) -> str:
    return os.path.normpath(Path(path).expanduser().absolute())


def _folder(path: str | os.PathLike) -> Path:
    return Path(_norm(Path(path).parent))


def _portable(text: str, folder: Path) -> str:
    """An absolute path under ``folder`` as ``./rel`` (the folder itself as ``./``)."""
    if not os.path.isabs(text):
        return text
    out = portable_path(text, folder)
    return "./" if out == "./." else out


def _rebased(path: Path, old: Path, new: Path) -> Path | None:
    """``path`` (under ``old``) at the same place under ``new``, when it is there (``old``
    itself, an older file's workspace, only when ``new`` is a workspace)."""
    if not path.is_relative_to(old):
        return None
    there = new / path.relative_to(old)
    if path == old:
        return new if Workspace.holds(new) else None
    return there if there.exists() else None


def _names_file(text: str) -> bool:
    """A view's string that is a path (absolute, or ``./`` as saved), not free text."""
    return "\n" not in text and (text.startswith("./") or os.path.isabs(text))


def _strings(value: Any, fn: Callable[[str], str]) -> Any:
    """``value`` (JSON-like) with ``fn`` applied to every string in it."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v, fn) for v in value]
    return value
