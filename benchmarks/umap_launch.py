"""Launch to first UMAP frame of the app: a fresh process opens the main window (as
``main.py`` does, with every view), starts the background warm-up (``warm_in_background``)
once the window is painted,
requests a UMAP of the store's rows through the engine bridge, and stops once the first
progressive frame has been drawn by the scatter view (the app's own partial-result path:
bridge -> AppState.set_projection -> ScatterView, then a synchronous repaint). Run for:

  first launch   an empty numba cache (NUMBA_CACHE_DIR is a fresh folder)
  second launch  the cache the first one left
  after warm-up  a second launch that requests the UMAP once the warm-up thread is done
                 (the app's state a few seconds after start-up)

Times are from the parent's ``Popen``. The longest GUI stall is the longest gap between
ticks of a 10 ms QTimer between the window showing and the first frame.

    xvfb-run -a .venv/bin/python benchmarks/umap_launch.py [--store STORE] [--rows 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_STORE = Path.home() / ".local/share/latentlab/demo/stores/demo_smollm2.h5"
HOOK = "blocks.15.hook_resid_post"


def child(store: str, hook: str, rows: int, after_warm_up: bool) -> dict:
    """In this (fresh) process: window, warm-up, request, first frame; wall-clock stamps."""
    sys.path.insert(0, str(ROOT))
    stamps = {"imports": time.time()}
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from desktop_app.app import make_window
    from engine.projection.layouts import Layout, project
    from engine.projection.umap_warm import warm_in_background
    from main import gui_views
    from views.scatter import ScatterView
    app = QApplication(sys.argv[:1])
    window = make_window(gui_views())
    window.show()
    app.processEvents()
    stamps["window"] = time.time()
    stall = _stall_meter()
    warming = warm_in_background()  # where run_app starts it: once the window is painted
    stamps["compiling"] = warming is not None
    if after_warm_up:
        while any(t.name == "umap-preload" for t in threading.enumerate()):
            app.processEvents()
            time.sleep(0.01)
        stamps["warm"] = time.time()
    scatter = window.findChildren(ScatterView)[0]

    def on_partial(layout: Layout) -> None:
        window.state.set_projection(layout)  # as the window's own partial handler does
        if "frame" not in stamps and scatter._layout is layout:
            window.repaint()
            stamps["frame"], stamps["stall_s"] = time.time(), stall()
            app.quit()
    stamps["request"] = time.time()
    window.bridge.submit("UMAP of rows", project, key="bench-umap", on_partial=on_partial,
                         store_path=store, hook=hook, method="umap", max_rows=rows, cache_dir=None)
    QTimer.singleShot(600_000, app.quit)
    app.exec()
    window.bridge.cancel_all()
    window.bridge.shutdown()
    if warming is not None and warming.poll() is None:
        warming.terminate()
    return stamps


def _stall_meter():
    """Start a 10 ms timer; the returned function gives the longest gap between its ticks."""
    from PySide6.QtCore import QTimer
    ticks = {"last": time.perf_counter(), "worst": 0.0}

    def tick() -> None:
        now = time.perf_counter()
        ticks["worst"] = max(ticks["worst"], now - ticks["last"])
        ticks["last"] = now
    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    _stall_meter.timer = timer  # keep it alive
    return lambda: ticks["worst"]


def launch(args: argparse.Namespace, cache: str, after_warm_up: bool) -> dict:
    """One launch in a fresh process; seconds since Popen of each stamp."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    cmd = [sys.executable, __file__, "--child", "--store", args.store, "--hook", args.hook,
           "--rows", str(args.rows)] + (["--after-warm-up"] if after_warm_up else [])
    start = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    stamps = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: (v - start if isinstance(v, float) and k != "stall_s" else v) for k, v in stamps.items()}


def report(name: str, s: dict) -> None:
    warm = f", warm-up done {s['warm']:.1f} s" if "warm" in s else ""
    print(f"{name}: window {s['window']:.1f} s{warm}, request {s['request']:.1f} s, first UMAP frame "
          f"{s['frame']:.1f} s after launch ({s['frame'] - s['request']:.1f} s after the request); "
          f"compiling process: {'yes' if s['compiling'] else 'no'}; longest GUI stall {s['stall_s'] * 1000:.0f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=str(DEMO_STORE))
    p.add_argument("--hook", default=HOOK)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--child", action="store_true")
    p.add_argument("--after-warm-up", action="store_true")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.store, args.hook, args.rows, args.after_warm_up)))
        return
    with tempfile.TemporaryDirectory() as cache:
        report("first launch (empty numba cache)", launch(args, cache, False))
        report("second launch (cache kept)", launch(args, cache, False))
        report("second launch, UMAP requested after the warm-up", launch(args, cache, True))


if __name__ == "__main__":
    main()
