"""How the Generate tab follows the other views: "Steer with N selected latents" turns a
latent selection (a lasso in the latent scatter, a filter in the browser) into one
intervention per latent in one action, and the "focused latent" row of the recipe follows
AppState's focus (its latent changes, its slider keeps its place), leaving the user's other
interventions as they are."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QCheckBox, QPushButton

from desktop_app.state import LATENTS, AppState, Selection
from engine.api import latent_item, latent_items

MAX_SELECTED = 32  # latents one "Steer with selected" adds at most
FOLLOWS = "follows_focus"  # the recipe item's key marking the row that follows the focus


class LatentLinks:
    """The button and the check box (the tab lays them out), and what they do to the tab's
    recipe (``tab`` is the GenerateTab: its ``state``, ``jobs``, ``recipe()``, ``items`` list
    and ``add_items``)."""

    def __init__(self, tab: Any) -> None:
        self.tab, self.state = tab, tab.state
        self.steer_selected = QPushButton(f"Steer with {MAX_SELECTED} selected latents")
        self.steer_selected.setMinimumWidth(self.steer_selected.sizeHint().width())  # the view's width is
        self.steer_selected.clicked.connect(self.add_selected)  # set at start: a longer count must not widen it
        self.follow = QCheckBox("Follow focused latent")
        self.follow.setToolTip("A \u201cfocused latent\u201d row whose latent is the one focused in the "
                               "feature browser or the scatter (its slider keeps its place)")
        self.follow.setChecked(True)
        self.follow.toggled.connect(self._on_follow_toggled)
        state: AppState = self.state
        state.selection_changed.connect(self._on_selection_changed)
        state.sae_changed.connect(lambda *_: self._on_selection_changed(state.selection))
        state.focus_changed.connect(self._on_focus_changed)
        self._on_selection_changed(state.selection)

    # ------------------------------------------------------------ selected latents
    def selected(self) -> list[int]:
        sel: Selection = self.state.selection
        return [int(j) for j in sel.ids] if sel.kind == LATENTS else []

    def _on_selection_changed(self, selection: Selection) -> None:
        n = len(self.selected())
        self.steer_selected.setText(f"Steer with {n} selected latent{'s' if n != 1 else ''}" if n
                                    else "Steer with selected latents")
        self.steer_selected.setEnabled(bool(n) and self.state.sae is not None and self.state.hook is not None)
        self.steer_selected.setToolTip("" if n else "Select latents first: a lasso in the latent scatter")

    def add_selected(self) -> None:
        """One intervention per selected latent (the first MAX_SELECTED), each adding its
        decoder row at the latent's largest activation over the store (a job)."""
        latents = self.selected()[:MAX_SELECTED]
        if not latents or self.state.sae is None or self.state.hook is None:
            self.tab.jobs.show_error("Select latents first (a lasso in the latent scatter; an SAE must be open).")
            return
        self.tab.jobs.submit("selected", f"{len(latents)} selected latents as interventions", latent_items,
                             self._on_selected_items, sae=str(self.state.sae), latents=latents,
                             hook=self.state.hook, store=self._store(), stats_id=self.state.stats)

    def _on_selected_items(self, items: list[dict[str, Any]]) -> None:
        self.tab.add_items([{**item, "name": f"selected latent {item['latent']}"} for item in items])
        n = len(self.selected())
        if n > MAX_SELECTED:
            self.tab.status.setText(f"Added the first {MAX_SELECTED} of the {n} selected latents.")

    def _store(self) -> str | None:
        return str(self.state.store) if self.state.store else None

    # ------------------------------------------------------------ the focused latent
    def following_row(self) -> int:
        """Index of the recipe's focused-latent row (-1: none)."""
        return next((i for i, item in enumerate(self.state.steering) if item.get(FOLLOWS)), -1)

    def _on_follow_toggled(self, on: bool) -> None:
        if on:
            self._on_focus_changed(self.state.focus)

    def _on_focus_changed(self, focus: tuple[int, ...]) -> None:
        """Point the focused-latent row at the new focus (a job reads its scale)."""
        if not self.follow.isChecked() or not focus or self.state.sae is None or self.state.hook is None:
            return
        self.tab.jobs.submit("follow", f"focused latent {focus[0]}", latent_item, self._on_focus_item,
                             sae=str(self.state.sae), latent=int(focus[0]), hook=self.state.hook,
                             store=self._store(), stats_id=self.state.stats)

    def _on_focus_item(self, item: dict[str, Any]) -> None:
        """A new focused-latent row starts at strength 0 (it changes nothing until its slider
        moves); an existing one takes the new latent, keeping its mode, its switch and its
        slider's place (strength scaled by the ratio of the two latents' ranges)."""
        recipe, index = self.tab.recipe(), self.following_row()
        new = {**item, "name": f"focused latent {item['latent']}", FOLLOWS: True}
        if index < 0:
            recipe.append({**new, "strength": 0.0})
            index = len(recipe) - 1
        else:
            old = recipe[index]
            if old.get("latent") == new["latent"] and old.get("sae") == new["sae"]:
                self.tab.items.setCurrentRow(index)
                return
            scale = float(new["range"]) / float(old.get("range") or new["range"])
            recipe[index] = {**new, "mode": old.get("mode", "add"), "enabled": old.get("enabled", True),
                             "strength": round(float(old.get("strength", 0.0)) * scale, 3)}
        self.state.set_steering(recipe)
        self.tab.items.setCurrentRow(index)
