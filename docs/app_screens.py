"""Screenshots of every view of the real app on the demo workspace as a researcher sees them
on a screen of a given size: the window at the size the app gives it there, each view's
dock raised in turn, grabbed once the engine is idle. Run under Xvfb at each screen size
the README shows:

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/app_screens.py
    xvfb-run -a -s "-screen 0 1366x768x24" python docs/app_screens.py

Writes docs/screenshots/app_<view>_<screen W>x<screen H>.png (view in lower case), or into
the folder given as the first argument (to look at them before they replace the docs' own)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from desktop_app.app import make_window  # noqa: E402
from engine.api import DemoSpec, default_workspace  # noqa: E402
from main import gui_views  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def _settle(app: QApplication, seconds: float = 1.0) -> None:
    """Let layouts, timers and repaints run (views lay out on show)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.02)


def main() -> int:
    app = QApplication(sys.argv[:1])
    out = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else OUT
    out.mkdir(parents=True, exist_ok=True)
    settings = QSettings(str(out / ".screens.ini"), QSettings.Format.IniFormat)  # not the user's
    win = make_window(gui_views(), device="cpu", settings=settings)
    screen = win.screen().geometry()
    size = f"{screen.width()}x{screen.height()}"
    win.show()
    win.open_workspace(default_workspace(), demo=DemoSpec())
    assert win.bridge.wait_idle(1800), "the demo workspace did not finish building"
    _settle(app, 2.0)
    for name, view in win.views.items():
        dock = win.docks[name]
        dock.show()
        dock.raise_()
        _settle(app, 1.0)
        assert win.bridge.wait_idle(600), f"{name}: jobs still running"
        compare = getattr(view, "compare", None)  # Geometry: its first-shown matrix and a cell
        if compare is not None and compare.matrix is not None and min(compare.matrix.values.shape) > 1:
            compare.select_cell(1, compare.matrix.values.shape[1] - 1)
            _settle(app, 0.5)
            assert win.bridge.wait_idle(600), f"{name}: the cell's jobs still running"
        _settle(app, 1.5)
        path = out / f"app_{name.lower()}_{size}.png"
        win.grab().save(str(path))
        print(f"{path}: {type(view).__name__}")
    win.bridge.shutdown()
    (out / ".screens.ini").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
