"""Screenshots of the Capture and Train SAE dialogs in the real app on the demo workspace.
Run under Xvfb after the demo workspace exists (``./run.sh app`` once):
``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/dialog_screens.py``.
Writes docs/screenshots/{capture_dialog,train_sae_dialog}.png."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PySide6.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from desktop_app.app import make_window  # noqa: E402
from engine.api import Workspace, default_workspace  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def _settle(app: QApplication, window, seconds: float = 120.0) -> None:
    """Process events until the engine is idle (the capture dialog lists the model's hook
    points from a job), then a moment more for the last repaint."""
    end = time.perf_counter() + seconds
    while (window.bridge.busy() and time.perf_counter() < end) or time.perf_counter() < end - seconds + 0.5:
        app.processEvents()
        time.sleep(0.05)


def main() -> None:
    app = QApplication(sys.argv[:1])
    window = make_window([], device="cpu")
    ws = Workspace.open(default_workspace())
    with window.state.batch():
        window.state.set_workspace(ws.root)
        window.state.set_model(ws.model)
        window.state.set_store(ws.store)
        window.state.set_hook(ws.hook)
    window.show()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, open_dialog in (("capture_dialog", window.capture_dialog), ("train_sae_dialog", window.train_sae_dialog)):
        dialog = open_dialog()
        _settle(app, window)
        dialog.grab().save(str(OUT / f"{name}.png"))
        print(OUT / f"{name}.png")
        dialog.close()
    window.bridge.shutdown()


if __name__ == "__main__":
    main()
