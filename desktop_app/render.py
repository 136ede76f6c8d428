"""Draw an exported figure again, headless, from its record (``F.json``, desktop_app.figure):
check that every input is the file it was (refused before anything runs, naming the file and
the expected and found hashes), build the view on an AppState with the recorded fields, lay
out the projections it drew, restore its figure state with its jobs run at once
(``InlineRunner``), and export it with the same ``export_figure`` and the same record."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from desktop_app.figure import figure_root, read_figure, resolved_values
from desktop_app.state import AppState, Selection
from desktop_app.view import InlineRunner, restore_figure
from engine.api import (
    JobContext,
    LatentLabError,
    Workspace,
    check_inputs,
    project,
    resolve_device,
    resolve_path,
)

ViewFactories = Sequence[tuple[str, Any]]  # (dock name, factory taking AppState), as main.py lists them
SETTLE_ROUNDS = 5  # rounds of Qt events for deferred work (timers at 0 ms, layouts) to land


def headless_app() -> Any:
    """The QApplication (made offscreen when there is no display)."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import qInstallMessageHandler
    from PySide6.QtWidgets import QApplication
    if QApplication.instance() is None and os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        previous = None

        def quiet(kind: Any, context: Any, message: str) -> None:
            """Drop the offscreen platform's note that it cannot size windows (nothing is shown)."""
            if "propagateSizeHints" not in message:
                if previous is not None:
                    previous(kind, context, message)
                else:
                    print(message, file=sys.stderr)
        previous = qInstallMessageHandler(quiet)
    return QApplication.instance() or QApplication(sys.argv[:1])


def render_figure(figure: str | os.PathLike, out: str | os.PathLike, views: ViewFactories,
                  device: str | None = "cpu") -> Path:
    """Write the figure ``figure`` records to ``out`` (png, svg or pdf by its suffix)."""
    from desktop_app.export import check_target, export_figure
    record = read_figure(figure)
    try:
        width, height = (int(v) for v in record["size"])
        dpi = int(record.get("dpi", 150))
    except (KeyError, TypeError, ValueError):
        raise LatentLabError(f"{figure}: its \"size\" should be [width, height] in pixels") from None
    check_target(Path(out), width, height, dpi)
    root = figure_root(record, figure)
    check_inputs((record.get("provenance") or {}).get("inputs") or [], root)
    factory = _factory(record, views, figure)
    app = headless_app()
    from desktop_app.app import configure_plots
    configure_plots()
    state = AppState(InlineRunner(resolve_device(device or "cpu")))
    view = factory(state)
    view.resize(*record.get("widget_size") or record["size"])
    view.show()
    try:
        _restore_state(state, record, root)
        _settle(app)
        for name, params in (record.get("projections") or {}).items():
            state.set_projection(_layout(name, params, state, root))
        restore_figure(view, resolved_values(record.get("view_state") or {}, root))
        _settle(app)
        return export_figure(view, out, width, height, dpi, record=record)
    finally:
        view.cancel_requests()
        view.close()
        view.deleteLater()
        _settle(app)


def _factory(record: dict[str, Any], views: ViewFactories, figure: Any) -> Any:
    """The view factory the record names (by its class name)."""
    name = record.get("view")
    for _, factory in views:
        if getattr(factory, "__name__", None) == name:
            return factory
    known = ", ".join(getattr(f, "__name__", str(f)) for _, f in views)
    raise LatentLabError(f"{figure}: figure of view {name!r}, which this LatentLab does not have ({known})")


def _restore_state(state: AppState, record: dict[str, Any], root: Path | None) -> None:
    """AppState's fields as the figure had them (paths resolved against the workspace)."""
    fields = record.get("state") or {}

    def path(key: str) -> Path | None:
        value = fields.get(key)
        return None if value is None else resolve_path(value, root)
    sel = fields.get("selection") or {}
    with state.batch():
        state.set_workspace(root)
        state.set_model(fields.get("model"))
        state.set_store(path("store"))
        state.set_hook(fields.get("hook"))
        state.set_sae(path("sae"))
        state.set_stats(fields.get("stats"))
        state.set_selection(Selection(sel.get("kind", "rows"), np.asarray(sel.get("ids", []), np.int64),
                                      sel.get("how", "")))
        state.set_focus(tuple(fields.get("focus") or ()))


def _layout(name: str, params: dict[str, Any], state: AppState, root: Path | None) -> Any:
    """The projection ``name`` laid out anew with the arguments it was made with (from the
    workspace's layout cache when it holds it)."""
    params = dict(params)
    what, hook = params.pop("what"), params.pop("hook")
    method, max_rows, seed = params.pop("method"), params.pop("max_rows", None), params.pop("seed", 0)
    umap = {k: v for k, v in params.items() if v is not None}
    cache = None if root is None or not root.is_dir() else Workspace(root=root).projections_dir
    layout = project(JobContext(device=resolve_device("cpu")), state.store, hook, method, what,
                     sae_path=state.sae, cache_dir=cache, max_rows=max_rows, seed=seed, **umap)
    if layout.name != name:
        raise LatentLabError(f"the figure's projection {name!r} came out as {layout.name!r}")
    return layout


def _settle(app: Any) -> None:
    for _ in range(SETTLE_ROUNDS):
        app.processEvents()
