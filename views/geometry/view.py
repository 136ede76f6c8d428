"""The geometry comparison view: how similar are two representations? The Compare tab
draws a layer x layer similarity matrix between two stores (CKA, CCA, Procrustes, RSA,
mutual kNN; a store with itself too) and, for a clicked cell, every measure, neuron
matching (one-to-one, one-to-many, clusters) and a stitching test, on the selected rows
when the selection holds rows; the Kernel tab draws kernel-analysis curves of a store's
hook points against a label; the Dictionaries tab matches two SAEs' latents and focuses a
matched pair's latent in the feature browser; the Pruning tab compares a dense digits-zoo
model with its pruned variants under input corruptions and turns the samples pruning
flipped into AppState's row selection."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QWidget

from desktop_app.state import AppState, Selection
from views.common.tabs import TabbedView
from views.geometry.compare import CompareTab
from views.geometry.dictionary import DictionaryTab
from views.geometry.kernel import KernelTab
from views.geometry.pruning import PruningTab


class GeometryView(TabbedView):
    """Compare, Kernel, Dictionaries and Pruning tabs; follows the workspace, the active
    store and SAE, and the selection."""

    def __init__(self, state: AppState, parent: QWidget | None = None) -> None:
        compare, kernel, dictionary, pruning = (CompareTab(state), KernelTab(state), DictionaryTab(state),
                                                PruningTab(state))
        super().__init__("Geometry", [("compare", "Compare", compare), ("kernel", "Kernel", kernel),
                                      ("dictionary", "Dictionaries", dictionary),
                                      ("pruning", "Pruning", pruning)], parent)
        self.state, self.compare, self.pruning = state, compare, pruning
        self.kernel, self.dictionary = kernel, dictionary
        state.workspace_changed.connect(self._on_workspace_changed)
        state.store_changed.connect(self._on_store_changed)
        state.selection_changed.connect(self._on_selection_changed)
        self._on_workspace_changed(state.workspace)

    # ------------------------------------------------------------ AppState handlers
    def _on_workspace_changed(self, workspace: Path | None) -> None:
        """List the new workspace's stores and models (the active store first in A)."""
        self.compare.set_workspace(workspace, self.state.store)
        self.kernel.set_workspace(workspace, self.state.store)
        self.dictionary.set_workspace(workspace, self.state.sae)
        self.pruning.set_workspace(workspace)

    def _on_store_changed(self, store: Path | None) -> None:
        """Offer a newly active store in both pickers (their choices stay)."""
        self.compare.set_workspace(self.state.workspace, store)
        self.kernel.set_workspace(self.state.workspace, store)

    def _on_selection_changed(self, selection: Selection) -> None:
        self.pruning.update_selection(selection)
        self.compare.update_selection(selection)
        self.kernel.update_selection(selection)

    def refresh(self) -> None:
        """Re-read the workspace's stores and model folders (after new captures)."""
        self._on_workspace_changed(self.state.workspace)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Coming into view (e.g. its tab raised) re-reads the workspace: stores and models
        made since (a demo stage, a CLI capture) appear without a restart."""
        super().showEvent(event)
        self.refresh()


def _demo(argv: list[str]) -> None:
    """Open the view on a workspace folder (argv[1]); jobs run inline (views may not
    import the shell's engine bridge)."""
    import torch
    from PySide6.QtWidgets import QApplication

    from desktop_app.view import InlineRunner

    app = QApplication.instance() or QApplication(argv)
    state = AppState(InlineRunner(device=torch.device("cpu")))
    view = GeometryView(state)
    if len(argv) > 1:
        state.set_workspace(Path(argv[1]))
    view.resize(1300, 800)
    view.show()
    app.exec()


if __name__ == "__main__":
    import sys
    _demo(sys.argv)
