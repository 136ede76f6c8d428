"""Screenshots of the steering view in the real app on the demo workspace (SmolLM2), as a
researcher would make them: add the default ocean concept vector at strength 2, run the
default 5-strength x 6-layer sweep, run the concept injection, and grab the window after
each. Run under Xvfb: ``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/steering_screens.py``.
Writes docs/screenshots/steering_{generate,sweep,injection}.png and prints what they show."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from PySide6.QtWidgets import QApplication, QDockWidget

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from desktop_app.app import make_window  # noqa: E402
from engine.api import DemoSpec, default_workspace  # noqa: E402
from main import gui_views  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def _settle(app: QApplication) -> None:
    for _ in range(5):
        app.processEvents()
        time.sleep(0.05)


def main() -> int:
    app = QApplication(sys.argv)
    win = make_window(gui_views(), device="cpu")
    win.resize(1500, 950)
    win.show()
    win.open_workspace(default_workspace(), demo=DemoSpec())
    bridge = win.bridge
    assert bridge.wait_idle(1800), "the demo workspace did not finish building"
    view = win.views["Steering"]
    for dock in win.findChildren(QDockWidget):
        if dock.widget() is view:
            dock.show()
            dock.raise_()
    _settle(app)
    assert bridge.wait_idle(300)
    gen = view.generate
    gen.add_concept_button.click()
    assert bridge.wait_idle(300)
    OUT.mkdir(parents=True, exist_ok=True)
    _settle(app)
    win.grab().save(str(OUT / "steering_generate.png"))
    print("baseline:", "".join(gen.baseline.texts))
    print("steered: ", "".join(gen.steered.texts))
    print(gen.comparison.text())
    view.tabs.setCurrentWidget(view.sweep)
    _settle(app)
    t0 = time.perf_counter()
    view.sweep.run_button.click()
    assert bridge.wait_idle(1800)
    print(f"sweep of {view.sweep.layers.text()} x {view.sweep.strengths.text()}: "
          f"{time.perf_counter() - t0:.0f} s")
    print(view.sweep.result.format())
    _settle(app)
    win.grab().save(str(OUT / "steering_sweep.png"))
    view.tabs.setCurrentWidget(view.injection)
    t0 = time.perf_counter()
    view.injection.run_button.click()
    assert bridge.wait_idle(1800)
    print(f"injection: {time.perf_counter() - t0:.0f} s; {view.injection.rates.text()}")
    _settle(app)
    win.grab().save(str(OUT / "steering_injection.png"))
    bridge.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
