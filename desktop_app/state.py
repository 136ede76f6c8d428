"""AppState: the one shared state of the desktop app. Every field is a Qt signal plus a
setter that emits only when the value changed; views subscribe to the fields they draw and
write only through these setters, which is what makes linked brushing free."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PySide6.QtCore import QObject, Signal

from engine.api import Layout, Trail

ROWS = "rows"  # selection ids are activation-store rows (tokens, images)
LATENTS = "latents"  # selection ids are SAE latents


@dataclass(frozen=True, eq=False)
class Selection:
    """A set of ids (sorted, unique int64) of one kind, with how it was made beside them."""

    kind: str = ROWS
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    how: str = ""  # e.g. "lasso in scatter (rows/pca)", "top rows of latent 12"
    mask: np.ndarray | None = None  # optional (n,) bool over all ids of this kind, computed once
    live: bool = False  # made while a brush is still moving; the final one follows on release

    def __post_init__(self) -> None:
        ids = np.asarray(self.ids, dtype=np.int64).ravel()
        if ids.size > 1 and not bool((ids[1:] > ids[:-1]).all()):  # already sorted unique: kept
            ids = np.unique(ids)
        object.__setattr__(self, "ids", ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Selection) and self.kind == other.kind and self.live == other.live
                and np.array_equal(self.ids, other.ids))

    def __hash__(self) -> int:
        return hash((self.kind, self.live, self.ids.tobytes()))

    def as_mask(self, n: int) -> np.ndarray:
        """(n,) bool, True at the selected ids (ids >= n are ignored)."""
        if self.mask is not None and len(self.mask) == n:
            return self.mask
        m = np.zeros(n, bool)
        m[self.ids[self.ids < n]] = True
        return m


def replace_mode(old: Selection, new: Selection) -> Selection:
    return new


def _same_masks(old: Selection, new: Selection) -> bool:
    return old.mask is not None and new.mask is not None and len(old.mask) == len(new.mask)


def or_mode(old: Selection, new: Selection) -> Selection:
    if old.kind != new.kind:
        return new
    how = f"{old.how} + {new.how}"
    if _same_masks(old, new):  # one pass over two masks instead of sorting the ids
        mask = old.mask | new.mask
        return Selection(new.kind, np.flatnonzero(mask), how, mask, new.live)
    return Selection(new.kind, np.union1d(old.ids, new.ids), how, live=new.live)


def and_not_mode(old: Selection, new: Selection) -> Selection:
    if old.kind != new.kind:
        return old
    how = f"{old.how} - {new.how}"
    if _same_masks(old, new):
        mask = old.mask & ~new.mask
        return Selection(new.kind, np.flatnonzero(mask), how, mask, new.live)
    return Selection(new.kind, np.setdiff1d(old.ids, new.ids), how, live=new.live)


class JobRunner(Protocol):
    """What views use to ask for work; the shell's EngineBridge implements it."""

    def submit(self, title: str, fn: Callable[..., Any], *, key: str | None = None,
               on_result: Callable[[Any], None] | None = None,
               on_partial: Callable[[Any], None] | None = None,
               on_error: Callable[[str, str], None] | None = None,
               **params: Any) -> int: ...

    def cancel(self, job_id: int) -> None: ...


