"""Session files: the workspace, active store/hook/SAE, window layout, selection, focused
latents, steering recipe and each view's own settings, as one JSON file."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from desktop_app.state import ROWS, AppState, Selection
from engine.errors import LatentLabError

FORMAT = 1


@dataclass
class Session:
    """What a session file holds; ``layout`` and ``geometry`` are Qt's saved window state."""

    workspace: str | None = None
    store: str | None = None
    hook: str | None = None
    sae: str | None = None
    stats: str | None = None
    selection: dict[str, Any] = field(default_factory=dict)
    focus: list[int] = field(default_factory=list)
    steering: list[dict[str, Any]] = field(default_factory=list)
    layout: str = ""  # base64 of QMainWindow.saveState()
    geometry: str = ""  # base64 of QMainWindow.saveGeometry()
    views: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def capture(cls, state: AppState, layout: bytes = b"", geometry: bytes = b"",
                views: dict[str, dict[str, Any]] | None = None) -> Session:
        sel = state.selection
        return cls(
            workspace=_str(state.workspace), store=_str(state.store), hook=state.hook,
            sae=_str(state.sae), stats=state.stats,
            selection={"kind": sel.kind, "ids": sel.ids.tolist(), "how": sel.how},
            focus=list(state.focus), steering=list(state.steering),
            layout=base64.b64encode(layout).decode(), geometry=base64.b64encode(geometry).decode(),
            views=views or {})

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        data = {"format": FORMAT, **self.__dict__}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Session:
        """Read a session file; a clear error names the file and the field at fault."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LatentLabError(f"session file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LatentLabError(f"{path}: not a readable session file ({exc})") from None
        if not isinstance(data, dict):
            raise LatentLabError(f"{path}: expected a JSON object")
        if int(data.pop("format", FORMAT)) > FORMAT:
            raise LatentLabError(f"{path}: written by a newer LatentLab (format > {FORMAT})")
        known = set(cls.__dataclass_fields__)
        session = cls(**{k: v for k, v in data.items() if k in known})
        ids = session.selection.get("ids", [])
        if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
            raise LatentLabError(f"{path}: field 'selection.ids' must be a list of row or "
                                 "latent numbers")
        if not all(isinstance(i, int) for i in session.focus):
            raise LatentLabError(f"{path}: field 'focus' must be a list of latent numbers")
        return session

    def selection_value(self) -> Selection:
        s = self.selection
        return Selection(s.get("kind", ROWS), np.asarray(s.get("ids", []), np.int64), s.get("how", ""))

    def layout_bytes(self) -> bytes:
        return base64.b64decode(self.layout) if self.layout else b""

    def geometry_bytes(self) -> bytes:
        return base64.b64decode(self.geometry) if self.geometry else b""


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
