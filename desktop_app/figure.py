"""A figure's record: where an exported figure came from (its provenance: inputs with content
hashes, model, SAE, parameters, version, time) and what its view needs to draw it again
(which view, its figure state, the AppState fields, the layouts it shows, size and dpi).
Written beside every export as ``F.json`` and embedded in the image; ``desktop_app.render``
reads it back. Paths inside the workspace are stored relative to it, and the workspace
relative to the figure's folder when it lies inside it, so a copied folder still renders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from desktop_app.state import AppState
from desktop_app.view import figure_inputs, figure_projections, figure_state
from engine.api import (
    ActivationStore,
    LatentLabError,
    portable_path,
    provenance_record,
    resolve_path,
)

FIGURE_KIND = "latentlab-figure"
FIGURE_FORMAT = 1
TEXT_KEY = "latentlab-provenance"  # the PNG text chunk's key


def figure_record(view: Any, state: AppState | None, width: int, height: int, dpi: int,
                  folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """The record of ``view`` as it draws now, exported at ``width`` x ``height`` and ``dpi``
    into ``folder`` (the workspace is stored relative to it when inside it)."""
    root = None if state is None else state.workspace
    sides: list[tuple[str, Path]] = []
    if state is not None and state.store is not None:
        sides.append(("store", Path(state.store)))
    if state is not None and state.sae is not None:
        sides.append(("sae", Path(state.sae)))
    sides += [(role, Path(path)) for role, path in figure_inputs(view)]
    inputs, seen = [], set()
    for role, path in sides:
        key = os.path.normpath(path.absolute())
        if key not in seen and path.exists():
            seen.add(key)
            inputs.append((role, path))
    layouts = {} if state is None else {
        name: state.projections[name].provenance["params"] for name in figure_projections(view)
        if name in state.projections and state.projections[name].provenance}
    model_id, model_hash = _model(state)
    view_state = portable_values(figure_state(view), root)
    record = {
        "kind": FIGURE_KIND, "format": FIGURE_FORMAT, "view": type(view).__name__,
        "size": [int(width), int(height)], "dpi": int(dpi),
        "widget_size": [view.width(), view.height()] if hasattr(view, "width") else None,
        "workspace": None if root is None else _from_folder(root, folder),
        "state": _state_fields(state, root), "view_state": view_state, "projections": layouts,
    }
    record["provenance"] = provenance_record(
        "figure", inputs=inputs, model_id=model_id, model_hash=model_hash,
        sae=None if state is None else state.sae, sae_id=None if state is None else state.stats,
        params={"view": record["view"], "size": record["size"], "dpi": record["dpi"],
                "view_state": view_state, "projections": layouts}, root=root)
    return record


def _from_folder(root: Path, folder: str | os.PathLike | None) -> str:
    """The workspace as a figure in ``folder`` stores it: ``./..`` style when one of the two
    folders holds the other (the pair travels together), else absolute."""
    if folder is not None:
        a, b = Path(os.path.abspath(root)), Path(os.path.abspath(folder))
        if a == b or a in b.parents or b in a.parents:
            return "./" + Path(os.path.relpath(a, b)).as_posix()
    return portable_path(root, None)


def _model(state: AppState | None) -> tuple[str | None, str | None]:
    """The active store's model id and weight hash (the store records them), else the model."""
    if state is None:
        return None, None
    if state.store is not None and Path(state.store).is_file():
        try:
            with ActivationStore.open(state.store) as store:
                return store.meta.model_id, store.meta.model_hash
        except LatentLabError:
            pass
    return state.model, None


def _state_fields(state: AppState | None, root: Path | None) -> dict[str, Any]:
    """AppState's fields a figure depends on, paths relative to the workspace."""
    if state is None:
        return {}
    sel = state.selection

    def rel(path: Path | None) -> str | None:
        return None if path is None else portable_path(path, root)
    return {"model": state.model, "store": rel(state.store), "hook": state.hook, "sae": rel(state.sae),
            "stats": state.stats, "selection": {"kind": sel.kind, "ids": sel.ids.tolist(), "how": sel.how},
            "focus": list(state.focus)}


def portable_values(value: Any, root: Path | None) -> Any:
    """``value`` (JSON-able) with every absolute path inside ``root`` written ``./relative``."""
    if isinstance(value, dict):
        return {k: portable_values(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_values(v, root) for v in value]
    if root is not None and isinstance(value, str) and os.path.isabs(value) and os.path.exists(value):
        return portable_path(value, root)
    return value


def resolved_values(value: Any, root: Path | None) -> Any:
    """``value`` with every ``./relative`` path string resolved against ``root``."""
    if isinstance(value, dict):
        return {k: resolved_values(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [resolved_values(v, root) for v in value]
    if root is not None and isinstance(value, str) and value.startswith("./"):
        return str(resolve_path(value, root))
    return value


def read_figure(path: str | os.PathLike) -> dict[str, Any]:
    """A figure record from ``F.json``; LatentLabError names the file when it is not one."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise LatentLabError(f"{path}: no such figure file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LatentLabError(f"{path}: cannot read it as a figure record ({exc})") from None
    if not isinstance(record, dict) or record.get("kind") != FIGURE_KIND:
        raise LatentLabError(f"{path}: not a LatentLab figure record (no \"kind\": \"{FIGURE_KIND}\")")
    if int(record.get("format", 0)) > FIGURE_FORMAT:
        raise LatentLabError(f"{path}: figure format {record['format']} is newer than this LatentLab reads "
                             f"({FIGURE_FORMAT})")
    return record


def figure_root(record: dict[str, Any], figure_path: str | os.PathLike) -> Path | None:
    """The workspace a figure record names, resolved against the figure file's folder."""
    stored = record.get("workspace")
    return None if stored is None else resolve_path(stored, Path(figure_path).parent)


def sidecar(path: str | os.PathLike) -> Path:
    """``F.json`` beside the image ``F.png`` / ``F.svg`` / ``F.pdf``."""
    return Path(path).with_suffix(".json")
