"""Start the GUI: a QApplication, the engine thread, AppState and the main window opened on
a workspace (the demo one by default, built on first launch with visible progress)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QSettings

from desktop_app.main_window import MainWindow, ViewFactory
from engine.api import DemoSpec, default_workspace, warm_in_background
from engine.startup import first_slice_running


def configure_plots() -> None:
    """pyqtgraph's options for every plot of the app (the window's and a headless render's)."""
    import pyqtgraph as pg
    pg.setConfigOptions(antialias=False, background="w", foreground="k", imageAxisOrder="row-major")


def make_window(views: Sequence[tuple[str, ViewFactory]], device: str | None = None,
                settings: QSettings | None = None) -> MainWindow:
    """AppState + engine bridge + main window (a QApplication must exist)."""
    from desktop_app.bridge import EngineBridge
    from desktop_app.state import AppState
    configure_plots()
    bridge = EngineBridge(device)
    state = AppState(engine=bridge)
    window = MainWindow(state, bridge, list(views), settings)
    screen = window.screen().availableGeometry()  # a 1366x768 laptop gets a window that fits
    window.resize(min(1500, screen.width()), min(950, screen.height()))
    return window


def run_app(views: Sequence[tuple[str, ViewFactory]], workspace: str | os.PathLike | None = None,
            device: str | None = None, quit_after: float | None = None,
            launched: float | None = None) -> int:
    """Open the main window on ``workspace`` (default: build or reopen the demo one)."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication
    t0 = time.perf_counter()
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("LatentLab")
    app.setOrganizationName("LatentLab")
    window = make_window(views, device)
    window.launched = launched
    window.show()
    app.processEvents()  # paint the window before the warm-up's imports compete for the GIL
    # umap's import and kernels for the first UMAP, off this thread and after the demo's first slice
    warming = warm_in_background(after=first_slice_running())
    window.ask_on_close = quit_after is None  # a timed run (tests, benchmarks) quits without asking
    if workspace is None:
        window.open_workspace(default_workspace(), demo=DemoSpec(layers="background"), restore=True)
    elif not window.open_workspace(Path(workspace), restore=True):
        window.jobs.write(f"could not open {workspace}; use File > Open Workspace")
    window.statusBar().showMessage(f"window up in {time.perf_counter() - t0:.1f} s; engine on "
                                   f"{window.bridge.device}", 10000)
    if quit_after is not None:
        QTimer.singleShot(int(quit_after * 1000), window.close)
    code = app.exec()
    window.bridge.shutdown()
    if warming is not None and warming.poll() is None:
        warming.terminate()  # what it compiled so far stays cached; the next launch goes on
    return code
