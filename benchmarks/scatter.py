"""Embedding scatter: frames per second while panning, and time to first frame, for 100k and
1M random points in a 1200 x 900 window, under the same X display and in one run:

  ScatterView (vispy)          LatentLab's scatter, vispy path (hardware-GL default)
  ScatterView (pyqtgraph+LOD)  LatentLab's scatter, pyqtgraph path with the count image
  ... + selection              the same with 1% of the points selected (per-point colours)
  pyqtgraph ScatterPlotItem    the peer: a bare ScatterPlotItem(pxMode=True, pen=None)
  vispy Markers                a bare SceneCanvas + PanZoom camera + Markers

Each frame shifts the view by 1% of its width (back and forth) and repaints synchronously;
fps = frames / seconds over at least ``--seconds`` and ``--frames``. Also: the lasso's
point-in-polygon test over 1M points and the hover KD-tree.

    xvfb-run -a .venv/bin/python benchmarks/scatter.py [--sizes 100000 1000000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

W, H = 1200, 900


def _run_frames(pan: Callable[[float], None], frame: Callable[[], None], seconds: float,
                frames: int) -> float:
    """Frames per second of pan + synchronous repaint."""
    app = QApplication.instance()
    n, t0 = 0, time.perf_counter()
    while n < frames or time.perf_counter() - t0 < seconds:
        pan(0.01 if (n // 10) % 2 == 0 else -0.01)
        frame()
        app.processEvents()
        n += 1
    return n / (time.perf_counter() - t0)


def _first_frame(build: Callable[[], tuple], frame_of: Callable[[tuple], None]) -> tuple[float, tuple]:
    app = QApplication.instance()
    t0 = time.perf_counter()
    made = build()
    made[0].show()
    app.processEvents()
    frame_of(made)
    app.processEvents()
    return time.perf_counter() - t0, made


def bench_pyqtgraph(xy: np.ndarray, seconds: float, frames: int) -> tuple[float, float]:
    import pyqtgraph as pg

    def build():
        w = pg.PlotWidget(background="w")
        w.resize(W, H)
        item = pg.ScatterPlotItem(x=xy[:, 0], y=xy[:, 1], pxMode=True, pen=None, size=5,
                                  brush=pg.mkBrush(31, 119, 180))
        w.addItem(item)
        return (w,)

    first, (w,) = _first_frame(build, lambda m: m[0].viewport().repaint())
    vb = w.getPlotItem().getViewBox()

    def pan(frac: float) -> None:
        (x0, x1), (y0, y1) = vb.viewRange()
        d = (x1 - x0) * frac
        vb.setRange(xRange=(x0 + d, x1 + d), yRange=(y0, y1), padding=0)

    fps = _run_frames(pan, w.viewport().repaint, seconds, frames)
    w.close()
    return fps, first


def bench_vispy(xy: np.ndarray, seconds: float, frames: int) -> tuple[float, float]:
    from vispy import app as vapp
    from vispy import scene
    vapp.use_app("pyside6")

    def build():
        canvas = scene.SceneCanvas(size=(W, H), bgcolor="white", show=False)
        view = canvas.central_widget.add_view()
        view.camera = scene.cameras.PanZoomCamera(aspect=None)
        markers = scene.visuals.Markers(parent=view.scene)
        markers.set_data(xy, face_color=(0.12, 0.47, 0.71, 1.0), size=5, edge_width=0)
        view.camera.set_range()
        return (canvas.native, canvas, view)

    first, (native, canvas, view) = _first_frame(build, lambda m: m[0].repaint())

    def pan(frac: float) -> None:
        r = view.camera.rect
        view.camera.rect = (r.left + r.width * frac, r.bottom, r.width, r.height)

    fps = _run_frames(pan, native.repaint, seconds, frames)
    canvas.close()
    return fps, first


def bench_view(xy: np.ndarray, backend: str, seconds: float, frames: int,
               selected: float = 0.0) -> tuple[float, float, bool]:
    from desktop_app.state import ROWS, AppState, Selection
    from engine.projection.layouts import Layout
    from views.scatter import ScatterView
    state = AppState()
    layout = Layout("rows/pca", xy, np.arange(len(xy), dtype=np.int64))

    def build():
        view = ScatterView(state, backend=backend)
        view.resize(W, H)
        state.set_projection(layout)
        if selected:
            state.set_selection(Selection(ROWS, np.arange(0, len(xy), int(1 / selected))))
        return (view,)

    first, (view,) = _first_frame(build, lambda m: m[0].plot.viewport().repaint())
    plot = view.plot

    def pan(frac: float) -> None:
        x0, x1, y0, y1 = plot.view_range()
        d = (x1 - x0) * frac
        plot.set_view_range(x0 + d, x1 + d, y0, y1)

    fps = _run_frames(pan, plot.viewport().repaint, seconds, frames)
    lod = bool(getattr(plot, "lod", False))
    view.close()
    return fps, first, lod


def bench_lasso(n: int, repeats: int = 5) -> tuple[float, float]:
    """Median seconds of one 400-vertex lasso over n points; KD-tree build seconds."""
    from scipy.spatial import cKDTree

    from views.scatter.geom import points_in_polygon
    xy = np.random.default_rng(1).normal(size=(n, 2)).astype(np.float32)
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    r = 1.5 + 0.5 * np.sin(5 * t)
    poly = np.c_[r * np.cos(t), r * np.sin(t)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        points_in_polygon(xy, poly)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    cKDTree(xy, balanced_tree=False, compact_nodes=False)
    return statistics.median(times), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--frames", type=int, default=8)
    args = p.parse_args()
    app = QApplication.instance() or QApplication(sys.argv)
    from views.scatter.view import gl_renderer
    print(f"window {W} x {H}, OpenGL renderer: {gl_renderer() or 'none'}, "
          f"{os.cpu_count()} cores, panning {args.seconds:.0f}+ s per row")
    for n in args.sizes:
        xy = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
        rows = {}
        rows["pyqtgraph ScatterPlotItem"] = (*bench_pyqtgraph(xy, args.seconds, args.frames), None)
        rows["vispy Markers"] = (*bench_vispy(xy, args.seconds, args.frames), None)
        rows["ScatterView (pyqtgraph+LOD)"] = bench_view(xy, "pyqtgraph", args.seconds, args.frames)
        rows["ScatterView (pyqtgraph+LOD), 1% selected"] = bench_view(
            xy, "pyqtgraph", args.seconds, args.frames, selected=0.01)
        rows["ScatterView (vispy)"] = bench_view(xy, "vispy", args.seconds, args.frames)
        peer = rows["pyqtgraph ScatterPlotItem"][0]
        print(f"\n{n:,} points")
        for name, (fps, first, lod) in rows.items():
            mode = "" if lod is None else (" [count image]" if lod else " [markers]")
            print(f"  {name + mode:52s} {fps:6.1f} fps  x{fps / peer:5.2f}  first frame {first:5.2f} s")
        app.processEvents()
    lasso, tree = bench_lasso(1_000_000)
    print(f"\nlasso (400 vertices) over 1,000,000 points: {lasso * 1000:.0f} ms (median of 5); "
          f"hover KD-tree build: {tree * 1000:.0f} ms")


if __name__ == "__main__":
    main()