class AppState(QObject):
    """Workspace, active model/store/hook/SAE, projections, selection, focused latents, the
    steering recipe and its runs' trails. ``engine`` is the job runner views submit work to."""

    workspace_changed = Signal(object)  # Path | None
    model_changed = Signal(object)  # model spec str | None
    store_changed = Signal(object)  # Path | None
    hook_changed = Signal(object)  # str | None
    sae_changed = Signal(object)  # Path (SAE folder) | None
    stats_changed = Signal(object)  # sae id whose feature statistics are ready | None
    projection_changed = Signal(str)  # name of the projection that was added or moved
    selection_changed = Signal(object)  # Selection
    focus_changed = Signal(object)  # tuple[int, ...] focused latents
    steering_changed = Signal(object)  # tuple of intervention dicts
    trails_changed = Signal(object)  # tuple[Trail, ...]: steered runs' activations, for the map

    def __init__(self, engine: JobRunner | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine = engine
        self.workspace: Path | None = None
        self.model: str | None = None
        self.store: Path | None = None
        self.hook: str | None = None
        self.sae: Path | None = None
        self.stats: str | None = None
        self.projections: dict[str, Layout] = {}
        self.selection = Selection()
        self.focus: tuple[int, ...] = ()
        self.steering: tuple[dict[str, Any], ...] = ()
        self.trails: tuple[Trail, ...] = ()  # baseline first, then the steered run(s)
        self._held: dict[str, Any] | None = None

    # ------------------------------------------------------------------ batching
    @contextmanager
    def batch(self) -> Iterator[None]:
        """Change several fields, emitting each changed field's signal once at the end."""
        outer = self._held is None
        if outer:
            self._held = {}
        try:
            yield
        finally:
            if outer:
                held, self._held = self._held, None
                for name, value in held.items():
                    getattr(self, f"{name}_changed").emit(value)

    def _set(self, name: str, value: Any) -> None:
        old = getattr(self, name)
        same = old is value or (type(old) is type(value) and _equal(old, value))
        if same:
            return
        setattr(self, name, value)
        if self._held is not None:
            self._held[name] = value
        else:
            getattr(self, f"{name}_changed").emit(value)

    # ------------------------------------------------------------------ setters
    def set_workspace(self, path: str | Path | None) -> None:
        self._set("workspace", None if path is None else Path(path))

    def set_model(self, spec: str | None) -> None:
        """A new model clears the trails (runs of the old one)."""
        if spec == self.model:
            return
        with self.batch():
            self._set("model", spec)
            self._set("trails", ())

    def set_store(self, path: str | Path | None) -> None:
        """A new store clears what was tied to the old one: its projections and selection."""
        path = None if path is None else Path(path)
        if path == self.store:
            return
        with self.batch():
            self._set("store", path)
            self.projections = {}
            if self.selection.kind == ROWS:
                self._set("selection", Selection())

    def set_hook(self, hook: str | None) -> None:
        self._set("hook", hook)

    def set_sae(self, path: str | Path | None) -> None:
        path = None if path is None else Path(path)
        if path == self.sae:
            return
        with self.batch():
            self._set("sae", path)
            self._set("stats", None)
            self._set("focus", ())
            if self.selection.kind == LATENTS:
                self._set("selection", Selection(LATENTS))
            for name in [n for n in self.projections if n.startswith(LATENTS)]:
                del self.projections[name]

    def set_stats(self, sae_id: str | None) -> None:
        self._set("stats", sae_id)

    def set_projection(self, projection: Layout) -> None:
        """Add or move one projection (progressive layouts call this once per frame)."""
        self.projections[projection.name] = projection
        self.projection_changed.emit(projection.name)

    def set_selection(self, selection: Selection,
                      mode: Callable[[Selection, Selection], Selection] = replace_mode) -> None:
        self._set("selection", mode(self.selection, selection))

    def clear_selection(self) -> None:
        self._set("selection", Selection(self.selection.kind))

    def set_focus(self, latents: int | tuple[int, ...] | list[int]) -> None:
        if isinstance(latents, (int, np.integer)):
            latents = (int(latents),)
        self._set("focus", tuple(int(i) for i in latents))

    def set_steering(self, recipe: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> None:
        self._set("steering", tuple(recipe))

    def set_trails(self, trails: tuple[Trail, ...] | list[Trail]) -> None:
        """The steering view's latest runs (baseline first) read at a hook point: the scatter
        places them in its layout, the feature browser ranks the latents they changed."""
        self._set("trails", tuple(trails))


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError):  # numpy arrays compared elementwise
        return False
