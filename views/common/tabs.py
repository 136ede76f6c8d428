"""A view made of named tabs: its session is every tab's plus the open one, its figure is
the open tab's, and cancelling its requests cancels every tab's."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QRectF
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QTabWidget, QVBoxLayout, QWidget


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
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)

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
