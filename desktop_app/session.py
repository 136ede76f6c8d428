"""Session files: the workspace, active store/hook/SAE, window layout, selection, focused
latents, steering recipe and each view's own settings, as one JSON file (a typed, versioned
``SpecFile``: format 1 kept the recipe as a bare list of items, format 2 as the recipe file
``main.py steer --recipe`` reads)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import ConfigDict, Field

from desktop_app.state import ROWS, AppState, Selection
from engine.api import Spec, SpecFile, SteeringRecipe


class SavedSelection(Spec):
    model_config = ConfigDict(extra="ignore")
    kind: str = ROWS
    ids: list[Annotated[int, Field(ge=0)]] = []  # row or latent numbers
    how: str = ""


class Session(SpecFile):
    """What a session file holds; ``layout`` and ``geometry`` are Qt's saved window state."""

    model_config = ConfigDict(extra="ignore", frozen=False)
    what: ClassVar[str] = "session file"
    FORMAT: ClassVar[int] = 2
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

    def save(self, path: str | os.PathLike) -> Path:
        return self.write(path)

    @property
    def steering(self) -> list[dict[str, Any]]:
        """The recipe's items as the dicts AppState carries."""
        return self.recipe.dicts()

    def selection_value(self) -> Selection:
        s = self.selection
        return Selection(s.kind, np.asarray(s.ids, np.int64), s.how)

    def layout_bytes(self) -> bytes:
        return base64.b64decode(self.layout) if self.layout else b""

    def geometry_bytes(self) -> bytes:
        return base64.b64decode(self.geometry) if self.geometry else b""


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
