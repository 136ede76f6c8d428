"""A view made of named tabs: its session is every tab's plus the open one, its figure is
the open tab's, and cancelling its requests cancels every tab's. Below its tabs' minimum
width the view scrolls instead of widening the window past the screen."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QRectF
from PySide6.QtGui import QGuiApplication, QPainter
from PySide6.QtWidgets import QFrame, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from desktop_app.view import figure_inputs, figure_projections, figure_state, restore_figure


class TabbedView(QWidget):
    """Tabs (``(key, label, widget)``), each with ``session_state``, ``restore_session``,
    ``paint_figure`` and ``cancel_requests``; the key names the tab in saved sessions."""

    def __init__(self, title: str, tabs: list[tuple[str, str, Any]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.pages = {key: widget for key, _, widget in tabs}
        self.tabs = QTabWidget()
        for _, label, widget in tabs:
            self.tabs.addTab(widget, label)
        scroll = QScrollArea()  # a dock as wide as its content's minimum would push the
        scroll.setWidgetResizable(True)  # window past a small screen's edge
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.tabs)
        # but no narrower than the content needs, up to a share of the screen (a dock tabbed
        # behind others would otherwise shrink to nothing when the docks are sized)
        screen = QGuiApplication.primaryScreen()
        cap = int(0.55 * screen.availableGeometry().width()) if screen is not None else 800
        scroll.setMinimumWidth(min(self.tabs.minimumSizeHint().width() + 4, cap))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

    def current(self) -> Any:
        return self.tabs.currentWidget()

    def session_state(self) -> dict[str, Any]:
        """Every tab's settings and the open tab."""
        keys = list(self.pages)
        return {"tab": keys[self.tabs.currentIndex()], **{k: w.session_state() for k, w in self.pages.items()}}

    def restore_session(self, data: dict[str, Any], /) -> None:
        """Restore what ``session_state`` saved; unknown or missing keys are skipped."""
        if not isinstance(data, dict):
            return
        for key, widget in self.pages.items():
            if isinstance(data.get(key), dict):
                widget.restore_session(data[key])
        if data.get("tab") in self.pages:
            self.tabs.setCurrentIndex(list(self.pages).index(data["tab"]))

    def figure_state(self) -> dict[str, Any]:
        """The open tab and its figure state (desktop_app.view.figure_state)."""
        key = list(self.pages)[self.tabs.currentIndex()]
        return {"tab": key, key: figure_state(self.current())}

    def restore_figure(self, data: dict[str, Any], /) -> None:
        """Open the saved tab and draw its figure again."""
        if data.get("tab") in self.pages:
            self.tabs.setCurrentIndex(list(self.pages).index(data["tab"]))
            restore_figure(self.current(), data.get(data["tab"]) or {})

    def figure_inputs(self) -> list[tuple[str, str]]:
        return figure_inputs(self.current())

    def figure_projections(self) -> list[str]:
        return figure_projections(self.current())

    def cancel_requests(self) -> None:
        for widget in self.pages.values():
            widget.cancel_requests()

    def paint_figure(self, painter: QPainter, rect: QRectF) -> None:
        """Paint the open tab into any painter (image, SVG, PDF)."""
        painter.save()
        try:
            self.current().paint_figure(painter, rect)
        finally:
            painter.restore()
