"""Colour modes of the embedding scatter (private to views/scatter/view.py): which modes a
point set offers, the values each mode needs (asked of the engine, cached by what they
depend on), and the scheme built from them. A mixin of ScatterView: it reads the view's
layout, store facts and state, and ends every change in ``update_colors``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from desktop_app.state import LATENTS, ROWS
from desktop_app.view import InlineRunner
from engine import api
from views.scatter import colour

MODE_NAMES = {"token": "token", "position": "position", "focused": "focused feature",
              "density": "density"}


class ColourModes:
    """Colour-mode handling for ScatterView (see the module docstring)."""

    # ------------------------------------------------------------------ colour modes
    def _modes(self) -> list[str]:
        if self._layout is None:
            return []
        if self._kind() == LATENTS:
            return ["density"]
        info = self._info
        modes = [f"label:{n}" for n in (info.label_names if info else ())]
        modes += ["token"] if info is not None and info.has_tokens else []
        return modes + ["position", "focused"]

    def _default_mode(self) -> str:
        modes = self._modes()
        if self._kind() == ROWS and self.state.focus:
            return "focused"
        return modes[0] if modes else "position"

    def _refresh_colour_box(self) -> None:
        self.colour_box.blockSignals(True)
        self.colour_box.clear()
        for mode in self._modes():
            self.colour_box.addItem(MODE_NAMES.get(mode, mode.replace("label:", "label: ")), mode)
        self.colour_box.setCurrentIndex(max(0, self.colour_box.findData(self._mode)))
        self.colour_box.blockSignals(False)

    def set_colour_mode(self, mode: str) -> None:
        """Colour by "label:<name>" (or "label" for the first), "token", "position",
        "focused" (or "focused feature") for rows, or "density" for latents."""
        mode = {"focused feature": "focused", "label": next(
            (m for m in self._modes() if m.startswith("label:")), "label")}.get(mode, mode)
        if mode not in self._modes():
            raise ValueError(f"colour mode {mode!r} is not one of {self._modes()}")
        self._mode = mode
        self._pinned = mode.startswith("label:") or mode == "token"
        self._refresh_colour_box()
        self._request_colours()

    def colour_mode(self) -> str:
        return self._mode

    # ------------------------------------------------------------------ colour jobs
    def _value_key(self) -> tuple | None:
        """What the current mode's values depend on (None: nothing to colour by yet)."""
        s, mode = self.state, self._mode
        if s.store is None:
            return None
        if mode.startswith("label:") or mode in ("token", "position"):
            field = {"token": "tokens", "position": "position"}.get(mode, mode[6:])
            return ("index", str(s.store), field, self._ids_print)
        if mode == "focused" and s.focus and s.sae is not None and s.hook:
            return ("focused", str(s.store), s.hook, str(s.sae), s.focus[0], self._ids_print)
        return None

    def _request_colours(self) -> None:
        """Colour by the current mode: from cached values, or ask the engine for them."""
        if self._layout is None:
            return
        key = self._value_key()
        if key is None or key in self._values:
            self._apply_values(key)
            return
        ids = self._layout.ids
        if key[0] == "index":
            self._submit("colour", api.index_values, lambda v: self._on_values(key, v),
                         store_path=Path(key[1]), field=key[2], ids=ids)
        else:
            dense = len(ids) == (self._info.n_rows if self._info else -1) and \
                np.array_equal(ids, np.arange(len(ids)))
            self._submit("colour", api.focused_values, lambda v: self._on_values(key, v),
                         store_path=Path(key[1]), hook=key[2], sae_path=Path(key[3]),
                         latent=key[4], rows=None if dense else np.asarray(ids, np.int64),
                         stats_id=self.state.stats)

    def _on_values(self, key: tuple, values: np.ndarray) -> None:
        while len(self._values) >= 8:  # keep a few modes' values, not every layout's
            self._values.pop(next(iter(self._values)))
        self._values[key] = (self._layout.ids if self._layout is not None else None, values)
        if key == self._value_key():
            self._apply_values(key)

    def _apply_values(self, key: tuple | None) -> None:
        """Build the scheme for the current mode from its values and recolour."""
        n = len(self._layout.ids)
        mode = self._mode
        values = None
        if key is not None and key in self._values:  # (the vocabulary can land before the values)
            ids_for, values = self._values[key]
            if ids_for is not None and len(ids_for) != n:
                values = None
        if mode == "density":
            self._scheme = self._density_scheme()
        elif values is None:
            hint = "focus a latent to colour by it" if mode == "focused" else ""
            self._scheme = colour.uniform(n, hint)
        elif mode.startswith("label:"):
            names = (self._info.label_classes if self._info else {}).get(mode[6:])
            self._scheme = colour.labels(values, mode.replace(":", ": "), names)
        elif mode == "token":
            self._scheme = colour.tokens(values, self._vocab)
        else:
            title = f"latent {key[4]}" if mode == "focused" else mode
            self._scheme = colour.continuous(values, title, zero=mode == "focused")
        self.update_colors()

    def _density_scheme(self) -> colour.Scheme:
        ids = self._layout.ids
        if self._stats is None:
            scheme = colour.uniform(len(ids), "density (needs feature statistics)")
        else:
            density = self._stats["density"]
            ok = (ids >= 0) & (ids < len(density))
            values = np.full(len(ids), np.nan)
            values[ok] = density[ids[ok]]
            scheme = colour.continuous(values, "density", log=True)
        if self.state.focus:
            focused = np.isin(ids, np.asarray(self.state.focus, np.int64))
            codes = np.where(focused, len(scheme.palette), scheme.codes)
            palette = np.concatenate([scheme.palette, colour.HIGHLIGHT[None]])
            scheme = colour.Scheme(codes, palette, scheme.legend)
        return scheme

    def _on_vocab(self, vocab: Any) -> None:
        self._vocab = vocab
        if self._mode == "token" and self._layout is not None:
            self._apply_values(self._value_key())

    def _on_stats(self, stats: dict[str, Any]) -> None:
        self._stats = stats
        if self._mode == "density" and self._layout is not None:
            self._apply_values(None)

    def _submit(self, what: str, fn: Callable[..., Any], on_result: Callable[[Any], None],
                **params: Any) -> None:
        """Run a job on the engine (inline when the state has none); only the latest
        request of each kind (``self.requests``) is answered."""
        def failed(sentence: str, details: str = "") -> None:
            self.status.setText(f"{what}: {sentence}")

        runner = InlineRunner() if self.state.engine is None else self.state.engine
        self.requests.submit(runner, what, f"scatter {what}", fn,
                             engine_key=f"scatter-{what}", on_result=on_result, on_error=failed,
                             **params)
