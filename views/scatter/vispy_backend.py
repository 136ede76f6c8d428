"""The vispy drawing path of the embedding scatter (private to views/scatter/view.py), for
hardware OpenGL: one ``Markers`` visual in a SceneCanvas with a PanZoom camera; the same
camera draws lassos and boxes in those modes (the wheel always zooms)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt
from PySide6.QtGui import QImage, QPainter
from PySide6.QtWidgets import QWidget

from views.scatter.geom import brush_polygon, extend_brush, fit_rect
from views.scatter.legend import LeaveFilter

DIM_Z = 0.5  # depth of dimmed points (nearer is smaller)
BrushFn = Callable[[np.ndarray, Qt.KeyboardModifier, bool], None]  # polygon, modifiers, final
HoverFn = Callable[[float, float, QPoint], None]


def _use_qt() -> None:
    from vispy import app
    try:
        app.use_app("pyside6")
    except RuntimeError:  # another Qt binding was chosen first: keep it
        pass


def _qt_modifiers(keys: tuple) -> Qt.KeyboardModifier:
    from vispy.util import keys as vk
    mods = Qt.KeyboardModifier.NoModifier
    if vk.SHIFT in keys:
        mods |= Qt.KeyboardModifier.ShiftModifier
    if vk.ALT in keys:
        mods |= Qt.KeyboardModifier.AltModifier
    if vk.CONTROL in keys:
        mods |= Qt.KeyboardModifier.ControlModifier
    return mods


def _camera_class():
    from vispy.scene.cameras import PanZoomCamera

    class BrushCamera(PanZoomCamera):
        """PanZoom, except that a left drag draws a brush when the owner is not panning."""

        owner: VispyBackend | None = None

        def viewbox_mouse_event(self, event) -> None:
            owner = self.owner
            if owner is None or owner.mode == "pan" or event.type == "mouse_wheel":
                super().viewbox_mouse_event(event)
                return
            if event.handled:
                return
            here = self._transform.imap(np.asarray(event.pos)[:2])[:2]
            if event.type == "mouse_press" and event.button == 1:
                owner.path = [tuple(here)]
                event.handled = True
            elif event.type == "mouse_move" and event.press_event is not None and 1 in event.buttons:
                owner.extend_path(*here, _qt_modifiers(event.mouse_event.modifiers))
                event.handled = True
            elif event.type == "mouse_release" and event.button == 1 and owner.path:
                owner.extend_path(*here)
                owner.finish_path(_qt_modifiers(event.mouse_event.modifiers))
                event.handled = True

    return BrushCamera


class VispyBackend:
    """vispy drawing: one Markers visual; colours update in place without new coordinates."""

    name = "vispy"

    def __init__(self, on_brush: BrushFn, on_hover: HoverFn, on_leave: Callable[[], None]) -> None:
        _use_qt()
        from vispy import scene
        self.on_brush, self.on_hover = on_brush, on_hover
        self.mode = "pan"
        self.path: list[tuple[float, float]] = []
        self.canvas = scene.SceneCanvas(keys=None, bgcolor="white", show=False)
        self.widget = self.canvas.native
        self.view = self.canvas.central_widget.add_view()
        self.view.camera = _camera_class()(aspect=None)
        self.view.camera.owner = self
        self.markers = scene.visuals.Markers(parent=self.view.scene)
        # Dimmed points sit behind (z = DIM_Z), so emphasised ones are never covered by
        # them; "lequal" lets points at one depth blend in drawing order (vispy's default
        # "less" keeps the first point's transparent rim and punches white halos).
        self.markers.set_gl_state(depth_test=True, depth_func="lequal", blend=True,
                                  blend_func=("src_alpha", "one_minus_src_alpha"))
        self.markers.visible = False
        self.line = scene.visuals.Line(parent=self.view.scene, color=(0.1, 0.1, 0.1, 1.0), width=1)
        self.line.set_gl_state(depth_test=False)
        self.line.order = 10
        self.line.visible = False
        self.xy = np.empty((0, 2), np.float32)
        self.rgba = np.empty((0, 4), np.float32)
        self.size = 5.0
        self.canvas.events.mouse_move.connect(self._on_mouse_move)
        self._leave = LeaveFilter(on_leave)
        self.widget.installEventFilter(self._leave)

    # ------------------------------------------------------------------ data
    def set_points(self, xy: np.ndarray, size: float) -> None:
        """New coordinates (finite points only): one upload of positions and colours."""
        self.xy, self.size = xy, float(size)
        if len(self.rgba) != len(xy):
            self.rgba = np.tile(np.array([[0.12, 0.47, 0.71, 1.0]], np.float32), (len(xy), 1))
        self._upload()

    def _upload(self) -> None:
        if not len(self.xy):
            self.markers.visible = False
            self.canvas.update()
            return
        pos = np.c_[self.xy, self._depth()].astype(np.float32)
        self.markers.set_data(pos, face_color=self.rgba, edge_color=self.rgba,
                              size=self.size, edge_width=0)
        self.markers.visible = True

    def set_colors(self, codes: np.ndarray, palette: np.ndarray) -> None:
        """New colours written into the existing vertex data (positions are not rebuilt)."""
        self.rgba = palette[codes].astype(np.float32) / 255.0
        data = getattr(self.markers, "_data", None)
        vbo = getattr(self.markers, "_vbo", None)
        if data is None or vbo is None or len(data) != len(self.rgba):
            self._upload()
            return
        data["a_bg_color"] = self.rgba
        data["a_fg_color"] = self.rgba
        data["a_position"][:, 2] = self._depth()
        vbo.set_data(data)
        self.markers.update()

    def _depth(self) -> np.ndarray:
        """z of every point: translucent (dimmed) points behind the opaque ones."""
        return np.where(self.rgba[:, 3] < 1.0, DIM_Z, 0.0).astype(np.float32)

    # ------------------------------------------------------------------ view
    def view_range(self) -> tuple[float, float, float, float]:
        r = self.view.camera.rect
        return float(r.left), float(r.right), float(r.bottom), float(r.top)

    def set_view_range(self, x0: float, x1: float, y0: float, y1: float) -> None:
        self.view.camera.set_range(x=(x0, x1), y=(y0, y1), margin=0)

    def pixel_size(self) -> tuple[float, float]:
        x0, x1, y0, y1 = self.view_range()
        w, h = self.view.size
        return (x1 - x0) / max(w, 1), (y1 - y0) / max(h, 1)

    def data_to_widget(self, x: float, y: float) -> QPointF:
        """Where a data point lies in the canvas widget's coordinates (for mouse events)."""
        tr = self.view.scene.node_transform(self.canvas.scene)
        px, py = tr.map([x, y])[:2]
        return QPointF(float(px), float(py))

    def viewport(self) -> QWidget:
        return self.widget

    def set_mode(self, mode: str) -> None:
        self.mode = mode

    def paint(self, painter: QPainter, target: QRectF) -> None:
        """Render the canvas offscreen and draw the image into any painter."""
        self.line.visible = False
        try:
            img = np.ascontiguousarray(self.canvas.render(alpha=True))
        finally:
            self.line.visible = bool(self.path)
        h, w = img.shape[:2]
        qimg = QImage(img.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()
        painter.drawImage(QRectF(*fit_rect(target.getRect(), w, h)), qimg)

    # ------------------------------------------------------------------ mouse
    def extend_path(self, x: float, y: float,
                    modifiers: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> None:
        """Draw the brush so far and report it (not final) for live brushing."""
        poly = extend_brush(self.path, x, y, self.mode == "box")
        if len(poly) >= 2:
            self.line.set_data(np.vstack([poly, poly[:1]]).astype(np.float32))
            self.line.visible = True
        self.on_brush(brush_polygon(self.path, self.mode == "box"), modifiers, False)

    def finish_path(self, modifiers: Qt.KeyboardModifier) -> None:
        poly = brush_polygon(self.path, self.mode == "box")
        self.path = []
        self.line.visible = False
        self.on_brush(poly, modifiers, True)

    def _on_mouse_move(self, event) -> None:
        if event.buttons:
            return
        tr = self.canvas.scene.node_transform(self.view.scene)
        x, y = tr.map(np.asarray(event.pos)[:2])[:2]
        pos = self.widget.mapToGlobal(QPoint(int(event.pos[0]), int(event.pos[1])))
        self.on_hover(float(x), float(y), pos)
