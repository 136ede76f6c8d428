"""The embedding scatter: one 2-D layout of activation rows or SAE latents from
``state.projections``, coloured by a label, the token, the position or the focused latent
(rows) or by density (latents), with pan/zoom, lasso and box brushing into
``state.selection``, a hover tip naming the point, and figure export.

Two drawing paths with the same behaviour: vispy on hardware OpenGL, pyqtgraph (with a
count image above 100k visible points) on software OpenGL; see ``choose_backend``.

Colour-mode rule when a latent gets focused: a rows scatter switches to "focused feature"
unless the user picked a categorical mode (a label or the token) themself; choosing a
continuous mode (or the focused feature) by hand lifts that pin again."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QEvent, QObject, QPoint, QRectF, Qt, QTimer
from PySide6.QtGui import QColor, QGuiApplication, QPainter
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QToolButton,
    QVBoxLayout,
    QWidget,
)
from shiboken6 import isValid

from desktop_app.state import (
    LATENTS,
    ROWS,
    AppState,
    Selection,
    and_not_mode,
    or_mode,
    replace_mode,
)
from desktop_app.view import LatestWins
from engine import api
from engine.api import JobContext, Layout
from views.scatter import colour
from views.scatter.geom import ids_mask, points_in_polygon
from views.scatter.legend import WIDTH as LEGEND_WIDTH
from views.scatter.legend import HoverTip, LegendWidget, paint_legend
from views.scatter.modes import ColourModes
from views.scatter.trails import TrailLayer, TrailLegend

SOFTWARE_GL = ("llvmpipe", "softpipe", "swrast", "software")
HOVER_PX = 8.0  # the hover tip names the nearest point within this many pixels
LIVE_MS = 15  # live brushing: the latest brush becomes the selection this soon after a move
Mode = Callable[[Selection, Selection], Selection]


@lru_cache(maxsize=1)
def gl_renderer() -> str:
    """The OpenGL renderer string of this display ("" when no context can be made)."""
    from PySide6.QtGui import QOffscreenSurface, QOpenGLContext
    ctx, surface = QOpenGLContext(), QOffscreenSurface()
    surface.create()
    if not ctx.create() or not ctx.makeCurrent(surface):
        return ""
    try:
        return str(ctx.functions().glGetString(0x1F01) or "")  # GL_RENDERER
    finally:
        ctx.doneCurrent()


def choose_backend(requested: str | None = None) -> str:
    """An explicit ``requested`` wins; else LATENTLAB_SCATTER; else pyqtgraph on software GL."""
    name = requested or os.environ.get("LATENTLAB_SCATTER", "").strip().lower() or None
    if name is None:
        renderer = gl_renderer().lower()
        name = "pyqtgraph" if not renderer or any(s in renderer for s in SOFTWARE_GL) else "vispy"
    if name not in ("vispy", "pyqtgraph"):
        raise ValueError(f"scatter backend must be 'vispy' or 'pyqtgraph', not {name!r}")
    return name


def _marker_size(n: int) -> float:
    return 7.0 if n <= 2_000 else 5.0 if n <= 50_000 else 4.0 if n <= 300_000 else 3.0


def _fingerprint(ids: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(ids).tobytes(), digest_size=8).hexdigest()


class _EscapeFilter(QObject):
    """Escape on the plot clears the selection (before a toolkit can swallow the key)."""

    def __init__(self, clear: Callable[[], None]) -> None:
        super().__init__()
        self.clear = clear

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.KeyPress and event.key() == Qt.Key.Key_Escape:
            self.clear()
            return True
        return False


class ScatterView(ColourModes, QWidget):
    """The embedding scatter of one projection in ``state.projections``."""

    def __init__(self, state: AppState, parent: QWidget | None = None,
                 backend: str | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.backend = choose_backend(backend)
        self._layout: Layout | None = None
        self._finite = np.empty(0, np.int64)  # indices of points with finite coordinates
        self._xy = np.empty((0, 2), np.float32)  # their coordinates, as drawn
        self._all_finite, self._dense = True, False  # see update_coordinates
        self._scheme = colour.uniform(0)
        self._sel = np.zeros(0, bool)
        self._mode, self._pinned = "position", False
        self._info: api.StoreSummary | None = None
        self._vocab: Any = None
        self._stats: dict[str, Any] | None = None
        self._values: dict[tuple, Any] = {}  # value key -> values (cached job results)
        self._ids_print = ""
        self._tree: Any = None
        self.requests = LatestWins(alive=lambda: isValid(self))  # the latest answer of each kind wins
        self._hover = -1
        self._brush_base: Selection | None = None  # the selection when the current drag began
        self._live: tuple[np.ndarray, Mode, str] | None = None  # the latest brush not yet applied
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.timeout.connect(self._apply_live)
        self._build()
        for signal, slot in ((state.projection_changed, self._on_projection_changed),
                             (state.store_changed, self._on_store_changed),
                             (state.sae_changed, self._on_sae_changed),
                             (state.hook_changed, self._on_sae_changed),
                             (state.stats_changed, self._on_stats_changed),
                             (state.selection_changed, self._on_selection_changed),
                             (state.focus_changed, self._on_focus_changed)):
            signal.connect(slot)
        self._on_store_changed(state.store)

    # ------------------------------------------------------------------ widgets
    def _build(self) -> None:
        if self.backend == "vispy":
            from views.scatter.vispy_backend import VispyBackend as Backend
        else:
            from views.scatter.pg_backend import PgBackend as Backend
        self.plot = Backend(self._on_brush, self._on_hover, self._hide_tip)
        self.projection_box, self.colour_box = QComboBox(), QComboBox()
        self.projection_box.setMinimumContentsLength(12)
        self.projection_box.activated.connect(
            lambda i: self.set_projection_name(self.projection_box.itemData(i)))
        self.colour_box.activated.connect(
            lambda i: self.set_colour_mode(self.colour_box.itemData(i)))
        self.status = QLabel("")
        bar = QHBoxLayout()
        for text, widget in (("Points", self.projection_box), ("Colour", self.colour_box)):
            bar.addWidget(QLabel(text))
            bar.addWidget(widget)
        self.mode_group = QButtonGroup(self)
        for mode in ("pan", "lasso", "box"):
            button = QToolButton(text=mode.capitalize(), checkable=True, objectName=mode)
            button.setToolTip(f"{mode}: left drag {'moves the view' if mode == 'pan' else 'selects'}"
                              "; Shift adds, Alt removes; wheel zooms; Esc clears")
            self.mode_group.addButton(button)
            bar.addWidget(button)
            button.toggled.connect(lambda on, m=mode: on and self.set_brush_mode(m))
        self.mode_group.buttons()[0].setChecked(True)
        bar.addStretch(1)
        bar.addWidget(self.status)
        self.hint = QLabel("waiting for a projection", alignment=Qt.AlignmentFlag.AlignCenter)
        self.hint.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.hint.setStyleSheet("color: #888; background: transparent;")
        plot_area = QGridLayout()
        plot_area.addWidget(self.plot.widget, 0, 0)
        plot_area.addWidget(self.hint, 0, 0)
        self.trail_legend = TrailLegend()
        plot_area.addWidget(self.trail_legend, 0, 0, Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.trails = TrailLayer(self.state, self.plot, self._submit, self.trail_legend)
        self.legend = LegendWidget()
        body = QHBoxLayout()
        body.addLayout(plot_area, 1)
        body.addWidget(self.legend)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        outer.addLayout(bar)
        outer.addLayout(body, 1)
        self.tip = HoverTip(self)
        self._escape = _EscapeFilter(self.state.clear_selection)
        for widget in {self.plot.widget, self.plot.viewport()}:
            widget.installEventFilter(self._escape)

    def keyPressEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Escape anywhere in the view clears the selection."""
        if event.key() == Qt.Key.Key_Escape:
            self.state.clear_selection()
            event.accept()
            return
        super().keyPressEvent(event)

    def set_brush_mode(self, mode: str) -> None:
        """What a plain left drag does: "pan", "lasso" or "box"."""
        self.plot.set_mode(mode)
        button = self.findChild(QToolButton, mode)
        if button is not None and not button.isChecked():
            button.setChecked(True)

    # ------------------------------------------------------------------ state handlers
    def _on_store_changed(self, path: Path | None) -> None:
        self._values.clear()
        self._info, self._vocab, self._stats, self._pinned = None, None, None, False
        if path is not None:
            try:
                self._info = api.store_summary(path)
            except Exception as exc:  # noqa: BLE001 - an unreadable store: say so, draw nothing
                self.status.setText(f"store: {exc}")
        if self._info is not None and self._info.has_tokens:
            self._submit("vocab", api.vocab, self._on_vocab, model_id=self._info.model_id)
        self._on_stats_changed(self.state.stats)
        self._refresh_projection_box()

    def _on_sae_changed(self, *_: Any) -> None:
        self._refresh_projection_box()
        if self._layout is not None and self._mode == "focused":
            self._request_colours()

    def _on_stats_changed(self, sae_id: str | None) -> None:
        self._stats = None
        if sae_id and self.state.store is not None:
            self._submit("stats", api.latent_stats, self._on_stats,
                         store_path=self.state.store, sae_id=sae_id)

    def _on_projection_changed(self, name: str) -> None:
        if name == self._name():
            self._show(self.state.projections[name], first=False)
        self._refresh_projection_box()
        self._apply_saved()

    # ------------------------------------------------------------------ sessions
    def session_state(self) -> dict[str, str]:
        """The shown projection and colouring, for session files."""
        return {"projection": self._name() or "", "colour": self._mode}

    def restore_session(self, saved: dict[str, Any]) -> None:
        """Show the saved projection and colouring, now or when the projection arrives."""
        self._saved = dict(saved)
        self._apply_saved()

    def figure_state(self) -> dict[str, Any]:
        """The session state plus the view range and plot size (the figure keeps both)."""
        size = self.plot.widget.size()
        return {**self.session_state(), "view_range": [float(v) for v in self.plot.view_range()],
                "plot_size": [size.width(), size.height()]}

    def restore_figure(self, saved: dict[str, Any]) -> None:
        """Show the saved projection and colouring at the saved plot size and view range."""
        self.restore_session(saved)
        if saved.get("plot_size"):
            self.plot.widget.setFixedSize(*saved["plot_size"])
        if saved.get("view_range") and self._layout is not None:
            self.plot.set_view_range(*saved["view_range"])

    def figure_projections(self) -> list[str]:
        return [self._name() or ""]

    def _apply_saved(self) -> None:
        saved = getattr(self, "_saved", None)
        if not saved or saved.get("projection") not in self.state.projections:
            return
        self._saved = None
        if saved["projection"] != self._name():
            self.set_projection_name(saved["projection"])
        try:
            self.set_colour_mode(saved.get("colour", ""))
        except ValueError:
            pass  # that colouring does not exist for this store any more

    def _on_selection_changed(self, selection: Selection) -> None:
        self.update_selection()

    def _on_focus_changed(self, focus: tuple[int, ...]) -> None:
        if self._layout is None:
            return
        if self._kind() == ROWS and focus and not self._pinned and self._mode != "focused":
            self._mode = "focused"
            self._refresh_colour_box()
        if self._mode in ("focused", "density"):
            self._request_colours()

    # ------------------------------------------------------------------ projections
    def _name(self) -> str | None:
        return None if self._layout is None else self._layout.name

    def _kind(self) -> str:
        return LATENTS if (self._name() or "").startswith(LATENTS) else ROWS

    def _refresh_projection_box(self) -> None:
        names = sorted(self.state.projections, key=lambda n: (not n.startswith(ROWS), n))
        current = self._name()
        if current is not None and current not in self.state.projections:
            self._clear()
            current = None
        if current is None and names:
            self.set_projection_name(names[0])
            return
        self.projection_box.blockSignals(True)
        self.projection_box.clear()
        for name in names:
            self.projection_box.addItem(name, name)
        self.projection_box.setCurrentIndex(max(0, self.projection_box.findData(current)))
        self.projection_box.blockSignals(False)

    def set_projection_name(self, name: str) -> None:
        """Show the projection ``name`` of ``state.projections`` (the view is reset to it)."""
        if name not in self.state.projections:
            raise KeyError(f"no projection {name!r}; there are {sorted(self.state.projections)}")
        kind_changed = self._layout is None or not name.startswith(self._kind())
        self._show(self.state.projections[name], first=True)
        if kind_changed:
            self._mode, self._pinned = self._default_mode(), False
        self._refresh_colour_box()
        self._refresh_projection_box()
        self._request_colours()

    def _show(self, layout: Layout, first: bool) -> None:
        """Draw ``layout``; a later frame of the same point set only moves the points."""
        old, finite = self._layout, self._finite
        self._layout = layout
        same_ids = old is not None and (old.ids is layout.ids or np.array_equal(old.ids, layout.ids))
        if not same_ids:
            self._ids_print = _fingerprint(layout.ids)
            if old is None or len(old.ids) != len(layout.ids):
                self._scheme = colour.uniform(len(layout.ids))
        self.update_coordinates(keep_view=not first and old is not None and len(self._xy) > 0)
        self.trails.set_layout(layout)
        if not same_ids:
            self._sel = self._selection_mask()
            if not first:
                self._request_colours()
        if not same_ids or not np.array_equal(finite, self._finite):
            self.update_colors()  # the backend keeps its colours when only coordinates move

    def _clear(self) -> None:
        self._layout = None
        self._scheme = colour.uniform(0)
        self._sel = np.zeros(0, bool)
        self.update_coordinates(keep_view=False)
        self.update_colors()
        self.trails.set_layout(None)

    # ------------------------------------------------------------------ drawing steps
    def update_coordinates(self, keep_view: bool = True) -> None:
        """Upload the current layout's coordinates (NaN points dropped); colours untouched."""
        xy = np.empty((0, 2), np.float32) if self._layout is None else \
            np.asarray(self._layout.xy, np.float32).reshape(-1, 2)
        self._finite = np.flatnonzero(np.isfinite(xy).all(1))
        self._xy = np.ascontiguousarray(xy[self._finite])
        ids = np.empty(0, np.int64) if self._layout is None else np.asarray(self._layout.ids)
        self._all_finite = len(self._finite) == len(xy)
        # every point drawn and the ids 0..n-1 in order (a store's rows, an SAE's latents): a
        # point mask is then a selection mask as it stands, with no gathers per brush move
        self._dense = (self._all_finite and len(ids) == len(xy) > 0 and ids[0] == 0
                       and bool((np.diff(ids) == 1).all()))
        self._tree, self._hover = None, -1
        self.plot.set_points(self._xy, _marker_size(len(self._xy)))
        if not keep_view:
            self.reset_view()
        n = len(self._xy)
        self.hint.setVisible(n == 0)
        if n and os.environ.pop("LATENTLAB_FIRST_SCATTER", None):  # benchmarks/first_launch.py: once
            self.plot.widget.repaint()  # painted now, then said when (seconds since the epoch)
            print(f"first scatter painted: {n} points at {time.time():.3f}", flush=True)
        self.hint.setText("waiting for a projection" if self._layout is None else "no points to draw")
        if self._layout is not None:
            frame = "" if self._layout.final else " (moving)"
            self.status.setText(f"{n:,} points{frame} · {self.backend}")

    def reset_view(self) -> None:
        """Fit the view to the finite points (a unit box around a single point)."""
        if not len(self._xy):
            self.plot.set_view_range(-1, 1, -1, 1)
            return
        lo, hi = self._xy.min(0).astype(float), self._xy.max(0).astype(float)
        pad = np.where(hi - lo > 0, (hi - lo) * 0.05, 1.0)
        self.plot.set_view_range(lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])

    def update_colors(self) -> None:
        """Push the scheme's colours (selected points emphasised, others dimmed)."""
        codes, palette = self._drawn()
        self.plot.set_colors(codes if self._all_finite else codes[self._finite], palette)
        self.legend.set_legend(self._scheme.legend)

    def update_selection(self) -> None:
        """Recompute which points are selected and recolour; coordinates are not re-sent."""
        self._sel = self._selection_mask()
        self.update_colors()

    def _selection_mask(self) -> np.ndarray:
        sel = self.state.selection
        if self._layout is None or sel.kind != self._kind() or not len(sel):
            return np.zeros(0 if self._layout is None else len(self._layout.ids), bool)
        n = len(self._layout.ids)
        if self._dense and sel.mask is not None and len(sel.mask) >= n:
            return sel.mask[:n]
        return ids_mask(self._layout.ids, sel.ids, sel.mask)

    def _drawn(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-point codes into a palette that holds the dimmed colours after the normal ones."""
        codes, palette = self._scheme.codes, self._scheme.palette
        if self._sel.any():
            codes = np.where(self._sel, codes, codes + len(palette))
            palette = np.concatenate([palette, colour.dimmed(palette)])
        return codes, palette

    def colours(self) -> np.ndarray:
        """(n, 4) float32 RGBA in 0..1 of every point as drawn (NaN points transparent)."""
        codes, palette = self._drawn()
        rgba = palette[codes].astype(np.float32) / 255.0
        missing = np.ones(len(rgba), bool)
        missing[self._finite] = False
        rgba[missing, 3] = 0.0
        return rgba

    # ------------------------------------------------------------------ brushing
    def _on_brush(self, polygon: np.ndarray, modifiers: Qt.KeyboardModifier, final: bool = True) -> None:
        """Live brushing: while the brush moves, the latest brush becomes AppState's
        selection (combined with the selection from before the drag by the modifiers) as
        fast as it can be computed; on release the final one does."""
        mode: Mode = replace_mode
        if modifiers & Qt.KeyboardModifier.ShiftModifier:
            mode = or_mode
        elif modifiers & Qt.KeyboardModifier.AltModifier:
            mode = and_not_mode
        how = "box" if self.plot.mode == "box" else "lasso"
        if self._brush_base is None:
            self._brush_base = self.state.selection
        if not final:
            self._live = (polygon, mode, how)
            if not self._live_timer.isActive():
                self._live_timer.start(LIVE_MS)
            return
        self._live_timer.stop()
        self._live = None
        base, self._brush_base = self._brush_base, None
        self.lasso(polygon, mode, how=how, base=base)

    def _apply_live(self) -> None:
        if self._live is None or self._brush_base is None:
            return
        polygon, mode, how = self._live
        self._live = None
        if len(polygon) >= 3:
            self.lasso(polygon, mode, how=how, base=self._brush_base, live=True)

    def lasso(self, polygon_xy: np.ndarray, mode: Mode = replace_mode, how: str = "lasso",
              base: Selection | None = None, live: bool = False) -> None:
        """Select the points inside a data-space polygon, combined by ``mode`` with ``base``
        (default: the current selection). The selection carries a mask over the layout's
        ids, computed here once for every view."""
        if self._layout is None:
            return
        inside = points_in_polygon(self._xy, polygon_xy)
        if self._dense:  # the points are the ids 0..n-1: the point mask is the selection mask
            mask, ids = inside, np.flatnonzero(inside)
        else:
            ids = np.asarray(self._layout.ids)[self._finite[inside]]
            mask = None
            top = int(self._layout.ids.max()) if len(self._layout.ids) else -1
            if 0 <= top < 4 * len(self._layout.ids) + 1024 and (not len(ids) or ids.min() >= 0):
                mask = np.zeros(top + 1, bool)
                mask[ids] = True
                ids = np.flatnonzero(mask)  # sorted unique, so Selection need not sort
        suffix = " (dragging)" if live else ""
        selection = Selection(self._kind(), ids, how=f"{how} in scatter ({self._name()}){suffix}", mask=mask,
                              live=live)
        self.state.set_selection(mode(self.state.selection if base is None else base, selection))

    # ------------------------------------------------------------------ hover
    def nearest(self, x: float, y: float, radius_px: float = HOVER_PX) -> int:
        """Index (into the layout) of the point nearest to data (x, y) on screen, or -1."""
        if not len(self._xy):
            return -1
        px, py = self.plot.pixel_size()
        if self._tree is None:
            from scipy.spatial import cKDTree
            span = np.maximum(np.ptp(self._xy, axis=0), 1e-12)
            self._tree = (cKDTree(self._xy / span, balanced_tree=False, compact_nodes=False), span)
        tree, span = self._tree
        k = min(16, len(self._xy))
        _, idx = tree.query(np.array([x, y]) / span, k=k)
        idx = np.atleast_1d(idx)
        d = np.hypot((self._xy[idx, 0] - x) / max(px, 1e-300), (self._xy[idx, 1] - y) / max(py, 1e-300))
        best = int(np.argmin(d))
        return int(self._finite[idx[best]]) if d[best] <= radius_px else -1

    def _on_hover(self, x: float, y: float, where: QPoint) -> None:
        if QGuiApplication.mouseButtons() != Qt.MouseButton.NoButton:  # dragging: brush or pan, no tip
            self._hide_tip()
            return
        i = self.nearest(x, y)
        if i < 0:
            self._hide_tip()
            return
        if i != self._hover or not self.tip.isVisible():
            self._hover = i
            text, image = self.hover_info(i)
            self.tip.show_at(where, text, image)
        else:
            self.tip.move(where + QPoint(14, 14))

    def _hide_tip(self) -> None:
        self._hover = -1
        self.tip.hide()

    def hover_info(self, index: int) -> tuple[str, np.ndarray | None]:
        """Rich text naming point ``index`` of the layout, and an image for image stores."""
        from views.scatter.hover import latent_info, row_info
        point_id = int(self._layout.ids[index])
        if self._kind() == LATENTS:
            return latent_info(point_id, self._stats, self._vocab), None
        if self.state.store is None:
            return f"row {point_id}", None
        return row_info(self.state.store, point_id, self._info, self._vocab)

    # ------------------------------------------------------------------ export
    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        """Paint the plot (points, colours, selection) and its legend into any painter."""
        painter.save()
        painter.fillRect(rect, QColor("white"))
        legend = self._scheme.legend
        has_legend = bool(legend.title or legend.entries or legend.bar is not None)
        width = min(LEGEND_WIDTH, rect.width() * 0.3) if has_legend else 0.0
        plot_rect = QRectF(rect.left(), rect.top(), rect.width() - width, rect.height())
        if len(self._xy):
            self.plot.paint(painter, plot_rect)
        else:
            painter.setPen(QColor(136, 136, 136))
            painter.drawText(plot_rect, Qt.AlignmentFlag.AlignCenter, self.hint.text())
        self.trails.paint_legend(painter, plot_rect)
        if has_legend:
            paint_legend(painter, QRectF(plot_rect.right(), rect.top(), width, rect.height()),
                         legend)
        painter.restore()

    def cancel_requests(self) -> None:
        self.requests.forget_all()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.cancel_requests()
        self.tip.hide()
        super().closeEvent(event)


def _demo(argv: list[str]) -> None:
    """Open the scatter on a workspace's row PCA (argv[1]) or on 300k clustered points
    (jobs run inline here: views may not import the shell's engine bridge)."""
    from PySide6.QtWidgets import QApplication
    app = QApplication.instance() or QApplication(argv)
    state = AppState()
    view = ScatterView(state)
    if len(argv) > 1:
        from engine.api import Workspace, project
        ws = Workspace.open(argv[1])
        with state.batch():
            state.set_store(ws.store)
            state.set_hook(ws.hook)
            state.set_sae(ws.sae)
            state.set_stats(ws.sae_id)
        layout = project(JobContext(), ws.store, ws.hook, "pca", "rows",
                         cache_dir=ws.projections_dir)
    else:
        rng = np.random.default_rng(0)
        centres = rng.normal(0, 6, size=(12, 2))
        xy = (centres[rng.integers(0, 12, 300_000)] + rng.normal(size=(300_000, 2))).astype(np.float32)
        layout = Layout("rows/demo", xy, np.arange(len(xy), dtype=np.int64))
    state.set_projection(layout)
    view.resize(1000, 700)
    view.show()
    app.exec()


if __name__ == "__main__":
    import sys
    _demo(sys.argv)
