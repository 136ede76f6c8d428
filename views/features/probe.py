"""The feature browser's text probe: a text box whose text is run through the active model
and SAE (the engine job ``text_latents``); its tokens in a row, each shaded by its
strongest latent (relative to that latent's maximum over the store) or, while a latent is
focused, by the focused latent's activation; a clicked token's firing latents in a table,
where activating (double-click, Enter) a latent focuses it."""

from __future__ import annotations

import html

import numpy as np
from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from engine import api
from engine.api import TextLatents, Vocab
from views.features.contexts import SHADE, token_html
from views.features.table import fill_table, small_table

N_LATENTS = 20  # a clicked token's latents listed


class TextProbe(QWidget):
    """Text box, shaded token row and the clicked token's latents (see the module doc)."""

    submitted = Signal(str)  # the text to probe (the browser runs the job)
    latent_activated = Signal(int)  # a latent of the token's table was double-clicked

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result: TextLatents | None = None
        self.data_: api.BrowserData | None = None
        self.token = -1  # the clicked token
        self.focus: int | None = None  # the focused latent
        self.text = QPlainTextEdit(placeholderText="Type or paste text, then Probe (Ctrl+Enter)")
        self.text.setFixedHeight(self.text.fontMetrics().lineSpacing() * 2 + 14)
        self.run_button = QPushButton("Probe")
        self.run_button.clicked.connect(self.submit)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self.text, activated=self.submit)
        self.note = QLabel("The latents that fire on each token of a text, from the active model and SAE.")
        self.note.setWordWrap(True)
        self.by_focus = QCheckBox("shade by the focused latent")
        self.by_focus.setChecked(True)
        self.by_focus.setToolTip("unticked: each token is shaded by its strongest latent, relative to "
                                 "that latent's maximum over the store")
        self.by_focus.toggled.connect(self._draw_tokens)
        self.tokens_view = QTextBrowser()
        self.tokens_view.setOpenLinks(False)
        self.tokens_view.anchorClicked.connect(self._on_anchor)
        line = self.tokens_view.fontMetrics().lineSpacing()
        self.tokens_view.setMinimumHeight(2 * line + 12)
        self.tokens_view.setMaximumHeight(4 * line + 12)  # longer texts scroll: the latents need the room
        self.token_title = QLabel()
        self.token_title.setWordWrap(True)
        self.latents = small_table(["latent", "activation", "auto-label"])
        self.latents.itemActivated.connect(self._on_activated)  # Enter, or a double-click where the style says so
        self.latents.itemDoubleClicked.connect(self._on_activated)
        self.latents.setToolTip("double-click (or Enter) a latent to open it in the browser")
        row = QHBoxLayout()
        row.addWidget(self.text, 1)
        row.addWidget(self.run_button)
        col = QVBoxLayout(self)
        col.setContentsMargins(0, 0, 0, 0)
        col.addLayout(row)
        notes = QHBoxLayout()
        notes.addWidget(self.note, 1)
        notes.addWidget(self.by_focus)
        col.addLayout(notes)
        col.addWidget(self.tokens_view)
        col.addWidget(self.token_title)
        col.addWidget(self.latents, 1)

    # ------------------------------------------------------------ input
    def submit(self) -> None:
        text = self.text.toPlainText()
        if not text.strip():
            self.note.setText("Type some text to probe first.")
            return
        self.note.setText("Running the model\u2026")
        self.submitted.emit(text)

    def set_text(self, text: str) -> None:
        self.text.setPlainText(text)

    # ------------------------------------------------------------ answers
    def set_data(self, data: api.BrowserData | None) -> None:
        """The browser's statistics: each latent's maximum (for shading) and auto-label."""
        self.data_ = data
        self._draw_tokens()
        self._fill_latents()

    def set_result(self, result: TextLatents | None, note: str = "") -> None:
        self.result = result
        self.token = int(np.argmax(result.strongest())) if result is not None and len(result.tokens) else -1
        if result is not None and not note:
            note = (f"{len(result.tokens)} tokens" + (" (the text was cut there)" if result.truncated else "")
                    + ": click a token for its latents; double-click one to open it.")
        self.note.setText(note)
        self._draw_tokens()
        self._fill_latents()

    def set_focus(self, latent: int | None) -> None:
        self.focus = latent
        self.by_focus.setText("shade by the focused latent" + (f" ({latent})" if latent is not None else ""))
        self._draw_tokens()

    def select_token(self, t: int) -> None:
        if self.result is not None and 0 <= t < len(self.result.tokens):
            self.token = t
            self._draw_tokens()
            self._fill_latents()

    # ------------------------------------------------------------ drawing
    def shades(self) -> np.ndarray:
        """(n,) each token's shade in 0..1: the focused latent's activation over its maximum,
        else the strongest latent's activation over that latent's maximum."""
        r = self.result
        if r is None or not len(r.tokens):
            return np.zeros(0)
        vmax = self._latent_max()
        if self.by_focus.isChecked() and self.focus is not None and 0 <= self.focus < r.d_sae:
            values, latents = r.of_latent(self.focus), np.full(len(r.tokens), self.focus)
        else:
            values, latents = r.strongest(), r.strongest_latent()
        scale = np.array([self._max_of(vmax, int(j), r) if j >= 0 else 0.0 for j in latents])
        return np.clip(np.divide(values, scale, out=np.zeros(len(values)), where=scale > 0), 0, 1)

    def _latent_max(self) -> np.ndarray | None:
        d = self.data_
        if d is None or self.result is None or len(d.stats.max) != self.result.d_sae:
            return None
        return d.stats.max

    @staticmethod
    def _max_of(vmax: np.ndarray | None, latent: int, r: TextLatents) -> float:
        """The latent's maximum over the store; without statistics, over this text."""
        if vmax is not None and vmax[latent] > 0:
            return float(vmax[latent])
        return float(r.of_latent(latent).max(initial=0.0))

    def _draw_tokens(self) -> None:
        r = self.result
        if r is None:
            self.tokens_view.setHtml("")
            return
        red, green, blue = SHADE
        spans = []
        for t, (text, shade) in enumerate(zip(r.texts, self.shades(), strict=True)):
            style = f"color: black; text-decoration: none; background-color: rgba({red},{green},{blue},{shade:.2f});"
            if t == self.token:
                style += " font-weight: bold; text-decoration: underline overline;"
            spans.append(f'<a href="token:{t}" style="{style}">{token_html(text)}</a>')
        self.tokens_view.setHtml(f'<p style="margin: 2px; white-space: pre-wrap;">{"".join(spans)}</p>')

    def _fill_latents(self) -> None:
        r, t = self.result, self.token
        if r is None or not 0 <= t < len(r.tokens):
            self.token_title.setText("")
            fill_table(self.latents, [])
            return
        latents, values = r.top(t, N_LATENTS)
        labels = self.data_.table.labels if self.data_ is not None else None
        rows = [[str(int(j)), f"{v:.4g}", labels[j] if labels is not None and j < len(labels) else ""]
                for j, v in zip(latents, values, strict=True)]
        fill_table(self.latents, rows, data=[int(j) for j in latents], numeric=(0, 1))
        fires = int(r.ptr[t + 1] - r.ptr[t])
        self.token_title.setText(f"<b>Token {t}</b> \u201c{html.escape(Vocab.visible(r.texts[t]))}\u201d: "
                                 f"{fires} latents fire" + (f", the {len(rows)} strongest:" if fires > len(rows) else ":"))

    # ------------------------------------------------------------ clicks
    def _on_anchor(self, url: QUrl) -> None:
        kind, _, index = url.toString().partition(":")
        if kind == "token" and index.isdigit():
            self.select_token(int(index))

    def _on_activated(self, item: QTableWidgetItem) -> None:
        latent = self.latents.item(item.row(), 0).data(Qt.ItemDataRole.UserRole)
        if latent is not None:
            self.latent_activated.emit(int(latent))

